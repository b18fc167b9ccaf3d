"""lenssim: the physics of lens: grids, deflection, ray tracing, PSF, noise and likelihood.

Everything here is a plain function of torch tensors: batched, float32 or float64, CPU or
CUDA, and differentiable end to end.
"""

from lenssim.deflection import deflection_angles, deflection_kernel
from lenssim.grid import pixel_coordinates, pixel_grid, pixel_scale
from lenssim.io import LENS_FIELDS, DatasetError, read_lens_dataset, write_lens_dataset
from lenssim.lenses import AcceptanceCriteria, LensBatch, acceptance, sersic_sources, simulate_sie_lenses
from lenssim.likelihood import (
    add_noise,
    chi_squared,
    likelihood_gradient,
    log_likelihood,
    reduced_chi_squared,
)
from lenssim.psf import SeparablePSF, convolve_psf, fwhm_to_sigma, gaussian_psf, gaussian_psf_1d
from lenssim.raytrace import IMAGE_FOV, SOURCE_FOV, lens_equation, lens_image, ray_trace
from lenssim.sampling import (
    ObservationConfig,
    TruncatedNormal,
    sample_noise_sigma,
    sample_psf_fwhm,
    truncated_normal,
)
from lenssim.sie import SIEParameters, SIEPrior, sample_sie_parameters, sie_convergence, sie_deflection

__version__ = "0.1.0"

__all__ = [
    "IMAGE_FOV",
    "LENS_FIELDS",
    "AcceptanceCriteria",
    "DatasetError",
    "LensBatch",
    "acceptance",
    "read_lens_dataset",
    "sersic_sources",
    "simulate_sie_lenses",
    "write_lens_dataset",
    "SOURCE_FOV",
    "ObservationConfig",
    "SIEParameters",
    "SIEPrior",
    "SeparablePSF",
    "TruncatedNormal",
    "add_noise",
    "chi_squared",
    "convolve_psf",
    "deflection_angles",
    "deflection_kernel",
    "fwhm_to_sigma",
    "gaussian_psf",
    "gaussian_psf_1d",
    "lens_equation",
    "lens_image",
    "likelihood_gradient",
    "log_likelihood",
    "pixel_coordinates",
    "pixel_grid",
    "pixel_scale",
    "ray_trace",
    "reduced_chi_squared",
    "sample_noise_sigma",
    "sample_psf_fwhm",
    "sample_sie_parameters",
    "sie_convergence",
    "sie_deflection",
    "truncated_normal",
]
