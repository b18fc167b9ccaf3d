"""The public names of :mod:`lenssim.physics`, each written once, here: the package loads a name on first
use (:func:`lenscore.lazy.attach_stub` reads this file) and type checkers read its types here."""

from lenssim.physics.deflection import (
    deflection_adjoint as deflection_adjoint,
    deflection_angles as deflection_angles,
    deflection_kernel as deflection_kernel,
)
from lenssim.physics.grid import (
    pixel_coordinates as pixel_coordinates,
    pixel_grid as pixel_grid,
    pixel_scale as pixel_scale,
)
from lenssim.physics.likelihood import (
    add_noise as add_noise,
    binned_chi2_nu as binned_chi2_nu,
    chi2_nu as chi2_nu,
    chi_squared as chi_squared,
    data_pixels as data_pixels,
    likelihood_gradient as likelihood_gradient,
    log_likelihood as log_likelihood,
    reduced_chi_squared as reduced_chi_squared,
)
from lenssim.physics.psf import (
    SeparablePSF as SeparablePSF,
    convolve_psf as convolve_psf,
    convolve_psf_adjoint as convolve_psf_adjoint,
    fwhm_to_sigma as fwhm_to_sigma,
    gaussian_psf as gaussian_psf,
    gaussian_psf_1d as gaussian_psf_1d,
)
from lenssim.physics.raytrace import (
    IMAGE_FOV as IMAGE_FOV,
    SOURCE_FOV as SOURCE_FOV,
    lens_equation as lens_equation,
    lens_image as lens_image,
    ray_trace as ray_trace,
)
from lenssim.physics.sie import (
    SIEParameters as SIEParameters,
    SIEPrior as SIEPrior,
    sample_sie_parameters as sample_sie_parameters,
    sie_convergence as sie_convergence,
    sie_deflection as sie_deflection,
)
