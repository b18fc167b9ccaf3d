"""Forward models for the RIM: lensing through lenssim, and a linear toy operator for tests."""

from __future__ import annotations

from dataclasses import dataclass

import torch

import lenssim

__all__ = ["LensingPhysics", "LinearPhysics"]


@dataclass
class LensingPhysics:
    """The lensing likelihood of a batch of observations, each with its own PSF and noise.

    Implements the RIM's :class:`~lensrim.model.ForwardModel`: gradients of
    log p(y | s, kappa = 10^xi) through lenssim's ray tracer, detached.
    """

    psf: torch.Tensor | lenssim.SeparablePSF
    sigma: torch.Tensor
    image_fov: float = lenssim.IMAGE_FOV
    source_fov: float = lenssim.SOURCE_FOV

    def gradient(self, y: torch.Tensor, source: torch.Tensor, xi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        gs, gxi, _ = lenssim.likelihood_gradient(
            y, source, xi, self.sigma, psf=self.psf, image_fov=self.image_fov, source_fov=self.source_fov,
            kappa_param="log10",
        )  # fmt: skip
        return gs, gxi

    def simulate(self, source: torch.Tensor, xi: torch.Tensor) -> torch.Tensor:
        """Noiseless model image F(s, 10^xi)."""
        return lenssim.lens_image(
            source, torch.pow(10.0, xi), image_fov=self.image_fov, source_fov=self.source_fov, psf=self.psf
        )

    def chi2_nu(self, y: torch.Tensor, source: torch.Tensor, xi: torch.Tensor) -> torch.Tensor:
        """chi^2 / N^2 per example, ``(B,)``, differentiable (fine-tuning's data term)."""
        return lenssim.reduced_chi_squared(y, self.simulate(source, xi), self.sigma)

    def reduced_chi_squared(self, y: torch.Tensor, source: torch.Tensor, xi: torch.Tensor) -> torch.Tensor:
        """chi^2 / N^2 per example, ``(B,)``, without a graph."""
        with torch.no_grad():
            return self.chi2_nu(y, source, xi)


@dataclass
class LinearPhysics:
    """A toy forward model y = a * s + b * xi + noise(sigma): the RIM needs nothing more than a
    gradient, so unit tests can use this instead of the lensing code."""

    a: float = 1.0
    b: float = 0.5
    sigma: float = 0.1

    def simulate(self, source: torch.Tensor, xi: torch.Tensor) -> torch.Tensor:
        return self.a * source + self.b * xi

    def gradient(self, y: torch.Tensor, source: torch.Tensor, xi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        r = (y - self.simulate(source, xi)) / self.sigma**2
        return (self.a * r).detach(), (self.b * r).detach()

    def chi2_nu(self, y: torch.Tensor, source: torch.Tensor, xi: torch.Tensor) -> torch.Tensor:
        return ((y - self.simulate(source, xi)) / self.sigma).pow(2).flatten(1).mean(dim=1)

    def reduced_chi_squared(self, y: torch.Tensor, source: torch.Tensor, xi: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.chi2_nu(y, source, xi)
