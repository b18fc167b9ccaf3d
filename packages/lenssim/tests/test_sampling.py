import math

import numpy as np
import pytest
import torch
from scipy import stats

import lenssim


@pytest.mark.parametrize(
    "dist",
    [
        lenssim.ObservationConfig().psf_fwhm,
        lenssim.ObservationConfig().noise_sigma,
        lenssim.TruncatedNormal(a=-1, b=3, mu=2.5, sigma=0.4),
    ],
)
def test_truncated_normal_against_scipy(dist):
    draws = lenssim.truncated_normal(200_000, dist, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    a, b = (dist.a - dist.mu) / dist.sigma, (dist.b - dist.mu) / dist.sigma
    ref = stats.truncnorm(a, b, loc=dist.mu, scale=dist.sigma)
    x = draws.numpy()
    assert x.min() >= dist.a and x.max() <= dist.b
    assert x.mean() == pytest.approx(ref.mean(), abs=4 * ref.std() / math.sqrt(len(x)))
    assert x.std() == pytest.approx(ref.std(), rel=0.01)
    assert stats.kstest(x[:20000], ref.cdf).pvalue > 1e-3


def test_table1_samplers_are_seeded_and_in_range():
    cfg = lenssim.ObservationConfig()
    f1 = lenssim.sample_psf_fwhm(1000, cfg, generator=torch.Generator().manual_seed(7))
    f2 = lenssim.sample_psf_fwhm(1000, cfg, generator=torch.Generator().manual_seed(7))
    assert torch.equal(f1, f2)
    assert f1.min() >= 0.06 and f1.max() <= 0.3
    s = lenssim.sample_noise_sigma(1000, cfg, generator=torch.Generator().manual_seed(7))
    assert s.min() >= 0.001 and s.max() <= 0.1
    snr = 1 / s
    assert snr.min() >= 10 and snr.max() <= 1000  # the paper's SNR range
    assert cfg.pixel_scale == pytest.approx(0.0601, abs=1e-4)


def test_bad_distributions_are_refused():
    with pytest.raises(ValueError, match="a < b"):
        lenssim.TruncatedNormal(a=1, b=0, mu=0, sigma=1)
    with pytest.raises(ValueError, match="sigma"):
        lenssim.TruncatedNormal(a=0, b=1, mu=0, sigma=0)


def test_sie_parameters_follow_table2():
    p = lenssim.sample_sie_parameters(20_000, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    assert 0.5 <= p.theta_e.min() and p.theta_e.max() <= 2.5
    assert 0.4 <= p.q.min() and p.q.max() <= 1.0
    assert 0 <= p.phi.min() and p.phi.max() <= math.pi
    r = torch.sqrt(p.x0**2 + p.y0**2)
    assert r.max() <= 0.1
    # uniform radius (not uniform area): mean 0.05
    assert r.mean().item() == pytest.approx(0.05, abs=0.002)
    assert stats.kstest(p.theta_e.numpy(), stats.uniform(0.5, 2.0).cdf).pvalue > 1e-3
    again = lenssim.sample_sie_parameters(20_000, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    assert all(torch.equal(a, b) for a, b in zip(p, again, strict=True))
    with pytest.raises(ValueError, match="ellipticity"):
        lenssim.SIEPrior(ellipticity=(0.0, 1.0))


def test_sie_convergence_shapes_and_sampling_option():
    p = lenssim.sample_sie_parameters(2, generator=torch.Generator().manual_seed(1))
    k = lenssim.sie_convergence(p, n=32, fov=4.0)
    assert k.shape == (2, 1, 32, 32) and k.dtype == torch.float32 and torch.all(k > 0)
    with pytest.raises(ValueError, match="sampling"):
        lenssim.sie_convergence(p, sampling="nearest")
    assert np.isfinite(k.numpy()).all()


def test_sie_pixel_average_is_refined_at_the_cusp_only():
    # an independent reference: many Gauss nodes on every edge, no window
    p = lenssim.sample_sie_parameters(16, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    ref = lenssim.sie_convergence(p, n=48, quadrature_order=64, core_window=0)
    fast = lenssim.sie_convergence(p, n=48)
    coarse = lenssim.sie_convergence(p, n=48, quadrature_order=4, core_window=0)
    assert float(((fast - ref).abs() / ref).max()) < 1e-3
    # without the refinement the cusp pixels are off by percents, far from it nothing changes
    assert float(((coarse - ref).abs() / ref).max()) > 1e-2
    changed = (coarse - fast).abs().flatten(1).gt(0).sum(1)
    assert int(changed.max()) <= (2 * 4 + 3) ** 2  # only the pixels bordering the window's edges
    # the fluxes telescope: the total mass is exact whatever the orders
    torch.testing.assert_close(fast.sum(dim=(1, 2, 3)), ref.sum(dim=(1, 2, 3)), rtol=1e-12, atol=0)
    # a centre outside the field (clamped window) still works
    off = lenssim.SIEParameters(*(t[:1].clone() for t in p))._replace(x0=torch.tensor([5.0], dtype=torch.float64))
    k = lenssim.sie_convergence(off, n=32)
    assert torch.isfinite(k).all() and (k > 0).all()


def test_sie_sampler_renders_on_the_device_asked_for():
    obs = lenssim.ObservationConfig(image_pixels=32, source_pixels=32)
    draw = lenssim.sie_kappa_sampler(config=obs, device="cpu")
    a, b = draw(3, torch.Generator().manual_seed(0)), draw(3, torch.Generator().manual_seed(0))
    assert a.dtype == torch.float32 and a.shape == (3, 1, 32, 32) and torch.equal(a, b)
    p = lenssim.sample_sie_parameters(3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    torch.testing.assert_close(a, lenssim.sie_convergence(p, n=32).float())


def test_observation_config_at_a_resolution_keeps_the_fields_and_an_odd_psf_inside_the_image():
    for n in (16, 32, 64, 128, 256):
        c = lenssim.ObservationConfig.at_resolution(n)
        assert (c.image_pixels, c.source_pixels) == (n, n)
        assert (c.image_fov, c.source_fov) == (lenssim.IMAGE_FOV, lenssim.SOURCE_FOV)
        assert c.psf_size % 2 == 1 and c.psf_size < n / 2 and c.psf_size <= 21
    assert lenssim.ObservationConfig.at_resolution(128) == lenssim.ObservationConfig()  # Table 1
    assert lenssim.ObservationConfig.at_resolution(32).psf_size == 15


def test_truncated_normals_are_built_with_keywords():
    with pytest.raises(TypeError):
        lenssim.TruncatedNormal(0.06, 0.3, 0.08, 0.05)
