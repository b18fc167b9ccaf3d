"""The front door: a user reconstructs and fine-tunes a FITS lens in five lines, and the library's
answer is the same as the lower-level calls' (physics on the RIM's own grid, the same FITS
resampling, the same fine-tuning)."""

from dataclasses import replace

import numpy as np
import pytest
import torch
from astropy.io import fits

import lensprior
import lensrim
import lenssim
from lensrim.training import SimulatedBatches, train_rim

OBS = lenssim.ObservationConfig(image_pixels=32, source_pixels=32, psf_size=5)
TINY_VAE = dict(pixels=32, levels=2, filters=4, latent_dim=4, batch_size=4)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("api")
    g = torch.Generator().manual_seed(0)
    lenses = lenssim.simulate_sie_lenses(3, config=OBS, generator=g)
    lensprior.train_vae(lensprior.source_vae_config(**TINY_VAE, steps=2), lenses.source, root / "svae")
    lensprior.train_vae(lensprior.kappa_vae_config(**TINY_VAE, steps=2), lenses.kappa, root / "kvae")
    batches = SimulatedBatches(lenssim.sie_kappa_sampler(config=OBS), lenssim.sersic_source_sampler(config=OBS), OBS)
    train_rim(replace(lensrim.PRESETS["tiny"], steps=3), batches, root / "rim", steps=2, tensorboard=False)
    # a FITS cutout at its own resolution (48 pixels of 0.2", wider than the RIM's 7.69")
    img = lenssim.lens_image(lenses.source[:1], lenses.kappa[:1], psf=lenses.psf[:1], image_fov=OBS.image_fov)
    big = torch.nn.functional.interpolate(img, size=(48, 48), mode="bilinear")[0, 0].numpy() * 250.0
    hdr = fits.Header()
    hdr["PIXSCALE"] = 0.2
    fits.PrimaryHDU(big, header=hdr).writeto(root / "lens.fits")
    lenssim.write_lens_dataset(
        root / "lenses.h5",
        {k: getattr(lenses, k) for k in lenssim.LENS_FIELDS},
        image_fov=OBS.image_fov,
        source_fov=OBS.source_fov,
        z_lens=0.5,
        z_source=1.5,
    )
    return root


def test_the_readme_example_runs_in_five_lines_and_writes_consistent_fits(runs, tmp_path):
    source_vae, _ = lensprior.load_vae(runs / "svae")
    kappa_vae, _ = lensprior.load_vae(runs / "kvae")
    quick = lensrim.FineTuneConfig(max_steps=2, fisher_samples=2, learning_rate=1e-5)

    rim = lensrim.load(runs / "rim")
    obs = lenssim.Observation.from_fits(runs / "lens.fits", psf_fwhm=0.08, noise_sigma=0.5)
    rec = lensrim.reconstruct(rim, obs, finetune=lensrim.FineTune(source_vae, kappa_vae, quick))
    source, kappa, chi2_nu = rec.source, rec.kappa, rec.chi2_nu
    rec.to_fits(tmp_path / "out.fits")

    assert source.shape == (1, 1, 32, 32) and (kappa > 0).all() and chi2_nu.shape == (1,)
    assert float(rec.chi2_nu[0]) <= float(rec.chi2_nu_baseline[0])  # the best iterate is kept
    # the observation went through the same resampling as the CLI's FITS reader
    ref = lenssim.read_fits_observation(
        runs / "lens.fits", pixels=32, image_fov=OBS.image_fov, psf_fwhm=0.08, noise_sigma=0.5
    )
    assert torch.equal(rec.observation.observation, ref.observation) and rec.observation.flux_scale == ref.flux_scale
    with fits.open(tmp_path / "out.fits") as h:
        scale = h[0].header["FLUXSCL"]
        obs_map, model, residual = (h[k].data.astype(np.float64) for k in ("OBSERVATION", "MODEL", "RESIDUAL"))
        np.testing.assert_allclose(residual, obs_map - model, atol=1e-4 * scale)
        # the model is the lensed source of the written maps, in the input's units
        again = lenssim.lens_image(
            torch.from_numpy(h["SOURCE"].data.astype(np.float32))[None, None] / scale,
            torch.from_numpy(h["KAPPA"].data.astype(np.float32))[None, None],
            image_fov=OBS.image_fov,
            source_fov=OBS.source_fov,
            psf=ref.psf,
        )
        np.testing.assert_allclose(again[0, 0].numpy() * scale, model, rtol=1e-4, atol=1e-4 * scale)
        # chi2_nu in the header is the residual over the (resampled) noise of the written maps
        noise = ref.noise[0, 0].numpy() if ref.noise.dim() == 4 else ref.noise.item()
        chi2 = float(np.mean((residual / scale / noise) ** 2))
        assert h[0].header["CHI2NU"] == pytest.approx(chi2, rel=1e-3)
        # the noise and chi maps say the same pixel by pixel, in the input's units
        np.testing.assert_allclose(h["NOISE"].data, np.broadcast_to(noise * scale, residual.shape), rtol=1e-6)
        np.testing.assert_allclose(h["CHI"].data, residual / h["NOISE"].data, rtol=1e-4, atol=1e-4)
        assert float(np.mean(h["CHI"].data.astype(np.float64) ** 2)) == pytest.approx(chi2, rel=1e-3)
        assert h[0].header["CHI2NU"] == pytest.approx(float(rec.chi2_nu[0]), rel=1e-5)
        # CHI2BIN: the residual summed in 4 x 4 blocks over its summed variance, from the written maps
        assert h[0].header["BINPIX"] == 4
        assert h[0].header["CHI2BIN"] == pytest.approx(_block_chi2(h["RESIDUAL"].data, h["NOISE"].data), rel=1e-3)


def _block_chi2(residual, noise, b=4):
    """numpy, from FITS maps (NaN without data): each block's residual sum squared over its summed
    variance, averaged over the blocks with data."""
    r = np.nan_to_num(residual.astype(np.float64))
    v = np.nan_to_num(noise.astype(np.float64) ** 2)
    n = r.shape[0] // b
    sums, var = (x.reshape(n, b, n, b).sum(axis=(1, 3)) for x in (r, v))
    return float(np.mean(sums[var > 0] ** 2 / var[var > 0]))


def test_reconstruct_equals_the_rim_on_its_own_physics(runs):
    rim = lensrim.load(runs / "rim")
    obs = lenssim.Observation.from_dataset(runs / "lenses.h5")
    rec = lensrim.reconstruct(rim, obs, batch_size=2)
    physics = lensrim.LensingPhysics(obs.psf, obs.noise, OBS.image_fov, OBS.source_fov)
    with torch.no_grad():
        est = rim(obs.observation, physics)[-1]
    # batches of 2 and of 3 may take different float32 convolution kernels: rounding, amplified
    # over the 8 steps, is all that may differ
    close = {"rtol": 1e-4, "atol": 1e-5}
    torch.testing.assert_close(rec.source, est[:, :1], **close)
    torch.testing.assert_close(rec.kappa, torch.pow(10.0, est[:, 1:]), **close)
    torch.testing.assert_close(rec.chi2_nu, physics.chi2_nu(obs.observation, est[:, :1], est[:, 1:]), **close)
    assert set(rec.arrays()) >= {"source_pred", "kappa_pred", "chi2_nu", "source", "kappa", "observation"}


def test_geometry_lives_in_the_config_and_other_grids_are_refused(runs, tmp_path):
    rim = lensrim.load(runs / "rim")
    assert (rim.config.image_fov, rim.config.source_fov) == (OBS.image_fov, OBS.source_fov)
    assert '"source_fov": 3.0' in (runs / "rim" / "config.json").read_text()
    d = lenssim.read_lens_dataset(runs / "lenses.h5")
    lenssim.write_lens_dataset(
        tmp_path / "other.h5",
        {k: d[k] for k in lenssim.LENS_FIELDS},
        image_fov=6.0,
        source_fov=3.0,
        z_lens=0.5,
        z_source=1.5,
    )
    with pytest.raises(lenssim.DatasetError, match="32 pixels across 6 arcsec, the model works on 32 across 7.69"):
        lensrim.reconstruct(rim, lenssim.Observation.from_dataset(tmp_path / "other.h5"))
    # a FITS observation resamples from its file; once on a grid, it is data on that grid
    fits_obs = lenssim.Observation.from_fits(runs / "lens.fits", psf_fwhm=0.08, noise_sigma=0.5)
    assert fits_obs.on_grid(16, OBS.image_fov).pixels == 16 and fits_obs.on_grid(32, OBS.image_fov).pixels == 32
    with pytest.raises(lenssim.DatasetError, match="32 pixels across 7.69 arcsec, the model works on 16"):
        fits_obs.on_grid(32, OBS.image_fov).on_grid(16, OBS.image_fov)
    # training on lenses of another geometry than the config's is refused, not silently mixed
    batches = SimulatedBatches(lenssim.sie_kappa_sampler(config=OBS), lenssim.sersic_source_sampler(config=OBS), OBS)
    wrong = replace(lensrim.PRESETS["tiny"], steps=2, source_fov=2.0)
    with pytest.raises(lensprior.RunError, match="training lenses: source_fov 3 differs from the model's 2 arcsec"):
        train_rim(wrong, batches, tmp_path / "run", steps=1, tensorboard=False)


def test_the_package_loads_its_names_lazily_and_every_exported_name_resolves():
    import subprocess
    import sys

    code = (
        "import sys, lensrim, lensrim.demo; assert 'torch' not in sys.modules, 'torch loaded'; "
        "assert set(lensrim.__all__) - {'__version__'} == set(lensrim._WHERE); "
        "[getattr(lensrim, n) for n in lensrim.__all__]; "
        "import lensrim.finetune; assert callable(lensrim.finetune) and not isinstance(lensrim.finetune, type(sys)); "
        "print(sorted(lensrim.demo.PRESETS))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "['quick', 'standard']"


def test_a_dataset_reconstructed_by_blocks_is_the_reconstruction_of_its_lenses(runs, tmp_path):
    from lenscore.config import SettingError

    rim = lensrim.load(runs / "rim")
    attrs = lensrim.api.check_dataset(runs / "lenses.h5", rim)
    assert {k: attrs[k] for k in ("image_fov", "source_fov")} == {"image_fov": OBS.image_fov, "source_fov": 3.0}
    out_attrs = lensrim.api.output_attrs(attrs, {"test": True})
    path = lensrim.api.reconstruct_to_file(rim, runs / "lenses.h5", tmp_path / "r.h5", attrs=out_attrs, batch_size=2)
    from_file = lensrim.read_reconstruction(path)
    direct = lensrim.reconstruct(rim, lenssim.Observation.from_dataset(runs / "lenses.h5"))
    torch.testing.assert_close(from_file.source, direct.source)
    torch.testing.assert_close(from_file.chi2_nu, direct.chi2_nu)
    assert from_file.observation.truth.keys() == {"source", "kappa"}
    # a dataset on another grid is a setting error naming the parameter it came in
    d = lenssim.read_lens_dataset(runs / "lenses.h5")
    lenssim.write_lens_dataset(
        tmp_path / "wide.h5",
        {k: d[k] for k in lenssim.LENS_FIELDS},
        image_fov=9.0,
        source_fov=3.0,
        z_lens=0.5,
        z_source=1.5,
    )
    with pytest.raises(SettingError, match="image_fov 9 differs from the RIM's 7.69 arcsec") as e:
        lensrim.api.check_dataset(tmp_path / "wide.h5", rim)
    assert e.value.param == "data"


def test_vaes_that_cannot_be_the_rims_priors_are_refused_before_any_work(runs, tmp_path):
    from lenscore.config import SettingError

    rim = lensrim.load(runs / "rim")
    (svae, smeta), (kvae, kmeta) = lensprior.load_vae(runs / "svae"), lensprior.load_vae(runs / "kvae")
    lensrim.api.check_priors(rim, svae, kvae, smeta, kmeta)  # the right pair passes
    small = lensprior.VAE(lensprior.kappa_vae_config(**{**TINY_VAE, "pixels": 16}))
    wide = {"data_attrs": {**kmeta.get("data_attrs", {}), "image_fov": 9.0}}
    cases = (
        ((kvae, svae, smeta, kmeta), "source_vae", "expected a source VAE, got a kappa VAE"),
        ((svae, svae, smeta, kmeta), "kappa_vae", "expected a kappa VAE, got a source VAE"),
        ((svae, small, smeta, kmeta), "kappa_vae", "the kappa VAE works on 16.2 maps, the RIM on 32.2"),
        ((svae, kvae, smeta, wide), "kappa_vae", "trained on maps of image_fov 9, the RIM on 7.69 arcsec"),
    )
    for vaes, param, message in cases:
        with pytest.raises(SettingError, match=message) as e:
            lensrim.api.check_priors(rim, *vaes)
        assert e.value.param == param
    # the library's own entry points refuse a swapped pair before reading a lens or writing a file
    calls = []
    swapped = lensrim.FineTune(kvae, svae, lensrim.FineTuneConfig(max_steps=1, fisher_samples=1))
    attrs = lensrim.api.output_attrs(lensrim.api.check_dataset(runs / "lenses.h5", rim), {})
    with pytest.raises(SettingError, match="expected a source VAE") as e:
        lensrim.api.finetune_to_file(
            rim, swapped, runs / "lenses.h5", tmp_path / "f.h5", attrs=attrs, progress=calls.append
        )
    assert e.value.param == "source_vae" and calls == [] and list(tmp_path.iterdir()) == []
    with pytest.raises(SettingError, match="expected a source VAE"):
        lensrim.reconstruct(rim, lenssim.Observation.from_dataset(runs / "lenses.h5"), finetune=swapped)


def test_the_fits_output_carries_the_input_sky_wcs_on_the_rim_grid(runs, tmp_path):
    from astropy.wcs import WCS

    with fits.open(runs / "lens.fits") as h:
        image = h[0].data
    hdr = fits.Header()
    hdr["CTYPE1"], hdr["CTYPE2"], hdr["CRVAL1"], hdr["CRVAL2"] = "RA---TAN", "DEC--TAN", 177.1, 19.5
    hdr["CRPIX1"], hdr["CRPIX2"] = 24.5, 24.5  # the cutout's centre (48 pixels)
    hdr["CD1_1"], hdr["CD1_2"], hdr["CD2_1"], hdr["CD2_2"] = 0.0, 0.2 / 3600, 0.2 / 3600, 0.0  # rotated 90, flipped
    fits.PrimaryHDU(image, header=hdr).writeto(tmp_path / "sky.fits")
    rim = lensrim.load(runs / "rim")
    rec = lensrim.reconstruct(rim, lenssim.Observation.from_fits(tmp_path / "sky.fits", psf_fwhm=0.08, noise_sigma=0.5))
    written = [rec.to_fits(tmp_path / "a.fits")]
    rec.to_hdf5(tmp_path / "a.h5")  # what `lens finetune` writes, then turns into FITS
    written.append(lensrim.Reconstruction.from_hdf5(tmp_path / "a.h5").to_fits(tmp_path / "b.fits"))
    for path in written:
        with fits.open(path) as h:
            for name in ("OBSERVATION", "MODEL", "RESIDUAL", "KAPPA"):
                w = WCS(h[name].header)
                # the RIM's 32 pixels across 7.69": the grid's centre is the cutout's centre
                np.testing.assert_allclose(w.all_pix2world([[16.5, 16.5]], 1)[0], [177.1, 19.5], atol=1e-12)
                np.testing.assert_allclose(np.abs(w.pixel_scale_matrix) * 3600, [[0, 7.69 / 32], [7.69 / 32, 0]])
            assert "CTYPE1" not in h["SOURCE"].header  # the source plane is not on the sky


def test_the_fits_output_says_the_inputs_unit_telescope_and_filter(runs, tmp_path):
    with fits.open(runs / "lens.fits") as h:
        image, hdr = h[0].data, h[0].header.copy()
    hdr["BUNIT"], hdr["TELESCOP"], hdr["FILTER"], hdr["EXPTIME"] = "ELECTRONS/S", "JWST", "F150W", 1200.0
    fits.PrimaryHDU(image, header=hdr).writeto(tmp_path / "in.fits")
    rim = lensrim.load(runs / "rim")
    given = dict(psf_fwhm=0.08, noise_sigma=0.5, exposure_time=1200)
    obs, attrs = lensrim.api.load_observations(tmp_path / "in.fits", rim, **given)
    assert attrs["fits"]["cards"] == {"BUNIT": "ELECTRONS/S", "TELESCOP": "JWST", "FILTER": "F150W", "EXPTIME": 1200.0}
    assert {k: attrs["fits"][k] for k in given} == given  # a rerun with others is refused
    rec = lensrim.reconstruct(rim, obs)
    rec.to_hdf5(tmp_path / "r.h5")
    for path in (
        rec.to_fits(tmp_path / "a.fits"),
        lensrim.Reconstruction.from_hdf5(tmp_path / "r.h5").to_fits(tmp_path / "b.fits"),
    ):
        with fits.open(path) as h:
            assert (h[0].header["TELESCOP"], h[0].header["FILTER"], h[0].header["EXPTIME"]) == ("JWST", "F150W", 1200.0)
            assert (h[0].header["PSFFWHM"], h[0].header["NOISESIG"], h[0].header["POISSEXP"]) == (0.08, 0.5, 1200.0)
            for name in ("OBSERVATION", "MODEL", "RESIDUAL", "NOISE", "SOURCE"):
                assert h[name].header["BUNIT"] == "ELECTRONS/S", name
            assert "BUNIT" not in h["CHI"].header and "BUNIT" not in h["KAPPA"].header  # dimensionless
    import h5py

    with h5py.File(tmp_path / "r.h5", "a") as f:
        f.attrs["fits"] = '{"cards": {"BUNIT": ["x"]}}'
    with pytest.raises(lenssim.DatasetError, match="card 'BUNIT' is"):
        lensrim.Reconstruction.from_hdf5(tmp_path / "r.h5")
    with h5py.File(tmp_path / "r.h5", "a") as f:
        f.attrs["fits"] = '{"noise_sigma": -1}'
    with pytest.raises(lenssim.DatasetError, match="the observation's noise_sigma is '-1', not a positive number"):
        lensrim.Reconstruction.from_hdf5(tmp_path / "r.h5")


def test_a_measured_noise_is_kept_with_the_reconstruction_and_written_in_its_fits_copy(runs, tmp_path):
    with fits.open(runs / "lens.fits") as h:
        image, hdr = h[0].data, h[0].header.copy()
    noise = np.random.default_rng(0).normal(0.0, 2.0, image.shape)
    fits.PrimaryHDU(image + noise, header=hdr).writeto(tmp_path / "in.fits")
    rim = lensrim.load(runs / "rim")
    obs, attrs = lensrim.api.load_observations(tmp_path / "in.fits", rim, psf_fwhm=0.08, noise_sigma="auto")
    measured = attrs["fits"]["sky_sigma"]
    assert attrs["fits"]["noise_sigma"] == "auto" and measured == pytest.approx(2.0, rel=0.15)  # 32^2 pixels
    rec = lensrim.reconstruct(rim, obs)
    rec.to_hdf5(tmp_path / "r.h5")
    again = lensrim.Reconstruction.from_hdf5(tmp_path / "r.h5")
    assert again.observation.origin["noise_sigma"] == "auto" and again.observation.origin["sky_sigma"] == measured
    with fits.open(again.to_fits(tmp_path / "b.fits")) as h:
        assert (h[0].header["NOISESIG"], h[0].header["SKYSIGMA"]) == ("auto", measured)
    import h5py

    # a file with a noise map: the map scaled, by a factor kept and written as NOISESCL
    fits.HDUList(
        [fits.PrimaryHDU(image + noise, header=hdr), fits.ImageHDU(np.full(image.shape, 4.0), name="ERR")]
    ).writeto(tmp_path / "map.fits")
    obs, attrs = lensrim.api.load_observations(tmp_path / "map.fits", rim, psf_fwhm=0.08, noise_sigma="auto")
    assert "sky_sigma" not in attrs["fits"] and attrs["fits"]["noise_scale"] == pytest.approx(0.5, rel=0.15)
    with fits.open(lensrim.reconstruct(rim, obs).to_fits(tmp_path / "m.fits")) as h:
        assert h[0].header["NOISESCL"] == attrs["fits"]["noise_scale"] and "SKYSIGMA" not in h[0].header
    for bad in ('{"noise_sigma": "Auto"}', '{"sky_sigma": "auto"}', '{"noise_scale": 0}'):
        with h5py.File(tmp_path / "r.h5", "a") as f:
            f.attrs["fits"] = bad
        with pytest.raises(lenssim.DatasetError, match="not a positive number"):
            lensrim.Reconstruction.from_hdf5(tmp_path / "r.h5")


def test_the_noise_correlation_is_kept_with_the_reconstruction_and_its_blocks_allow_for_it(runs, tmp_path):
    """A FITS lens's noise correlation, measured from its sky on the RIM's grid, goes into the
    reconstruction file and back, into the binned chi2_nu (the report's, the FITS copy's) and into
    the FITS copy as CORRX and CORRY; a lens dataset (white, simulated noise) has none; a corrupt
    one in a file is refused in one line."""
    import h5py
    from scipy import ndimage

    with fits.open(runs / "lens.fits") as h:
        image, hdr = h[0].data, h[0].header.copy()
    kernel = np.outer([0.5, 1.0, 0.5], [0.5, 1.0, 0.5])
    noise = ndimage.convolve(np.random.default_rng(1).normal(0.0, 1.0, image.shape), kernel, mode="wrap")
    fits.PrimaryHDU(image + noise, header=hdr).writeto(tmp_path / "in.fits")
    rim = lensrim.load(runs / "rim")
    obs, attrs = lensrim.api.load_observations(tmp_path / "in.fits", rim, psf_fwhm=0.08, noise_sigma="auto")
    rho = np.array(attrs["fits"]["noise_correlation"])
    along_x, along_y = lenssim.io.fits.neighbour_correlation(rho)
    assert rho.shape == (7, 7) and along_x > 0.3 and along_y > 0.3
    rec = lensrim.reconstruct(rim, obs)
    rec.to_hdf5(tmp_path / "r.h5")
    again = lensrim.Reconstruction.from_hdf5(tmp_path / "r.h5")
    assert again.observation.origin["noise_correlation"] == rho.tolist()
    o, model = again.observation, again.model_image()
    white = lenssim.binned_chi2_nu(o.observation, model, o.noise)
    allowed = lenssim.binned_chi2_nu(o.observation, model, o.noise, correlation=torch.from_numpy(rho))
    assert torch.allclose(again.binned_chi2_nu(), allowed) and not torch.allclose(allowed, white, rtol=0.05)
    with fits.open(again.to_fits(tmp_path / "c.fits")) as h:
        assert (h[0].header["CORRX"], h[0].header["CORRY"]) == (along_x, along_y)
        assert h[0].header["CHI2BIN"] == pytest.approx(float(allowed[0]), rel=1e-6)
    # the report's constant predictor (an empty model image: here with the truth of a simulated lens
    # put beside the FITS lens) is binned with the same correlation
    truth = lenssim.Observation.from_dataset(runs / "lenses.h5", rows=slice(0, 1)).truth
    metrics = lensrim.report.compute_metrics(replace(again, observation=replace(again.observation, truth=truth)))
    empty = lenssim.binned_chi2_nu(o.observation, torch.zeros_like(model), o.noise, correlation=torch.from_numpy(rho))
    assert metrics["constant_predictor"]["chi2_nu_binned"]["median"] == pytest.approx(float(empty[0]), rel=1e-5)
    dataset = lensrim.reconstruct(rim, lenssim.Observation.from_dataset(runs / "lenses.h5"))
    assert dataset.observation.noise_correlation() is None
    with fits.open(dataset.to_fits(tmp_path / "d.fits")) as h:
        assert "CORRX" not in h[0].header
    for bad in ('{"noise_correlation": [[1, 0], [0, 1]]}', '{"noise_correlation": [[0, 0, 0], [0, 2, 0], [0, 0, 0]]}'):
        with h5py.File(tmp_path / "r.h5", "a") as f:
            f.attrs["fits"] = bad
        with pytest.raises(lenssim.DatasetError, match="the noise correlation"):
            lensrim.Reconstruction.from_hdf5(tmp_path / "r.h5")


def test_a_reconstruction_file_with_a_corrupt_sky_wcs_is_refused(runs, tmp_path):
    import h5py

    rec = lensrim.reconstruct(lensrim.load(runs / "rim"), lenssim.Observation.from_dataset(runs / "lenses.h5"))
    rec.to_hdf5(tmp_path / "r.h5")
    for bad, message in [("{", "'fits' is not JSON"), ('{"wcs": {"CTYPE1": 3}}', "the sky WCS is not a dict")]:
        with h5py.File(tmp_path / "r.h5", "a") as f:
            f.attrs["fits"] = bad
        with pytest.raises(lenssim.DatasetError, match=message):
            lensrim.Reconstruction.from_hdf5(tmp_path / "r.h5")


def test_masked_pixels_change_nothing_and_are_blank_in_the_fits_copy(runs, tmp_path):
    source_vae, _ = lensprior.load_vae(runs / "svae")
    kappa_vae, _ = lensprior.load_vae(runs / "kvae")
    quick = lensrim.FineTune(source_vae, kappa_vae, lensrim.FineTuneConfig(max_steps=2, fisher_samples=2))
    rim = lensrim.load(runs / "rim")
    with fits.open(runs / "lens.fits") as h:
        image, header = h[0].data.astype(np.float64), h[0].header
    mask = np.zeros(image.shape, np.int16)
    mask[20:22, 30:32] = 1  # 2x2 input pixels of 0.2": the 0.24" model pixels half covered by them are masked
    recs = []
    # a cosmic ray flagged in a MASK HDU; blank pixels (NaN); any other value under the same MASK
    for i, (value, flagged) in enumerate([(1e5, True), (np.nan, False), (-3.0, True)]):
        bad = image.copy()
        bad[20:22, 30:32] = value
        hdus = [fits.ImageHDU(mask, name="MASK")] if flagged else []
        fits.HDUList([fits.PrimaryHDU(bad, header=header), *hdus]).writeto(tmp_path / f"m{i}.fits")
        obs = lenssim.Observation.from_fits(tmp_path / f"m{i}.fits", psf_fwhm=0.08, noise_sigma=0.5, flux_scale=250)
        recs.append(lensrim.reconstruct(rim, obs, finetune=quick))
    masked = torch.isinf(recs[0].observation.noise)
    assert masked.shape == (1, 1, 32, 32) and 1 <= int(masked.sum()) <= 4
    for rec in recs[1:]:  # what lies under the mask cannot change the reconstruction
        assert torch.equal(rec.observation.noise, recs[0].observation.noise)
        for name in ("source", "kappa", "chi2_nu", "source_baseline", "chi2_nu_baseline"):
            assert torch.equal(getattr(rec, name), getattr(recs[0], name)), name
    rec = recs[0]
    assert torch.isfinite(rec.chi2_nu).all() and torch.isfinite(rec.source).all()
    rec.to_fits(tmp_path / "out.fits")
    with fits.open(tmp_path / "out.fits") as h:
        blank = masked[0, 0].numpy()
        assert h[0].header["NMASKED"] == blank.sum()
        for name in ("OBSERVATION", "RESIDUAL", "NOISE", "CHI"):
            assert np.isnan(h[name].data[blank]).all() and np.isfinite(h[name].data[~blank]).all(), name
        assert np.isfinite(h["MODEL"].data).all()
        chi = h["CHI"].data.astype(np.float64)
        assert h[0].header["CHI2NU"] == pytest.approx(float(np.nanmean(chi**2)), rel=1e-4)
        assert h[0].header["CHI2BIN"] == pytest.approx(_block_chi2(h["RESIDUAL"].data, h["NOISE"].data), rel=1e-4)
    rec.to_hdf5(tmp_path / "r.h5")  # the masked noise map survives the file's checks
    again = lensrim.Reconstruction.from_hdf5(tmp_path / "r.h5")
    assert torch.equal(again.observation.noise, rec.observation.noise)


def test_a_catalogue_reconstructs_each_lens_as_its_file_alone(runs, tmp_path):
    """Two FITS lenses listed in a CSV catalogue, each with its own options: the batch's
    observations, estimates and FITS copies are those of each file reconstructed alone."""
    with fits.open(runs / "lens.fits") as h:
        image, hdr = h[0].data, h[0].header.copy()
    hdr["TELESCOP"] = "HST"
    fits.PrimaryHDU(image[::-1] * 3.0, header=hdr).writeto(tmp_path / "flipped.fits")  # another lens, 3x brighter
    (tmp_path / "lenses.csv").write_text(
        f"name,fits,psf_fwhm,exposure_time\nfirst,{runs / 'lens.fits'},0.08,\nsecond,flipped.fits,0.12,500\n"
    )
    rim = lensrim.load(runs / "rim")
    both, attrs = lensrim.api.load_observations(tmp_path / "lenses.csv", rim, noise_sigma=0.5)
    alone = [
        lensrim.api.load_observations(runs / "lens.fits", rim, psf_fwhm=0.08, noise_sigma=0.5),
        lensrim.api.load_observations(
            tmp_path / "flipped.fits", rim, psf_fwhm=0.12, noise_sigma=0.5, exposure_time=500
        ),
    ]
    for i, (obs, one) in enumerate(alone):
        torch.testing.assert_close(both.observation[i], obs.observation[0], rtol=0, atol=0)
        noise = obs.noise[0] if obs.noise.dim() == 4 else obs.noise.reshape(1, 1, 1).expand(1, 32, 32)
        torch.testing.assert_close(both.noise[i], noise, rtol=0, atol=0)
        assert both.lens_scale(i) == obs.flux_scale and attrs["fits"]["lenses"][i] == {
            "name": ["first", "second"][i],
            **one["fits"],
        }
    assert both.lens_scale(1) == pytest.approx(3 * both.lens_scale(0))
    assert attrs["fits"]["catalogue"] == str(tmp_path / "lenses.csv")
    rec = lensrim.reconstruct(rim, both)
    rec.to_hdf5(tmp_path / "r.h5")
    back = lensrim.Reconstruction.from_hdf5(tmp_path / "r.h5")
    torch.testing.assert_close(back.observation.flux_scale, both.flux_scale, rtol=1e-7, atol=0)  # a field, float32
    assert "flux_scale" not in lenssim.io.dataset_info(tmp_path / "r.h5")["attrs"]
    for i, (obs, _) in enumerate(alone):
        single = lensrim.reconstruct(rim, obs)
        # the same up to float32 summation order (a batch of 2 against 1)
        torch.testing.assert_close(rec.kappa[i], single.kappa[0], rtol=1e-3, atol=1e-5)
        torch.testing.assert_close(back.source[i], single.source[0], rtol=1e-3, atol=1e-5)
        single.to_fits(tmp_path / f"alone{i}.fits")
        back.to_fits(tmp_path / f"batch{i}.fits", index=i)
        with fits.open(tmp_path / f"alone{i}.fits") as s, fits.open(tmp_path / f"batch{i}.fits") as b:
            assert b[0].header.get("TELESCOP") == s[0].header.get("TELESCOP") == [None, "HST"][i]
            assert b[0].header["PSFFWHM"] == [0.08, 0.12][i] and b[0].header.get("POISSEXP") == [None, 500.0][i]
            for name in ("OBSERVATION", "MODEL", "NOISE", "SOURCE"):  # in the input's units: its own scale undone
                np.testing.assert_allclose(
                    b[name].data, s[name].data, rtol=1e-3, atol=1e-4 * np.abs(s[name].data).max()
                )
