"""The commands' logic in-process (click's runner, no subprocess): a tiny pipeline from simulation
to the report, each command's output checked against the library calls it stands for, and the
one-line refusals. The subprocess tests in tests/ (marked slow) check the installed script."""

import json

import pytest
import torch
from click.testing import CliRunner

import lensrim
import lenssim
from lens_cli.main import cli


def invoke(*args, code=0):
    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == code, result.output
    return result


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    invoke("simulate", "lenses", "--kappa", "sie", "--sources", "sersic", "-n", 6, "--pixels", 32, "-o", d / "l.h5")
    invoke(
        "train",
        "rim",
        "--data",
        d / "l.h5",
        "--preset",
        "tiny",
        "--steps",
        2,
        "--batch-size",
        2,
        "--validation-size",
        2,
        "--log-every",
        1,
        "-o",
        d / "rim",
    )
    invoke("reconstruct", "--rim", d / "rim", "--data", d / "l.h5", "-o", d / "rec.h5", "--batch-size", 4)
    return d


def test_simulated_lenses_are_their_maps_through_the_library_ray_tracer_plus_noise(pipeline):
    data = lenssim.read_lens_dataset(pipeline / "l.h5")
    assert data["observation"].shape == (6, 1, 32, 32)
    # every stored lens obeys the lens equation through the library's ray tracer, with its own PSF
    model = lenssim.lens_image(data["source"], data["kappa"], psf=data["psf"])
    chi2 = lenssim.chi2_nu(data["observation"], model, data["noise_sigma"])
    assert ((chi2 - 1).abs() < 0.3).all()  # the residual is the noise alone


def test_reconstruct_is_lensrim_reconstruct_on_the_same_lenses(pipeline):
    rec = lensrim.Reconstruction.from_hdf5(pipeline / "rec.h5")
    again = lensrim.reconstruct(lensrim.load(pipeline / "rim"), lenssim.Observation.from_dataset(pipeline / "l.h5"))
    torch.testing.assert_close(rec.source, again.source)
    torch.testing.assert_close(rec.chi2_nu, again.chi2_nu)
    log = [json.loads(line) for line in (pipeline / "rim" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in log] == [1, 2] and all("constant_loss" in m for m in log)


def test_a_resume_that_names_no_preset_or_batch_size_keeps_the_runs(pipeline, tmp_path):
    common = ("train", "rim", "--data", pipeline / "l.h5", "--validation-size", 2, "-o", tmp_path / "rim")
    invoke(*common, "--preset", "tiny", "--batch-size", 2, "--steps", 1)
    out = invoke(*common, "--steps", 2).output  # the tiny preset at batch 2, not small's defaults
    assert "training to step 2, from step 1" in out
    assert lensrim.load(tmp_path / "rim").config == lensrim.load(pipeline / "rim").config


def test_evaluate_writes_the_report_with_its_reference(pipeline, tmp_path):
    out = invoke("evaluate", pipeline / "rec.h5", "-o", tmp_path / "report").output
    metrics = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert f"{metrics['lenses']} lenses" in out and metrics["lenses"] == 6
    assert "constant_predictor" in metrics and (tmp_path / "report" / "index.html").is_file()


@pytest.mark.parametrize(
    "args, message",
    [
        (["evaluate", "{d}/l.h5", "-o", "{t}/r"], "not a reconstruction (missing source_pred"),
        (["reconstruct", "--rim", "{d}/rim", "--data", "{d}/nothing.h5", "-o", "{t}/x.h5"], "nothing.h5"),
        (  # a finished dataset made with other settings is never replaced by accident
            ["simulate", "lenses", "--kappa", "sie", "--sources", "sersic", "-n", "2", "-o", "{d}/l.h5"],
            "l.h5 exists and was not made with these settings",
        ),
    ],
)
def test_bad_input_is_one_line_and_a_nonzero_exit(pipeline, tmp_path, args, message):
    before = {p: p.read_bytes() for p in pipeline.rglob("*") if p.is_file()}
    result = CliRunner().invoke(cli, [a.format(d=pipeline, t=tmp_path) for a in args])
    assert result.exit_code != 0 and message in result.output, result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) <= 3
    assert "|" not in result.output  # no progress bar was opened before the refusal
    assert {p: p.read_bytes() for p in pipeline.rglob("*") if p.is_file()} == before  # nothing changed
