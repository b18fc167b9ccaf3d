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
    return root


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
        ),  # fmt: skip
        (["train", "vae", "--kind", "source", "--data", "{d}/nan-stamps.h5", "-o", "{d}/run"], 1, "NaN"),
        (
            ["train", "vae", "--kind", "source", "--data", "{d}/good.h5", "--learning-rate", "inf", "-o", "{d}/run"],
            2,
            "not a finite number",
        ),  # fmt: skip
        (["sample", "--vae", "{d}/nanvae", "-n", "2", "-o", "{d}/out.h5"], 1, "hold NaN or infinite values"),
        (["evaluate", "{d}/recon-sigma0.h5", "-o", "{d}/report"], 1, "noise must be positive"),
        (["simulate", "sources", "--synthetic", "2", "--pixel-scale", "nan", "-o", "{d}/out.h5"], 2, "finite"),
        (["simulate", "kappa", "--synthetic", "1", "--max-shift", "nan", "-o", "{d}/out.h5"], 2, "finite"),
        # units against the run's geometry
        (
            ["reconstruct", "--rim", "{d}/rim", "--data", "{d}/fov2.h5", "-o", "{d}/out.h5"],
            2,
            "source_fov 2 differs from the RIM's 3 arcsec",
        ),  # fmt: skip
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
            "source_fov 2.0 differs from 3.0",
        ),  # fmt: skip
        (["train", "vae", "--kind", "source", "--data", "{d}/nan-test.h5", "-o", "{d}/run"], 1, "NaN"),
        # impossible sizes fail at once, naming the option or field
        (["simulate", "kappa", "--synthetic", "1", "--render-kpc", "1e-6", "-o", "{d}/out.h5"], 2, "--render-kpc"),
        (
            ["simulate", "kappa", "--synthetic", "1", "--maps-per-halo", "1000000000", "-o", "{d}/out.h5"],
            2,
            "--maps-per-halo",
        ),  # fmt: skip
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
        ),  # fmt: skip
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
        ),  # fmt: skip
        (["sample", "--vae", "{d}/svae", "-n", "1000000000", "-o", "{d}/out.h5"], 1, "no space left on the device"),
        (
            ["reconstruct", "--rim", "{d}/rim-steps", "--data", "{d}/good.h5", "-o", "{d}/out.h5"],
            1,
            "steps is 1000000000, beyond the largest sensible value 1000",
        ),  # fmt: skip
        (
            ["simulate", "lenses", "--kappa", "sie", "--sources", "sersic", "-n", "1", "-o", "{d}/newdir/"],
            2,
            "ends in a slash",
        ),  # fmt: skip
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
