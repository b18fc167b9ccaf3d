"""Random draws of the observation parameters (paper Table 1, SPEC section 1).

Every sampler takes a ``torch.Generator`` so that a seed fixes the draws bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lenssim.geometry import IMAGE_FOV, SOURCE_FOV, Z_LENS, Z_SOURCE

__all__ = ["ObservationConfig", "TruncatedNormal", "sample_noise_sigma", "sample_psf_fwhm", "truncated_normal"]


@dataclass(frozen=True, kw_only=True)
class TruncatedNormal:
    """TN(a, b; mu, sigma): a normal of mean ``mu`` and width ``sigma`` restricted to [a, b], all
    in the units of the quantity drawn (built with keywords: ``TruncatedNormal(a=0.06, b=0.3,
    mu=0.08, sigma=0.05)``)."""

    a: float
    """Lower bound of the draws (the quantity's units)."""
    b: float
    """Upper bound of the draws (the quantity's units)."""
    mu: float
    """Mean of the untruncated normal (the quantity's units)."""
    sigma: float
    """Width of the untruncated normal (the quantity's units), > 0."""

    def __post_init__(self) -> None:
        if not (self.a < self.b):
            raise ValueError(f"truncated normal needs a < b, got a={self.a}, b={self.b}")
        if not (self.sigma > 0):
            raise ValueError(f"truncated normal needs sigma > 0, got {self.sigma}")


@dataclass(frozen=True)
class ObservationConfig:
    """The physical model of Table 1: grids, redshifts, PSF and noise distributions.
    :meth:`at_resolution` gives it at another number of pixels, the fields of view kept."""

    image_pixels: int = 128
    """Pixels across the image (and kappa) grid (Table 1: 128)."""
    image_fov: float = IMAGE_FOV
    """Width of the image plane, arcsec (Table 1: 7.69, 128 pixels of 0.06")."""
    source_pixels: int = 128
    """Pixels across the source grid (Table 1: 128)."""
    source_fov: float = SOURCE_FOV
    """Width of the source plane, arcsec (Table 1: 3)."""
    z_lens: float = Z_LENS
    """Lens redshift (Table 1: 0.5)."""
    z_source: float = Z_SOURCE
    """Source redshift (Table 1: 1.5)."""
    psf_fwhm: TruncatedNormal = TruncatedNormal(a=0.06, b=0.3, mu=0.08, sigma=0.05)
    """Gaussian PSF full width at half maximum, arcsec (Table 1: TN(0.06, 0.3; 0.08, 0.05))."""
    psf_size: int = 21
    """Side of the PSF kernel, image pixels (odd; 21 at 128 pixels)."""
    noise_sigma: TruncatedNormal = TruncatedNormal(a=0.001, b=0.1, mu=0.01, sigma=0.03)
    """White noise standard deviation, in units of the source's peak of 1 (Table 1:
    TN(0.001, 0.1; 0.01, 0.03))."""

    @classmethod
    def at_resolution(cls, pixels: int, **changes) -> ObservationConfig:
        """Table 1 at ``pixels`` across both grids, the fields of view kept: the PSF kernel is
        21 pixels, or the largest odd size under half the image when that is smaller (a 32-pixel
        image takes 15)."""
        return cls(image_pixels=pixels, source_pixels=pixels, psf_size=min(21, pixels // 2 - 1 | 1), **changes)

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
