"""The physics of a lens, as functions of torch tensors (batched, any dtype and device,
differentiable): pixel grids (``grid``), deflection by FFT (``deflection``), the lens equation and
bilinear ray tracing (``raytrace``), PSFs (``psf``), noise, chi^2 and the likelihood's gradients
(``likelihood``), and analytic SIE lenses (``sie``)."""

from __future__ import annotations

from lenssim.physics.deflection import deflection_angles, deflection_kernel
from lenssim.physics.grid import pixel_coordinates, pixel_grid, pixel_scale
from lenssim.physics.likelihood import add_noise, chi_squared, likelihood_gradient, log_likelihood, reduced_chi_squared
from lenssim.physics.psf import SeparablePSF, convolve_psf, fwhm_to_sigma, gaussian_psf, gaussian_psf_1d
from lenssim.physics.raytrace import IMAGE_FOV, SOURCE_FOV, lens_equation, lens_image, ray_trace
from lenssim.physics.sie import SIEParameters, SIEPrior, sample_sie_parameters, sie_convergence, sie_deflection

__all__ = [
    "deflection_angles",
    "deflection_kernel",
    "pixel_coordinates",
    "pixel_grid",
    "pixel_scale",
    "add_noise",
    "chi_squared",
    "likelihood_gradient",
    "log_likelihood",
    "reduced_chi_squared",
    "SeparablePSF",
    "convolve_psf",
    "fwhm_to_sigma",
    "gaussian_psf",
    "gaussian_psf_1d",
    "IMAGE_FOV",
    "SOURCE_FOV",
    "lens_equation",
    "lens_image",
    "ray_trace",
    "SIEParameters",
    "SIEPrior",
    "sample_sie_parameters",
    "sie_convergence",
    "sie_deflection",
]
