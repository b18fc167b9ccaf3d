"""Singular isothermal ellipsoid convergence maps and deflections (Table 2, SPEC 2.2).

Convention (lenstronomy's SIE, Einstein radius in the intermediate-axis convention), in
coordinates (x', y') rotated by ``phi`` to the major axis about the centre (x0, y0):

    kappa = theta_E / (2 sqrt(q (x'^2 + s^2) + y'^2 / q)),   q = 1 - e,

with a small core ``s`` that keeps the centre finite. Multiplying through by sqrt(q) gives
the softened isothermal ellipsoid b / (2 sqrt(q^2 (s^2 + x'^2) + y'^2)) with b = theta_E sqrt(q)
(Keeton & Kochanek 1998; Schneider, Kochanek & Wambsganss 2006), whose deflection is analytic:

    alpha_x' = b / sqrt(1 - q^2) * atan(sqrt(1 - q^2) x' / (psi + s))
    alpha_y' = b / sqrt(1 - q^2) * atanh(sqrt(1 - q^2) y' / (psi + q^2 s))

with psi = sqrt(q^2 (s^2 + x'^2) + y'^2).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, NamedTuple

import numpy as np
import torch

from lenssim._checks import check_positive, check_size
from lenssim.grid import pixel_coordinates, pixel_grid

__all__ = ["SIEParameters", "SIEPrior", "sample_sie_parameters", "sie_convergence", "sie_deflection"]

DEFAULT_CORE = 1e-3
"""Core radius s of the SIE maps, arcsec (SPEC 2.2)."""


class SIEParameters(NamedTuple):
    """A batch of SIE parameters, each ``(B,)``: arcsec for lengths, radians for ``phi``."""

    theta_e: torch.Tensor
    q: torch.Tensor
    phi: torch.Tensor
    x0: torch.Tensor
    y0: torch.Tensor


@dataclass(frozen=True)
class SIEPrior:
    """Table 2: uniform ranges of the SIE parameters."""

    theta_e: tuple[float, float] = (0.5, 2.5)
    ellipticity: tuple[float, float] = (0.0, 0.6)
    orientation: tuple[float, float] = (0.0, math.pi)
    radial_shift: tuple[float, float] = (0.0, 0.1)

    def __post_init__(self) -> None:
        for name in ("theta_e", "ellipticity", "orientation", "radial_shift"):
            lo, hi = getattr(self, name)
            if not lo <= hi:
                raise ValueError(f"SIE prior {name} needs low <= high, got ({lo}, {hi})")
        if self.theta_e[0] <= 0:
            raise ValueError(f"SIE theta_e must be positive, got {self.theta_e}")
        if not (0 <= self.ellipticity[0] and self.ellipticity[1] < 1):
            raise ValueError(f"SIE ellipticity must lie in [0, 1), got {self.ellipticity}")


def sample_sie_parameters(
    n: int,
    prior: SIEPrior = SIEPrior(),
    *,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> SIEParameters:
    """``n`` SIE parameter sets from Table 2 (the centre at a uniform azimuth)."""
    u = torch.rand(5, n, generator=generator, dtype=torch.float64)

    def uniform(i: int, lohi: tuple[float, float]) -> torch.Tensor:
        return lohi[0] + (lohi[1] - lohi[0]) * u[i]

    r = uniform(3, prior.radial_shift)
    az = 2 * math.pi * u[4]
    out = SIEParameters(
        theta_e=uniform(0, prior.theta_e),
        q=1.0 - uniform(1, prior.ellipticity),
        phi=uniform(2, prior.orientation),
        x0=r * torch.cos(az),
        y0=r * torch.sin(az),
    )
    return SIEParameters(*(t.to(dtype=dtype, device=device) for t in out))


def _rotated(x, y, p: SIEParameters):
    # Broadcast (B,) parameters against coordinates of any shape.
    def col(t):
        return t.reshape(-1, *([1] * x.dim()))

    c, s = torch.cos(col(p.phi)), torch.sin(col(p.phi))
    dx, dy = x - col(p.x0), y - col(p.y0)
    return c * dx + s * dy, -s * dx + c * dy, c, s


def sie_convergence(
    params: SIEParameters,
    *,
    n: int = 128,
    fov: float = 7.69,
    core: float = DEFAULT_CORE,
    sampling: Literal["pixel_average", "center"] = "pixel_average",
    quadrature_order: int = 8,
) -> torch.Tensor:
    """SIE convergence on the pixel-centred grid, ``(B, 1, n, n)``.

    Parameters
    ----------
    sampling
        ``"pixel_average"`` (default): the mean convergence over each pixel, i.e. the pixel's
        mass over its area, computed exactly from Gauss's theorem (div alpha = 2 kappa) as the
        flux of the analytic deflection through the pixel's edges (Gauss-Legendre with
        ``quadrature_order`` nodes per edge). The map then holds the right mass in every
        pixel, the cusp included, and its FFT deflection matches the analytic SIE's.
        ``"center"``: the formula evaluated at pixel centres, as the original code did; near
        the cusp this misplaces mass (a pixel centre close to the centre samples a value of up
        to theta_E / (2 s)), which biases the deflection of the whole map.
    """
    check_size("n", n)
    check_positive("fov", fov)
    dtype, device = params.q.dtype, params.q.device
    if sampling == "center":
        x, y = pixel_grid(n, fov, dtype=dtype, device=device)
        xr, yr, _, _ = _rotated(x, y, params)
        q = params.q.reshape(-1, 1, 1)
        te = params.theta_e.reshape(-1, 1, 1)
        kappa = te / (2 * torch.sqrt(q * (xr * xr + core * core) + yr * yr / q))
        return kappa.unsqueeze(1)
    if sampling != "pixel_average":
        raise ValueError(f"sampling must be 'pixel_average' or 'center', got {sampling!r}")
    p64 = SIEParameters(*(t.to(torch.float64) for t in params))
    h = float(fov) / n
    centres = pixel_coordinates(n, fov, dtype=torch.float64, device=device)
    edges = torch.arange(n + 1, dtype=torch.float64, device=device) * h - float(fov) / 2
    t, w = np.polynomial.legendre.leggauss(quadrature_order)
    t = torch.as_tensor(t, device=device) * (h / 2)
    w = torch.as_tensor(w, device=device) * (h / 2)
    # Flux of alpha_x through the vertical edges: [row i, edge k, node g].
    xv = edges[None, :, None].expand(n, n + 1, quadrature_order)
    yv = (centres[:, None, None] + t).expand(n, n + 1, quadrature_order)
    flux_v = (sie_deflection(xv, yv, p64, core=core)[:, 0] * w).sum(-1)
    # Flux of alpha_y through the horizontal edges: [edge k, column j, node g].
    xh = (centres[None, :, None] + t).expand(n + 1, n, quadrature_order)
    yh = edges[:, None, None].expand(n + 1, n, quadrature_order)
    flux_h = (sie_deflection(xh, yh, p64, core=core)[:, 1] * w).sum(-1)
    div = flux_v[:, :, 1:] - flux_v[:, :, :-1] + flux_h[:, 1:, :] - flux_h[:, :-1, :]
    return (div / (2 * h * h)).unsqueeze(1).to(dtype)


def sie_deflection(
    x: torch.Tensor, y: torch.Tensor, params: SIEParameters, *, core: float = DEFAULT_CORE
) -> torch.Tensor:
    """Analytic deflection of the SIE at positions ``x, y`` (any equal shapes ``S``).

    Returns ``(B, 2, *S)`` in arcsec, channel 0 = alpha_x.

    The formula of the module docstring; the q -> 1 limit (the cored isothermal
    sphere) is taken where 1 - q^2 < 1e-8.
    """
    xr, yr, c, s = _rotated(x, y, params)
    q = params.q.reshape(-1, *([1] * x.dim()))
    b = params.theta_e.reshape(-1, *([1] * x.dim())) * torch.sqrt(q)
    psi = torch.sqrt(q * q * (core * core + xr * xr) + yr * yr)
    e2 = 1 - q * q
    round_ = e2 < 1e-8
    f = torch.sqrt(torch.where(round_, torch.ones_like(e2), e2))
    ax = torch.where(round_, b * xr / (psi + core), b / f * torch.atan(f * xr / (psi + core)))
    ay = torch.where(round_, b * yr / (psi + core), b / f * torch.atanh(f * yr / (psi + q * q * core)))
    # rotate back from the major-axis frame
    return torch.stack([c * ax - s * ay, s * ax + c * ay], dim=1)
