"""lenssim: the physics of lens: grids, deflection, ray tracing, PSF, noise and likelihood.

The ray tracer is plain functions of torch tensors: batched, float32 or float64, CPU or CUDA,
and differentiable end to end. Around it: particle halos to convergence maps (Numba KDE), COSMOS
and synthetic sources (GalSim), lens acceptance and resumable HDF5 datasets. Three subpackages:

- :mod:`lenssim.physics`: grids, deflection, ray tracing, PSF, likelihood, SIE maps;
- :mod:`lenssim.data`: TNG particles (``tng``) and their KDE (``kde``) into kappa maps
  (``convergence``), COSMOS and synthetic sources (``sources``), analytic Sersic sources
  (``sersic``), Table 1's observing conditions (``observing``), lens simulation and acceptance
  (``lenses``), resumable datasets (``simulate``);
- :mod:`lenssim.io`: HDF5 datasets (``datasets``), FITS (``fits``), :class:`Observation`;

and the torch-free :mod:`lenssim.geometry`. Every public name is also here, flat.

Names load on first use (SPEC 1's lazy loading): ``import lenssim`` is instant and torch
loads with the first name that needs it, so a command line reads the torch-free
:mod:`lenssim.geometry` without it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lenscore.lazy import attach

__version__ = "0.1.0"

_EXPORTS = {
    "_checks": ("SimulationError",),
    "data.convergence": (
        "KappaMapConfig",
        "angular_diameter_distance_kpc",
        "augment_kappa",
        "center_crop",
        "critical_surface_density",
        "einstein_radius",
        "kappa_maps",
    ),
    "physics.deflection": (
        "deflection_angles",
        "deflection_kernel",
    ),
    "geometry": (
        "Geometry",
        "Z_LENS",
        "Z_SOURCE",
    ),
    "io.fits": (
        "FitsError",
        "FitsObservation",
        "read_fits_observation",
        "write_fits_reconstruction",
    ),
    "physics.grid": (
        "pixel_coordinates",
        "pixel_grid",
        "pixel_scale",
    ),
    "io.datasets": (
        "LENS_FIELDS",
        "DatasetError",
        "LensDataset",
        "read_dataset",
        "read_lens_dataset",
        "write_dataset",
        "write_in_blocks",
        "write_lens_dataset",
    ),
    "data.kde": (
        "smoothing_lengths",
        "surface_density",
        "surface_density_brute_force",
    ),
    "data.lenses": (
        "AcceptanceCriteria",
        "LensBatch",
        "acceptance",
        "pool_sampler",
        "sersic_source_sampler",
        "sie_kappa_sampler",
        "simulate_lenses",
        "simulate_sie_lenses",
    ),
    "physics.likelihood": (
        "add_noise",
        "chi_squared",
        "likelihood_gradient",
        "log_likelihood",
        "reduced_chi_squared",
    ),
    "io.observation": ("Observation",),
    "physics.psf": (
        "SeparablePSF",
        "convolve_psf",
        "fwhm_to_sigma",
        "gaussian_psf",
        "gaussian_psf_1d",
    ),
    "physics.raytrace": (
        "IMAGE_FOV",
        "SOURCE_FOV",
        "lens_equation",
        "lens_image",
        "ray_trace",
    ),
    "data.sersic": ("sersic_sources",),
    "data.observing": (
        "ObservationConfig",
        "TruncatedNormal",
        "sample_noise_sigma",
        "sample_psf_fwhm",
        "truncated_normal",
    ),
    "physics.sie": (
        "SIEParameters",
        "SIEPrior",
        "sample_sie_parameters",
        "sie_convergence",
        "sie_deflection",
    ),
    "data.simulate": (
        "HaloSource",
        "h5_pool_sampler",
        "simulate_kappa_dataset",
        "simulate_lens_dataset",
        "simulate_source_dataset",
    ),
}
_SUBMODULES = {
    "data": "data",
    "geometry": "geometry",
    "io": "io",
    "physics": "physics",
    # the modules' names before the grouping, kept for code that reaches into them
    **{name: f"physics.{name}" for name in ("deflection", "grid", "likelihood", "psf", "raytrace", "sie")},
    **{name: f"data.{name}" for name in ("convergence", "kde", "lenses", "sersic", "simulate", "sources", "tng")},
    "sampling": "data.observing",
    "fits": "io.fits",
    "observation": "io.observation",
}

__all__ = [
    "Geometry",
    "Z_LENS",
    "Z_SOURCE",
    "FitsError",
    "SimulationError",
    "FitsObservation",
    "read_fits_observation",
    "Observation",
    "write_fits_reconstruction",
    "IMAGE_FOV",
    "HaloSource",
    "KappaMapConfig",
    "LensDataset",
    "angular_diameter_distance_kpc",
    "augment_kappa",
    "center_crop",
    "critical_surface_density",
    "einstein_radius",
    "h5_pool_sampler",
    "kappa_maps",
    "pool_sampler",
    "read_dataset",
    "sersic_source_sampler",
    "sie_kappa_sampler",
    "simulate_kappa_dataset",
    "simulate_lens_dataset",
    "simulate_lenses",
    "simulate_source_dataset",
    "smoothing_lengths",
    "surface_density",
    "surface_density_brute_force",
    "write_dataset",
    "write_in_blocks",
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
    "__version__",
]


__getattr__, __dir__, _WHERE = attach(__name__, _EXPORTS, _SUBMODULES)


if TYPE_CHECKING:  # what the lazy names are, for type checkers and editors
    from lenssim._checks import SimulationError
    from lenssim.data.convergence import (
        KappaMapConfig,
        angular_diameter_distance_kpc,
        augment_kappa,
        center_crop,
        critical_surface_density,
        einstein_radius,
        kappa_maps,
    )
    from lenssim.data.kde import smoothing_lengths, surface_density, surface_density_brute_force
    from lenssim.data.lenses import (
        AcceptanceCriteria,
        LensBatch,
        acceptance,
        pool_sampler,
        sersic_source_sampler,
        sie_kappa_sampler,
        simulate_lenses,
        simulate_sie_lenses,
    )
    from lenssim.data.observing import (
        ObservationConfig,
        TruncatedNormal,
        sample_noise_sigma,
        sample_psf_fwhm,
        truncated_normal,
    )
    from lenssim.data.sersic import sersic_sources
    from lenssim.data.simulate import (
        HaloSource,
        h5_pool_sampler,
        simulate_kappa_dataset,
        simulate_lens_dataset,
        simulate_source_dataset,
    )
    from lenssim.geometry import Z_LENS, Z_SOURCE, Geometry
    from lenssim.io.datasets import (
        LENS_FIELDS,
        DatasetError,
        LensDataset,
        read_dataset,
        read_lens_dataset,
        write_dataset,
        write_in_blocks,
        write_lens_dataset,
    )
    from lenssim.io.fits import FitsError, FitsObservation, read_fits_observation, write_fits_reconstruction
    from lenssim.io.observation import Observation
    from lenssim.physics.deflection import deflection_angles, deflection_kernel
    from lenssim.physics.grid import pixel_coordinates, pixel_grid, pixel_scale
    from lenssim.physics.likelihood import (
        add_noise,
        chi_squared,
        likelihood_gradient,
        log_likelihood,
        reduced_chi_squared,
    )
    from lenssim.physics.psf import SeparablePSF, convolve_psf, fwhm_to_sigma, gaussian_psf, gaussian_psf_1d
    from lenssim.physics.raytrace import IMAGE_FOV, SOURCE_FOV, lens_equation, lens_image, ray_trace
    from lenssim.physics.sie import SIEParameters, SIEPrior, sample_sie_parameters, sie_convergence, sie_deflection
