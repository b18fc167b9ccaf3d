"""The benchmark scripts that GPU sessions run still run: a GPU session is lent rarely and briefly,
so each stage of them is exercised here, small and on the CPU."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"

pytestmark = pytest.mark.slow


def test_bench_finetune_runs_every_stage_and_keeps_each_lens_best_fit(tmp_path):
    """`bench_finetune.py --quick`: the RIM, the two VAEs, the references and two fine-tuning runs
    (the stages of `nox -s gpu_fit`, at 32^2 on the CPU)."""
    args = ["--quick", "--lenses", 4, "--work", tmp_path, "--threads", 1]
    subprocess.run([sys.executable, BENCH / "bench_finetune.py", *map(str, args)], check=True, capture_output=True)
    result = json.loads((tmp_path / "finetune.json").read_text())
    refs = result["references"]
    assert set(refs) == {"constant predictor", "RIM (baseline)", "Adam, 7 gradients", "Adam, 5 gradients"}
    assert (tmp_path / "finetune.png").stat().st_size > 0
    for name, run in result["fine-tuning"].items():
        # fine-tuning starts from the RIM's estimate and returns each lens's best fit: never worse
        assert run["baseline"] == refs["RIM (baseline)"], name
        assert run["fine-tuned"]["median_chi2_nu"] <= run["baseline"]["median_chi2_nu"], name


def test_the_gpu_fit_scan_compares_both_fishers_at_two_strengths():
    sys.path.insert(0, str(BENCH))
    try:
        import bench_finetune
    finally:
        sys.path.remove(str(BENCH))
    runs = bench_finetune.settings(False, "fisher-chi2")
    seen = {(c.ewc_lambda, c.fisher_chi2) for c in runs.values()}
    assert seen == {(2e5, True), (2e5, False), (2e4, True), (2e4, False)}
    assert all(c.max_steps == 150 and c.fisher_samples == 32 for c in runs.values())


def test_the_fine_tuning_row_times_both_ways_in_the_precision_it_names():
    """`bench_rim.bench_finetune` (a row of `nox -s gpu`): batched and one at a time, each phase
    timed directly, with the precision the RIM's fine-tuning follows named in the row."""
    sys.path.insert(0, str(BENCH))
    try:
        import bench_rim

        from lensrim.model import native_bf16_cpu
    finally:
        sys.path.remove(str(BENCH))
    cpu = bench_rim.torch.device("cpu")
    times = bench_rim.finetune_times("tiny", cpu, 2, 2, rounds=1, pixels=32, bf16=True)
    assert set(times) == {"together", "one at a time"}
    assert all(v > 0 for way in times.values() for phase in way.values() for v in phase)
    row = bench_rim.bench_finetune("tiny", cpu, 2, 2, pixels=32, rounds=1, bf16=True)
    named = "tiny 32^2 bf16 on" if native_bf16_cpu() else "bf16 (float32 here: no native bfloat16)"
    assert named in row and "together x" in row
    assert " bf16" not in bench_rim.bench_finetune("tiny", cpu, 2, 2, pixels=32, rounds=1)
