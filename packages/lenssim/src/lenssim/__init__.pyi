"""The public names of :mod:`lenssim`, each written once, here: the package loads a name on first
use (:func:`lenscore.lazy.attach_stub` reads this file) and type checkers read its types here."""

from lenssim._checks import SimulationError as SimulationError
from lenssim.data.convergence import (
    KappaMapConfig as KappaMapConfig,
    angular_diameter_distance_kpc as angular_diameter_distance_kpc,
    augment_kappa as augment_kappa,
    center_crop as center_crop,
    critical_surface_density as critical_surface_density,
    einstein_radius as einstein_radius,
    kappa_maps as kappa_maps,
)
from lenssim.data.kde import (
    smoothing_lengths as smoothing_lengths,
    surface_density as surface_density,
    surface_density_brute_force as surface_density_brute_force,
)
from lenssim.data.lenses import (
    AcceptanceCriteria as AcceptanceCriteria,
    LensBatch as LensBatch,
    acceptance as acceptance,
    pool_sampler as pool_sampler,
    sersic_source_sampler as sersic_source_sampler,
    sie_kappa_sampler as sie_kappa_sampler,
    simulate_lenses as simulate_lenses,
    simulate_sie_lenses as simulate_sie_lenses,
)
from lenssim.data.observing import (
    ObservationConfig as ObservationConfig,
    TruncatedNormal as TruncatedNormal,
    sample_noise_sigma as sample_noise_sigma,
    sample_psf_fwhm as sample_psf_fwhm,
    truncated_normal as truncated_normal,
)
from lenssim.data.sersic import sersic_sources as sersic_sources
from lenssim.data.simulate import (
    HaloSource as HaloSource,
    h5_pool_sampler as h5_pool_sampler,
    halo_sources as halo_sources,
    sampler_from_spec as sampler_from_spec,
    shard_lenses as shard_lenses,
    shard_path as shard_path,
    simulate_kappa_dataset as simulate_kappa_dataset,
    simulate_lens_dataset as simulate_lens_dataset,
    simulate_source_dataset as simulate_source_dataset,
    split_counts as split_counts,
)
from lenssim.geometry import Z_LENS as Z_LENS, Z_SOURCE as Z_SOURCE, Geometry as Geometry
from lenssim.io.datasets import (
    LENS_FIELDS as LENS_FIELDS,
    DatasetError as DatasetError,
    LensDataset as LensDataset,
    read_dataset as read_dataset,
    read_lens_dataset as read_lens_dataset,
    write_dataset as write_dataset,
    write_in_blocks as write_in_blocks,
    write_lens_dataset as write_lens_dataset,
)
from lenssim.io.fits import (
    FitsError as FitsError,
    FitsObservation as FitsObservation,
    read_fits_observation as read_fits_observation,
    write_fits_reconstruction as write_fits_reconstruction,
)
from lenssim.io.observation import Observation as Observation
from lenssim.physics.deflection import deflection_angles as deflection_angles, deflection_kernel as deflection_kernel
from lenssim.physics.grid import (
    pixel_coordinates as pixel_coordinates,
    pixel_grid as pixel_grid,
    pixel_scale as pixel_scale,
)
from lenssim.physics.likelihood import (
    add_noise as add_noise,
    chi2_nu as chi2_nu,
    chi_squared as chi_squared,
    likelihood_gradient as likelihood_gradient,
    log_likelihood as log_likelihood,
    reduced_chi_squared as reduced_chi_squared,
)
from lenssim.physics.psf import (
    SeparablePSF as SeparablePSF,
    convolve_psf as convolve_psf,
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

__version__: str
