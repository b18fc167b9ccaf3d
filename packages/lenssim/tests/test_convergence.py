import math

import numpy as np
import pytest
import torch
from scipy import integrate

import lenssim
from lenssim.data.convergence import center_crop
from lenssim.data.simulate import split_labels
from lenssim.data.tng import Particles


def _distance_kpc(z1, z2, h=0.68, om=0.30966):
    # flat LambdaCDM angular-diameter distance by direct integration (matter + Lambda only;
    # astropy's Planck18 adds radiation and neutrinos, a 0.1 % effect at these redshifts)
    c_kms = 299792.458
    dc = integrate.quad(lambda z: 1 / math.sqrt(om * (1 + z) ** 3 + 1 - om), z1, z2)[0] * c_kms / (100 * h)
    return dc / (1 + z2) * 1e3


def test_critical_density_against_an_independent_computation():
    d_l, d_s, d_ls = _distance_kpc(0, 0.5), _distance_kpc(0, 1.5), _distance_kpc(0.5, 1.5)
    # c^2 / (4 pi G) in Msun / kpc from CODATA G, c and the IAU solar mass and parsec
    g_si, c_si, msun, kpc = 6.67430e-11, 299792458.0, 1.98841e30, 3.0856775814913673e19
    c2_over_4pig = c_si**2 / (4 * math.pi * g_si) / msun * kpc
    expected = c2_over_4pig * d_s / (d_l * d_ls)
    got = lenssim.critical_surface_density(0.5, 1.5, 0.68)
    assert got == pytest.approx(expected, rel=3e-3)
    assert got == pytest.approx(2.28e9, rel=0.01)  # SPEC 2.1
    assert lenssim.angular_diameter_distance_kpc(0.5) == pytest.approx(_distance_kpc(0, 0.5), rel=3e-3)


def test_render_grid_follows_the_angular_field():
    cfg = lenssim.KappaMapConfig()
    kpc_per_arcsec = lenssim.angular_diameter_distance_kpc(0.5) * math.pi / 648000
    assert cfg.render_fov() == pytest.approx(188 * 7.69 / 128 * kpc_per_arcsec)
    assert 69 < cfg.render_fov() < 73  # ~71 kpc (SPEC 2.1), not the paper's 154
    assert lenssim.KappaMapConfig(render_fov_kpc=155.0).render_fov() == 155.0
    with pytest.raises(ValueError, match="even"):
        lenssim.KappaMapConfig(render_pixels=187)


def _sis_map(theta_e, n=128, fov=7.69):
    one = torch.ones(1, dtype=torch.float64)
    p = lenssim.SIEParameters(theta_e * one, one, 0 * one, 0 * one, 0 * one)
    return lenssim.sie_convergence(p, n=n, fov=fov)[0, 0].numpy()


def test_einstein_radius_of_an_sis_is_the_papers_estimator():
    # eq. 13 with M = mass in pixels with kappa > 1: for an SIS (kappa = theta_E / 2r) those
    # pixels are r < theta_E / 2 and hold pi theta_E^2 / 2, so the estimator gives theta_E / sqrt 2.
    for te in (0.8, 1.5, 2.2):
        assert lenssim.einstein_radius(_sis_map(te), 7.69 / 128) == pytest.approx(te / math.sqrt(2), rel=0.02)
    assert lenssim.einstein_radius(np.full((4, 4), 0.5), 0.1) == 0.0


def test_augmentation_reaches_uniform_einstein_radii(rng):
    rendered = np.pad(_sis_map(1.0, n=128), 30, mode="edge")  # a 188 render
    out = [lenssim.augment_kappa(rendered, rng) for _ in range(200)]
    te = np.array([info["theta_e"] for _, info in out])
    assert all(k.shape == (128, 128) for k, _ in out)
    assert te.min() >= 0.49 and te.max() <= 2.55
    # uniform on [0.5, 2.5]: quartiles near 1.0, 1.5, 2.0
    assert np.percentile(te, [25, 50, 75]) == pytest.approx([1.0, 1.5, 2.0], abs=0.2)
    shifts = np.array([info["shift"] for _, info in out])
    assert np.abs(shifts).max() <= int(0.3 / (7.69 / 128))
    assert {info["rotation"] for _, info in out} == {0, 1, 2, 3}
    again = lenssim.augment_kappa(rendered, np.random.default_rng(5))
    assert np.array_equal(again[0], lenssim.augment_kappa(rendered, np.random.default_rng(5))[0])


def _clump(rng, n, centre, scale, mass):
    return Particles(
        positions=rng.normal(size=(n, 3)) * scale + np.asarray(centre),
        masses=np.full(n, mass / n),
        types=np.ones(n, dtype=np.int8),
    )


def test_kappa_maps_hold_the_projected_mass_and_orientation(rng):
    cfg = lenssim.KappaMapConfig()
    main = _clump(rng, 6000, (0, 0, 0), 2.0, 3e11)
    side = _clump(rng, 2000, (12.0, 0, -20.0), 1.0, 5e10)  # offset along +x (and along z)
    parts = Particles(
        np.concatenate([main.positions, side.positions]),
        np.concatenate([main.masses, side.masses]),
        np.concatenate([main.types, side.types]),
    )
    maps = lenssim.kappa_maps(parts, cfg, projections=("xy", "yz"))
    fov = cfg.render_fov()
    mass = maps.sum(axis=(1, 2)) * (fov / cfg.render_pixels) ** 2 * lenssim.critical_surface_density()
    assert mass[0] == pytest.approx(3.5e11, rel=1e-3)
    assert mass[1] == pytest.approx(3.5e11, rel=1e-3)
    # xy: the side clump is 12 kpc to the right (columns), on the centre row
    row = maps[0][cfg.render_pixels // 2]
    side_col = cfg.render_pixels // 2 + round(12.0 / (fov / cfg.render_pixels))
    assert row[side_col - 2 : side_col + 3].max() > 10 * row[cfg.render_pixels // 2 - 30]
    # yz: the main clump is centred by the histogram peak
    i, j = np.unravel_index(maps[1].argmax(), maps[1].shape)
    assert abs(i - cfg.render_pixels / 2) < 3 and abs(j - cfg.render_pixels / 2) < 3
    assert center_crop(maps, 128).shape == (2, 128, 128)


def test_split_labels_hold_out_the_stated_fraction_of_halos():
    labels = split_labels(50, 0.1, seed=3)
    assert labels.sum() == 5 and set(labels.tolist()) == {0, 1}
    assert np.array_equal(labels, split_labels(50, 0.1, seed=3))
    assert not np.array_equal(labels, split_labels(50, 0.1, seed=4))
    with pytest.raises(ValueError):
        split_labels(2, 1.0, seed=0)


def test_particles_beyond_the_field_whose_kernels_reach_it_count(rng):
    cfg = lenssim.KappaMapConfig()
    half = cfg.render_fov() / 2
    core = _clump(rng, 3000, (0, 0, 0), 1.0, 1e11)
    outside = Particles(np.array([[half * 1.05 + 3.0, 0.0, 0.0]]), np.array([1e10]), np.array([1], dtype=np.int8))
    parts = Particles(
        np.concatenate([core.positions, outside.positions]),
        np.concatenate([core.masses, outside.masses]),
        np.concatenate([core.types, outside.types]),
    )
    widths = np.concatenate([np.full(3000, 0.5), [4.0]])
    maps = lenssim.kappa_maps(parts, cfg, projections=("xy",), smoothing=widths)
    edge = maps[0][:, -3:].sum() * (cfg.render_fov() / cfg.render_pixels) ** 2 * lenssim.critical_surface_density()
    assert edge > 1e8  # a good part of the outside particle's 1e10 Msun lands on the right edge
