import pytest
import torch

import lensprior
from lensprior import Denoiser, DenoiserConfig

pytestmark = pytest.mark.slow  # trains networks


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


def test_the_highpass_blur_is_a_unit_sum_gaussian_and_removes_the_smooth_part_of_the_noise_estimate():
    import numpy as np

    from lensprior.denoiser import _gaussian_blur

    x = torch.rand(2, 1, 48, 40, dtype=torch.float64)
    # direct circular convolution with a normalised Gaussian, one axis after the other
    offsets = np.arange(-30, 31)
    kernel = np.exp(-(offsets**2) / (2 * 3.0**2))
    kernel /= kernel.sum()
    ref = x.numpy()
    for axis in (-1, -2):
        ref = sum(w * np.roll(ref, d, axis=axis) for d, w in zip(offsets, kernel, strict=True))
    np.testing.assert_allclose(_gaussian_blur(x, 3.0).numpy(), ref, atol=1e-6)
    # the same weights with and without the high-pass
    torch.manual_seed(0)
    raw = Denoiser(DenoiserConfig(filters=4, highpass=0.0)).eval()
    torch.manual_seed(0)
    hp = Denoiser(DenoiserConfig(filters=4, highpass=3.0)).eval()
    with torch.no_grad():
        for p in raw.out.parameters():
            p.mul_(30.0)  # a large, structured "noise" estimate
        hp.load_state_dict(raw.state_dict())
        x = _blobs(4, size=64)
        n_raw, n_hp = raw.noise(x).double(), hp.noise(x).double()
        assert torch.allclose(hp(x).sum(dim=(-1, -2)), x.sum(dim=(-1, -2)), rtol=0, atol=1e-2)  # float32, |n| ~ 30
    # the high-passed estimate is the raw one with its Fourier modes scaled by 1 - exp(-2 pi^2 s^2 k^2):
    # nothing left at k = 0, 4 % left at the lowest frequency, so no flux moves across wide apertures
    k = torch.fft.fftfreq(64, dtype=torch.float64)
    keep = 1 - torch.exp(-2 * (torch.pi * 3.0) ** 2 * (k[:, None] ** 2 + k[None, :] ** 2))
    f_raw, f_hp = torch.fft.fft2(n_raw), torch.fft.fft2(n_hp)
    assert torch.allclose(f_hp, f_raw * keep, atol=1e-3 * f_raw.abs().max().item())
    assert keep[0, 1] < 0.2 and (f_hp[..., 0, 0].abs() < 1e-5 * n_hp.abs().sum(dim=(-1, -2))).all()


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
