import math

import numpy as np
import pytest
import torch

import lenssim


def test_pixel_grid_is_pixel_centred():
    c = lenssim.pixel_coordinates(4, 2.0, dtype=torch.float64)
    assert c.tolist() == [-0.75, -0.25, 0.25, 0.75]
    x, y = lenssim.pixel_grid(4, 2.0, dtype=torch.float64)
    assert torch.equal(x[0], c) and torch.equal(y[:, 0], c)  # x along columns, y along rows
    with pytest.raises(ValueError, match="positive integer"):
        lenssim.pixel_grid(0, 1.0)
    for fov in (True, "2.0", float("inf"), 0.0):  # True is not 1 arcsec, nor a string a number
        with pytest.raises(ValueError, match="fov must be a positive"):
            lenssim.pixel_grid(4, fov)
    assert torch.equal(lenssim.pixel_coordinates(4, np.float32(2.0), dtype=torch.float64), c)  # NumPy reals pass


def test_ray_trace_interpolates_linear_sources_exactly():
    # Bilinear interpolation reproduces a linear function exactly between pixel centres, so
    # ray_trace must return f(beta) for any beta inside the outermost pixel centres.
    ns, fov_s = 40, 3.0
    xs, ys = lenssim.pixel_grid(ns, fov_s, dtype=torch.float64)
    f = lambda x, y: 0.3 + 0.7 * x - 0.45 * y  # noqa: E731
    source = f(xs, ys)[None, None]
    g = torch.Generator().manual_seed(0)
    limit = fov_s / 2 - fov_s / ns / 2
    beta = (torch.rand(1, 2, 16, 16, generator=g, dtype=torch.float64) * 2 - 1) * limit
    out = lenssim.ray_trace(source, beta, fov_s)
    assert torch.allclose(out[0, 0], f(beta[0, 0], beta[0, 1]), atol=1e-12)


def test_ray_trace_is_zero_outside_the_source():
    source = torch.ones(1, 1, 8, 8, dtype=torch.float64)
    beta = torch.tensor([2.0, -2.0, 0.0, 0.0], dtype=torch.float64).reshape(1, 2, 2, 1).expand(1, 2, 2, 2)
    beta = beta.clone()
    beta[:, :, 1, :] = 0.0  # second row at the centre
    out = lenssim.ray_trace(source, beta, 3.0)
    assert torch.all(out[0, 0, 0] == 0) and torch.all(out[0, 0, 1] == 1)


def test_no_lens_is_identity_on_the_same_grid():
    g = torch.Generator().manual_seed(1)
    source = torch.rand(2, 1, 32, 32, generator=g, dtype=torch.float64)
    kappa = torch.zeros(2, 1, 32, 32, dtype=torch.float64)
    image = lenssim.lens_image(source, kappa, image_fov=2.0, source_fov=2.0)
    assert torch.allclose(image, source, atol=1e-12)


def _sis_kappa(n, fov, theta_e):
    one = torch.ones(1, dtype=torch.float64)
    p = lenssim.SIEParameters(theta_e * one, one, 0 * one, 0 * one, 0 * one)
    return lenssim.sie_convergence(p, n=n, fov=fov)


def test_surface_brightness_is_conserved():
    # A source of uniform brightness c: every ray that lands well inside it must see exactly
    # c, whatever the magnification; rays landing well outside see 0. Only the flux grows.
    n, fov = 128, 7.69
    kappa = _sis_kappa(n, fov, 1.2)
    ns, fov_s = 64, 3.0
    xs, ys = lenssim.pixel_grid(ns, fov_s, dtype=torch.float64)
    c = 0.8
    disk = (xs**2 + ys**2 < 0.5**2).double() * c
    image = lenssim.lens_image(disk[None, None], kappa, image_fov=fov, source_fov=fov_s)[0, 0]
    beta = lenssim.lens_equation(kappa[:, 0], fov)[0]
    rb = beta.norm(dim=0)
    margin = 2 * fov_s / ns
    assert torch.allclose(image[rb < 0.5 - margin], torch.tensor(c, dtype=torch.float64), atol=1e-12)
    assert torch.all(image[rb > 0.5 + margin] == 0)
    h, hs = fov / n, fov_s / ns
    flux_ratio = image.sum() * h * h / (disk.sum() * hs * hs)
    assert flux_ratio > 3  # a source inside the caustic of an SIS is strongly magnified


def test_lensed_image_of_an_sis_matches_analytic_ray_tracing():
    # Lens a smooth Gaussian source with the pixelated SIS and compare with the source
    # evaluated at beta = theta - theta_E theta / |theta| (analytic). The error budget is the
    # deflection error of the truncated pixel map (< 1 % of theta_E away from the cusp and the
    # edge) times the source gradient, plus bilinear interpolation error.
    n, fov, te = 128, 7.69, 1.2
    kappa = _sis_kappa(n, fov, te)
    ns, fov_s = 128, 3.0
    xs, ys = lenssim.pixel_grid(ns, fov_s, dtype=torch.float64)
    sx, sy, w = 0.1, 0.05, 0.25
    src = lambda x, y: torch.exp(-((x - sx) ** 2 + (y - sy) ** 2) / (2 * w**2))  # noqa: E731
    image = lenssim.lens_image(src(xs, ys)[None, None], kappa, image_fov=fov, source_fov=fov_s)[0, 0]
    x, y = lenssim.pixel_grid(n, fov, dtype=torch.float64)
    r = torch.sqrt(x**2 + y**2)
    expected = src(x - te * x / r, y - te * y / r)
    region = (r > 0.6) & (r < 2.5)
    err = (image - expected)[region].abs().max()
    assert err < 0.03, err
    assert expected[region].max() > 0.9  # the ring is in the region


def test_lens_image_batch_equals_loop_and_broadcasts_source():
    g = torch.Generator().manual_seed(2)
    p = lenssim.sample_sie_parameters(3, generator=g, dtype=torch.float64)
    kappa = lenssim.sie_convergence(p, n=32, fov=4.0)
    source = torch.rand(3, 1, 24, 24, generator=g, dtype=torch.float64)
    psf = lenssim.gaussian_psf(torch.tensor([0.1, 0.2, 0.3], dtype=torch.float64), 4.0 / 32, 5)
    batched = lenssim.lens_image(source, kappa, image_fov=4.0, source_fov=2.0, psf=psf)
    for b in range(3):
        single = lenssim.lens_image(
            source[b : b + 1], kappa[b : b + 1], image_fov=4.0, source_fov=2.0, psf=psf[b : b + 1]
        )
        assert torch.allclose(batched[b : b + 1], single, atol=1e-13)
    shared = lenssim.lens_image(source[:1], kappa, image_fov=4.0, source_fov=2.0)
    assert shared.shape == (3, 1, 32, 32)
    assert torch.allclose(shared[2], lenssim.lens_image(source[:1], kappa[2:], image_fov=4.0, source_fov=2.0)[0])


def test_gradcheck_through_the_whole_forward_model():
    g = torch.Generator().manual_seed(3)
    kappa = (0.3 + torch.rand(2, 1, 10, 10, generator=g, dtype=torch.float64)).requires_grad_(True)
    source = torch.rand(2, 1, 9, 9, generator=g, dtype=torch.float64).requires_grad_(True)
    psf = lenssim.gaussian_psf(torch.tensor([0.4, 0.6], dtype=torch.float64), 0.3, 5)
    sep = lenssim.SeparablePSF.gaussian(torch.tensor([0.4, 0.6], dtype=torch.float64), 0.3, 5)
    for p in (None, psf, sep):
        assert torch.autograd.gradcheck(
            lambda s, k, p=p: lenssim.lens_image(s, k, image_fov=3.0, source_fov=2.5, psf=p), (source, kappa)
        )


@pytest.mark.parametrize(
    "source, kappa, match",
    [
        (torch.zeros(2, 1, 8, 8), torch.zeros(2, 1, 8, 9), "kappa"),
        (torch.zeros(2, 8, 8), torch.zeros(2, 1, 8, 8), "source"),
        (torch.zeros(3, 1, 8, 8), torch.zeros(2, 1, 8, 8), "batch"),
        (torch.zeros(2, 2, 8, 8), torch.zeros(2, 1, 8, 8), "source"),
    ],
)
def test_lens_image_bad_input(source, kappa, match):
    with pytest.raises(ValueError, match=match):
        lenssim.lens_image(source, kappa)


def test_magnification_of_a_small_source_far_from_the_caustic():
    # For an SIS, a point source at beta > theta_E has one image with magnification
    # |1 + theta_E / beta| ... and one with |theta_E/beta - 1|; total (flux) magnification is
    # 2 theta_E / beta for beta < theta_E. Check it with a compact source at beta = 0.5 theta_E.
    n, fov, te = 128, 7.69, 1.0
    kappa = _sis_kappa(n, fov, te)
    ns, fov_s = 128, 3.0
    xs, ys = lenssim.pixel_grid(ns, fov_s, dtype=torch.float64)
    w, b0 = 0.05, 0.5
    src = torch.exp(-((xs - b0) ** 2 + ys**2) / (2 * w**2))
    image = lenssim.lens_image(src[None, None], kappa, image_fov=fov, source_fov=fov_s)[0, 0]
    mu = image.sum() * (fov / n) ** 2 / (src.sum() * (fov_s / ns) ** 2)
    assert mu.item() == pytest.approx(2 * te / b0, rel=0.03)
    assert math.isfinite(mu.item()) and np.isfinite(image.numpy()).all()
