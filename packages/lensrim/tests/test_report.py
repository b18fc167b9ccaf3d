"""The evaluation report is a library call: from a reconstruction file to metrics.json, figures
and index.html, with the constant predictor beside the reconstruction's numbers; the numbers
are those of independent computations on the same maps."""

import json
import sys
from dataclasses import replace

import numpy as np
import pytest
import torch

import lensrim
import lenssim
from lensrim import report

OBS = lenssim.ObservationConfig(image_pixels=32, source_pixels=32, psf_size=5)


@pytest.fixture(scope="module")
def recon_file(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    lenses = lenssim.simulate_sie_lenses(4, config=OBS, generator=torch.Generator().manual_seed(0))
    lenssim.write_lens_dataset(
        root / "lenses.h5",
        {k: getattr(lenses, k) for k in lenssim.LENS_FIELDS},
        image_fov=OBS.image_fov,
        source_fov=OBS.source_fov,
        z_lens=0.5,
        z_source=1.5,
    )
    torch.manual_seed(0)
    rim = lensrim.RIM(replace(lensrim.PRESETS["tiny"], steps=3)).eval()
    rec = lensrim.reconstruct(rim, lenssim.Observation.from_dataset(root / "lenses.h5"))
    return rec.to_hdf5(root / "recon.h5"), lenses


def test_the_report_is_written_from_python_with_its_references(recon_file, tmp_path):
    path, lenses = recon_file
    rec = report.read_reconstruction(path)
    assert isinstance(rec, lensrim.Reconstruction)
    metrics = report.write_report(rec, tmp_path / "out", title="four SIE lenses")
    on_disk = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert on_disk["lenses"] == metrics["lenses"] == 4
    for name in (
        "index.html",
        "lenses.png",
        "chi2_histogram.png",
        "chi2_vs_snr.png",
        "chi2_by_block.png",
        "coherence.png",
    ):
        assert (tmp_path / "out" / name).stat().st_size > 0, name
    assert not list((tmp_path / "out").glob(".*.tmp"))
    # the loss is eq. 7 of the final maps against the truth, computed here independently
    s, k = rec.source.double(), rec.kappa.double()
    w = torch.sqrt(lenses.kappa.double())
    w = w / w.sum(dim=(-1, -2), keepdim=True)
    by_hand = ((s - lenses.source.double()) ** 2).mean(dim=(1, 2, 3)) + (
        w * (torch.log10(k.clamp_min(1e-6)) - torch.log10(lenses.kappa.double())) ** 2
    ).sum(dim=(1, 2, 3))
    np.testing.assert_allclose(on_disk["per_lens"]["loss_final"], by_hand.numpy(), rtol=1e-4)
    # the constant predictor beside it: source 0, the best constant log10 kappa, on the same lenses
    const = on_disk["constant_predictor"]
    ref = lensrim.metrics.constant_reference(lenses.source, lenses.kappa)
    assert const["log10_kappa"] == pytest.approx(ref.log10_kappa, abs=1e-6)
    gain = on_disk["log10_loss_gain_over_constant"]["final"]
    assert gain == pytest.approx(const["log10_loss"]["mu"] - on_disk["log10_loss"]["final"]["mu"])
    page = (tmp_path / "out" / "index.html").read_text()
    assert "four SIE lenses" in page and "constant predictor" in page and "4 x 4-pixel blocks, final" in page


def _block_chi2_by_hand(y, model, sigma, b):
    """numpy: each b x b block's residual sum over the root of its summed variance, squared, averaged."""
    r = (y - model)[:, 0]
    n = r.shape[-1] // b
    sums = r.reshape(len(r), n, b, n, b).sum(axis=(2, 4))
    return (sums**2 / (b * b * sigma[:, None, None] ** 2)).mean(axis=(1, 2))


def test_the_report_says_whether_the_residuals_are_noise_or_structure(recon_file):
    path, lenses = recon_file
    rec = report.read_reconstruction(path)
    obs = rec.observation
    metrics = report.compute_metrics(rec)
    assert metrics["chi2_nu_binned"]["block_pixels"] == 4
    sigma = obs.noise.double().numpy()
    model = lenssim.lens_image(
        rec.source, rec.kappa.clamp_min(1e-6), image_fov=obs.image_fov, source_fov=rec.source_fov, psf=obs.psf
    )
    by_hand = _block_chi2_by_hand(obs.observation.double().numpy(), model.double().numpy(), sigma, 4)
    np.testing.assert_allclose(metrics["per_lens"]["chi2_nu_binned"], by_hand, rtol=1e-4)
    assert metrics["chi2_nu_binned"]["final"]["median"] == pytest.approx(np.median(by_hand), rel=1e-4)
    # the true maps leave the noise, white: 64 blocks a lens, so about 1 (std sqrt(2 / 256) over the four)
    true = replace(rec, source=lenses.source, kappa=lenses.kappa)
    assert abs(np.mean(report.compute_metrics(true)["per_lens"]["chi2_nu_binned"]) - 1) < 4 * (2 / 256) ** 0.5
    # no light at all leaves the arcs, which add up in the blocks: well above chi2_nu of the same residual
    const = metrics["constant_predictor"]
    assert const["chi2_nu_binned"]["median"] > 2 * const["chi2_nu"]["median"] > 2
    dark = _block_chi2_by_hand(obs.observation.double().numpy(), 0 * model.double().numpy(), sigma, 4)
    assert const["chi2_nu_binned"]["median"] == pytest.approx(np.median(dark), rel=1e-4)
    with pytest.raises(ValueError, match="no baseline estimates"):
        rec.model_image(baseline=True)


def test_the_block_scan_runs_from_chi2_nu_to_the_arcs_scale(recon_file, tmp_path):
    path, lenses = recon_file
    rec = report.read_reconstruction(path)
    metrics = report.compute_metrics(rec)
    scan = metrics["chi2_nu_by_block"]
    assert scan["block_pixels"] == [1, 2, 4, 8] and scan["pixel_arcsec"] == rec.observation.pixel_scale
    # block 1 is chi2_nu itself; block 4 the headline binned value, from the same model images
    assert scan["final"]["median"][0] == pytest.approx(metrics["chi2_nu"]["final"]["median"], rel=1e-4)
    assert scan["final"]["median"][2] == pytest.approx(metrics["chi2_nu_binned"]["final"]["median"], rel=1e-6)
    by_block = rec.binned_chi2_nu_by_block((1, 2, 4, 8))
    assert by_block.shape == (4, 4) and torch.allclose(by_block[2], rec.binned_chi2_nu())
    # the true maps leave white noise: about 1 at every side (mean over the lenses: 4 x (32 / b)^2 blocks)
    true = replace(rec, source=lenses.source, kappa=lenses.kappa).binned_chi2_nu_by_block((1, 2, 4, 8))
    for b, row in zip((1, 2, 4, 8), true, strict=True):
        assert abs(float(row.mean()) - 1) < 4 * (2 / (4 * (32 // b) ** 2)) ** 0.5, (b, row)
    # no light at all: the arcs add up more with every doubling of the block
    dark = scan["constant_predictor"]["median"]
    assert all(dark[i + 1] > 1.5 * dark[i] for i in range(len(dark) - 1))
    report.write_report(rec, tmp_path / "out", title="blocks")
    assert (tmp_path / "out" / "chi2_by_block.png").stat().st_size > 0


def test_metrics_taken_a_few_lenses_at_a_time_are_those_taken_at_once(recon_file, monkeypatch):
    # the per-lens metrics run in chunks (their temporaries stay small over a large test set); the constant
    # predictor's one log10 kappa is still the best over all the lenses, not per chunk
    rec = report.read_reconstruction(recon_file[0])
    at_once = json.dumps(report.compute_metrics(rec))
    for size in (1, 3):
        monkeypatch.setattr(lensrim.metrics, "EVAL_CHUNK", size)
        assert lensrim.metrics.chunks(4) == [slice(i, min(i + size, 4)) for i in range(0, 4, size)]
        assert json.dumps(report.compute_metrics(rec)) == at_once


def test_a_file_that_is_not_a_reconstruction_is_refused_in_one_line(tmp_path):
    lenses = lenssim.simulate_sie_lenses(2, config=OBS, generator=torch.Generator().manual_seed(1))
    path = lenses.to_hdf5(tmp_path / "lenses.h5", image_fov=OBS.image_fov, source_fov=OBS.source_fov)
    with pytest.raises(lenssim.DatasetError, match="not a reconstruction .missing source_pred"):
        report.read_reconstruction(path)


def test_without_matplotlib_the_figures_name_the_extra_to_install(recon_file, tmp_path, monkeypatch):
    path, _ = recon_file
    rec = report.read_reconstruction(path)
    metrics = report.compute_metrics(rec)  # the numbers need no plotting library
    assert metrics["lenses"] == 4
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ImportError, match=r"lensrim\[report\]"):
        report.figures(rec, metrics, tmp_path)
    with pytest.raises(TypeError, match="reads a lensrim.Reconstruction"):
        report.compute_metrics({"chi2_nu": rec.chi2_nu})


def test_a_killed_reports_temporaries_go_and_a_perfect_reconstruction_has_a_finite_loss(recon_file, tmp_path):
    import subprocess

    path, lenses = recon_file
    rec = report.read_reconstruction(path)
    truth = rec.observation.truth
    rec = replace(rec, source=truth["source"], kappa=truth["kappa"])  # loss exactly 0
    out = tmp_path / "out"
    out.mkdir()
    dead = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True).stdout)
    (out / f".chi2_histogram.png.{dead}.tmp").write_bytes(b"half a figure")  # left by a killed writer
    metrics = report.write_report(rec, out, title="exact")
    assert not list(out.glob(".*.tmp"))
    assert metrics["log10_loss"]["final"]["mu"] == pytest.approx(np.log10(report.LOSS_FLOOR))


def test_a_report_on_masked_data_blanks_those_pixels_and_counts_only_the_others(recon_file, tmp_path):
    path, _ = recon_file
    rec = report.read_reconstruction(path)
    noise = rec.observation.noise.reshape(-1, 1, 1, 1).expand_as(rec.observation.observation).clone()
    noise[1, 0, 5:9, 3] = float("inf")  # four pixels of lens 1 without data
    obs = replace(rec.observation, noise=noise)
    model = rec.model_image()
    data, resid = report.data_panels(obs, model[1], 1)
    blank = np.zeros((32, 32), bool)
    blank[5:9, 3] = True
    assert np.isnan(data[blank]).all() and np.isnan(resid[blank]).all()
    expected = (rec.observation.observation[1, 0] - model[1, 0]).numpy() / float(rec.observation.noise[1])
    np.testing.assert_allclose(resid[~blank], expected[~blank], rtol=1e-5)
    assert np.isfinite(data[~blank]).all()
    masked = replace(rec, observation=obs)
    metrics = report.write_report(masked, tmp_path / "out", title="masked")
    assert metrics["lenses"] == 4 and (tmp_path / "out" / "lenses.png").stat().st_size > 0
    assert lenssim.data_pixels(noise, obs.observation).tolist() == [1024, 1020, 1024, 1024]
