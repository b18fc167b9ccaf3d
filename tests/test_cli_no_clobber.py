"""No output may destroy an input: every command refuses, before it writes anything, an output
that is one of its input files (directly or through a symlink) or lies inside an input run."""

import os

import pytest
from lens_runner import requires_lens, run

pytestmark = [requires_lens, pytest.mark.slow]


@pytest.fixture
def inputs(tmp_path):
    """Stand-ins for the inputs: the refusal must come before any of them is read."""
    files = {}
    for name in ("obs.fits", "x.h5", "k.h5", "s.h5"):
        files[name] = tmp_path / name
        files[name].write_bytes(b"precious " + name.encode())
    for run_dir in ("rim", "svae", "kvae", "vae"):
        (tmp_path / run_dir).mkdir()
        (tmp_path / run_dir / "checkpoint.pt").write_bytes(b"weights")
    os.symlink(tmp_path / "x.h5", tmp_path / "link.h5")
    (tmp_path / "x.b.fits").write_bytes(b"precious x.b.fits")
    (tmp_path / "cat.csv").write_text("name,fits\nb,x.b.fits\n")  # a catalogue's lens named b
    return tmp_path


def snapshot(root):
    return {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}


FINETUNE = ["finetune", "--rim", "{d}/rim", "--source-vae", "{d}/svae", "--kappa-vae", "{d}/kvae"]


@pytest.mark.parametrize(
    "args, option",
    [
        # the README's own FITS example: -o obs.h5 would write its FITS copy over obs.fits
        (FINETUNE + ["--data", "{d}/obs.fits", "-o", "{d}/obs.h5", "--psf-fwhm", "0.1"], "FITS copy"),
        (FINETUNE + ["--data", "{d}/obs.fits", "-o", "{d}/obs.fits", "--psf-fwhm", "0.1"], "--output"),
        (FINETUNE + ["--data", "{d}/x.h5", "-o", "{d}/link.h5"], "--output"),
        (FINETUNE + ["--data", "{d}/x.h5", "-o", "{d}/rim/recon.h5"], "--output"),
        (["reconstruct", "--rim", "{d}/rim", "--data", "{d}/x.h5", "-o", "{d}/x.h5"], "--output"),
        # a catalogue's lens b reconstructed into x.h5: its FITS copy x.b.fits is the lens's own file
        (["reconstruct", "--rim", "{d}/rim", "--data", "{d}/cat.csv", "-o", "{d}/x.h5"], "the FITS copy of b"),
        (["sample", "--vae", "{d}/vae", "-n", "2", "-o", "{d}/vae/checkpoint.pt"], "--output"),
        (
            ["simulate", "lenses", "--kappa", "{d}/k.h5", "--sources", "{d}/s.h5", "-n", "2", "-o", "{d}/k.h5"],
            "--output",
        ),
        (["simulate", "lenses", "--kappa", "sie", "--sources", "{d}/s.h5", "-n", "2", "-o", "{d}/s.h5"], "--output"),
    ],
)
def test_an_output_that_is_an_input_is_refused_and_nothing_changes(inputs, args, option):
    before = snapshot(inputs)
    proc = run(*[a.format(d=inputs) for a in args], check=False)
    assert proc.returncode == 2, proc.stderr
    assert "would be overwritten" in proc.stderr and option in proc.stderr and "Traceback" not in proc.stderr
    assert snapshot(inputs) == before  # nothing written, nothing changed
