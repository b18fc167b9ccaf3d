"""`lens train vae` and `lens sample` end to end."""

import json

import pytest
import torch
from lens_runner import requires_lens, run

import lenssim

pytestmark = [requires_lens, pytest.mark.slow]


@pytest.fixture(scope="module")
def kappa_file(tmp_path_factory):
    d = tmp_path_factory.mktemp("priors")
    run("simulate", "kappa", "--synthetic", 2, "--maps-per-halo", 4, "--test-fraction", 0.5, "-o", d / "kappa.h5")
    return d / "kappa.h5"


def _train(kappa_file, out, steps):
    return run(
        "train",
        "vae",
        "--kind",
        "kappa",
        "--data",
        kappa_file,
        "-o",
        out,
        "--preset",
        "small",
        "--steps",
        steps,
        "--batch-size",
        2,
        "--checkpoint-every",
        5,
        "--log-every",
        5,
    )


def test_train_resume_sample_and_use(kappa_file, tmp_path):
    _train(kappa_file, tmp_path / "whole", 20)
    _train(kappa_file, tmp_path / "part", 10)
    # resumes at 10 given only more steps, the preset named again or not: the run keeps its batch size
    bare = ("train", "vae", "--kind", "kappa", "--data", kappa_file, "-o", tmp_path / "part", "--checkpoint-every", 5)
    run(*bare, "--steps", 15, "--log-every", 5)
    run(*bare, "--steps", 20, "--log-every", 5, "--preset", "small")
    a = torch.load(tmp_path / "whole" / "checkpoint.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "part" / "checkpoint.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    metrics = [json.loads(x) for x in (tmp_path / "part" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [5, 10, 15, 20] and "val_loss" in metrics[-1]
    assert (tmp_path / "part" / "samples.png").read_bytes()[:4] == b"\x89PNG"
    before = {p.name: p.read_bytes() for p in (tmp_path / "part").iterdir()}
    for args, says in (
        (("--steps", 10), "its checkpoint is at step 20, past the last step asked for (10)"),
        (("--steps", 30, "--seed", 1), "was trained with seed 0, not 1"),
        (("--steps", 30, "--latent-dim", 8), "another configuration (latent_dim 16 there, 8 here)"),
        (("--steps", 30, "--preset", "paper"), "another configuration (filters 8 there, 16 here;"),
        (("--steps", 30, "--preset", "small", "--batch-size", 4), "another configuration (batch_size 2 there, 4 here)"),
    ):  # refused before the bar opens: one line, nothing written
        common = ("train", "vae", "--kind", "kappa", "--data", kappa_file, "--preset", "small", "--batch-size", 2)
        bad = run(*common, *args, "-o", tmp_path / "part", check=False)
        assert bad.returncode == 1 and len(bad.stderr.splitlines()) == 1 and says in bad.stderr, bad.stderr
    gone = tmp_path / "gone.h5"  # the run is refused before the data are read
    gone = run("train", "vae", "--kind", "kappa", "--data", gone, "--steps", 10, "-o", tmp_path / "part", check=False)
    assert "past the last step asked for (10)" in gone.stderr
    assert {p.name: p.read_bytes() for p in (tmp_path / "part").iterdir()} == before
    run("sample", "--vae", tmp_path / "whole", "-n", 5, "-o", tmp_path / "draws.h5", "--seed", 1)
    d = lenssim.read_dataset(tmp_path / "draws.h5", ["kappa", "split"])
    assert d["kappa"].shape == (5, 1, 128, 128) and (d["kappa"] > 0).all()
    assert d["attrs"]["image_fov"] == pytest.approx(7.69)
    sampler, _ = lenssim.h5_pool_sampler(tmp_path / "draws.h5", "kappa", split="train", expected_pixels=128)
    assert sampler(3, torch.Generator().manual_seed(0)).shape == (3, 1, 128, 128)  # usable by simulate lenses
    run("sample", "--vae", tmp_path / "whole", "-n", 5, "-o", tmp_path / "again.h5", "--seed", 1)
    assert (tmp_path / "draws.h5").read_bytes() == (tmp_path / "again.h5").read_bytes()


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "vae", "--kind", "source", "--data", "KAPPA", "-o", "run"], "no 'source' dataset"),
        (["train", "vae", "--kind", "kappa", "--data", "missing.h5", "-o", "run"], "no such file"),
        (["sample", "--vae", "nowhere", "-n", 2, "-o", "x.h5"], "not a VAE run directory"),
    ],
)
def test_errors_are_one_line(kappa_file, tmp_path, args, message):
    args = [
        str(kappa_file) if a == "KAPPA" else str(tmp_path / a) if a in ("run", "missing.h5", "nowhere", "x.h5") else a
        for a in args
    ]
    proc = run(*args, check=False)
    assert proc.returncode == 1
    errors = [line for line in proc.stderr.splitlines() if line.startswith("Error")]
    assert len(errors) == 1 and message in errors[0]
    assert not (tmp_path / "x.h5").exists()


def test_denoiser_trains_and_cleans_sources(tmp_path):
    run("simulate", "sources", "--synthetic", 8, "-o", tmp_path / "clean.h5")
    run("train", "denoiser", "--data", tmp_path / "clean.h5", "-o", tmp_path / "den", "--steps", 6, "--noise-max", 0.3)
    run("train", "denoiser", "--data", tmp_path / "clean.h5", "-o", tmp_path / "den", "--steps", 10)  # keeps 0.3
    assert json.loads((tmp_path / "den" / "config.json").read_text())["noise_max"] == 0.3
    out = run("simulate", "sources", "--synthetic", 3, "--denoiser", tmp_path / "den", "-o", tmp_path / "s.h5")
    assert "denoised with" in out.stdout
    d = lenssim.read_dataset(tmp_path / "s.h5", ["source"])
    assert json.loads(d["attrs"]["config"])["denoiser"] == str(tmp_path / "den")
    plain = lenssim.read_dataset(tmp_path / "clean.h5", ["source"])["source"][:3]
    assert not torch.equal(d["source"], plain)  # the denoiser was applied (same seed, other pixels)
    bad = run("simulate", "sources", "--synthetic", 2, "--denoiser", tmp_path, "-o", tmp_path / "x.h5", check=False)
    assert bad.returncode == 1 and "not a denoiser run directory" in bad.stderr
