"""The `lens` command end to end, as a user runs it (a subprocess, the installed script)."""

import json
import shutil
import subprocess

import pytest

import lenssim

LENS = shutil.which("lens")
pytestmark = pytest.mark.skipif(LENS is None, reason="the lens script is not installed")


def run(*args, check=True):
    proc = subprocess.run([LENS, *args], capture_output=True, text=True, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"lens {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")
    return proc


def test_demo_writes_a_valid_dataset_a_figure_and_resumes(tmp_path):
    out = tmp_path / "demo"
    first = run("demo", "-o", str(out), "--n-lenses", "6", "--seed", "3")
    assert "wrote" in first.stdout
    data = lenssim.read_lens_dataset(out / "lenses.h5")
    assert data["observation"].shape == (6, 1, 128, 128)
    assert data["attrs"]["seed"] == 3
    assert (out / "lenses.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["accepted"] == 6 and summary["tried"] >= 6
    # the stored observations are consistent with the stored truth, PSF and noise
    model = lenssim.lens_image(data["source"], data["kappa"], psf=data["psf"])
    chi2_nu = lenssim.reduced_chi_squared(data["observation"], model, data["noise_sigma"])
    assert ((chi2_nu - 1).abs() < 0.06).all()
    before = (out / "lenses.h5").stat().st_mtime_ns
    again = run("demo", "-o", str(out), "--n-lenses", "6", "--seed", "3")
    assert "up to date" in again.stdout
    assert (out / "lenses.h5").stat().st_mtime_ns == before


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    for name, seed in (("a", "5"), ("b", "5"), ("c", "6")):
        run("demo", "-o", str(tmp_path / name), "--n-lenses", "3", "--seed", seed)
    a, b, c = ((tmp_path / n / "lenses.h5").read_bytes() for n in "abc")
    assert a == b and a != c


@pytest.mark.parametrize(
    "args, message",
    [
        (["--device", "cuda:7"], "--device"),
        (["--device", "tpu"], "--device"),
        (["--n-lenses", "0"], "--n-lenses"),
        (["--seed", "-1"], "--seed"),
    ],
)
def test_bad_options_fail_in_one_line(tmp_path, args, message):
    proc = run("demo", "-o", str(tmp_path / "x"), *args, check=False)
    assert proc.returncode != 0
    error_lines = [line for line in proc.stderr.splitlines() if line.startswith("Error")]
    assert len(error_lines) == 1 and message in error_lines[0]
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "x" / "lenses.h5").exists()


def test_output_that_is_a_file_is_refused(tmp_path):
    f = tmp_path / "file"
    f.write_text("")
    proc = run("demo", "-o", str(f), check=False)
    assert proc.returncode == 2 and "is a file" in proc.stderr


def test_help_documents_every_option():
    out = run("demo", "--help").stdout
    for opt in ("--output", "--n-lenses", "--seed", "--device"):
        assert opt in out
    assert "0.1.0" in run("--version").stdout
