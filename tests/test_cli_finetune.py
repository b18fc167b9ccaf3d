"""`lens finetune` (HDF5 and FITS, resume) and `lens evaluate` end to end on tiny 32^2 models."""

import json
import signal
import subprocess
import time
from dataclasses import replace

import numpy as np
import pytest
import torch
from astropy.io import fits
from astropy.wcs import WCS
from lens_runner import LENS, requires_lens, run

import lensprior
import lensrim
import lenssim
from lensrim.training import SimulatedBatches, train_rim

pytestmark = [requires_lens, pytest.mark.slow]
OBS = lenssim.ObservationConfig(image_pixels=32, source_pixels=32, psf_size=5)
TINY_VAE = dict(pixels=32, levels=2, filters=4, latent_dim=4, batch_size=4)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    lenses = lenssim.simulate_sie_lenses(16, config=OBS, generator=torch.Generator().manual_seed(0))
    arrays = {k: getattr(lenses, k) for k in lenssim.LENS_FIELDS}
    lenssim.write_lens_dataset(
        root / "lenses.h5",
        {k: v[:5] for k, v in arrays.items()},
        image_fov=OBS.image_fov,
        source_fov=OBS.source_fov,
        z_lens=0.5,
        z_source=1.5,
        config={"test": True},
        seed=0,
    )
    lensprior.train_vae(lensprior.source_vae_config(**TINY_VAE, steps=3), arrays["source"], root / "svae")
    lensprior.train_vae(lensprior.kappa_vae_config(**TINY_VAE, steps=3), arrays["kappa"], root / "kvae")
    batches = SimulatedBatches(lenssim.sie_kappa_sampler(config=OBS), lenssim.sersic_source_sampler(config=OBS), OBS)
    train_rim(replace(lensrim.PRESETS["tiny"], steps=3), batches, root / "rim", steps=3)
    return root


def finetune_args(root, data, out, *extra):
    return [
        "finetune",
        "--rim",
        root / "rim",
        "--source-vae",
        root / "svae",
        "--kappa-vae",
        root / "kvae",
        "--data",
        data,
        "-o",
        out,
        "--fisher-samples",
        2,
        "--learning-rate",
        1e-4,
        "--max-steps",
        4,
        "--target-chi2",
        0,
        *extra,
    ]


def test_finetune_resumes_after_a_kill_and_evaluate_writes_the_report(models, tmp_path):
    whole = tmp_path / "whole.h5"
    out = run(*finetune_args(models, models / "lenses.h5", whole, "--batch-size", 2))
    assert "fine-tuned" in out.stdout
    assert "fine-tuning cost here: Fisher" in out.stderr and "for all 3 batches" in out.stderr
    fields = ["source_pred", "kappa_pred", "chi2_nu", "chi2_nu_baseline", "finetune_steps", "source", "kappa"]
    d = lenssim.read_dataset(whole, fields)
    assert d["source_pred"].shape == (5, 1, 32, 32)
    assert (d["chi2_nu"] <= d["chi2_nu_baseline"]).all() and (d["chi2_nu"] < d["chi2_nu_baseline"]).any()
    assert (d["finetune_steps"] == 4).all()

    killed = tmp_path / "killed.h5"
    args = finetune_args(models, models / "lenses.h5", killed, "--batch-size", 1)
    proc = subprocess.Popen([LENS, *map(str, args)], stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    blocks = tmp_path / ".killed.h5.blocks"
    deadline = time.time() + 300
    while time.time() < deadline and len(list(blocks.glob("block-*.h5"))) < 2 and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not killed.exists() and len(list(blocks.glob("block-*.h5"))) >= 2
    run(*args)
    k = lenssim.read_dataset(killed, fields)
    for f in fields:  # the batch size does not change any lens's result
        torch.testing.assert_close(k[f], d[f], rtol=1e-4, atol=2e-4)
    assert not blocks.exists()

    report = tmp_path / "report"
    out = run("evaluate", whole, "-o", report)
    assert "chi2_nu median" in out.stdout
    m = json.loads((report / "metrics.json").read_text())
    assert m["lenses"] == 5
    assert f"in 4x4 blocks {m['chi2_nu_binned']['final']['median']:.3g} (1: noise)" in out.stdout
    assert set(m["chi2_nu_binned"]) == {"block_pixels", "baseline", "final"}
    assert m["chi2_nu"]["final"]["median"] == pytest.approx(float(d["chi2_nu"].median()), rel=1e-5)
    assert set(m["log10_loss"]) == {"baseline", "final"} and np.isfinite(m["log10_loss"]["final"]["mu"])
    assert len(m["coherence"]["final"]["source"]["mean"]) == 16
    # Fig. 8 (left): the per-lens change of log10 eq.-7 loss, from the file's maps
    b = lenssim.read_dataset(whole, ["source_baseline", "kappa_baseline"])

    def log_loss(s, k):
        return torch.log10(lensrim.rim_loss(torch.cat([s, torch.log10(k)], dim=1)[None], d["source"], d["kappa"]))

    change = log_loss(d["source_pred"], d["kappa_pred"]) - log_loss(b["source_baseline"], b["kappa_baseline"])
    assert m["log10_loss_change"]["mean"] == pytest.approx(float(change.mean()), abs=1e-5)
    assert m["log10_loss_change"]["std"] == pytest.approx(float(change.std()), abs=1e-5)
    page = (report / "index.html").read_text()
    for name in ("lenses.png", "chi2_histogram.png", "chi2_vs_snr.png", "coherence.png", "loss_change.png"):
        assert (report / name).stat().st_size > 1000 and f'src="{name}"' in page


def test_finetune_a_fits_observation(models, tmp_path):
    d = lenssim.read_lens_dataset(models / "lenses.h5")
    scale = OBS.image_fov / 32
    # a 40^2 cutout at twice the model's resolution (80^2), in counts: resampled and normalised
    img = np.kron(d["observation"][0, 0].numpy(), np.ones((2, 2)))
    img = np.pad(img, 8, mode="edge") * 250.0
    hdr = fits.Header()
    hdr["CDELT2"] = scale / 2 / 3600
    hdr["CTYPE1"], hdr["CTYPE2"], hdr["CRVAL1"], hdr["CRVAL2"] = "RA---TAN", "DEC--TAN", 30.0, -10.0
    hdr["CRPIX1"], hdr["CRPIX2"] = 40.5 + 4, 40.5  # 4 input pixels right of the cutout's centre
    fits.HDUList([fits.PrimaryHDU(img, header=hdr), fits.ImageHDU(np.full_like(img, 2.0), name="NOISE")]).writeto(
        tmp_path / "obs.fits"
    )
    out = tmp_path / "recon.h5"
    run(*finetune_args(models, tmp_path / "obs.fits", out, "--psf-fwhm", 0.2))
    r = lenssim.read_dataset(out, ["observation", "noise_map", "chi2_nu", "chi2_nu_baseline"])
    peak = float(d["observation"][0, 0].max())
    torch.testing.assert_close(r["observation"][0, 0], d["observation"][0, 0] / peak, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(r["noise_map"], torch.full_like(r["noise_map"], 1.0 / 250 / peak), rtol=1e-5, atol=0)
    with fits.open(tmp_path / "recon.fits") as h:
        assert h["SOURCE"].data.shape == (32, 32) and h[0].header["CHI2NU"] == pytest.approx(float(r["chi2_nu"][0]))
        np.testing.assert_allclose(h["OBSERVATION"].data, d["observation"][0, 0].numpy() * 250, rtol=1e-4)
        # the maps on the image grid carry the sky WCS, moved onto the RIM's grid (2 of its pixels)
        wcs = WCS(h["KAPPA"].header)
        np.testing.assert_allclose(wcs.all_pix2world([[16.5 + 2, 16.5]], 1)[0], [30.0, -10.0], atol=1e-12)
        np.testing.assert_allclose(wcs.proj_plane_pixel_scales()[0].to_value("arcsec"), scale, rtol=1e-12)
    bad = run(*finetune_args(models, tmp_path / "obs.fits", tmp_path / "x.h5"), check=False)
    assert bad.returncode == 1 and "no PSF" in bad.stderr and not (tmp_path / "x.h5").exists()
    # the RIM alone on the same FITS: lens reconstruct reads it the same way, its estimate is
    # the fine-tuning's baseline, and its FITS copy carries the same sky WCS
    base = tmp_path / "base.h5"
    run("reconstruct", "--rim", models / "rim", "--data", tmp_path / "obs.fits", "-o", base, "--psf-fwhm", 0.2)
    b = lenssim.read_dataset(base, ["observation", "source_pred", "kappa_pred", "chi2_nu"])
    f = lenssim.read_dataset(out, ["source_baseline", "kappa_baseline"])
    torch.testing.assert_close(b["observation"], r["observation"], rtol=0, atol=0)
    torch.testing.assert_close(b["source_pred"], f["source_baseline"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(b["kappa_pred"], f["kappa_baseline"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(b["chi2_nu"], r["chi2_nu_baseline"], rtol=1e-5, atol=0)
    with fits.open(tmp_path / "base.fits") as h:
        assert h[0].header["CHI2NU"] == pytest.approx(float(b["chi2_nu"][0]), rel=1e-6)
        np.testing.assert_allclose(WCS(h["MODEL"].header).all_pix2world([[18.5, 16.5]], 1)[0], [30.0, -10.0])
    # a rerun into it with another noise is refused: the result made with the first one would stand
    rim = ("reconstruct", "--rim", models / "rim")
    again = run(*rim, "--data", tmp_path / "obs.fits", "-o", base, "--psf-fwhm", 0.2, "--noise-sigma", 3, check=False)
    assert again.returncode == 1 and "fits.noise_sigma absent there, 3.0 here" in again.stderr
    # --exposure-time: the NOISE HDU is the sky's; the counts add their Poisson variance, 2x2 averaged
    poisson = tmp_path / "poisson.h5"
    args = ("--data", tmp_path / "obs.fits", "-o", poisson, "--psf-fwhm", 0.2, "--exposure-time", 10)
    run(*rim, *args)
    p = lenssim.read_dataset(poisson, ["noise_map"])["noise_map"]
    counts = d["observation"][0, 0].double() * 250
    want = torch.sqrt(4 + counts.clamp(min=0) / 10) / 2 / (250 * peak)
    torch.testing.assert_close(p[0, 0].double(), want, rtol=1e-5, atol=0)
    # --noise-sigma auto: the NOISE HDU (2 per input pixel, 1 once 2x2 are averaged, far from the
    # truth: the copies are not independent) scaled to the sky on the RIM's grid, where the 2x2
    # copies average back to the simulated lens and its noise
    auto = tmp_path / "auto.h5"
    args = ("--data", tmp_path / "obs.fits", "-o", auto, "--psf-fwhm", 0.2)
    said = run(*rim, *args, "--noise-sigma", "auto")
    measured = float(lenssim.read_dataset(auto, ["noise_map"])["noise_map"].median())
    assert measured == pytest.approx(float(d["noise_sigma"][0]) / peak, rel=0.1)
    assert "noise map scaled by " in said.stdout
    with fits.open(tmp_path / "auto.fits") as h:
        factor = h[0].header["NOISESCL"]
        assert h[0].header["NOISESIG"] == "auto" and factor == pytest.approx(measured * peak * 250 / 1.0, rel=1e-5)
        # the copies averaged back: white noise again, its correlation measured from the sky and said
        along = h[0].header["CORRX"], h[0].header["CORRY"]
    assert max(abs(c) for c in along) < 0.15
    assert f"measured from the sky: {along[0]:.2f} along x, {along[1]:.2f} along y" in said.stdout
    again = run(*rim, *args, "--noise-sigma", 2, check=False)
    assert again.returncode == 1 and "fits.noise_sigma 'auto' there, 2.0 here" in again.stderr
    bad = run(*rim, *args, "--noise-sigma", "automatic", check=False)
    assert bad.returncode == 2 and "'automatic' is neither a positive number nor 'auto'" in bad.stderr
    bad = run(*rim, "--data", models / "lenses.h5", "-o", tmp_path / "y.h5", "--exposure-time", 10, check=False)
    assert bad.returncode == 2 and "--exposure-time: exposure_time applies to FITS input only" in bad.stderr
    # the lens one model pixel (2 input pixels) right of the cutout's centre (40.5, 40.5): --center
    args = ("--data", tmp_path / "obs.fits", "-o", tmp_path / "moved.h5", "--psf-fwhm", 0.2, "--center", "42.5,40.5")
    run("reconstruct", "--rim", models / "rim", *args)
    moved = lenssim.read_dataset(tmp_path / "moved.h5", ["observation"])["observation"]
    torch.testing.assert_close(moved[..., :-1], b["observation"][..., 1:], rtol=0, atol=1e-6)
    with fits.open(tmp_path / "moved.fits") as h:  # the sky WCS moves with the field
        np.testing.assert_allclose(WCS(h["MODEL"].header).all_pix2world([[18.5 - 1, 16.5]], 1)[0], [30.0, -10.0])
    again = run("reconstruct", "--rim", models / "rim", *args[:-1], "44.5,40.5", check=False)  # same output
    assert again.returncode == 1 and "fits.center [42.5, 40.5] there, [44.5, 40.5] here" in again.stderr
    bad = run("reconstruct", "--rim", models / "rim", *args[:-1], "40,40,1", check=False)
    assert bad.returncode == 2 and "'40,40,1' is not two finite numbers X,Y" in bad.stderr
    bad = run("reconstruct", "--rim", models / "rim", *args[:-1], "12,40", check=False)
    assert bad.returncode == 1 and "around the lens centre (12, 40) the image holds a field of" in bad.stderr
    # blank input pixels: the 2x2 under model pixel (10, 5) is left out, and said to be
    with fits.open(tmp_path / "obs.fits") as h:
        blank = h[0].data.copy()
        blank[8 + 20 : 8 + 22, 8 + 10 : 8 + 12] = np.nan  # the field starts 8 input pixels in
        fits.HDUList([fits.PrimaryHDU(blank, header=h[0].header), h["NOISE"].copy()]).writeto(tmp_path / "blank.fits")
    args = ("--data", tmp_path / "blank.fits", "-o", tmp_path / "nan.h5", "--psf-fwhm", 0.2)
    said = run("reconstruct", "--rim", models / "rim", *args)
    assert "1 of the 32x32 model pixels had no data" in said.stdout
    m = lenssim.read_dataset(tmp_path / "nan.h5", ["noise_map", "chi2_nu"])
    assert torch.isinf(m["noise_map"]).nonzero().tolist() == [[0, 0, 10, 5]]
    with fits.open(tmp_path / "nan.fits") as h:
        assert np.isnan(h["CHI"].data[10, 5]) and np.isfinite(np.delete(h["CHI"].data.ravel(), 10 * 32 + 5)).all()
        assert h[0].header["NMASKED"] == 1
    # the same pixels flagged in a mask file of their own (--mask): the same reconstruction
    flags = np.zeros(blank.shape, np.uint8)
    flags[np.isnan(blank)] = 1
    fits.PrimaryHDU(flags).writeto(tmp_path / "mask.fits")
    args = ("--data", tmp_path / "obs.fits", "-o", tmp_path / "masked.h5", "--psf-fwhm", 0.2)
    run("reconstruct", "--rim", models / "rim", *args, "--mask", tmp_path / "mask.fits")
    fields = ["noise_map", "source_pred", "kappa_pred", "chi2_nu"]
    a, b = (lenssim.read_dataset(tmp_path / f, fields) for f in ("nan.h5", "masked.h5"))
    assert all(torch.equal(a[k], b[k]) for k in fields)
    fits.PrimaryHDU(flags[1:]).writeto(tmp_path / "short.fits")
    args = (
        "--data",
        tmp_path / "obs.fits",
        "-o",
        tmp_path / "y.h5",
        "--psf-fwhm",
        0.2,
        "--mask",
        tmp_path / "short.fits",
    )
    bad = run("reconstruct", "--rim", models / "rim", *args, check=False)
    assert bad.returncode == 1 and "short.fits: the mask is (79, 80), the image (80, 80)" in bad.stderr
    assert not (tmp_path / "y.h5").exists()
    # the PSF from a file of its own (--psf), on the input's pixel scale: put on the model's
    # pixels of twice the size. Output pixels span input pixels [-3,-1], [-1,1], [1,3] (in
    # half model pixels) over input pixels [-2.5,-1.5], ..., [1.5,2.5]: these overlap weights
    psf = np.arange(1.0, 26.0).reshape(5, 5) ** 2  # asymmetric, so a flip or transpose shows
    hdr = fits.Header()
    hdr["PIXSCALE"] = scale / 2
    fits.PrimaryHDU(psf, header=hdr).writeto(tmp_path / "psf.fits")
    run(*finetune_args(models, tmp_path / "obs.fits", tmp_path / "with-psf.h5", "--psf", tmp_path / "psf.fits"))
    w = np.array([[1, 0.5, 0, 0, 0], [0, 0.5, 1, 0.5, 0], [0, 0, 0, 0.5, 1]])
    expected = w @ psf @ w.T
    got = lenssim.read_dataset(tmp_path / "with-psf.h5", ["psf"])["psf"][0, 0].numpy()
    np.testing.assert_allclose(got, expected / expected.sum(), rtol=1e-5)
    hdr["PIXSCALE"] = scale
    fits.PrimaryHDU(psf, header=hdr).writeto(tmp_path / "psf-coarse.fits")
    bad = run(
        *finetune_args(models, tmp_path / "obs.fits", tmp_path / "x.h5", "--psf", tmp_path / "psf-coarse.fits"),
        check=False,
    )
    assert bad.returncode == 1 and "give the PSF on the image's pixel scale" in bad.stderr
    assert not (tmp_path / "x.h5").exists()


def test_a_catalogue_of_fits_lenses_is_fine_tuned_in_one_batch(models, tmp_path):
    d = lenssim.read_lens_dataset(models / "lenses.h5")
    hdr = fits.Header({"PIXSCALE": OBS.image_fov / 32, "BUNIT": "ELECTRONS/S"})
    for i in range(2):  # lens i on the RIM's grid, in counts, with 4 pixels of margin
        img = np.pad(d["observation"][i, 0].numpy(), 4, mode="edge") * 100.0 * (i + 1)
        fits.PrimaryHDU(img, header=hdr).writeto(tmp_path / f"lens{i}.fits")
    catalogue = tmp_path / "lenses.csv"
    catalogue.write_text("name,fits,psf_fwhm\nleft,lens0.fits,0.2\nright,lens1.fits,0.3\n")
    out = tmp_path / "cat.h5"
    said = run(*finetune_args(models, catalogue, out, "--noise-sigma", 1.0, "--batch-size", 2))
    assert "wrote 2 FITS copies" in said.stdout
    r = lenssim.read_dataset(out, ["observation", "flux_scale", "chi2_nu", "chi2_nu_baseline"])
    torch.testing.assert_close(r["flux_scale"], 100.0 * torch.tensor([1.0, 2.0]) * d["observation"][:2].amax((1, 2, 3)))
    for i, name in enumerate(("left", "right")):
        with fits.open(tmp_path / f"cat.{name}.fits") as h:
            np.testing.assert_allclose(h["OBSERVATION"].data, d["observation"][i, 0].numpy() * 100 * (i + 1), rtol=1e-5)
            assert h[0].header["PSFFWHM"] == [0.2, 0.3][i] and h[0].header["NOISESIG"] == 1.0
            assert h[0].header["CHI2NU"] == pytest.approx(float(r["chi2_nu"][i]))
            # each lens's fit is said as its copy carries it: chi2_nu, and in 4x4 blocks (CHI2BIN)
            chi2, binned = h[0].header["CHI2NU"], h[0].header["CHI2BIN"]
            assert f"{name}: chi2_nu {chi2:.3g}; in 4x4-pixel blocks {binned:.3g} (noise: about 1" in said.stdout
    # the RIM alone on each file gives the fine-tuning's baselines
    for i, name in enumerate(("left", "right")):
        one = tmp_path / f"{name}.h5"
        args = ("--data", tmp_path / f"lens{i}.fits", "-o", one, "--psf-fwhm", [0.2, 0.3][i], "--noise-sigma", 1)
        run("reconstruct", "--rim", models / "rim", *args)
        b = lenssim.read_dataset(one, ["chi2_nu"])["chi2_nu"]
        torch.testing.assert_close(b[0], r["chi2_nu_baseline"][i], rtol=1e-3, atol=0)
    # a rerun with a row changed is refused, naming the lens and the setting
    catalogue.write_text("name,fits,psf_fwhm\nleft,lens0.fits,0.2\nright,lens1.fits,0.25\n")
    again = run(*finetune_args(models, catalogue, out, "--noise-sigma", 1.0, "--batch-size", 2), check=False)
    assert again.returncode == 1 and "fits.lenses[1].psf_fwhm 0.3 there, 0.25 here" in again.stderr
    catalogue.write_text("name,fits,psf_fwhm\nleft,lens0.fits,0.2\nright,lens9.fits,0.3\n")
    bad = run(*finetune_args(models, catalogue, tmp_path / "x.h5", "--noise-sigma", 1.0), check=False)
    assert bad.returncode == 1 and "lenses.csv row 3: " in bad.stderr and "lens9.fits: no such file" in bad.stderr
    assert not (tmp_path / "x.h5").exists() and not list(tmp_path.glob("x.*.fits"))


def test_finetune_and_evaluate_errors(models, tmp_path):
    bad = run(*finetune_args(models, tmp_path / "nope.h5", tmp_path / "x.h5"), check=False)
    assert bad.returncode == 2 and "no such file" in bad.stderr
    bad = run(*finetune_args(models, models / "lenses.h5", tmp_path / "x.h5", "--psf-fwhm", 0.1), check=False)
    assert bad.returncode == 2 and "FITS input only" in bad.stderr
    bad = run(
        *finetune_args(models, models / "lenses.h5", tmp_path / "x.h5", "--psf", models / "lenses.h5"), check=False
    )
    assert bad.returncode == 2 and "Invalid value for --psf" in bad.stderr and "FITS input only" in bad.stderr
    reconstruct = ["reconstruct", "--rim", models / "rim", "--data", models / "lenses.h5", "-o", tmp_path / "x.h5"]
    bad = run(*reconstruct, "--noise-sigma", 0.1, check=False)
    assert bad.returncode == 2 and "Invalid value for --noise-sigma" in bad.stderr and "FITS input only" in bad.stderr
    assert not (tmp_path / "x.h5").exists()
    # a noise to be measured from a sky without scatter (a flat image): one line, nothing written
    fits.PrimaryHDU(np.ones((32, 32)), header=fits.Header({"PIXSCALE": OBS.image_fov / 32})).writeto(
        tmp_path / "flat.fits"
    )
    flat = ["reconstruct", "--rim", models / "rim", "--data", tmp_path / "flat.fits", "-o", tmp_path / "x.h5"]
    bad = run(*flat, "--psf-fwhm", 0.2, "--noise-sigma", "auto", check=False)
    assert bad.returncode == 1 and "flat.fits: the sky has no scatter to measure the noise from" in bad.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["flat.fits"]
    swapped = [
        "finetune",
        "--rim",
        models / "rim",
        "--source-vae",
        models / "kvae",
        "--kappa-vae",
        models / "svae",
        "--data",
        models / "lenses.h5",
        "-o",
        tmp_path / "x.h5",
    ]
    bad = run(*swapped, check=False)
    assert (
        bad.returncode == 2 and "Invalid value for --source-vae: expected a source VAE, got a kappa VAE" in bad.stderr
    )
    assert "fine-tuning" not in bad.stderr  # refused before any work: no progress bar opened
    # training on the fly from a swapped VAE: refused the same way, before any lens is simulated
    on_the_fly = ("train", "rim", "--preset", "tiny", "--kappa-vae", models / "svae", "--sources", "sersic")
    bad = run(*on_the_fly, "--steps", 1, "-o", tmp_path / "rim", check=False)
    assert bad.returncode == 2 and "Invalid value for --kappa-vae: expected a kappa VAE, got a source VAE" in bad.stderr
    assert not (tmp_path / "rim").exists()
    bad = run("evaluate", models / "lenses.h5", "-o", tmp_path / "rep", check=False)
    assert bad.returncode == 1 and "not a reconstruction" in bad.stderr
    assert not (tmp_path / "x.h5").exists()
    # no steps at all: the baseline RIM estimate is the answer, and no step is counted
    args = finetune_args(models, models / "lenses.h5", tmp_path / "zero.h5", "--limit", 2)
    args[args.index("--max-steps") + 1] = 0
    run(*args)
    d = lenssim.read_dataset(tmp_path / "zero.h5", ["chi2_nu", "chi2_nu_baseline", "finetune_steps"])
    assert (d["finetune_steps"] == 0).all() and torch.equal(d["chi2_nu"], d["chi2_nu_baseline"])
