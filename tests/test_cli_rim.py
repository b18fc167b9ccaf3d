"""`lens train rim` and `lens reconstruct` end to end."""

import json

import pytest
import torch
from lens_runner import requires_lens, run

import lenssim

pytestmark = [requires_lens, pytest.mark.slow]


def test_train_resume_and_reconstruct(tmp_path):
    run("simulate", "lenses", "--kappa", "sie", "--sources", "sersic", "-n", 4, "-o", tmp_path / "lenses.h5")
    common = ["--data", tmp_path / "lenses.h5", "--preset", "small", "--batch-size", 1, "--log-every", 1]
    out = run("train", "rim", *common, "--steps", 5, "-o", tmp_path / "whole")
    # in a log (not a terminal) too: where it goes, what it will cost, the progress bar
    assert "training to step 5, from step 0" in out.stderr
    assert "s per step here: the 1 left take about" in out.stderr and "training RIM: 100%" in out.stderr
    assert "chi2_nu(median)" in out.stderr
    out = run("train", "rim", *common, "--steps", 3, "-o", tmp_path / "whole3")
    run("train", "rim", *common, "--steps", 2, "--checkpoint-every", 1, "-o", tmp_path / "part")
    before = {p.name: p.read_bytes() for p in (tmp_path / "part").iterdir()}
    for other, says in ((["--seed", 1], "was trained with seed 0, not 1"), (["--steps", 1], "asked for (1)")):
        bad = run("train", "rim", *common, "--steps", 3, *other, "-o", tmp_path / "part", check=False)
        # refused before it reads the data or says it trains: one line, no progress bar
        assert bad.returncode == 1 and len(bad.stderr.splitlines()) == 1 and says in bad.stderr
    assert {p.name: p.read_bytes() for p in (tmp_path / "part").iterdir()} == before  # refused, nothing written
    with open(tmp_path / "part" / "metrics.jsonl", "a") as f:
        f.write('{"step": 3, "lo')  # a run killed mid-write
    out = run("train", "rim", *common, "--steps", 3, "-o", tmp_path / "part")
    # the library's warning is one line of its own, not Python's file, line and source
    assert f"warning: {tmp_path / 'part' / 'metrics.jsonl'}: dropped a half-written last line" in out.stderr
    assert "UserWarning" not in out.stderr and "read_metrics(" not in out.stderr
    a = torch.load(tmp_path / "whole3" / "checkpoint.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "part" / "checkpoint.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    steps = [json.loads(x)["step"] for x in (tmp_path / "part" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]
    out = run("reconstruct", "--rim", tmp_path / "whole", "--data", tmp_path / "lenses.h5", "-o", tmp_path / "r.h5")
    assert "chi2_nu median" in out.stdout
    d = lenssim.read_dataset(tmp_path / "r.h5", ["source_pred", "kappa_pred", "chi2_nu", "observation"])
    assert d["source_pred"].shape == (4, 1, 128, 128) and (d["kappa_pred"] > 0).all() and (d["chi2_nu"] > 0).all()


def test_train_rim_errors(tmp_path):
    run("simulate", "lenses", "--kappa", "sie", "--sources", "sersic", "-n", 2, "-o", tmp_path / "l.h5")
    bad = run("train", "rim", "--data", tmp_path / "l.h5", "--preset", "tiny", "-o", tmp_path / "r", check=False)
    assert bad.returncode == 2 and "needs 32" in bad.stderr
    bad = run("train", "rim", "-o", tmp_path / "r", check=False)
    assert bad.returncode == 2 and "--data" in bad.stderr
    (tmp_path / "empty").mkdir()
    bad = run(
        "reconstruct", "--rim", tmp_path / "empty", "--data", tmp_path / "l.h5", "-o", tmp_path / "x.h5", check=False
    )
    assert bad.returncode == 1 and "not a RIM run directory" in bad.stderr and not (tmp_path / "x.h5").exists()


def test_train_rim_on_the_fly_reports_the_constant_reference(tmp_path):
    ext = tmp_path / "ext.h5"
    run("simulate", "lenses", "--kappa", "sie", "--sources", "sersic", "-n", 3, "--pixels", 32, "-o", ext)
    out = run(
        "train",
        "rim",
        "--kappa",
        "sie",
        "--sources",
        "sersic",
        "--preset",
        "tiny",
        "--steps",
        4,
        "--log-every",
        2,
        "--batch-size",
        2,
        "--validation-size",
        3,
        "--external",
        ext,
        "--init",
        "glorot",
        "-o",
        tmp_path / "run",
    )
    assert "against the constant predictor" in out.stdout and "external" in out.stdout
    last = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    for key in ("loss_t", "loss_source", "loss_kappa", "val_log10_loss", "val_constant_log10_loss", "ext_loss"):
        assert key in last
    assert json.loads((tmp_path / "run" / "config.json").read_text())["init"] == "glorot"
    assert list((tmp_path / "run").glob("events.out.tfevents.*"))


def test_initial_log10_kappa_must_be_a_number_or_auto(tmp_path):
    for value in ("abc", "nan"):
        bad = run(
            "train",
            "rim",
            "--kappa",
            "sie",
            "--sources",
            "sersic",
            "--preset",
            "tiny",
            "--steps",
            1,
            "--initial-log10-kappa",
            value,
            "-o",
            tmp_path / "r",
            check=False,
        )
        assert bad.returncode == 2 and "--initial-log10-kappa" in bad.stderr and "Traceback" not in bad.stderr
        assert not (tmp_path / "r").exists()


def test_validation_lenses_of_another_geometry_are_refused(tmp_path):
    ext = tmp_path / "ext.h5"
    run("simulate", "lenses", "--kappa", "sie", "--sources", "sersic", "-n", 2, "--pixels", 32, "-o", ext)
    d = lenssim.read_lens_dataset(ext)
    wide = tmp_path / "wide.h5"
    attrs = {k: d["attrs"][k] for k in ("image_fov", "source_fov", "z_lens", "z_source")}
    lenssim.write_dataset(wide, {k: d[k] for k in lenssim.LENS_FIELDS}, {**attrs, "image_fov": 9.0})
    bad = run(
        "train",
        "rim",
        "--kappa",
        "sie",
        "--sources",
        "sersic",
        "--preset",
        "tiny",
        "--steps",
        1,
        "--external",
        wide,
        "-o",
        tmp_path / "r",
        check=False,
    )
    assert bad.returncode == 2 and "--external" in bad.stderr and "image_fov 9 differs" in bad.stderr
    assert "Traceback" not in bad.stderr and not (tmp_path / "r").exists()


def test_training_options_are_saved_kept_on_resume_and_refused_when_senseless(tmp_path):
    common = ["train", "rim", "--kappa", "sie", "--sources", "sersic", "--preset", "tiny", "--batch-size", 2]
    options = [
        "--gradient-preprocessing",
        "rmsprop",
        "--beta2",
        0.9,
        "--time-weights",
        "quadratic",
        "--clipping",
        "per_tensor",
        "--fit-weight",
        0.01,
        "--fit-kappa",
        0.25,
        "--gradient-skip",
        0.02,
        "--skip-normalisation",
        "map",
        "--step-gains",
        "--residual-input",
    ]
    run(*common, *options, "--steps", 2, "--checkpoint-every", 1, "-o", tmp_path / "run")
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    chosen = {
        "gradient_preprocessing": "rmsprop",
        "beta2": 0.9,
        "time_weights": "quadratic",
        "clipping": "per_tensor",
        "fit_weight": 0.01,
        "fit_kappa": 0.25,
        "gradient_skip": 0.02,
        "skip_normalisation": "map",
        "step_gains": True,
        "residual_input": True,
    }
    assert {k: saved[k] for k in chosen} == chosen
    run(*common, "--steps", 3, "-o", tmp_path / "run")  # resumed without the options: the run keeps its own
    again = json.loads((tmp_path / "run" / "config.json").read_text())
    assert {k: again[k] for k in chosen} == chosen and again["train_steps"] == 3
    run(*common, *options, "--steps", 3, "-o", tmp_path / "whole")  # == the uninterrupted run
    a = torch.load(tmp_path / "whole" / "checkpoint.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    for bad, message in (
        (["--beta2", 1], "--beta2"),
        (["--time-weights", "cubic"], "--time-weights"),
        (["--fit-weight", -1], "--fit-weight"),
        (["--clipping", "layer"], "--clipping"),
        (["--fit-kappa", 2], "--fit-kappa"),
        (["--skip-normalisation", "layer"], "--skip-normalisation"),
        (["--skip-normalisation", "map", "--gradient-skip", 0], "--skip-normalisation"),
        (["--gradient-skip", 0.03, "--gradient-preprocessing", "raw"], "--gradient-skip"),
    ):
        out = run(*common, *bad, "--steps", 1, "-o", tmp_path / "bad", check=False)
        assert out.returncode == 2 and message in out.stderr and "Traceback" not in out.stderr
        assert not (tmp_path / "bad").exists()


def test_a_second_stage_run_again_resumes_the_stage_it_began(tmp_path):
    """A requeued `--second-stage` job (the same command after a preemption) goes on with the stage
    it began, on its schedule and with the run's training options, and ends where one
    uninterrupted second stage ends, to the bit."""
    common = ["train", "rim", "--kappa", "sie", "--sources", "sersic", "--preset", "tiny", "--batch-size", 2]
    common += ["--log-every", 2, "--validation-size", 2, "--checkpoint-every", 2]
    for name in ("whole", "requeued"):
        run(*common, "--steps", 4, "--fit-weight", 0.7, "-o", tmp_path / name)
    run(*common, "--second-stage", "--steps", 4, "-o", tmp_path / "whole")
    run(*common, "--second-stage", "--steps", 2, "-o", tmp_path / "requeued")  # stopped at step 6
    run(*common, "--second-stage", "--steps", 4, "-o", tmp_path / "requeued")  # the job's command again
    done = {p.name: p.read_bytes() for p in (tmp_path / "requeued").iterdir() if p.suffix in (".pt", ".jsonl")}
    again = run(*common, "--second-stage", "--steps", 4, "-o", tmp_path / "requeued")  # once more: nothing to do
    assert "from step" not in again.stderr  # no training announced, and none done:
    assert {p.name: p.read_bytes() for p in (tmp_path / "requeued").iterdir() if p.suffix in (".pt", ".jsonl")} == done
    configs = [json.loads((tmp_path / n / "config.json").read_text()) for n in ("whole", "requeued")]
    assert configs[0] == configs[1] and (configs[0]["schedule_start"], configs[0]["train_steps"]) == (4, 8)
    assert configs[0]["fit_weight"] == 0.7  # kept without being given again
    a = torch.load(tmp_path / "whole" / "checkpoint.pt", weights_only=True)
    b = torch.load(tmp_path / "requeued" / "checkpoint.pt", weights_only=True)
    assert a["step"] == b["step"] == 8 and all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
