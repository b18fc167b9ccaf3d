"""A fuzzer against every reader: malformed files derived from valid ones, fed to the commands.

Hypothesis draws a valid input (a lens dataset, a kappa dataset, a reconstruction, a FITS
observation, a RIM or VAE run directory), one way of breaking it (a field deleted, made a
group, given another dtype, shape or length, NaN, inf, zeros, extreme values; an attribute
deleted or made nonsense; a header keyword, an HDU; a config field or a checkpoint from
elsewhere; a truncated file) and a command that reads it. Whatever it draws, the command
either succeeds without touching its inputs, or refuses: a non-zero exit, one ``Error`` line
naming the broken file and no traceback, and every file as it was, nothing new.

The commands run in this process (click's runner): a few minutes for the small budget of
``nox`` (25 draws per reader); ``nox -s fuzz`` draws 500. The seed is fixed
(``derandomize``), so a failure reproduces; a failing draw is kept below as an ``@example``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from astropy.io import fits
from click.testing import CliRunner
from hypothesis import HealthCheck, example, given, settings, strategies as st

import lensprior
import lensrim
import lenssim
from lens_cli.main import cli
from lensrim.training import SimulatedBatches, train_rim

pytestmark = pytest.mark.slow
EXAMPLES = int(os.environ.get("LENS_FUZZ_EXAMPLES", "25"))
OBS = lenssim.ObservationConfig(image_pixels=32, source_pixels=32, psf_size=5)
TINY_VAE = dict(pixels=32, levels=2, filters=4, latent_dim=4, batch_size=4)
FUZZ = settings(
    max_examples=EXAMPLES,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


@pytest.fixture(scope="module")
def valid(tmp_path_factory):
    """The valid inputs every malformed one is derived from."""
    root = tmp_path_factory.mktemp("valid")
    lenses = lenssim.simulate_sie_lenses(4, config=OBS, generator=torch.Generator().manual_seed(0))
    good = {k: getattr(lenses, k).numpy() for k in lenssim.LENS_FIELDS}
    attrs = dict(image_fov=OBS.image_fov, source_fov=OBS.source_fov, z_lens=0.5, z_source=1.5)
    lenssim.write_lens_dataset(root / "lenses.h5", good, **attrs)
    split = np.zeros(4, np.int64)
    lenssim.write_dataset(root / "kappa.h5", {"kappa": good["kappa"], "split": split}, {"image_fov": OBS.image_fov})
    recon = {**good, "source_pred": good["source"], "kappa_pred": good["kappa"], "chi2_nu": np.ones(4, np.float32)}
    lenssim.write_lens_dataset(root / "recon.h5", recon, **attrs)
    image = good["observation"][0, 0].astype(np.float64) * 100
    header = fits.Header()
    header["CDELT2"] = OBS.image_fov / OBS.image_pixels / 3600
    noise = np.full_like(image, 2.0)
    fits.HDUList([fits.PrimaryHDU(image, header=header), fits.ImageHDU(noise, name="NOISE")]).writeto(root / "obs.fits")
    stamps = torch.from_numpy(good["source"])
    lensprior.train_vae(lensprior.source_vae_config(**TINY_VAE, steps=2), stamps, root / "svae")
    lensprior.train_vae(lensprior.kappa_vae_config(**TINY_VAE, steps=2), torch.from_numpy(good["kappa"]), root / "kvae")
    batches = SimulatedBatches(lenssim.sie_kappa_sampler(config=OBS), lenssim.sersic_source_sampler(config=OBS), OBS)
    args = ["train", "rim", "--preset", "tiny", "--steps", "2", "--data", root / "lenses.h5", "--validation-size", "1"]
    made = CliRunner().invoke(cli, [str(a) for a in [*args, "-o", root / "rim"]])
    assert made.exit_code == 0, made.output  # a run the fuzzed `train rim` resumes when nothing is broken
    small = replace(lensrim.PRESETS["tiny"], filters=4, max_filters=8, steps=2)  # another architecture
    train_rim(small, batches, root / "rim-other", steps=1, tensorboard=False)
    return root


# ---------------------------------------------------------------------------------------------
# how a file is broken


FIELD_BREAKS = ("delete", "group", "nan", "inf", "huge", "negative", "tiny", "ndim", "nonsquare", "length", "string")
ATTR_BREAKS = ("delete", "text", "nan", "negative", "zero", "huge", "array")
MUST_REFUSE = {"delete", "group", "nan", "inf", "ndim", "nonsquare", "length", "string", "text", "array"}
"""Breaks that leave no sensible reading: the command must refuse them (the others, an extreme
but finite value or a missing optional attribute, may also be read correctly)."""


def break_field(path: Path, name: str, how: str) -> None:
    with h5py.File(path, "r+") as f:
        data = f[name][()]
        if how == "delete":
            del f[name]
            return
        del f[name]
        if how == "group":
            f.create_group(name).create_dataset("x", data=data)
        elif how in ("nan", "inf", "huge", "negative", "tiny"):
            value = {"nan": np.nan, "inf": np.inf, "huge": 1e30, "negative": -1.0, "tiny": 1e-30}[how]
            flat = data.astype(np.float32).reshape(-1)
            flat[len(flat) // 2] = value
            if how == "tiny":
                flat[:] = value
            f[name] = flat.reshape(data.shape)
        elif how == "ndim":
            f[name] = data.reshape(data.shape[0], -1) if data.ndim > 1 else data[:, None, None]
        elif how == "nonsquare":
            f[name] = data[..., :-1] if data.ndim == 4 else np.stack([data, data], 1)
        elif how == "length":
            f[name] = data[:-1]
        elif how == "string":
            f[name] = np.array([b"x"] * data.shape[0])


def break_attr(path: Path, name: str, how: str) -> None:
    with h5py.File(path, "r+") as f:
        if how == "delete":
            del f.attrs[name]
        else:
            f.attrs[name] = {
                "text": "abc",
                "nan": np.nan,
                "negative": -1.0,
                "zero": 0.0,
                "huge": 1e30,
                "array": np.ones(3),
            }[how]


def truncate(path: Path, keep: float) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


# ---------------------------------------------------------------------------------------------
# running a command on it


def snapshot(root: Path) -> dict[Path, str]:
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


@contextlib.contextmanager
def workdir(valid: Path, *names: str):
    """A fresh folder holding copies of the named valid inputs."""
    with tempfile.TemporaryDirectory(dir=valid.parent) as d:
        d = Path(d)
        for name in names:
            src = valid / name
            (shutil.copytree if src.is_dir() else shutil.copy)(src, d / name)
        yield d


def check(work: Path, args: list, broken: Path, *, must_refuse: bool, outputs=()) -> None:
    """Run ``lens ARGS`` in ``work``: success leaves the inputs unchanged and writes only
    ``outputs``; a refusal is one line naming ``broken``, and everything as it was."""
    before = snapshot(work)
    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=True)
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error")]
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"lens {' '.join(map(str, args))} raised {result.exception!r}") from result.exception
    after = snapshot(work)
    if result.exit_code == 0:
        assert not must_refuse, f"lens {' '.join(map(str, args))} accepted {broken.name}:\n{result.output}"

        def output(p: Path) -> bool:
            p = p.relative_to(work)
            return any(p == Path(o) or Path(o) in p.parents for o in outputs)

        assert {p: h for p, h in after.items() if p in before and not output(p)} == {
            p: h for p, h in before.items() if not output(p)
        }, "an input changed"
        assert all(output(p) for p in set(after) - set(before)), sorted(set(after) - set(before))
        return
    assert len(errors) == 1, result.stderr
    assert broken.name in errors[0], errors[0]
    assert after == before, sorted(set(after) ^ set(before))  # nothing new, nothing changed


LENS_FIELDS_READ = ("observation", "psf", "noise_sigma", "source", "kappa")
LENS_ATTRS = ("image_fov", "source_fov", "z_lens", "z_source")
FINETUNE = [
    "finetune",
    "--rim",
    "rim",
    "--source-vae",
    "svae",
    "--kappa-vae",
    "kvae",
    "--max-steps",
    "1",
    "--fisher-samples",
    "2",
]


@FUZZ
@given(
    command=st.sampled_from(["reconstruct", "finetune", "train"]),
    target=st.one_of(
        st.tuples(st.just("field"), st.sampled_from(LENS_FIELDS_READ), st.sampled_from(FIELD_BREAKS)),
        st.tuples(st.just("attr"), st.sampled_from(LENS_ATTRS), st.sampled_from(ATTR_BREAKS)),
        st.tuples(st.just("truncate"), st.just(""), st.sampled_from(["0.0", "0.3", "0.9"])),
    ),
)
@example(command="reconstruct", target=("attr", "z_lens", "delete"))  # was a KeyError
@example(command="reconstruct", target=("field", "observation", "group"))  # was an AttributeError
@example(command="reconstruct", target=("field", "noise_sigma", "tiny"))  # wrote out.h5, then refused it
def test_lens_datasets(valid, command, target):
    kind, name, how = target
    with workdir(valid, "lenses.h5", "rim", "svae", "kvae") as work:
        data = work / "lenses.h5"
        {"field": break_field, "attr": break_attr, "truncate": lambda p, _, k: truncate(p, float(k))}[kind](
            data, name, how
        )
        args = {
            "reconstruct": ["reconstruct", "--rim", "rim", "--data", data, "-o", work / "out.h5"],
            "finetune": [*FINETUNE, "--data", data, "-o", work / "out.h5"],
            "train": [
                "train",
                "rim",
                "--preset",
                "tiny",
                "--steps",
                "1",
                "--data",
                data,
                "--validation-size",
                "1",
                "-o",
                work / "run",
            ],
        }[command]
        # the truth is optional to a reconstruction: without it the file is still an observation
        optional = kind == "field" and name in ("source", "kappa") and how == "delete" and command != "train"
        refuse = (kind == "truncate" or how in MUST_REFUSE) and not optional
        with _in(work):
            check(work, args, data, must_refuse=refuse, outputs=["run" if command == "train" else "out.h5"])


@contextlib.contextmanager
def _in(folder: Path):
    old = Path.cwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(old)


@FUZZ
@given(
    target=st.one_of(
        st.tuples(st.just("field"), st.sampled_from(["kappa", "split"]), st.sampled_from(FIELD_BREAKS)),
        st.tuples(st.just("attr"), st.just("image_fov"), st.sampled_from(ATTR_BREAKS)),
        st.tuples(st.just("truncate"), st.just(""), st.sampled_from(["0.0", "0.5"])),
    )
)
def test_kappa_datasets(valid, target):
    kind, name, how = target
    with workdir(valid, "kappa.h5") as work:
        data = work / "kappa.h5"
        {"field": break_field, "attr": break_attr, "truncate": lambda p, _, k: truncate(p, float(k))}[kind](
            data, name, how
        )
        args = [
            "simulate",
            "lenses",
            "--kappa",
            data,
            "--sources",
            "sersic",
            "--pixels",
            "32",
            "--split",
            "train",
            "-n",
            "2",
            "-o",
            work / "out.h5",
        ]
        optional = kind == "attr" and how == "delete"  # the field of view defaults to the simulator's
        refuse = (kind == "truncate" or how in MUST_REFUSE or how == "negative" and name == "kappa") and not optional
        with _in(work):
            check(work, args, data, must_refuse=refuse, outputs=["out.h5"])


RECON_FIELDS = ("source_pred", "kappa_pred", "chi2_nu", "observation", "noise_sigma", "source", "kappa")


@FUZZ
@given(
    target=st.one_of(
        st.tuples(st.just("field"), st.sampled_from(RECON_FIELDS), st.sampled_from((*FIELD_BREAKS, "shrink"))),
        st.tuples(st.just("attr"), st.sampled_from(["image_fov", "source_fov"]), st.sampled_from(ATTR_BREAKS)),
        st.tuples(st.just("truncate"), st.just(""), st.sampled_from(["0.0", "0.5"])),
    )
)
@example(target=("field", "source_pred", "shrink"))  # was a RuntimeError, and an empty report folder
def test_reconstructions(valid, target):
    kind, name, how = target
    with workdir(valid, "recon.h5") as work:
        data = work / "recon.h5"
        if how == "shrink":  # one pixel narrower than the truth
            with h5py.File(data, "r+") as f:
                small = f[name][()][..., :-1, :-1] if f[name].ndim == 4 else f[name][()][:-1]
                del f[name]
                f[name] = small
        else:
            {"field": break_field, "attr": break_attr, "truncate": lambda p, _, k: truncate(p, float(k))}[kind](
                data, name, how
            )
        refuse = kind == "truncate" or how in (*MUST_REFUSE, "shrink")  # half a truth is refused too
        if kind == "field" and (
            name in ("kappa", "kappa_pred", "noise_sigma")
            and how == "negative"
            or name == "noise_sigma"
            and how == "tiny"
        ):
            refuse = True
        with _in(work):
            check(work, ["evaluate", data, "-o", work / "report"], data, must_refuse=refuse, outputs=["report"])


FITS_BREAKS = (
    "nan",
    "inf",
    "all-nan",
    "mask-shape",
    "zeros",
    "cube",
    "line",
    "no-image",
    "cdelt-nan",
    "cdelt-text",
    "cdelt-zero",
    "no-scale",
    "noise-zero",
    "noise-negative",
    "noise-shape",
    "noise-tiny",
    "psf-even",
    "text-data",
    "truncate",
    "garbage",
)


def break_fits(path: Path, how: str) -> None:
    if how == "truncate":
        return truncate(path, 0.5)
    if how == "garbage":
        return path.write_bytes(b"SIMPLE  =                    T" + bytes(range(256)) * 20)
    with fits.open(path) as h:
        image, header, noise = h[0].data.copy(), h[0].header.copy(), h["NOISE"].data.copy()
    extra = []
    if how in ("nan", "inf"):  # a pixel without data: masked, not refused
        image[5, 5] = np.nan if how == "nan" else np.inf
    elif how == "all-nan":
        image[:] = np.nan
    elif how == "mask-shape":
        extra = [fits.ImageHDU(np.zeros((3, 3), np.int16), name="MASK")]
    elif how == "zeros":
        image[:] = 0
    elif how == "cube":
        image = np.stack([image, image])
    elif how == "line":
        image = image[0]
    elif how.startswith("cdelt") or how == "no-scale":
        del header["CDELT2"]
        if how != "no-scale":
            header["CDELT2"] = {"cdelt-nan": "nan", "cdelt-text": "abc", "cdelt-zero": 0.0}[how]
    elif how.startswith("noise"):
        noise = {
            "noise-zero": noise * 0,
            "noise-negative": -noise,
            "noise-shape": noise[:-2, :-2],
            "noise-tiny": noise * 1e-30,
        }[how]
    elif how == "psf-even":
        extra = [fits.ImageHDU(np.full((4, 4), 1 / 16), name="PSF")]
    if how == "text-data":  # astropy writes no text images: a table stands in for the only HDU
        hdus = [fits.PrimaryHDU(), fits.BinTableHDU.from_columns([fits.Column("a", "A1", array=["a"])])]
    else:
        hdus = [fits.PrimaryHDU(None if how == "no-image" else image, header=header)]
        hdus.append(fits.ImageHDU(noise, name="NOISE"))
    fits.HDUList(hdus + extra).writeto(path, overwrite=True)


@FUZZ
@given(how=st.sampled_from(FITS_BREAKS), psf=st.sampled_from(["0.1", "1e9", "hdu"]))
@example(how="noise-tiny", psf="0.1")  # was written, then refused ("normalise the images"), no FITS copy
@example(how="zeros", psf="1e9")  # a PSF wider than the field was accepted
def test_fits_observations(valid, how, psf):
    with workdir(valid, "obs.fits", "rim", "svae", "kvae") as work:
        data = work / "obs.fits"
        break_fits(data, how)
        psf_args = [] if psf == "hdu" else ["--psf-fwhm", psf]
        args = [*FINETUNE, "--data", data, "-o", work / "out.h5", *psf_args]
        # a masked pixel is data like any other; the PSF HDU is not read when a FWHM is given
        benign = how in ("nan", "inf") or (how == "psf-even" and psf != "hdu")
        refuse = psf != "0.1" or not benign
        with _in(work):
            check(work, args, data, must_refuse=refuse, outputs=["out.h5", "out.fits"])


CONFIG_BREAKS = {
    "pixels": [10**6, 0, -1, 31, "32", None, 1.5],
    "filters": [10**6, 0],
    "max_filters": [10**7],
    "levels": [40, 0],
    "input_kernel": [10001, 0, 2],
    "steps": [-1, 10**9],  # the RIM's T (a VAE's training steps: only -1 and 0 are wrong)
    "unknown_field": [1],
}


@FUZZ
@given(
    run=st.sampled_from(["rim", "svae"]),
    target=st.one_of(
        st.tuples(st.just("config"), st.sampled_from(sorted(CONFIG_BREAKS)), st.integers(0, 6)),
        st.tuples(st.just("config-file"), st.sampled_from(["truncate", "array", "empty", "binary"]), st.just(0)),
        st.tuples(
            st.just("checkpoint"), st.sampled_from(["truncate", "garbage", "other", "missing", "empty"]), st.just(0)
        ),
    ),
)
@example(run="rim", target=("checkpoint", "other", 0))  # the refused resume had rewritten config.json, run.json
@example(run="rim", target=("config", "pixels", 0))  # 16 TB at the allocator
@example(run="rim", target=("config", "input_kernel", 0))
@example(run="svae", target=("config", "filters", 0))
def test_run_directories(valid, run, target):
    kind, name, pick = target
    with workdir(valid, run, "rim-other", "lenses.h5") as work:
        folder = work / run
        config = folder / "config.json"
        if kind == "config":
            values = CONFIG_BREAKS[name] if (run, name) != ("svae", "steps") else [-1, 0]
            stored = json.loads(config.read_text())
            if name != "unknown_field" and name not in stored:
                name = "filters"
                values = CONFIG_BREAKS[name]
            stored[name] = values[pick % len(values)]
            config.write_text(json.dumps(stored))
        elif kind == "config-file":
            text = config.read_text()
            config.write_bytes(
                {
                    "truncate": text[: len(text) // 2].encode(),
                    "array": b"[1, 2]",
                    "empty": b"",
                    "binary": bytes(range(256)),
                }[name]
            )
        else:
            checkpoint = folder / "checkpoint.pt"
            if name == "truncate":
                truncate(checkpoint, 0.5)
            elif name == "garbage":
                checkpoint.write_bytes(bytes(range(256)) * 4)
            elif name == "empty":
                checkpoint.write_bytes(b"")
            elif name == "missing":
                checkpoint.unlink()
            elif run == "rim":
                shutil.copy(work / "rim-other" / "checkpoint.pt", checkpoint)
            else:
                checkpoint.write_bytes((work / "rim-other" / "checkpoint.pt").read_bytes())
        if run == "rim":
            commands = [
                ["reconstruct", "--rim", folder, "--data", work / "lenses.h5", "-o", work / "out.h5"],
                [
                    "train",
                    "rim",
                    "--preset",
                    "tiny",
                    "--steps",
                    "3",
                    "--data",
                    work / "lenses.h5",
                    "--validation-size",
                    "1",
                    "-o",
                    folder,
                ],
            ]
        else:
            commands = [["sample", "--vae", folder, "-n", "2", "-o", work / "out.h5"]]
        with _in(work):
            for args in commands:
                # a refusal names the run directory (or a file in it); a run killed before its first
                # checkpoint (none there) starts again from step 0
                training = args[0] == "train"
                benign = training and target == ("checkpoint", "missing", 0)
                check(work, args, folder, must_refuse=not benign, outputs=[run] if training else ["out.h5"])
