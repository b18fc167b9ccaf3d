"""The COSMOS denoiser, trained on GalSim synthetic galaxies, on held-out real COSMOS stamps."""

from pathlib import Path

import numpy as np
import pytest
import torch

import lensprior
from lenssim.data.sources import CosmosSources, prepare_source, synthetic_galaxy_stamp

COSMOS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cosmos" / "btk-26-extension"


@pytest.mark.slow
@pytest.mark.skipif(not COSMOS.is_dir(), reason="../shared/data/cosmos not present")
def test_denoiser_lowers_border_noise_and_keeps_flux_on_real_stamps(tmp_path):
    rng = np.random.default_rng(0)
    clean = np.stack([prepare_source(synthetic_galaxy_stamp(rng), rng) for _ in range(64)])[:, None]
    cfg = lensprior.DenoiserConfig(steps=600, batch_size=16, filters=16)
    model = lensprior.train_denoiser(cfg, torch.from_numpy(clean).float(), tmp_path, seed=0, log_every=100)
    cat = CosmosSources(
        COSMOS, file_name="real_galaxy_catalog_26_extension_example.fits", exclusion_level="none", min_flux=0
    )
    stamps = []
    for i in range(len(cat)):  # real galaxies: none was seen in training
        s = cat.stamp(i, rng)
        s = s - np.median(np.concatenate([s[:8].ravel(), s[-8:].ravel()]))
        c = s[15:143, 15:143]
        stamps.append(c / c.max())
    noisy = torch.from_numpy(np.stack(stamps)[:, None]).float()
    den = model.denoise(noisy)

    def border(a):
        return torch.cat([a[:, 0, :10].flatten(1), a[:, 0, -10:].flatten(1)], 1).std(1)

    noise_ratio = border(den) / border(noisy)
    assert noise_ratio.median() < 0.25 and noise_ratio.max() < 0.5
    assert torch.allclose(den.sum(dim=(-1, -2)), noisy.sum(dim=(-1, -2)), rtol=1e-3, atol=1e-2)
    yy, xx = torch.meshgrid(torch.arange(128), torch.arange(128), indexing="ij")
    aperture = (yy - 64) ** 2 + (xx - 64) ** 2 < 25**2
    f_noisy, f_den = noisy[:, 0][:, aperture].sum(1), den[:, 0][:, aperture].sum(1)
    snr = f_noisy / (border(noisy) * (aperture.sum() * 2.5) ** 0.5)  # 2.5: correlated noise
    ratio = (f_den / f_noisy)[snr > 30]
    assert len(ratio) >= 15
    # each galaxy's flux within a few percent (the noise-limited error of these fluxes is <= 3.3 %)
    assert (ratio - 1).abs().max() < 0.05 and abs(ratio.median().item() - 1) < 0.02
