"""Random draws of the observation parameters (paper Table 1, SPEC section 1).

Every sampler takes a ``torch.Generator`` so that a seed fixes the draws bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lenssim.geometry import IMAGE_FOV, SOURCE_FOV, Z_LENS, Z_SOURCE

__all__ = [
    "ObservationConfig",
    "TruncatedNormal",
    "sample_noise_sigma",
    "sample_psf_fwhm",
    "truncated_normal",
]


@dataclass(frozen=True)
class TruncatedNormal:
    """TN(a, b; mu, sigma): a normal of mean ``mu`` and width ``sigma`` restricted to [a, b]."""

    a: float
    b: float
    mu: float
    sigma: float

    def __post_init__(self) -> None:
        if not (self.a < self.b):
            raise ValueError(f"truncated normal needs a < b, got a={self.a}, b={self.b}")
        if not (self.sigma > 0):
            raise ValueError(f"truncated normal needs sigma > 0, got {self.sigma}")


@dataclass(frozen=True)
class ObservationConfig:
    """The physical model of Table 1: grids, redshifts, PSF and noise distributions."""

    image_pixels: int = 128
    image_fov: float = IMAGE_FOV
    source_pixels: int = 128
    source_fov: float = SOURCE_FOV
    z_lens: float = Z_LENS
    z_source: float = Z_SOURCE
    psf_fwhm: TruncatedNormal = TruncatedNormal(0.06, 0.3, 0.08, 0.05)
    psf_size: int = 21
    noise_sigma: TruncatedNormal = TruncatedNormal(0.001, 0.1, 0.01, 0.03)

    @property
    def pixel_scale(self) -> float:
        """Image pixel scale, arcsec."""
        return self.image_fov / self.image_pixels


def truncated_normal(
    n: int,
    dist: TruncatedNormal,
    *,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """``n`` draws from ``dist`` by inverting the normal CDF, computed in float64.

    Uniform draws are made on the CPU from ``generator`` (a CPU generator), so a seed gives the
    same values on every device.
    """
    lo = torch.special.ndtr(torch.tensor((dist.a - dist.mu) / dist.sigma, dtype=torch.float64))
    hi = torch.special.ndtr(torch.tensor((dist.b - dist.mu) / dist.sigma, dtype=torch.float64))
    u = torch.rand(n, generator=generator, dtype=torch.float64)
    x = dist.mu + dist.sigma * torch.special.ndtri(lo + (hi - lo) * u)
    return x.clamp(dist.a, dist.b).to(dtype=dtype, device=device)


def sample_psf_fwhm(
    n: int,
    config: ObservationConfig = ObservationConfig(),
    *,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """PSF full widths at half maximum, arcsec, ``(n,)`` (Table 1)."""
    return truncated_normal(n, config.psf_fwhm, generator=generator, dtype=dtype, device=device)


def sample_noise_sigma(
    n: int,
    config: ObservationConfig = ObservationConfig(),
    *,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """White-noise standard deviations, ``(n,)`` (Table 1); SNR = 1 / sigma."""
    return truncated_normal(n, config.noise_sigma, generator=generator, dtype=dtype, device=device)
