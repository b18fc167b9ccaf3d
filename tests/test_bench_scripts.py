"""The benchmark scripts that GPU sessions run still run: a GPU session is lent rarely and briefly,
so each stage of them is exercised here, small and on the CPU."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"

pytestmark = pytest.mark.slow


def _lensrim_test_helpers():
    """lensrim's test helpers (its tests' ``conftest``), loaded from their file: its tests run on
    their own, so the helpers live there and are not copied here."""
    path = Path(__file__).resolve().parents[1] / "packages" / "lensrim" / "tests" / "conftest.py"
    spec = importlib.util.spec_from_file_location("lensrim_test_helpers", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _bench_module(name: str):
    """A benchmark script loaded as a module (its folder on the path while it imports its siblings)."""
    sys.path.insert(0, str(BENCH))
    try:
        spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(BENCH))
    return module


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
        exact = {k: v for k, v in refs["RIM (baseline)"].items() if k != "median_chi2_nu_binned"}
        assert {k: run["baseline"][k] for k in exact} == exact, name
        # the binned chi2_nu's model is traced from kappa = 10^xi here and xi there: equal to rounding
        rim_binned = refs["RIM (baseline)"]["median_chi2_nu_binned"]
        assert run["baseline"]["median_chi2_nu_binned"] == pytest.approx(rim_binned, rel=1e-5), name
        assert run["fine-tuned"]["median_chi2_nu"] <= run["baseline"]["median_chi2_nu"], name
    # beside each chi2_nu, the residual's in 4x4-pixel blocks: the constant predictor's missing arcs add up there
    assert all(r["median_chi2_nu_binned"] > 0 for r in refs.values())
    const = refs["constant predictor"]
    assert const["median_chi2_nu_binned"] > 2 * const["median_chi2_nu"]


def test_the_gpu_fit_scan_compares_both_fishers_and_three_strengths():
    bench_finetune = _bench_module("bench_finetune")
    runs = bench_finetune.settings(False, "fisher-chi2")
    seen = {(c.ewc_lambda, c.fisher_chi2) for c in runs.values()}
    assert seen == {(2e5, True), (2e5, False), (2e4, True), (2e6, True)}
    assert all(c.max_steps == 150 and c.fisher_samples == 32 for c in runs.values())


def test_the_fine_tuning_row_times_both_ways_in_the_precision_it_names():
    """`bench_rim.bench_finetune` (a row of `nox -s gpu`): batched and one at a time, each phase
    timed directly, with the precision the RIM's fine-tuning follows named in the row."""
    from lensrim.model import native_bf16_cpu

    bench_rim = _bench_module("bench_rim")
    torch = bench_rim.torch
    cpu = torch.device("cpu")
    ConvolutionDtypes = _lensrim_test_helpers().ConvolutionDtypes

    with ConvolutionDtypes() as seen:  # the row runs in the precision it names
        row = bench_rim.bench_finetune("tiny", cpu, 2, 2, pixels=32, rounds=1, bf16=True)
    native = native_bf16_cpu()
    named = "tiny 32^2 bf16 on" if native else "bf16 (float32 here: no native bfloat16)"
    assert named in row and "together: " in row and "one at a time: " in row and "together x" in row
    assert (torch.bfloat16 in seen.dtypes) == native
    assert " bf16" not in bench_rim.bench_finetune("tiny", cpu, 2, 2, pixels=32, rounds=1)


def test_the_prior_rows_time_both_layouts_in_turn_on_the_same_models():
    """`bench_prior` (a part of `nox -s bench`): each layout's call is made once to warm up and then
    once per round, the two taking turns, and its rows name both layouts against the previous one."""
    bench_prior = _bench_module("bench_prior")
    order = []
    times = bench_prior.interleaved({"a": lambda: order.append("a"), "b": lambda: order.append("b")}, 3)
    assert order == ["a", "b"] * 4 and all(len(t) == 3 and min(t) >= 0 for t in times.values())

    train, draws = bench_prior.bench_vae("kappa", 32, 1, batch=2, filters=4)
    for row in (train, draws):
        before, after = row.split("; ")
        assert "NCHW (before)" in before and "x1.00" in before and "channels-last" in after
    assert train.startswith("kappa VAE 32^2, 4 filters: training step, batch 2")


def test_the_smoothing_lengths_row_names_its_reference_or_its_absence(monkeypatch):
    """`bench_kde` (a part of `nox -s bench`): lenssim's smoothing lengths timed against the previous
    path (scikit-learn's k-d tree) in alternating rounds when it is installed, and said when not."""
    bench_kde = _bench_module("bench_kde")
    pos = bench_kde._halo(3000).positions
    calls = []
    reference = bench_kde._sklearn_smoothing_lengths

    def counted(p):
        calls.append("reference")
        return reference(p)

    monkeypatch.setattr(bench_kde, "_sklearn_smoothing_lengths", counted)
    sl, line = bench_kde.bench_smoothing_lengths(pos, rounds=2)
    assert sl.shape == (len(pos),) and line.startswith("64-NN smoothing lengths ")
    assert calls == ["reference"] * 2 and "median of 2" in line
    if reference(pos[:100]) is None:
        assert line.endswith("scikit-learn not installed: no reference")
    else:  # the same distances as the previous path, which the row says
        assert "(previous path)" in line and line.endswith("the same to the bit")
    monkeypatch.setattr(bench_kde, "_sklearn_smoothing_lengths", lambda p: None)
    assert bench_kde.bench_smoothing_lengths(pos, rounds=1)[1].endswith(
        "(1 round) | scikit-learn not installed: no reference"
    )


def test_the_ray_tracer_rows_give_their_rounds_and_name_a_missing_reference(monkeypatch):
    """`bench_lenssim`'s rows (its main and the GPU session's): medians over interleaved rounds,
    lenssim's range, every round's speed-up against caustics, or that caustics is missing."""
    bench = _bench_module("bench_lenssim")
    cpu = bench.torch.device("cpu")
    calls = []
    ours, theirs = bench.bench_lenssim, bench.bench_caustics
    monkeypatch.setattr(bench, "bench_lenssim", lambda *a: calls.append("lenssim") or ours(*a))
    monkeypatch.setattr(bench, "bench_caustics", lambda *a: calls.append("caustics") or theirs(*a))
    row, line = bench.ray_tracer_row(cpu, 2, 2, 1)
    assert calls == ["lenssim", "caustics"] * 2  # interleaved, round by round
    assert line.startswith("cpu  B=2 ") and row["batch"] == 2 and row["rounds"] == 2
    grads = line.split("fwd+grad", 1)[1]
    assert "[" in grads and "]" in grads  # lenssim's range over the rounds
    if row["caustics"] is not None:  # caustics installed: each round's speed-up, the median in front
        assert len(row["speedup"]["grad_rounds"]) == 2 and "(rounds x" in line
    monkeypatch.setattr(bench, "bench_caustics", lambda *a: None)
    row, line = bench.ray_tracer_row(cpu, 1, 1, 1)
    assert row["caustics"] is None and line.endswith("caustics not installed: no reference")
    row, line = bench.psf_paths_row(cpu, 1, 2, 1)
    assert "(rounds " in line and line.endswith("the default here: fft") and row["default"] == "fft"
    row, line = bench.psf_paths_row(cpu, 1, 1, 1, side=9)  # below every CPU's FFT_FROM_SIDE
    assert " 9x9 PSF " in line and row["psf"] == 9 and row["default"] == "direct"
    assert "torch " in bench.header(2) and "median of 2 interleaved rounds" in bench.header(2)


def test_a_failing_gpu_session_row_is_reported_and_the_session_goes_on(capsys):
    session = _bench_module("gpu_session")

    def out_of_memory():
        raise RuntimeError("CUDA out of memory. Tried to allocate 20.00 GiB\nthe rest of the message")

    session._row("paper preset, batch 4", out_of_memory)
    session._row("small", lambda: "small row")
    assert capsys.readouterr().out.splitlines() == [
        "paper preset, batch 4: FAILED (RuntimeError: CUDA out of memory. Tried to allocate 20.00 GiB)",
        "small row",
    ]


def test_the_gpu_sessions_rows_call_the_benchmarks_as_they_are_written(monkeypatch, capsys):
    """The GPU session's throughput rows run only where CUDA is: here every benchmark it calls is
    replaced by a stand-in that checks the call against the real function's signature."""
    import inspect

    session = _bench_module("gpu_session")
    lenssim_bench, rim_bench = _bench_module("bench_lenssim"), _bench_module("bench_rim")
    seen = []

    def stand_in(module, name, result):
        real = getattr(module, name)

        def fake(*args, **kwargs):
            inspect.signature(real).bind(*args, **kwargs)  # raises on a call the real one refuses
            seen.append((name, args[0]))
            return result

        monkeypatch.setattr(module, name, fake)

    stand_in(lenssim_bench, "ray_tracer_row", ({}, "<ray tracer>"))
    stand_in(lenssim_bench, "psf_paths_row", ({}, "psf row"))
    stand_in(rim_bench, "bench", "rim row")
    stand_in(rim_bench, "bench_compiled", "compiled row")
    stand_in(rim_bench, "bench_finetune", "<fine-tuning>")
    stand_in(rim_bench, "on_the_fly_rates", {"on the fly": 5.0, "fixed": 6.0})
    monkeypatch.setitem(sys.modules, "bench_lenssim", lenssim_bench)
    monkeypatch.setitem(sys.modules, "bench_rim", rim_bench)
    assert session.throughput() == 5.0
    out = capsys.readouterr().out
    assert "FAILED" not in out and out.count("<ray tracer>") == 3 and out.count("<fine-tuning>") == 3
    presets = [first for name, first in seen if name in ("bench", "bench_finetune")]
    assert presets.count("paper") == 4 and presets.count("small") == 3
