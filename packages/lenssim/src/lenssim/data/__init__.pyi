"""The public names of :mod:`lenssim.data`, each written once, here: the package loads a name on first
use (:func:`lenscore.lazy.attach_stub` reads this file) and type checkers read its types here."""

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
    truncation_radius as truncation_radius,
)
from lenssim.data.lenses import (
    AcceptanceCriteria as AcceptanceCriteria,
    LensBatch as LensBatch,
    Sampler as Sampler,
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
    split_labels as split_labels,
)
from lenssim.data.sources import (
    CosmosSources as CosmosSources,
    SourceDataError as SourceDataError,
    SourceStampConfig as SourceStampConfig,
    prepare_source as prepare_source,
    synthetic_galaxy_stamp as synthetic_galaxy_stamp,
)
from lenssim.data.tng import (
    PARTICLE_TYPES as PARTICLE_TYPES,
    Particles as Particles,
    TNGFormatError as TNGFormatError,
    read_cutout as read_cutout,
    read_snapshot_halo as read_snapshot_halo,
    synthetic_halo as synthetic_halo,
    synthetic_particles as synthetic_particles,
    write_synthetic_cutout as write_synthetic_cutout,
)
