import pytest
import torch

import lensprior
from lensprior import Denoiser, DenoiserConfig


def _blobs(n, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    y, x = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(), indexing="ij")
    out = torch.zeros(n, 1, size, size)
    for i in range(n):
        for _ in range(3):
            c = torch.rand(2, generator=g) * (size - 8) + 4
            w = 1 + 3 * torch.rand(1, generator=g)
            out[i, 0] += torch.rand(1, generator=g) * torch.exp(-((x - c[0]) ** 2 + (y - c[1]) ** 2) / (2 * w**2))
    return out / out.amax(dim=(-1, -2), keepdim=True)


def test_total_flux_is_conserved_by_construction():
    m = Denoiser(DenoiserConfig(filters=4)).eval()
    x = torch.rand(3, 1, 32, 32)
    with torch.no_grad():
        y = m(x)
    assert torch.allclose(y.sum(dim=(-1, -2)), x.sum(dim=(-1, -2)), rtol=1e-5)
    with pytest.raises(ValueError, match="divisible"):
        m(torch.rand(1, 1, 30, 30))


def test_training_lowers_the_error_on_held_out_images(tmp_path):
    cfg = DenoiserConfig(filters=8, crop=32, steps=300, batch_size=8, noise_min=0.05, noise_max=0.1)
    model = lensprior.train_denoiser(cfg, _blobs(32), tmp_path, seed=0, log_every=50)
    clean = _blobs(16, seed=99)  # held out
    noisy = clean + model.make_noise(clean.shape, torch.Generator().manual_seed(7))
    den = model.denoise(noisy)
    before = (noisy - clean).pow(2).mean().sqrt()
    after = (den - clean).pow(2).mean().sqrt()
    assert after < 0.5 * before
    again = lensprior.load_denoiser(tmp_path)
    assert torch.equal(again.denoise(noisy), den)


def test_noise_model_has_the_configured_level_and_correlation():
    m = Denoiser(DenoiserConfig(noise_min=0.1, noise_max=0.1, correlation=0.28))
    n = m.make_noise(torch.Size([4, 1, 128, 128]), torch.Generator().manual_seed(0))
    assert n.std().item() == pytest.approx(0.1, rel=0.03)
    corr = torch.corrcoef(torch.stack([n[..., :-1].flatten(), n[..., 1:].flatten()]))[0, 1]
    assert corr.item() == pytest.approx(0.537, abs=0.03)  # measured on real COSMOS stamps: 0.54


def test_config_checks_and_json():
    c = DenoiserConfig(steps=5)
    assert DenoiserConfig.from_json(c.to_json()) == c
    with pytest.raises(ValueError, match="noise_min"):
        DenoiserConfig(noise_min=0.2, noise_max=0.1)
    with pytest.raises(ValueError, match="not a denoiser"):
        DenoiserConfig.from_json(lensprior.source_vae_config().to_json())
