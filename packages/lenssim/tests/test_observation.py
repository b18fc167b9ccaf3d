"""Observation: lenses from a dataset or a FITS file, selected by rows, put on a model's grid."""

import re

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


def test_the_noise_correlation_of_stacked_lenses_is_each_lens_own(tmp_path):
    """A FITS lens with plenty of sky carries the correlation measured there; one with data in 144
    pixels alone (too few to measure from) does not. Stacked, each lens keeps its own (the second
    white: 1 at the centre alone); a lens alone gives one table for the batch, and lenses without
    one give none."""
    rng = np.random.default_rng(2)
    noisy = np.zeros((48, 48)) + rng.normal(0.0, 1.0, (48, 48))
    noisy[20:28, 20:28] += 50.0
    full = np.full((48, 48), np.nan)  # no data but a 12 x 12 window
    full[18:30, 18:30] = rng.normal(0.0, 1.0, (12, 12))
    full[22:26, 22:26] += 50.0
    hdr = fits.Header({"PIXSCALE": OBS.image_fov / 48})
    fits.PrimaryHDU(noisy, header=hdr).writeto(tmp_path / "sky.fits")
    fits.PrimaryHDU(full, header=hdr).writeto(tmp_path / "full.fits")
    lenses = [
        lenssim.Observation.from_fits(tmp_path / n, psf_fwhm=0.3, noise_sigma=1.0).on_grid(48, OBS.image_fov)
        for n in ("sky.fits", "full.fits")
    ]
    rho = np.array(lenses[0].origin["noise_correlation"])
    assert rho.shape == (7, 7) and "noise_correlation" not in lenses[1].origin
    assert torch.equal(lenses[0].noise_correlation(), torch.from_numpy(rho)[None])
    stacked = lenssim.Observation.stack(lenses).noise_correlation()
    white = np.zeros((7, 7))
    white[3, 3] = 1.0
    assert torch.equal(stacked, torch.from_numpy(np.stack([rho, white])))
    both = lenssim.Observation.stack(lenses)
    assert torch.equal(both[0:1].noise_correlation(), torch.from_numpy(rho)[None])
    assert both[1:2].noise_correlation() is None and lenses[1].noise_correlation() is None


def test_an_auto_noise_is_measured_again_on_the_grid_the_lens_is_put_on(tmp_path):
    """White noise of sigma 0.2 per input pixel: measured on the file's own grid and again on a 2x
    coarser one (where its sigma per model pixel is halved), the sigma per input pixel stays 0.2."""
    noise = np.random.default_rng(7).normal(0.0, 0.2, (128, 128))
    fits.PrimaryHDU(noise, header=fits.Header({"PIXSCALE": 0.1})).writeto(tmp_path / "o.fits")
    native = lenssim.Observation.from_fits(tmp_path / "o.fits", psf_fwhm=0.3, noise_sigma="auto", flux_scale=0.5)
    assert native.origin["noise_sigma"] == "auto" and native.origin["sky_sigma"] == pytest.approx(0.2, rel=0.03)
    assert native.noise.item() == pytest.approx(native.origin["sky_sigma"] / 0.5)
    coarse = native.on_grid(64, 12.8)
    assert coarse.origin["sky_sigma"] != native.origin["sky_sigma"]  # measured on this grid
    assert coarse.origin["sky_sigma"] == pytest.approx(0.2, rel=0.05)
    assert coarse.noise.median().item() == pytest.approx(coarse.origin["sky_sigma"] / 2 / 0.5, rel=1e-5)
    assert np.std(coarse.observation.numpy()) * 0.5 == pytest.approx(0.1, rel=0.05)  # what was measured


def test_a_sky_left_in_a_fits_lens_is_warned_of_once_on_the_grid_it_is_put_on(tmp_path):
    import warnings

    noise = np.random.default_rng(9).normal(0.3, 0.2, (128, 128))  # a sky of 0.3 left in
    fits.PrimaryHDU(noise, header=fits.Header({"PIXSCALE": 0.1})).writeto(tmp_path / "o.fits")
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        native = lenssim.Observation.from_fits(tmp_path / "o.fits", psf_fwhm=0.3, noise_sigma="auto")
        assert not said
        native.on_grid(64, 12.8)
    assert len(said) == 1 and re.search(r"o\.fits: the sky is at 0\.(29|30)\d ", str(said[0].message))
