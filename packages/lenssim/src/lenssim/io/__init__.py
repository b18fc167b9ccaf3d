"""Files in and out: HDF5 datasets, validated on every read and written resumably in blocks
(``datasets``), FITS observations and reconstructions (``fits``), and :class:`Observation`, one
or many lenses ready for a model's grid (``observation``)."""

from __future__ import annotations

from lenssim.io.datasets import (
    FIELD_NDIM,
    LENS_FIELDS,
    MAX_ABS,
    DatasetError,
    LensDataset,
    check_dataset_values,
    check_values,
    dataset_info,
    read_dataset,
    read_lens_dataset,
    shard_range,
    write_dataset,
    write_in_blocks,
    write_lens_dataset,
)
from lenssim.io.fits import (
    FitsError,
    FitsObservation,
    fits_onto_grid,
    load_fits,
    read_fits_observation,
    resample_matrix,
    write_fits_reconstruction,
)
from lenssim.io.observation import Observation

__all__ = [
    "FIELD_NDIM",
    "LENS_FIELDS",
    "MAX_ABS",
    "DatasetError",
    "LensDataset",
    "check_dataset_values",
    "check_values",
    "dataset_info",
    "read_dataset",
    "read_lens_dataset",
    "shard_range",
    "write_dataset",
    "write_in_blocks",
    "write_lens_dataset",
    "FitsError",
    "FitsObservation",
    "fits_onto_grid",
    "load_fits",
    "read_fits_observation",
    "resample_matrix",
    "write_fits_reconstruction",
    "Observation",
]
