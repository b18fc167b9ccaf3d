"""The public names of :mod:`lenssim.io`, each written once, here: the package loads a name on first
use (:func:`lenscore.lazy.attach_stub` reads this file) and type checkers read its types here."""

from lenssim.io.catalogue import (
    CATALOGUE_COLUMNS as CATALOGUE_COLUMNS,
    MAX_CATALOGUE_ROWS as MAX_CATALOGUE_ROWS,
    is_catalogue as is_catalogue,
    read_lens_catalogue as read_lens_catalogue,
)
from lenssim.io.datasets import (
    FIELD_NDIM as FIELD_NDIM,
    LENS_FIELDS as LENS_FIELDS,
    MAX_ABS as MAX_ABS,
    DatasetError as DatasetError,
    LensDataset as LensDataset,
    check_dataset_values as check_dataset_values,
    check_values as check_values,
    dataset_info as dataset_info,
    map_attrs as map_attrs,
    read_dataset as read_dataset,
    read_lens_dataset as read_lens_dataset,
    shard_range as shard_range,
    write_dataset as write_dataset,
    write_in_blocks as write_in_blocks,
    write_lens_dataset as write_lens_dataset,
)
from lenssim.io.fits import (
    OBSERVATION_CARDS as OBSERVATION_CARDS,
    FitsError as FitsError,
    FitsObservation as FitsObservation,
    check_observation_cards as check_observation_cards,
    check_sky_wcs as check_sky_wcs,
    fits_onto_grid as fits_onto_grid,
    load_fits as load_fits,
    read_fits_observation as read_fits_observation,
    read_observation_cards as read_observation_cards,
    read_sky_wcs as read_sky_wcs,
    resample_matrix as resample_matrix,
    wcs_on_grid as wcs_on_grid,
    wcs_pixel_scale as wcs_pixel_scale,
    write_fits_reconstruction as write_fits_reconstruction,
)
from lenssim.io.observation import Observation as Observation
