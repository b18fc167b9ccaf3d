"""Forward models for the RIM: lensing through lenssim, and a linear toy operator for tests.

Both implement :class:`~lensrim.model.ForwardModel`, everything the RIM, its training, its
evaluation and its fine-tuning ask of a forward model: ``simulate``, ``gradient``, ``chi2_nu``,
``add_noise`` and ``subset`` (and ``whitened_residual`` for a RIM with ``residual_input``).
Nothing in lensrim reaches past these methods, so each of those runs on :class:`LinearPhysics` as
well as on :class:`LensingPhysics`.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, replace

import torch

import lenssim

__all__ = ["LensingPhysics", "LinearPhysics"]


def _rows(value, index: torch.Tensor):
    """``value`` restricted to the examples ``index``: a batch-1 (or scalar) value is shared by
    every example and stays as it is; anything else is indexed along its first dimension."""
    if isinstance(value, lenssim.SeparablePSF):
        return lenssim.SeparablePSF(*(_rows(k, index) for k in value))
    if not isinstance(value, torch.Tensor) or value.dim() == 0 or value.shape[0] == 1:
        return value
    return value[index.to(value.device)]


def _per_pixel(sigma: torch.Tensor | float, like: torch.Tensor) -> torch.Tensor | float:
    """A noise sigma (scalar, ``(B,)`` or a noise map ``(B, 1, N, N)``) as a factor on images."""
    if isinstance(sigma, torch.Tensor) and sigma.dim() == 1:
        return sigma.view(-1, *([1] * (like.dim() - 1)))
    return sigma


class _ChiSquare:
    """What both forward models compute the same way from their ``simulate`` and ``sigma``."""

    def whitened_residual(self, y: torch.Tensor, source: torch.Tensor, xi: torch.Tensor) -> torch.Tensor:
        """(y - F(s, 10^xi)) / sigma, detached, ``(B, 1, N, N)``: a ``residual_input`` RIM's sixth channel."""
        with torch.no_grad():
            return (y - self.simulate(source, xi)) / _per_pixel(self.sigma, y)

    def reduced_chi_squared(self, y: torch.Tensor, source: torch.Tensor, xi: torch.Tensor) -> torch.Tensor:
        """Deprecated: ``chi2_nu`` under ``torch.no_grad()`` (the statistic has one name)."""
        warnings.warn("reduced_chi_squared is deprecated: use chi2_nu", DeprecationWarning, stacklevel=2)
        with torch.no_grad():
            return self.chi2_nu(y, source, xi)


@dataclass
class LensingPhysics(_ChiSquare):
    """The lensing likelihood of a batch of observations, each with its own PSF and noise.

    ``psf`` is ``(B, 1, k, k)``, a :class:`lenssim.SeparablePSF`, or batch-1 for all; ``sigma``
    one noise level per example ``(B,)`` or a noise map ``(B, 1, N, N)``. Gradients of
    log p(y | s, kappa = 10^xi) come from lenssim's ray tracer, detached.
    """

    psf: torch.Tensor | lenssim.SeparablePSF
    sigma: torch.Tensor
    image_fov: float = lenssim.IMAGE_FOV
    source_fov: float = lenssim.SOURCE_FOV

    def gradient(self, y: torch.Tensor, source: torch.Tensor, xi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        gs, gxi, _ = lenssim.likelihood_gradient(
            y,
            source,
            xi,
            self.sigma,
            psf=self.psf,
            image_fov=self.image_fov,
            source_fov=self.source_fov,
            kappa_param="log10",
        )
        return gs, gxi

    def simulate(self, source: torch.Tensor, xi: torch.Tensor) -> torch.Tensor:
        """Noiseless model image F(s, 10^xi)."""
        return lenssim.lens_image(
            source, torch.pow(10.0, xi), image_fov=self.image_fov, source_fov=self.source_fov, psf=self.psf
        )

    def chi2_nu(self, y: torch.Tensor, source: torch.Tensor, xi: torch.Tensor) -> torch.Tensor:
        """chi^2 / N^2 per example, ``(B,)``, differentiable (fine-tuning's data term)."""
        return lenssim.chi2_nu(y, self.simulate(source, xi), self.sigma)

    def add_noise(self, image: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """``image`` observed with this noise, given standard normal draws ``eps`` of its shape
        (none where a noise map masks a pixel: its sigma is infinite there)."""
        noise = _per_pixel(self.sigma, image) * eps
        if self.sigma.dim() == image.dim():  # a noise map: none where it masks a pixel
            noise = torch.where(torch.isfinite(self.sigma), noise, 0.0)
        return image + noise

    def subset(self, index: torch.Tensor) -> LensingPhysics:
        """The forward model of examples ``index`` (repeats allowed), on the same grid."""
        return replace(self, psf=_rows(self.psf, index), sigma=_rows(self.sigma, index))


@dataclass
class LinearPhysics(_ChiSquare):
    """A toy forward model y = a * s + b * xi + noise(sigma), with ``sigma`` a scalar or one per
    example ``(B,)``: training, evaluation and fine-tuning run on it as on the lensing model."""

    a: float = 1.0
    b: float = 0.5
    sigma: float | torch.Tensor = 0.1

    def simulate(self, source: torch.Tensor, xi: torch.Tensor) -> torch.Tensor:
        return self.a * source + self.b * xi

    def gradient(self, y: torch.Tensor, source: torch.Tensor, xi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        r = (y - self.simulate(source, xi)) / _per_pixel(self.sigma, y) ** 2
        return (self.a * r).detach(), (self.b * r).detach()

    def chi2_nu(self, y: torch.Tensor, source: torch.Tensor, xi: torch.Tensor) -> torch.Tensor:
        return ((y - self.simulate(source, xi)) / _per_pixel(self.sigma, y)).pow(2).flatten(1).mean(dim=1)

    def add_noise(self, image: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        return image + _per_pixel(self.sigma, image) * eps

    def subset(self, index: torch.Tensor) -> LinearPhysics:
        return replace(self, sigma=_rows(self.sigma, index))
