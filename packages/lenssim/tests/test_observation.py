"""Observation: lenses from a dataset or a FITS file, selected by rows, put on a model's grid."""

import numpy as np
import pytest
import torch
from astropy.io import fits

import lenssim

OBS = lenssim.ObservationConfig(image_pixels=16, source_pixels=16, psf_size=5)


@pytest.fixture
def dataset(tmp_path):
    lenses = lenssim.simulate_sie_lenses(5, config=OBS, generator=torch.Generator().manual_seed(0))
    path = lenses.to_hdf5(tmp_path / "l.h5", image_fov=OBS.image_fov, source_fov=OBS.source_fov)
    return path, lenses


def test_rows_of_a_dataset_are_the_same_lenses_read_alone(dataset):
    path, lenses = dataset
    obs = lenssim.Observation.from_dataset(path)
    part = obs[1:4]
    alone = lenssim.Observation.from_dataset(path, rows=slice(1, 4))
    assert len(part) == 3 and torch.equal(part.observation, alone.observation)
    assert torch.equal(part.noise, lenses.noise_sigma[1:4]) and torch.equal(part.truth["kappa"], lenses.kappa[1:4])
    assert part.on_grid(16, OBS.image_fov) is part  # already there
    with pytest.raises(lenssim.DatasetError, match="16 pixels across 7.69 arcsec, the model works on 32"):
        part.on_grid(32, OBS.image_fov)
    with pytest.raises(TypeError, match="slice"):
        obs[2]


def test_a_fits_lens_is_resampled_once_then_selected(tmp_path):
    image = np.zeros((24, 24))
    image[10:14, 10:14] = 5.0
    hdr = fits.Header()
    hdr["PIXSCALE"] = 0.4
    fits.PrimaryHDU(image, header=hdr).writeto(tmp_path / "lens.fits")
    native = lenssim.Observation.from_fits(tmp_path / "lens.fits", psf_fwhm=0.5, noise_sigma=0.1)
    assert native.pixels == 24 and native.image_fov == pytest.approx(9.6)
    with pytest.raises(ValueError, match="on_grid"):
        native[0:0]
    gridded = native.on_grid(16, OBS.image_fov)
    ref = lenssim.read_fits_observation(
        tmp_path / "lens.fits", pixels=16, image_fov=OBS.image_fov, psf_fwhm=0.5, noise_sigma=0.1
    )
    assert torch.equal(gridded.observation, ref.observation) and torch.equal(gridded.psf, ref.psf)
    assert gridded.flux_scale == ref.flux_scale and gridded[0:1].observation.shape == (1, 1, 16, 16)
