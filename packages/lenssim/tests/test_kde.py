import math

import numpy as np
import pytest

from lenssim import smoothing_lengths, surface_density, surface_density_brute_force
from lenssim.data.kde import truncation_radius


def _halo(rng, n):
    r = rng.pareto(1.5, n) * 2 + 0.1
    d = rng.normal(size=(n, 3))
    return d / np.linalg.norm(d, axis=1, keepdims=True) * r[:, None]


def test_truncation_radius_holds_all_but_the_stated_mass():
    t = truncation_radius(1e-4)
    assert 1 - math.erf(t / math.sqrt(2)) ** 2 == pytest.approx(1e-4, rel=1e-6)
    assert 4.0 < t < 4.1


def test_single_kernel_matches_eq11_at_pixel_centres():
    n, fov = 64, 16.0
    x0, y0, width, m = 0.37, -1.21, 0.9, 5.0
    got = surface_density(np.array([[x0, y0]]), np.array([m]), np.array([width]), n=n, fov=fov, normalize=False)
    c = -fov / 2 + fov / n * (np.arange(n) + 0.5)
    X, Y = np.meshgrid(c, c)
    ref = m / (2 * np.pi * width**2) * np.exp(-((X - x0) ** 2 + (Y - y0) ** 2) / (2 * width**2))
    window = (np.abs(X - x0) <= truncation_radius(1e-4) * width) & (np.abs(Y - y0) <= truncation_radius(1e-4) * width)
    assert np.allclose(got[window], ref[window], rtol=1e-12)
    assert np.all(got[~window] == 0)
    assert got[:, :].sum() > 0 and np.unravel_index(got.argmax(), got.shape)[1] > n // 2  # +x is along columns


def test_agrees_with_brute_force_on_a_halo(rng):
    pos = _halo(rng, 3000)
    m = rng.uniform(0.5, 2.0, 3000)
    sl = smoothing_lengths(pos, k=32)
    fast = surface_density(pos[:, :2], m, sl, n=96, fov=40.0, normalize=False)
    slow = surface_density_brute_force(pos[:, :2], m, sl, n=96, fov=40.0)
    assert np.abs(fast - slow).max() / slow.max() < 1e-3


def test_normalised_kernels_conserve_mass_exactly(rng):
    n, fov = 80, 20.0
    pos = rng.uniform(-6, 6, size=(500, 2))
    m = rng.uniform(1, 3, 500)
    sl = rng.uniform(0.01, 1.0, 500)  # from far below a pixel (0.25) to several pixels
    sigma = surface_density(pos, m, sl, n=n, fov=fov)
    assert sigma.sum() * (fov / n) ** 2 == pytest.approx(m.sum(), rel=1e-12)
    # formula mode loses or inflates the under-sampled kernels
    raw = surface_density(pos, m, sl, n=n, fov=fov, normalize=False)
    assert abs(raw.sum() * (fov / n) ** 2 / m.sum() - 1) > 1e-3


def test_particles_outside_the_field_contribute_their_inside_part():
    n, fov = 50, 10.0
    # a wide kernel centred just outside the right edge: about half of it lands inside
    sigma = surface_density(np.array([[5.0, 0.0]]), np.array([1.0]), np.array([1.0]), n=n, fov=fov)
    assert sigma.sum() * (fov / n) ** 2 == pytest.approx(0.5, abs=0.02)
    far = surface_density(np.array([[50.0, 0.0]]), np.array([1.0]), np.array([1.0]), n=n, fov=fov)
    assert far.sum() == 0


def test_independent_of_thread_count(rng):
    import numba

    pos = _halo(rng, 4000)[:, :2]
    m = np.ones(4000)
    sl = rng.uniform(0.05, 2, 4000)
    a = surface_density(pos, m, sl, n=64, fov=30.0)
    old = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        b = surface_density(pos, m, sl, n=64, fov=30.0)
    finally:
        numba.set_num_threads(old)
    assert np.array_equal(a, b)


def test_smoothing_lengths_on_a_cubic_lattice():
    # shells of the simple cubic lattice: 6 at a, 12 at a sqrt2, 8 at a sqrt3, 6 at 2a, 24 at a sqrt5,
    # 24 at a sqrt6: the 64th neighbour of an interior point is at sqrt(6) a.
    a = 0.5
    g = np.arange(11) * a
    pts = np.stack(np.meshgrid(g, g, g, indexing="ij"), -1).reshape(-1, 3)
    sl = smoothing_lengths(pts, k=64, factor=1.0)
    interior = np.all((pts >= 3 * a) & (pts <= 7 * a), axis=1)
    assert np.allclose(sl[interior], math.sqrt(6) * a)
    paper = smoothing_lengths(pts)
    assert np.allclose(paper[interior], math.sqrt(103 / 1024) * math.sqrt(6) * a)


def test_smoothing_lengths_against_every_pairwise_distance(rng, monkeypatch):
    # a clumped halo with repeated particles: the k-th neighbour counts the other copies of a
    # particle (distance 0) but never the particle itself
    pos = _halo(rng, 1500)
    pos = np.concatenate([pos, pos[:200], pos[:40]])
    d = np.sqrt(((pos[:, None, :] - pos[None, :, :]) ** 2).sum(-1))
    d_sorted = np.sort(d, axis=1)  # column 0: the particle itself
    for k in (1, 2, 32, 64):
        got = smoothing_lengths(pos, k=k, factor=1.0)
        np.testing.assert_allclose(got, d_sorted[:, k], rtol=1e-12, atol=0)
    assert np.all(smoothing_lengths(pos, k=1, factor=1.0)[:40] == 0)  # three copies of each
    assert np.array_equal(smoothing_lengths(pos, k=8, factor=0.5), 0.5 * smoothing_lengths(pos, k=8, factor=1.0))
    many = smoothing_lengths(pos)
    monkeypatch.setattr("lenscore.cpu.usable_cores", lambda: 1)  # the query's threads change nothing
    assert np.array_equal(smoothing_lengths(pos), many)


@pytest.mark.parametrize(
    "pos, m, sl, match",
    [
        (np.zeros((3, 3)), np.ones(3), np.ones(3), r"\(P, 2\)"),
        (np.zeros((3, 2)), np.ones(2), np.ones(3), "shape"),
        (np.zeros((3, 2)), -np.ones(3), np.ones(3), "non-negative"),
        (np.zeros((3, 2)), np.ones(3), np.zeros(3), "positive"),
        (np.full((3, 2), np.nan), np.ones(3), np.ones(3), "NaN"),
    ],
)
def test_bad_particles_are_refused(pos, m, sl, match):
    with pytest.raises(ValueError, match=match):
        surface_density(pos, m, sl, n=8, fov=1.0)


def test_a_grid_size_field_of_view_or_neighbour_count_that_is_not_positive_is_refused():
    pos, ones = np.zeros((100, 2)), np.ones(100)
    for n in (0, 8.0, True):  # Python counts True as 1: not a one-pixel map
        with pytest.raises(ValueError, match="n must be a positive integer"):
            surface_density(pos, ones, ones, n=n, fov=1.0)
    for fov in (0.0, float("nan"), True, "1.0"):
        with pytest.raises(ValueError, match="fov must be a positive"):
            surface_density(pos, ones, ones, n=8, fov=fov)
    for k in (0, 2.0, True):
        with pytest.raises(ValueError, match="k must be a positive integer"):
            smoothing_lengths(np.random.default_rng(0).normal(size=(100, 3)), k=k)


def test_smoothing_lengths_errors():
    with pytest.raises(ValueError, match="more than k"):
        smoothing_lengths(np.zeros((10, 3)), k=64)
    with pytest.raises(ValueError, match=r"\(P, 3\)"):
        smoothing_lengths(np.zeros((100, 2)))
