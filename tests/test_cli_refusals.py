"""What lens refuses: inputs that are well-formed but mean nothing (zero noise, PSFs that do not
sum to 1, NaN weights, 1e30 images, a source field far beyond the image, impossible options).
Each is one line naming the file or option, a non-zero exit, and no new or changed file."""

import hashlib
import json
from dataclasses import replace

import h5py
import numpy as np
import pytest
import torch
from lens_runner import requires_lens, run

import lensprior
import lensrim
import lenssim
from lensrim.training import SimulatedBatches, train_rim

pytestmark = [requires_lens, pytest.mark.slow]
OBS = lenssim.ObservationConfig(image_pixels=32, source_pixels=32, psf_size=5)
TINY_VAE = dict(pixels=32, levels=2, filters=4, latent_dim=4, batch_size=4)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("refusals")
    lenses = lenssim.simulate_sie_lenses(4, config=OBS, generator=torch.Generator().manual_seed(0))
    good = {k: getattr(lenses, k).numpy() for k in lenssim.LENS_FIELDS}
    attrs = dict(image_fov=OBS.image_fov, source_fov=OBS.source_fov, z_lens=0.5, z_source=1.5)
    lenssim.write_lens_dataset(root / "good.h5", good, **attrs)
    bad = {
        "sigma0.h5": ({"noise_sigma": np.zeros(4, np.float32)}, {}),
        "psf7.h5": ({"psf": good["psf"] * 7}, {}),
        "bright.h5": ({"observation": np.full_like(good["observation"], 1e30)}, {}),
        "nan.h5": ({"observation": np.where(np.arange(32) == 3, np.nan, good["observation"])}, {}),
        "fov30.h5": ({}, {"source_fov": 30.0}),
    }
    for name, (arrays, extra) in bad.items():
        lenssim.write_lens_dataset(root / name, {**good, **arrays}, **{**attrs, **extra})
    stamps = torch.from_numpy(good["source"])
    lensprior.train_vae(lensprior.source_vae_config(**TINY_VAE, steps=2), stamps, root / "svae")
    lensprior.train_vae(lensprior.kappa_vae_config(**TINY_VAE, steps=2), torch.from_numpy(good["kappa"]), root / "kvae")
    _stamps_with_a_nan(root / "nan-stamps.h5", row=2, split=[0, 0, 0, 0])
    recon = {**good, "source_pred": good["source"], "kappa_pred": good["kappa"], "chi2_nu": np.ones(4, np.float32)}
    recon["noise_sigma"] = np.zeros(4, np.float32)
    lenssim.write_lens_dataset(root / "recon-sigma0.h5", recon, **attrs)
    batches = SimulatedBatches(lenssim.sie_kappa_sampler(config=OBS), lenssim.sersic_source_sampler(config=OBS), OBS)
    # the RIM's geometry is its config's (OBS's fields of view): what the data are checked against
    train_rim(replace(lensrim.PRESETS["tiny"], steps=2), batches, root / "rim", steps=1, tensorboard=False)
    lenssim.write_lens_dataset(root / "fov2.h5", good, **{**attrs, "source_fov": 2.0})
    lenssim.write_dataset(
        root / "sources-fov2.h5", {"source": good["source"], "split": np.zeros(4, np.int64)}, {"source_fov": 2.0}
    )
    _stamps_with_a_nan(root / "nan-test.h5", row=3, split=[0, 0, 0, 1])  # only the test split is bad
    (root / "rim-steps").mkdir()
    config = json.loads((root / "rim" / "config.json").read_text())
    (root / "rim-steps" / "config.json").write_text(json.dumps({**config, "steps": 10**9}))
    (root / "rim-steps" / "checkpoint.pt").write_bytes((root / "rim" / "checkpoint.pt").read_bytes())
    (root / "nanvae").mkdir()
    (root / "nanvae" / "config.json").write_text((root / "svae" / "config.json").read_text())
    state = torch.load(root / "svae" / "checkpoint.pt", weights_only=True)
    first = next(iter(state["model"]))
    state["model"][first] = torch.full_like(state["model"][first], float("nan"))
    torch.save(state, root / "nanvae" / "checkpoint.pt")
    _issue_26_inputs(root, good, attrs)
    return root


def _issue_26_inputs(root, good, attrs):
    """Inputs that were accepted, crashed or changed files before (issue 26)."""
    rng = np.random.default_rng(0)
    stamps = rng.random((4, 1, 128, 128)).astype(np.float32)
    split = np.array([0, 0, 0, 1], np.int64)
    lenssim.write_dataset(root / "stamps128.h5", {"source": stamps, "split": split}, {"source_fov": 3.0})
    lenssim.write_dataset(root / "sources-fov30.h5", {"source": stamps, "split": split}, {"source_fov": 30.0})
    zero = np.zeros((4, 1, 128, 128), np.float32)
    lenssim.write_dataset(root / "zero-kappa.h5", {"kappa": zero, "split": split}, {"image_fov": 7.68})
    # a run directory whose checkpoint is another architecture's: the resume must change nothing
    run(
        "train",
        "vae",
        "--kind",
        "source",
        "--preset",
        "small",
        "--steps",
        "2",
        "--data",
        root / "stamps128.h5",
        "-o",
        root / "vae-mixed",
    )
    other = lensprior.source_vae_config(pixels=128, levels=3, filters=4, latent_dim=4, batch_size=2, steps=1)
    lensprior.train_vae(other, torch.from_numpy(stamps), root / "vae-f4")
    (root / "vae-mixed" / "checkpoint.pt").write_bytes((root / "vae-f4" / "checkpoint.pt").read_bytes())
    # one dataset, two resolutions
    (root / "mixed-shards").mkdir()
    (root / "mixed-shards" / "a.h5").write_bytes((root / "good.h5").read_bytes())
    obs64 = lenssim.ObservationConfig(image_pixels=64, source_pixels=64, psf_size=5)
    wide = lenssim.simulate_sie_lenses(2, config=obs64, generator=torch.Generator().manual_seed(1))
    arrays = {k: getattr(wide, k).numpy() for k in lenssim.LENS_FIELDS}
    lenssim.write_lens_dataset(root / "mixed-shards" / "b.h5", arrays, **attrs)


def _stamps_with_a_nan(path, *, row, split):
    """Four 128^2 source stamps (the default VAE preset's size) with one NaN in ``row``."""
    stamps = np.zeros((4, 1, 128, 128), np.float32)
    stamps[row, 0, 60, 60] = np.nan
    with h5py.File(path, "w") as f:
        f["source"] = stamps
        f["split"] = np.asarray(split, np.int64)


def snapshot(root):
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()}


FT = ["finetune", "--rim", "{d}/rim", "--source-vae", "{d}/svae", "--kappa-vae", "{d}/kvae", "--max-steps", "1"]


@pytest.mark.parametrize(
    "args, code, message",
    [
        (
            ["reconstruct", "--rim", "{d}/rim", "--data", "{d}/sigma0.h5", "-o", "{d}/out.h5"],
            1,
            "noise must be positive",
        ),
        ([*FT, "--data", "{d}/psf7.h5", "-o", "{d}/out.h5"], 1, "psf7.h5: a PSF sums to 7"),
        ([*FT, "--data", "{d}/bright.h5", "-o", "{d}/out.h5"], 1, "bright.h5: dataset 'observation' holds values"),
        ([*FT, "--data", "{d}/fov30.h5", "-o", "{d}/out.h5"], 1, "source_fov 30.0 exceeds image_fov"),
        ([*FT, "--data", "{d}/good.h5", "-o", "{d}/out.h5", "--lambda", "nan"], 2, "'nan' is not a finite number"),
        ([*FT, "--data", "{d}/good.h5", "-o", "{d}/out.h5", "--learning-rate", "inf"], 2, "not a finite number"),
        (["train", "rim", "--data", "{d}/nan.h5", "--preset", "tiny", "-o", "{d}/run"], 1, "NaN"),
        (
            ["train", "rim", "--data", "{d}/good.h5", "--preset", "tiny", "--learning-rate", "inf", "-o", "{d}/run"],
            2,
            "not a finite number",
        ),
        (["train", "vae", "--kind", "source", "--data", "{d}/nan-stamps.h5", "-o", "{d}/run"], 1, "NaN"),
        (
            ["train", "vae", "--kind", "source", "--data", "{d}/good.h5", "--learning-rate", "inf", "-o", "{d}/run"],
            2,
            "not a finite number",
        ),
        (["sample", "--vae", "{d}/nanvae", "-n", "2", "-o", "{d}/out.h5"], 1, "hold NaN or infinite values"),
        (["evaluate", "{d}/recon-sigma0.h5", "-o", "{d}/report"], 1, "noise must be positive"),
        (["simulate", "sources", "--synthetic", "2", "--pixel-scale", "nan", "-o", "{d}/out.h5"], 2, "finite"),
        (["simulate", "kappa", "--synthetic", "1", "--max-shift", "nan", "-o", "{d}/out.h5"], 2, "finite"),
        # units against the run's geometry
        (
            ["reconstruct", "--rim", "{d}/rim", "--data", "{d}/fov2.h5", "-o", "{d}/out.h5"],
            2,
            "source_fov 2 differs from the RIM's 3 arcsec",
        ),
        ([*FT, "--data", "{d}/fov2.h5", "-o", "{d}/out.h5"], 2, "source_fov 2 differs from the RIM's 3"),
        (
            [
                "simulate",
                "lenses",
                "--kappa",
                "sie",
                "--sources",
                "{d}/sources-fov2.h5",
                "--pixels",
                "32",
                "--split",
                "all",
                "-n",
                "1",
                "-o",
                "{d}/out.h5",
            ],
            2,
            "source_fov 2 differs from the simulation's 3 arcsec",
        ),
        (["train", "vae", "--kind", "source", "--data", "{d}/nan-test.h5", "-o", "{d}/run"], 1, "NaN"),
        # impossible sizes fail at once, naming the option or field
        (["simulate", "kappa", "--synthetic", "1", "--render-kpc", "1e-6", "-o", "{d}/out.h5"], 2, "--render-kpc"),
        (
            ["simulate", "kappa", "--synthetic", "1", "--maps-per-halo", "1000000000", "-o", "{d}/out.h5"],
            2,
            "--maps-per-halo",
        ),
        (["simulate", "kappa", "--synthetic", "1000000000", "-o", "{d}/out.h5"], 2, "--synthetic"),
        (["simulate", "sources", "--synthetic", "2", "--pixel-scale", "1e6", "-o", "{d}/out.h5"], 2, "--pixel-scale"),
        (
            [
                "simulate",
                "lenses",
                "--kappa",
                "sie",
                "--sources",
                "sersic",
                "-n",
                "2",
                "--block-size",
                "1000000000",
                "-o",
                "{d}/out.h5",
            ],
            2,
            "--block-size",
        ),
        (
            [
                "simulate",
                "lenses",
                "--kappa",
                "sie",
                "--sources",
                "sersic",
                "--pixels",
                "32",
                "-n",
                "1000000000",
                "-o",
                "{d}/out.h5",
            ],
            1,
            "no space left on the device",
        ),
        (["sample", "--vae", "{d}/svae", "-n", "1000000000", "-o", "{d}/out.h5"], 1, "no space left on the device"),
        (
            ["reconstruct", "--rim", "{d}/rim-steps", "--data", "{d}/good.h5", "-o", "{d}/out.h5"],
            1,
            "steps is 1000000000, beyond the largest sensible value 1000",
        ),
        (
            ["simulate", "lenses", "--kappa", "sie", "--sources", "sersic", "-n", "1", "-o", "{d}/newdir/"],
            2,
            "ends in a slash",
        ),
        # issue 26: a refused resume rewrote config.json and run.json
        (
            [
                "train",
                "vae",
                "--kind",
                "source",
                "--preset",
                "small",
                "--steps",
                "3",
                "--data",
                "{d}/stamps128.h5",
                "-o",
                "{d}/vae-mixed",
            ],
            1,
            "weights do not fit the configuration",
        ),
        # issue 26: accepted with exit 0 (NaN in the test split, maps with no mass, a source field in other units)
        (["train", "denoiser", "--data", "{d}/nan-test.h5", "--steps", "1", "-o", "{d}/run"], 1, "NaN"),
        (["train", "vae", "--kind", "kappa", "--data", "{d}/zero-kappa.h5", "-o", "{d}/run"], 1, "zero everywhere"),
        (
            ["train", "vae", "--kind", "source", "--data", "{d}/sources-fov30.h5", "-o", "{d}/run"],
            2,
            "source_fov 30 arcsec exceeds",
        ),
        # issue 26: tracebacks, or no bound
        (
            ["train", "rim", "--data", "{d}/mixed-shards", "--preset", "tiny", "-o", "{d}/run"],
            1,
            "one dataset holds one resolution",
        ),
        (
            [
                "simulate",
                "lenses",
                "--kappa",
                "sie",
                "--sources",
                "sersic",
                "--pixels",
                "100000",
                "-n",
                "1",
                "-o",
                "{d}/out.h5",
            ],
            2,
            "--pixels",
        ),
        (["demo", "--threads", "100000", "-o", "{d}/run"], 2, "at most"),
        (
            [
                "reconstruct",
                "--rim",
                "{d}/rim",
                "--data",
                "{d}/good.h5",
                "-o",
                "{d}/out.h5",
                "--batch-size",
                "100000000000",
            ],
            1,
            "more than the",
        ),
    ],
)
def test_meaningless_input_is_refused_in_one_line_and_changes_nothing(root, args, code, message):
    args = [a.format(d=root) for a in args]
    before = snapshot(root)
    proc = run(*args, check=False)
    assert proc.returncode == code, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("Error")]
    assert len(errors) == 1 and message in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr
    assert snapshot(root) == before  # no new file, no changed file, no leftover directory
    assert not (root / "run").exists() and not (root / ".out.h5.blocks").exists()
    assert not (root / "newdir").exists()
