import math

import numpy as np
import pytest
import torch
from conftest import direct_deflection

import lenssim


def test_matches_direct_summation_float64(rng):
    kappa = rng.uniform(0, 2, size=(3, 32, 32))
    fov = 2.5
    ours = lenssim.deflection_angles(torch.from_numpy(kappa), fov).numpy()
    ref = direct_deflection(kappa, fov)
    assert ours.shape == (3, 2, 32, 32)
    assert np.abs(ours - ref).max() / np.abs(ref).max() < 1e-6


def test_matches_direct_summation_at_full_size(rng):
    # 128^2 with the default field: compare a random subset of pixels with the direct sum.
    n, fov = 128, 7.69
    kappa = rng.lognormal(size=(n, n)) * 0.2
    ours = lenssim.deflection_angles(torch.from_numpy(kappa), fov).numpy()
    h = fov / n
    c = -fov / 2 + h * (np.arange(n) + 0.5)
    X, Y = np.meshgrid(c, c)
    rows, cols = rng.integers(0, n, 300), rng.integers(0, n, 300)
    dx = X[rows, cols][:, None] - X.ravel()[None, :]
    dy = Y[rows, cols][:, None] - Y.ravel()[None, :]
    r2 = dx**2 + dy**2
    r2[r2 == 0] = np.inf
    ax = (kappa.ravel() * dx / r2).sum(1) * h * h / np.pi
    ay = (kappa.ravel() * dy / r2).sum(1) * h * h / np.pi
    ref = np.stack([ax, ay])
    got = ours[:, rows, cols]
    assert np.abs(got - ref).max() / np.abs(ref).max() < 1e-6


def test_float32_close_to_float64(rng):
    kappa = rng.uniform(0, 1, size=(2, 64, 64))
    a64 = lenssim.deflection_angles(torch.from_numpy(kappa), 4.0)
    a32 = lenssim.deflection_angles(torch.from_numpy(kappa).float(), 4.0)
    assert a32.dtype == torch.float32
    assert (a32.double() - a64).abs().max() / a64.abs().max() < 1e-5


def test_point_mass_exact_and_not_shifted():
    # One pixel holding mass m (in arcsec^2 of kappa): every other pixel centre is deflected
    # by exactly m / (pi |d|) towards it, with d measured between pixel centres. A kernel with
    # a half-pixel offset (caustics 1.7.1) fails this by percents.
    n, fov = 64, 3.2
    h = fov / n
    i0, j0 = 20, 41
    m = 0.7
    kappa = torch.zeros(n, n, dtype=torch.float64)
    kappa[i0, j0] = m / (h * h)
    alpha = lenssim.deflection_angles(kappa, fov)
    rows, cols = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
    dx = (cols - j0).double() * h
    dy = (rows - i0).double() * h
    r2 = dx**2 + dy**2
    r2[i0, j0] = math.inf
    expected = torch.stack([m * dx / (math.pi * r2), m * dy / (math.pi * r2)])
    assert torch.allclose(alpha, expected, rtol=1e-9, atol=1e-12)
    assert alpha[:, i0, j0].abs().max() < 1e-12
    # antisymmetric about the pixel, along both axes
    for d in range(1, 15):
        assert alpha[0, i0, j0 + d] == pytest.approx(-alpha[0, i0, j0 - d].item(), rel=1e-9)
        assert alpha[1, i0 + d, j0] == pytest.approx(-alpha[1, i0 - d, j0].item(), rel=1e-9)
        assert alpha[0, i0, j0 + d] == pytest.approx(m / (math.pi * d * h), rel=1e-9)


def test_compact_gaussian_mass_inside_the_field():
    # A circular Gaussian of total mass M deflects by M / (pi r) (1 - exp(-r^2 / 2 s^2)).
    # Outside a few widths the pixel sum is as exact as the Gaussian's sampling.
    n, fov = 128, 7.69
    x, y = lenssim.pixel_grid(n, fov, dtype=torch.float64)
    x0, y0, s, mass = 0.37, -0.21, 0.15, 1.3
    r2 = (x - x0) ** 2 + (y - y0) ** 2
    kappa = mass / (2 * math.pi * s**2) * torch.exp(-r2 / (2 * s**2))
    alpha = lenssim.deflection_angles(kappa, fov)
    r = r2.sqrt()
    mag = mass / (math.pi * r) * (1 - torch.exp(-r2 / (2 * s**2)))
    expected = torch.stack([mag * (x - x0) / r, mag * (y - y0) / r])
    rel = (alpha - expected).norm(dim=0) / expected.norm(dim=0)
    assert rel[r > 4 * s].max() < 2e-4
    assert rel[r > 6 * s].max() < 1e-8


def _elliptical_radius(x, y, p):
    c, s = torch.cos(p.phi)[:, None, None], torch.sin(p.phi)[:, None, None]
    dx, dy = x - p.x0[:, None, None], y - p.y0[:, None, None]
    xr, yr = c * dx + s * dy, -s * dx + c * dy
    q = p.q[:, None, None]
    return torch.sqrt(q * xr**2 + yr**2 / q), torch.sqrt(dx**2 + dy**2)


def test_sie_map_against_analytic_deflection():
    """FFT deflection of pixelated SIE maps against Keeton's analytic SIE deflection.

    A map of finite size lacks the mass outside it, and for an isothermal profile that mass is
    large. We truncate the map on an iso-density ellipse instead of the square edge: such a
    shell is a homoeoid, which exerts no deflection inside it (Newton's theorem holds for
    homoeoids in 2-D too), so inside the ellipse the truncated map must reproduce the infinite
    SIE. What remains is (i) the staircase of the truncation, felt near it, and (ii) treating
    each pixel's mass as if at its centre, felt within a few pixels of the cusp. Away from both
    (r > 0.5", inside 80 % of the ellipse) the measured error is < 0.5 %; we allow 1 %. A
    wrong prefactor, axis or orientation is off by tens of percent.
    """
    n, fov = 128, 7.69
    p = lenssim.sample_sie_parameters(24, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    kappa = lenssim.sie_convergence(p, n=n, fov=fov)[:, 0]
    x, y = lenssim.pixel_grid(n, fov, dtype=torch.float64)
    m, r = _elliptical_radius(x, y, p)
    m_max = 3.4 * torch.sqrt(p.q)[:, None, None]  # major semi-axis 3.4" fits in the field
    alpha = lenssim.deflection_angles(torch.where(m < m_max, kappa, 0.0), fov)
    expected = lenssim.sie_deflection(x, y, p)
    rel = (alpha - expected).norm(dim=1) / expected.norm(dim=1)
    region = (r > 0.5) & (m < 0.8 * m_max)
    assert rel[region].max() < 0.01
    assert rel[region].mean() < 0.002


def test_sie_pixel_average_matches_formula_away_from_cusp():
    # Independent check of the convergence formula itself (the pixel average is built from
    # the analytic deflection): away from the cusp the mean over a pixel equals the value at
    # its centre to second order in the pixel size.
    p = lenssim.sample_sie_parameters(8, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    avg = lenssim.sie_convergence(p)[:, 0]
    centre = lenssim.sie_convergence(p, sampling="center")[:, 0]
    x, y = lenssim.pixel_grid(128, 7.69, dtype=torch.float64)
    _, r = _elliptical_radius(x, y, p)
    far = r > 1.0
    assert ((avg - centre) / centre)[far].abs().max() < 2e-3


def test_sie_pixel_average_holds_the_cusp_mass():
    # The mass in the 8 x 8 pixels around the cusp against a brute-force midpoint integral of
    # the formula on 100 x 100 sub-pixels per pixel. Sampling at pixel centres misses it.
    one = torch.ones(1, dtype=torch.float64)
    p = lenssim.SIEParameters(theta_e=1.2 * one, q=0.6 * one, phi=0.3 * one, x0=0.013 * one, y0=-0.021 * one)
    n, fov = 128, 7.69
    h = fov / n
    box = slice(n // 2 - 4, n // 2 + 4)
    avg = lenssim.sie_convergence(p, n=n, fov=fov)[0, 0, box, box].sum() * h * h
    centre = lenssim.sie_convergence(p, n=n, fov=fov, sampling="center")[0, 0, box, box].sum() * h * h
    sub = 800
    t = -4 * h + (torch.arange(sub, dtype=torch.float64) + 0.5) * (8 * h / sub)
    yy, xx = torch.meshgrid(t, t, indexing="ij")
    c, s = math.cos(0.3), math.sin(0.3)
    dx, dy = xx - 0.013, yy + 0.021
    xr, yr = c * dx + s * dy, -s * dx + c * dy
    k = 1.2 / (2 * torch.sqrt(0.6 * (xr**2 + 1e-6) + yr**2 / 0.6))
    brute = k.sum() * (8 * h / sub) ** 2
    assert avg.item() == pytest.approx(brute.item(), rel=2e-3)
    assert abs(centre.item() - brute.item()) / brute.item() > 5 * abs(avg.item() - brute.item()) / brute.item()


def test_sie_round_limit_is_sis():
    one = torch.ones(1, dtype=torch.float64)
    p = lenssim.SIEParameters(theta_e=1.3 * one, q=one, phi=0.4 * one, x0=0 * one, y0=0 * one)
    x, y = lenssim.pixel_grid(16, 4.0, dtype=torch.float64)
    a = lenssim.sie_deflection(x, y, p, core=0.0)
    r = torch.sqrt(x**2 + y**2)
    assert torch.allclose(a[0, 0], 1.3 * x / r) and torch.allclose(a[0, 1], 1.3 * y / r)


def test_batch_equals_loop(rng):
    kappa = torch.from_numpy(rng.uniform(0, 1, size=(4, 1, 32, 32)))
    batched = lenssim.deflection_angles(kappa, 3.0)
    for b in range(4):
        single = lenssim.deflection_angles(kappa[b], 3.0)
        assert torch.equal(batched[b], single) or torch.allclose(batched[b], single, rtol=0, atol=1e-14)


def test_gradcheck_float64():
    kappa = torch.rand(2, 8, 8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda k: lenssim.deflection_angles(k, 1.7), (kappa,))
    assert torch.autograd.gradgradcheck(lambda k: lenssim.deflection_angles(k, 1.7), (kappa,))


def test_device(device):
    kappa = torch.rand(2, 16, 16, device=device)
    assert lenssim.deflection_angles(kappa, 2.0).device.type == device.type


@pytest.mark.parametrize(
    "kappa, fov, match",
    [
        (torch.zeros(3, 4), 1.0, "two equal axes"),
        (torch.zeros(4, 4, dtype=torch.int64), 1.0, "floating-point"),
        (torch.zeros(4, 4), -1.0, "fov"),
        (torch.zeros(4, 4), float("nan"), "fov"),
        (torch.zeros(4, 4, dtype=torch.float16), 1.0, "float32 or float64"),
    ],
)
def test_bad_input(kappa, fov, match):
    with pytest.raises(ValueError, match=match):
        lenssim.deflection_angles(kappa, fov)


def test_adjoint_is_the_transpose_of_the_direct_sum(rng):
    # The transpose written out: dL/dkappa_j = sum_i g_i . alpha-kernel(theta_i - theta_j), from the
    # explicit float64 summation (direct_deflection applied to unit maps gives its columns).
    n, fov = 12, 2.3
    g = rng.normal(size=(3, 2, n, n))
    columns = direct_deflection(np.eye(n * n).reshape(n * n, n, n), fov)  # (n*n, 2, n, n): K e_j
    ref = np.einsum("jcyx,bcyx->bj", columns, g).reshape(3, n, n)
    ours = lenssim.deflection_adjoint(torch.from_numpy(g), fov).numpy()
    assert ours.shape == (3, n, n)
    assert np.abs(ours - ref).max() / np.abs(ref).max() < 1e-10


def test_adjoint_takes_any_layout_and_float32(rng):
    # the likelihood hands it a permuted view of grid_sample's (B, N, N, 2) gradient
    grid_layout = torch.from_numpy(rng.normal(size=(2, 32, 32, 2)))
    view = grid_layout.permute(0, 3, 1, 2)
    a = lenssim.deflection_adjoint(view, 3.0)
    assert torch.allclose(a, lenssim.deflection_adjoint(view.contiguous(), 3.0), rtol=0, atol=1e-12)
    a32 = lenssim.deflection_adjoint(view.float(), 3.0)
    assert a32.dtype == torch.float32 and (a32.double() - a).abs().max() / a.abs().max() < 1e-5


@pytest.mark.parametrize(
    "grad, fov, match",
    [
        (torch.zeros(3, 4, 4), 1.0, r"\(\.\.\., 2, N, N\)"),
        (torch.zeros(4, 4), 1.0, "two equal axes"),
        (torch.zeros(2, 4, 4, dtype=torch.float16), 1.0, "float32 or float64"),
        (torch.zeros(2, 4, 4), 0.0, "fov"),
    ],
)
def test_adjoint_bad_input(grad, fov, match):
    with pytest.raises(ValueError, match=match):
        lenssim.deflection_adjoint(grad, fov)
