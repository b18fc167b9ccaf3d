"""Convergence maps from particles, Einstein radii and augmentation (paper section 3.2, SPEC 2.1).

The physical grid follows from the angular one: the 128-pixel crop spans ``image_fov`` arcsec
(7.69") at the lens redshift, i.e. ~48 kpc at z_l = 0.5, and the 188-pixel render ~71 kpc. The
paper's 105 kpc/h render size has a unit slip (SPEC 2.1); ``render_fov_kpc`` reproduces it when
set (e.g. ``105 / 0.6774`` kpc for a z = 0 snapshot), and the crop is then still labelled as
``image_fov``.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

from lenssim.data.kde import smoothing_lengths, surface_density, truncation_radius
from lenssim.data.tng import Particles
from lenssim.geometry import IMAGE_FOV, Z_LENS, Z_SOURCE

__all__ = [
    "KappaMapConfig",
    "angular_diameter_distance_kpc",
    "augment_kappa",
    "center_crop",
    "critical_surface_density",
    "einstein_radius",
    "kappa_maps",
]

PROJECTIONS = {"xy": (0, 1), "xz": (0, 2), "yz": (1, 2)}


@dataclass(frozen=True)
class KappaMapConfig:
    """How particles become convergence maps (defaults: the paper's, SPEC 2.1)."""

    pixels: int = 128
    """Pixels across the final maps (Table 1: 128)."""
    render_pixels: int = 188
    """Pixels across the rendered grid before the random crop (SPEC 2.1: 188 for 128)."""
    image_fov: float = IMAGE_FOV
    """Width of the final maps, arcsec (Table 1: 7.69)."""
    z_lens: float = Z_LENS
    """Lens redshift: the angular scale and Sigma_crit (Table 1: 0.5)."""
    z_source: float = Z_SOURCE
    """Source redshift: Sigma_crit (Table 1: 1.5)."""
    hubble: float = 0.68
    """Dimensionless Hubble constant h (flat LCDM, Omega_m 0.31, as TNG)."""
    n_neighbours: int = 64
    """The neighbour (in 3-D) whose distance sets each particle's smoothing length (SPEC 2.1: 64)."""
    smoothing_factor: float = math.sqrt(103 / 1024)
    """Factor on that distance: the Gaussian width in units of the neighbour distance (SPEC 2.1)."""
    truncation: float = 1e-4
    """Share of each particle's Gaussian left outside its square kernel window (dimensionless)."""
    margin: float = 0.05
    """Extra width of the render square from which particles contribute, in units of its half-side."""
    centre: Literal["peak", "com"] = "peak"
    """How each projection is centred: the densest region ("peak") or the centre of mass ("com")."""
    render_fov_kpc: float | None = None
    """Physical side of the rendered grid, kpc (None: the angle at z_lens; the paper's 105 / h
    reproduces its unit slip, SPEC 2.1)."""

    def __post_init__(self) -> None:
        if self.render_pixels < self.pixels:
            raise ValueError(f"render_pixels ({self.render_pixels}) must be at least pixels ({self.pixels})")
        if (self.render_pixels - self.pixels) % 2:
            raise ValueError("render_pixels - pixels must be even so that the crop is centred")
        if not (0 < self.z_lens < self.z_source):
            raise ValueError(f"need 0 < z_lens < z_source, got {self.z_lens}, {self.z_source}")
        if self.centre not in ("peak", "com"):
            raise ValueError(f"centre must be 'peak' or 'com', got {self.centre!r}")

    @classmethod
    def at_resolution(cls, pixels: int, **overrides) -> KappaMapConfig:
        """The paper's maps on ``pixels`` pixels across the same field of view: the render grid
        keeps the paper's 188/128 margin, rounded so that the crop stays centred."""
        render = round(188 * pixels / 128)
        return cls(pixels=pixels, render_pixels=render + (render - pixels) % 2, **overrides)

    @property
    def pixel_scale(self) -> float:
        """Arcsec per pixel."""
        return self.image_fov / self.pixels

    def render_fov(self) -> float:
        """Side of the rendered grid, physical kpc."""
        if self.render_fov_kpc is not None:
            return float(self.render_fov_kpc)
        kpc_per_arcsec = angular_diameter_distance_kpc(self.z_lens, self.hubble) * math.pi / (180 * 3600)
        return self.render_pixels * self.pixel_scale * kpc_per_arcsec


@functools.lru_cache(maxsize=64)
def _cosmology(hubble: float):
    from astropy.cosmology import Planck18

    return Planck18.clone(H0=100.0 * hubble, name=f"Planck18 (h={hubble})")


def angular_diameter_distance_kpc(z: float, hubble: float = 0.68) -> float:
    """Angular-diameter distance in kpc, flat LambdaCDM with Planck 2018 parameters and ``hubble``."""
    return float(_cosmology(hubble).angular_diameter_distance(z).to_value("kpc"))


@functools.lru_cache(maxsize=64)
def critical_surface_density(z_lens: float = Z_LENS, z_source: float = Z_SOURCE, hubble: float = 0.68) -> float:
    """Sigma_crit = c^2 D_s / (4 pi G D_l D_ls) in Msun / kpc^2 (astropy constants and units)."""
    import astropy.units as u
    from astropy.constants import G, c

    cosmo = _cosmology(hubble)
    d_l = cosmo.angular_diameter_distance(z_lens)
    d_s = cosmo.angular_diameter_distance(z_source)
    d_ls = cosmo.angular_diameter_distance(z_lens, z_source)
    return float((c**2 * d_s / (4 * math.pi * G * d_l * d_ls)).to_value(u.Msun / u.kpc**2))


def _centre_2d(pos: np.ndarray, m: np.ndarray, method: str, fov: float) -> np.ndarray:
    if method == "com":
        return (pos * m[:, None]).sum(0) / m.sum()
    # the densest region: peak of a coarse mass-weighted histogram over the field, then a
    # shrinking circle (centre of mass within a radius shrunk by 10 % per step down to 2 % of
    # the field), which is robust to the histogram's shot noise
    hist, ex, ey = np.histogram2d(pos[:, 0], pos[:, 1], bins=32, range=[[-fov / 2, fov / 2]] * 2, weights=m)
    i, j = np.unravel_index(np.argmax(hist), hist.shape)
    centre = np.array([(ex[i] + ex[i + 1]) / 2, (ey[j] + ey[j + 1]) / 2])
    radius = fov / 4
    while radius > 0.02 * fov:
        inside = np.sum((pos - centre) ** 2, axis=1) < radius**2
        if m[inside].sum() <= 0 or inside.sum() < 32:
            break
        centre = (pos[inside] * m[inside, None]).sum(0) / m[inside].sum()
        radius *= 0.9
    return centre


def kappa_maps(
    particles: Particles,
    config: KappaMapConfig = KappaMapConfig(),
    *,
    projections: tuple[str, ...] = ("xy", "xz", "yz"),
    smoothing: np.ndarray | None = None,
) -> np.ndarray:
    """Render convergence maps of one halo, one per projection, on the full render grid.

    Smoothing lengths come from the 64th neighbour in 3-D over all the halo's particles. For each
    projection the map is centred (densest region: histogram peak refined by a shrinking circle;
    or the centre of mass), every
    particle inside the render square plus ``margin`` contributes at all depths, and
    kappa = Sigma / Sigma_crit.

    Returns
    -------
    numpy.ndarray
        ``(len(projections), render_pixels, render_pixels)`` float64, ``[row = y, col = x]`` of
        the projection's plane. Crop with :func:`augment_kappa` or ``center_crop``.
    """
    for p in projections:
        if p not in PROJECTIONS:
            raise ValueError(f"projection must be one of {sorted(PROJECTIONS)}, got {p!r}")
    if smoothing is None:
        smoothing = smoothing_lengths(particles.positions, k=config.n_neighbours, factor=config.smoothing_factor)
    fov = config.render_fov()
    sigma_crit = critical_surface_density(config.z_lens, config.z_source, config.hubble)
    maps = []
    for p in projections:
        a, b = PROJECTIONS[p]
        pos = particles.positions[:, [a, b]]
        centre = _centre_2d(pos, particles.masses, config.centre, fov)
        pos = pos - centre
        # every particle whose (truncated) kernel reaches the grid, at any depth: this includes
        # the paper's field + margin cylinder and the wide kernels of particles beyond it
        reach = fov / 2 * (1 + config.margin) + truncation_radius(config.truncation) * smoothing
        sel = (np.abs(pos[:, 0]) < reach) & (np.abs(pos[:, 1]) < reach)
        if not sel.any():
            raise ValueError(f"projection {p}: no particle falls in the {fov:.1f} kpc field")
        sigma = surface_density(
            pos[sel],
            particles.masses[sel],
            smoothing[sel],
            n=config.render_pixels,
            fov=fov,
            truncation=config.truncation,
        )
        maps.append(sigma / sigma_crit)
    return np.stack(maps)


def center_crop(maps: np.ndarray, pixels: int) -> np.ndarray:
    """The central ``pixels x pixels`` of ``(..., M, M)`` maps."""
    m = maps.shape[-1]
    o = (m - pixels) // 2
    return maps[..., o : o + pixels, o : o + pixels]


def einstein_radius(kappa: np.ndarray, pixel_scale: float) -> np.ndarray:
    """Einstein radius (eq. 13) from the mass in pixels with kappa > 1, arcsec.

    theta_E^2 = 4 G M / c^2 * D_ls / (D_l D_s) with M = Sigma_crit * sum(kappa dA) over those
    pixels reduces to theta_E = sqrt(sum_{kappa > 1} kappa * pixel_area / pi), in angular units.
    ``kappa`` is ``(..., N, N)``; returns ``(...)``.
    """
    k = np.asarray(kappa, dtype=np.float64)
    mass = np.where(k > 1, k, 0.0).sum(axis=(-1, -2)) * pixel_scale**2
    return np.sqrt(mass / np.pi)


def _scale_for_einstein_radius(kappa: np.ndarray, target: float, pixel_scale: float) -> float | None:
    """The factor s with einstein_radius(s kappa) = target, by bisection; None if unreachable."""
    lo, hi = 1e-3, 1e3
    if einstein_radius(kappa * hi, pixel_scale) < target or einstein_radius(kappa * lo, pixel_scale) > target:
        return None
    for _ in range(60):
        mid = math.sqrt(lo * hi)
        if einstein_radius(kappa * mid, pixel_scale) < target:
            lo = mid
        else:
            hi = mid
    return hi


def augment_kappa(
    rendered: np.ndarray,
    rng: np.random.Generator,
    *,
    pixels: int = 128,
    pixel_scale: float = IMAGE_FOV / 128,
    theta_e_range: tuple[float, float] = (0.5, 2.5),
    max_shift: float = 0.3,
    tries: int = 10,
) -> tuple[np.ndarray, dict] | None:
    """One augmented map (section 3.2.2): rotation by k * 90 deg, shift, rescaling, crop.

    The target Einstein radius is drawn uniformly from ``theta_e_range`` and the map is
    rescaled to reach it exactly (bisection on the scale; eq. 13 is monotone in it), so the
    Einstein radii of the augmented set are uniform whatever the halos' mass function. The crop
    is shifted by a whole number of pixels up to ``max_shift`` arcsec in each direction.

    Returns ``(kappa (pixels, pixels), info)`` or ``None`` when no target in ``tries`` draws
    could be reached (a map too flat to become critical within the field).
    """
    m = rendered.shape[-1]
    k = int(rng.integers(0, 4))
    rot = np.rot90(rendered, k, axes=(-2, -1))
    limit = min(int(max_shift / pixel_scale), (m - pixels) // 2)
    di, dj = (int(v) for v in rng.integers(-limit, limit + 1, 2))
    o = (m - pixels) // 2
    crop = rot[o + di : o + di + pixels, o + dj : o + dj + pixels]
    for _ in range(tries):
        target = float(rng.uniform(*theta_e_range))
        s = _scale_for_einstein_radius(crop, target, pixel_scale)
        if s is not None:
            out = crop * s
            return out, {
                "rotation": k,
                "shift": (di, dj),
                "scale": s,
                "theta_e": float(einstein_radius(out, pixel_scale)),
            }
    return None
