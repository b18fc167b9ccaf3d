"""Analytic background sources: elliptical Sersic galaxies with star-forming knots.

The light-weight built-in source of the simulations (nothing but torch); COSMOS stamps and
GalSim-drawn galaxies come from :mod:`lenssim.data.sources`.
"""

from __future__ import annotations

import math

import torch

from lenssim.geometry import SOURCE_FOV
from lenssim.physics.grid import pixel_grid

__all__ = ["sersic_sources"]


def _sersic_b(n: torch.Tensor) -> torch.Tensor:
    # Ciotti & Bertin (1999) expansion of the half-light constant, accurate for n > 0.36.
    return 2 * n - 1 / 3 + 4 / (405 * n) + 46 / (25515 * n * n)


def sersic_sources(
    n: int,
    *,
    pixels: int = 128,
    fov: float = SOURCE_FOV,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Random elliptical Sersic galaxies with a few star-forming knots, peak 1, ``(n, 1, P, P)``.

    Sersic index U(0.5, 4), effective radius U(0.08, 0.35) arcsec, axis ratio U(0.4, 1),
    centre within 0.25 arcsec of the field's centre, and 0-4 Gaussian knots of 0.02-0.06 arcsec
    within 1.5 effective radii, each at 10-60 % of the peak. Draws come from ``generator`` on
    the CPU, so a seed gives the same sources on every device.
    """

    def u(lo, hi, *shape):
        return lo + (hi - lo) * torch.rand(n, *shape, generator=generator, dtype=torch.float64)

    idx, re, q, phi = u(0.5, 4.0), u(0.08, 0.35), u(0.4, 1.0), u(0, math.pi)
    r0, a0 = u(0, 0.25), u(0, 2 * math.pi)
    n_knots = torch.randint(0, 5, (n,), generator=generator)
    k_r, k_a = u(0, 1.5, 4), u(0, 2 * math.pi, 4)
    k_w, k_amp = u(0.02, 0.06, 4), u(0.1, 0.6, 4)

    def col(t):
        return t.to(device=device).reshape(n, *([1] * 2))

    x, y = pixel_grid(pixels, fov, dtype=torch.float64, device=device)
    xc, yc = col(r0 * torch.cos(a0)), col(r0 * torch.sin(a0))
    c, s = torch.cos(col(phi)), torch.sin(col(phi))
    dx, dy = x - xc, y - yc
    xr, yr = c * dx + s * dy, -s * dx + c * dy
    r = torch.sqrt(q.to(device).reshape(n, 1, 1) * xr**2 + yr**2 / q.to(device).reshape(n, 1, 1))
    nn = col(idx)
    img = torch.exp(-_sersic_b(nn) * ((r / col(re)) ** (1 / nn) - 1))
    img = img / img.amax(dim=(-1, -2), keepdim=True)
    for k in range(4):
        on = (n_knots > k).to(torch.float64)
        kx = xc + col(k_r[:, k] * re * torch.cos(k_a[:, k]))
        ky = yc + col(k_r[:, k] * re * torch.sin(k_a[:, k]))
        w = col(k_w[:, k])
        img = img + col(on * k_amp[:, k]) * torch.exp(-((x - kx) ** 2 + (y - ky) ** 2) / (2 * w * w))
    img = img / img.amax(dim=(-1, -2), keepdim=True)
    return img.unsqueeze(1).to(dtype)
