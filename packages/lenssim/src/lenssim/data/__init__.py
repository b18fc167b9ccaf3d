"""What the models learn from: IllustrisTNG particles (``tng``) and their adaptive KDE (``kde``)
into convergence maps (``convergence``), COSMOS and synthetic sources (``sources``), analytic
Sersic sources (``sersic``), Table 1's observing conditions (``observing``), lenses simulated and
accepted on the fly (``lenses``), and the resumable dataset writers (``simulate``).

The submodules load when first used (``kde`` brings Numba, ``sources`` GalSim)."""

from __future__ import annotations

from lenscore.lazy import attach

_EXPORTS = {
    "convergence": (
        "KappaMapConfig",
        "angular_diameter_distance_kpc",
        "augment_kappa",
        "center_crop",
        "critical_surface_density",
        "einstein_radius",
        "kappa_maps",
    ),
    "kde": (
        "smoothing_lengths",
        "surface_density",
        "surface_density_brute_force",
        "truncation_radius",
    ),
    "lenses": (
        "AcceptanceCriteria",
        "LensBatch",
        "Sampler",
        "acceptance",
        "pool_sampler",
        "sersic_source_sampler",
        "sie_kappa_sampler",
        "simulate_lenses",
        "simulate_sie_lenses",
    ),
    "sersic": ("sersic_sources",),
    "observing": (
        "ObservationConfig",
        "TruncatedNormal",
        "sample_noise_sigma",
        "sample_psf_fwhm",
        "truncated_normal",
    ),
    "simulate": (
        "HaloSource",
        "h5_pool_sampler",
        "simulate_kappa_dataset",
        "simulate_lens_dataset",
        "simulate_source_dataset",
        "split_labels",
    ),
    "sources": (
        "CosmosSources",
        "SourceDataError",
        "SourceStampConfig",
        "prepare_source",
        "synthetic_galaxy_stamp",
    ),
    "tng": (
        "PARTICLE_TYPES",
        "Particles",
        "TNGFormatError",
        "read_cutout",
        "read_snapshot_halo",
        "synthetic_halo",
        "synthetic_particles",
        "write_synthetic_cutout",
    ),
}

__all__ = [
    "KappaMapConfig",
    "angular_diameter_distance_kpc",
    "augment_kappa",
    "center_crop",
    "critical_surface_density",
    "einstein_radius",
    "kappa_maps",
    "smoothing_lengths",
    "surface_density",
    "surface_density_brute_force",
    "truncation_radius",
    "AcceptanceCriteria",
    "LensBatch",
    "Sampler",
    "acceptance",
    "pool_sampler",
    "sersic_source_sampler",
    "sersic_sources",
    "sie_kappa_sampler",
    "simulate_lenses",
    "simulate_sie_lenses",
    "ObservationConfig",
    "TruncatedNormal",
    "sample_noise_sigma",
    "sample_psf_fwhm",
    "truncated_normal",
    "HaloSource",
    "h5_pool_sampler",
    "simulate_kappa_dataset",
    "simulate_lens_dataset",
    "simulate_source_dataset",
    "split_labels",
    "CosmosSources",
    "SourceDataError",
    "SourceStampConfig",
    "prepare_source",
    "synthetic_galaxy_stamp",
    "PARTICLE_TYPES",
    "Particles",
    "TNGFormatError",
    "read_cutout",
    "read_snapshot_halo",
    "synthetic_halo",
    "synthetic_particles",
    "write_synthetic_cutout",
]


__getattr__, __dir__, _WHERE = attach(__name__, _EXPORTS, tuple(_EXPORTS))
