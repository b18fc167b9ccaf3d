"""`lens simulate` end to end: files, determinism, shards, resume after a kill, one-line errors."""

import re
import signal
import subprocess
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from lens_runner import LENS, requires_lens, run

import lenssim

pytestmark = [requires_lens, pytest.mark.slow]
COSMOS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cosmos"


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    d = tmp_path_factory.mktemp("sim")
    run("simulate", "kappa", "--synthetic", 2, "--maps-per-halo", 3, "--test-fraction", 0.5, "-o", d / "kappa.h5")
    run("simulate", "sources", "--synthetic", 6, "-o", d / "sources.h5", "--seed", 1)
    return d


def test_kappa_and_sources_files(inputs):
    k = lenssim.read_dataset(inputs / "kappa.h5", ["kappa", "theta_e", "split"])
    assert k["kappa"].shape == (6, 1, 128, 128) and sorted(set(k["split"].tolist())) == [0, 1]
    s = lenssim.read_dataset(inputs / "sources.h5", ["source", "split"])
    assert s["source"].shape == (6, 1, 128, 128) and float(s["source"].max()) == 1.0


def test_pixels_option_and_empty_split_warning(tmp_path):
    out = run("simulate", "kappa", "--synthetic", 2, "--maps-per-halo", 1, "--pixels", 32, "-o", tmp_path / "k.h5")
    # 2 halos at the default test fraction 0.1: the test split is empty, and the user is told
    assert "test split" in out.stderr and "empty" in out.stderr and "--test-fraction" in out.stderr
    run("simulate", "sources", "--synthetic", 4, "--pixels", 32, "--test-fraction", 0.5, "-o", tmp_path / "s.h5")
    k = lenssim.read_dataset(tmp_path / "k.h5", ["kappa", "split"])
    s = lenssim.read_dataset(tmp_path / "s.h5", ["source", "split"])
    assert k["kappa"].shape == (2, 1, 32, 32) and (k["split"] == 0).all()
    assert s["source"].shape == (4, 1, 32, 32) and sorted(set(s["split"].tolist())) == [0, 1]
    # the same angle is covered: the 32^2 stamp config is the 128^2 one scaled by 4
    cfg = lenssim.data.sources.SourceStampConfig.at_resolution(32)
    full = lenssim.data.sources.SourceStampConfig()
    assert cfg.pixels * cfg.pixel_scale == pytest.approx(full.pixels * full.pixel_scale)
    kc = lenssim.KappaMapConfig.at_resolution(32)
    assert kc.pixel_scale * 32 == pytest.approx(7.69) and (kc.render_pixels - 32) % 2 == 0
    assert abs(kc.render_pixels / 32 - 188 / 128) < 2 / 32
    run(
        "simulate",
        "lenses",
        "--kappa",
        tmp_path / "k.h5",
        "--sources",
        tmp_path / "s.h5",
        "--split",
        "all",
        "--pixels",
        32,
        "-n",
        2,
        "-o",
        tmp_path / "l.h5",
    )
    assert lenssim.read_lens_dataset(tmp_path / "l.h5")["observation"].shape == (2, 1, 32, 32)


def test_lenses_from_files_same_seed_same_bytes(inputs, tmp_path):
    for name in ("a", "b"):
        out = run(
            "simulate",
            "lenses",
            "--kappa",
            inputs / "kappa.h5",
            "--sources",
            inputs / "sources.h5",
            "-n",
            5,
            "--split",
            "all",
            "--block-size",
            2,
            "-o",
            tmp_path / f"{name}.h5",
            "--seed",
            3,
        )
        # every drawn lens is accounted for in the printed counts
        m = re.search(r"(\d+) lenses kept of (\d+) drawn \((\d+) rejected, (\d+) accepted beyond", out.stdout)
        kept, drawn, rejected, surplus = map(int, m.groups())
        assert kept == 5 and kept + rejected + surplus == drawn
    assert (tmp_path / "a.h5").read_bytes() == (tmp_path / "b.h5").read_bytes()
    d = lenssim.read_lens_dataset(tmp_path / "a.h5")
    model = lenssim.lens_image(d["source"], d["kappa"], psf=d["psf"])
    assert ((lenssim.chi2_nu(d["observation"], model, d["noise_sigma"]) - 1).abs() < 0.06).all()


def test_sharded_lenses_make_one_dataset(tmp_path):
    for i in (1, 2, 3):
        run(
            "simulate",
            "lenses",
            "--kappa",
            "sie",
            "--sources",
            "sersic",
            "-n",
            7,
            "--block-size",
            2,
            "--shard",
            f"{i}/3",
            "-o",
            tmp_path / "shards",
        )
    assert sorted(p.name for p in (tmp_path / "shards").iterdir()) == [
        "part-00001-of-00003.h5",
        "part-00002-of-00003.h5",
        "part-00003-of-00003.h5",
    ]
    assert len(lenssim.LensDataset(tmp_path / "shards")) == 7


def test_a_killed_run_resumes_to_the_same_bytes(tmp_path):
    args = ["simulate", "lenses", "--kappa", "sie", "--sources", "sersic", "-n", 48, "--block-size", 4, "--seed", 5]
    run(*args, "-o", tmp_path / "whole.h5")
    proc = subprocess.Popen([LENS, *map(str, args), "-o", str(tmp_path / "killed.h5")], stderr=subprocess.DEVNULL)
    blocks = tmp_path / ".killed.h5.blocks"
    deadline = time.time() + 300
    while time.time() < deadline and len(list(blocks.glob("block-*.h5"))) < 2 and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    if (tmp_path / "killed.h5").exists():
        pytest.skip("the run finished before it could be killed")
    assert not (tmp_path / "killed.h5").exists()
    run(*args, "-o", tmp_path / "killed.h5")
    assert (tmp_path / "killed.h5").read_bytes() == (tmp_path / "whole.h5").read_bytes()
    assert not blocks.exists()


@pytest.mark.skipif(not COSMOS.is_dir(), reason="../shared/data/cosmos not present")
def test_real_cosmos_stamps(tmp_path):
    run(
        "simulate",
        "sources",
        "--cosmos-dir",
        COSMOS / "btk-26-extension",
        "--catalog-file",
        "real_galaxy_catalog_26_extension_example.fits",
        "--exclusion-level",
        "none",
        "--min-flux",
        0,
        "-n",
        4,
        "-o",
        tmp_path / "cosmos.h5",
    )
    d = lenssim.read_dataset(tmp_path / "cosmos.h5", ["source", "catalog_index", "split"])
    assert d["source"].shape == (4, 1, 128, 128) and (d["catalog_index"] >= 0).all()
    bad = run("simulate", "sources", "--cosmos-dir", tmp_path, "-o", tmp_path / "x.h5", check=False)
    assert bad.returncode == 1 and "galsim_download_cosmos -s 23.5" in bad.stderr


def _negative_kappa(path):
    with h5py.File(path, "w") as f:
        f["kappa"] = -np.ones((2, 1, 128, 128), np.float32)
        f.attrs["image_fov"] = 7.69
    return path


@pytest.mark.parametrize(
    "args, code, message",
    [
        (
            ["simulate", "lenses", "--kappa", "missing.h5", "--sources", "sersic", "-n", 2, "-o", "x.h5"],
            1,
            "no such file",
        ),
        (
            ["simulate", "lenses", "--kappa", "NEG", "--split", "all", "--sources", "sersic", "-n", 2, "-o", "x.h5"],
            1,
            "negative",
        ),
        (
            ["simulate", "lenses", "--kappa", "sie", "--sources", "sersic", "-n", 2, "--shard", "3/2", "-o", "d"],
            2,
            "I/N",
        ),
        (["simulate", "kappa", "-o", "k.h5"], 2, "exactly one"),
        (["simulate", "kappa", "--tng", "nope.hdf5", "-o", "k.h5"], 2, "no such file"),
        (["simulate", "kappa", "--tng", "JUNK", "-o", "k.h5"], 1, "not a readable HDF5"),
        (["simulate", "kappa", "--synthetic", 1, "--theta-e-min", 3, "-o", "k.h5"], 2, "exceeds"),
        (["simulate", "sources", "--synthetic", 2, "-n", 3, "-o", "s.h5"], 2, "-n applies"),
    ],
)
def test_bad_input_fails_in_one_line_and_writes_nothing(tmp_path, args, code, message):
    _negative_kappa(tmp_path / "neg.h5")
    (tmp_path / "junk.hdf5").write_text("junk")
    args = [str(tmp_path / "neg.h5") if a == "NEG" else str(tmp_path / "junk.hdf5") if a == "JUNK" else a for a in args]
    before = set(tmp_path.iterdir())
    proc = run(*args, check=False, cwd=tmp_path)
    assert proc.returncode == code, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("Error")]
    assert len(errors) == 1 and message in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr
    assert set(tmp_path.iterdir()) == before  # nothing written, no leftovers
