"""The study scripts under docs/ that the documentation's tables come from still run."""

import subprocess
import sys
from pathlib import Path

import pytest
from lens_runner import requires_lens, run

pytestmark = [requires_lens, pytest.mark.slow]

DOCS = Path(__file__).resolve().parents[1] / "docs"


def _table(stdout: str) -> dict[str, list[str]]:
    rows = [line.strip("|").split("|") for line in stdout.splitlines() if line.startswith("| ")]
    return {cells[0].strip(): [c.strip() for c in cells[1:]] for cells in rows if not cells[0].startswith(" method")}


def test_rim_sensitivity_measures_what_a_perturbation_moves(tmp_path):
    lenses = tmp_path / "lenses.h5"
    run("simulate", "lenses", "--kappa", "sie", "--sources", "sersic", "-n", 3, "--pixels", 32, "-o", lenses)
    run("train", "rim", "--data", lenses, "--preset", "tiny", "--steps", 2, "--batch-size", 1, "-o", tmp_path / "rim")

    def sensitivity(relative: float) -> dict[str, list[str]]:
        script = DOCS / "rim_sensitivity.py"
        args = ["--lenses", lenses, "--run", tmp_path / "rim", "--count", 3, "--relative", relative]
        proc = subprocess.run([sys.executable, script, *map(str, args)], capture_output=True, text=True, check=True)
        table = _table(proc.stdout)
        assert [k.split(",")[0] for k in table] == ["Adam", "Adam", f"RIM {tmp_path / 'rim'} (skip 0.03"]
        return table

    # the same observation twice: every method is deterministic, nothing moves
    for name, (largest, median, moved) in sensitivity(0.0).items():
        assert float(largest) == 0.0 and float(median) == 0.0 and moved == "0/3", name
    # a perturbation of 1 % of the peak moves every method's maps
    for name, (largest, _, _) in sensitivity(1e-2).items():
        assert float(largest) > 1e-4, name
    # lenses on another grid than the RIM's: refused in one line, before any work
    other = tmp_path / "other.h5"
    run("simulate", "lenses", "--kappa", "sie", "--sources", "sersic", "-n", 1, "--pixels", 64, "-o", other)
    args = ["--lenses", other, "--run", tmp_path / "rim"]
    proc = subprocess.run(
        [sys.executable, DOCS / "rim_sensitivity.py", *map(str, args)], capture_output=True, text=True
    )
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and "64" in proc.stderr and "32" in proc.stderr


def test_fit_degeneracy_compares_the_fit_and_the_truth_of_each_method(tmp_path):
    lenses = tmp_path / "lenses.h5"
    run("simulate", "lenses", "--kappa", "sie", "--sources", "sersic", "-n", 3, "--pixels", 32, "-o", lenses)
    run("train", "rim", "--data", lenses, "--preset", "tiny", "--steps", 2, "--batch-size", 1, "-o", tmp_path / "rim")
    args = ["--lenses", lenses, "--run", tmp_path / "rim"]
    proc = subprocess.run(
        [sys.executable, DOCS / "fit_degeneracy.py", *map(str, args)], capture_output=True, text=True, check=True
    )
    rows = {
        name.split(" (")[0].split(", 7")[0]: [float(x) for x in cells] for name, cells in _table(proc.stdout).items()
    }
    constant = rows["constant predictor"]
    with_truth = rows["the source alone, kappa held at the truth"]
    assert with_truth[3] == float("-inf")  # the true kappa: no kappa error
    # 7 source gradients through the true kappa fit better than the empty model image and find a better source
    assert with_truth[0] < constant[0] and with_truth[2] < constant[2]
    # through the constant predictor's kappa the source fits better too, while kappa stays the constant's
    held = rows["the source alone, kappa held at the constant predictor's"]
    assert held[0] < constant[0] and held[3] == constant[3]
    assert f"RIM {tmp_path / 'rim'}" in rows
    # a wrong count of gradients: one line, no traceback
    proc = subprocess.run(
        [sys.executable, DOCS / "fit_degeneracy.py", "--lenses", str(lenses), "--gradients", "0"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode != 0 and "--gradients" in proc.stderr and "Traceback" not in proc.stderr
    # a lens file that is not there, and a run directory that is not a run: one line each, no traceback
    for args in (["--lenses", tmp_path / "missing.h5"], ["--lenses", lenses, "--run", tmp_path]):
        proc = subprocess.run(
            [sys.executable, DOCS / "fit_degeneracy.py", *map(str, args)], capture_output=True, text=True
        )
        assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr
        assert proc.stderr.strip().count("\n") == 0 and str(args[-1]) in proc.stderr


def test_rim_fit_frontier_names_the_demo_data_its_arms_ran_on(tmp_path):
    sys.path.insert(0, str(DOCS))
    try:
        import rim_fit_frontier as frontier
    finally:
        sys.path.remove(str(DOCS))
    import json

    study, other = tmp_path / "study", tmp_path / "other"
    for d, halos in ((study, (10, 16)), (other, (40, 4))):
        d.mkdir()
        (d / "demo.json").write_text(json.dumps({"config": {"halos": halos[0], "maps_per_halo": halos[1]}, "seed": 0}))
    assert frontier.data_of(study) == ""
    assert frontier.data_of(other) == ", on 40 halos (4 maps each)"
    # the same arm on other data or with another seed is another entry: neither overwrites the study's
    names = {frontier.entry("a", 0), frontier.entry("a", 0, frontier.data_of(other)), frontier.entry("a", 1)}
    assert names == {"a", "a, on 40 halos (4 maps each)", "a, seed 1"}
    with pytest.raises(SystemExit, match="no readable demo.json"):
        frontier.data_of(tmp_path / "missing")
