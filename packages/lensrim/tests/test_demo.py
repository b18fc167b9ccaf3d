"""The demo is a library call: a notebook runs it, sees its stages through ``say``, gets the
verdict and the report, and a directory of another run is refused."""

import json
import statistics
from dataclasses import replace

import pytest

from lensrim.demo import PRESETS, STAGES, DemoError, run_demo


@pytest.mark.slow
def test_the_quick_demo_runs_from_python(tmp_path):
    lines = []
    result = run_demo(tmp_path / "demo", PRESETS["quick"], seed=3, say=lines.append)
    headers = [line for line in lines if line.startswith("[")]
    assert headers == [
        f"[{i + 1}/{len(STAGES)}] {name}" + headers[i][len(f"[{i + 1}/{len(STAGES)}] {name}") :]
        for i, name in enumerate(STAGES)
    ]
    metrics = json.loads((tmp_path / "demo" / "report" / "metrics.json").read_text())
    assert set(metrics["references"]) == {"constant_predictor", "adam_same_gradients", "adam_long", "rim_steps"}
    assert result["verdict"]["RIM vs constant predictor"].startswith("the RIM ")
    # the per-step curve the report judges is the last validation line of the RIM's log
    log = [json.loads(x) for x in (tmp_path / "demo" / "rim" / "metrics.jsonl").read_text().splitlines()]
    steps = metrics["references"]["rim_steps"]
    assert steps["val_loss_t"] == log[-1]["val_loss_t"]
    assert steps["final_over_best"] == pytest.approx(log[-1]["val_loss_t"][-1] / min(log[-1]["val_loss_t"]))
    excess = 100 * (steps["final_over_best"] - 1)
    assert f"is {excess:.1f} % above the best step's" in result["verdict"]["RIM's last step"]
    rim_chi2 = next(v for k, v in result["comparison"].items() if k.startswith("RIM (T-1"))["chi2_nu"]["median"]
    assert f"median chi2_nu {rim_chi2:.3g} against" in result["verdict"]["RIM's fit"]
    # lens by lens against the same-budget Adam the verdict names: each method's chi2_nu per lens,
    # whose median is the summary's, and the count of lenses the RIM fits better
    rim = next(v for k, v in result["comparison"].items() if k.startswith("RIM (T-1"))
    adam = result["comparison"][metrics["references"]["adam_same_gradients"]["method"]]
    lenses = len(metrics["per_lens"]["chi2_nu"])
    for m in result["comparison"].values():
        assert len(m["chi2_nu_per_lens"]) == lenses
        assert statistics.median(m["chi2_nu_per_lens"]) == pytest.approx(m["chi2_nu"]["median"], rel=1e-6)
    assert rim["chi2_nu_per_lens"] == pytest.approx(metrics["per_lens"]["chi2_nu_baseline"], rel=1e-4)
    wins = sum(r < a for r, a in zip(rim["chi2_nu_per_lens"], adam["chi2_nu_per_lens"], strict=True))
    ratio = statistics.median(r / a for r, a in zip(rim["chi2_nu_per_lens"], adam["chi2_nu_per_lens"], strict=True))
    said = f"better than that Adam on {wins} of {lenses} (its chi2_nu over Adam's: median {ratio:.3g})"
    assert said in result["verdict"]["RIM's fit"]
    # the binned chi2_nu of each method, and the report's of the baseline and fine-tuned maps, computed
    # apart (the demo's forward model, the reconstruction's model image) agree
    assert all("chi2_nu_binned" in m for m in result["comparison"].values())
    binned = {k.split(" ")[1]: v["chi2_nu_binned"]["median"] for k, v in result["comparison"].items() if k[:3] == "RIM"}
    assert metrics["chi2_nu_binned"]["baseline"]["median"] == pytest.approx(binned["(T-1"], rel=1e-4)
    assert metrics["chi2_nu_binned"]["final"]["median"] == pytest.approx(binned["+"], rel=1e-4)
    assert f"4x4-pixel blocks its residual gives {binned['(T-1']:.3g} (white" in result["verdict"]["RIM's fit"]
    assert (tmp_path / "demo" / "report" / "index.html").is_file()
    with pytest.raises(DemoError, match=r"other settings \(seed 3 there, 4 here: "):
        run_demo(tmp_path / "demo", PRESETS["quick"], seed=4, say=lines.append)
    other = replace(PRESETS["quick"], rim_steps=9)  # each setting that differs is named
    with pytest.raises(DemoError, match=r"\(rim_steps 8 there, 9 here: "):
        run_demo(tmp_path / "demo", other, seed=3, say=lines.append)
    with pytest.raises(DemoError, match=r"\(seed 3 there, 0 here; the quick preset there, the standard preset here"):
        run_demo(tmp_path / "demo", PRESETS["standard"], say=lines.append)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"adam_long_steps": 7}, "adam_long_steps .7. must exceed the RIM's 7 gradients"),
        ({"test_lenses": 0}, "test_lenses must be at least 1"),
        ({"sie_fraction": 1.5}, "sie_fraction must lie in"),
        ({"rim_preset": "huge"}, "rim_preset must be one of"),
        ({"pixels": 48}, "power of two"),
        ({"rim_learning_rate": float("nan")}, "must be finite"),
        ({"rim_float32_batch": 0}, "rim_float32_batch must be None or an integer >= 1"),
        ({"rim_float32_batch": 2.5}, "rim_float32_batch must be None or an integer >= 1"),
    ],
)
def test_demo_settings_that_cannot_make_a_demo_are_refused_at_construction(change, message):
    from dataclasses import replace

    with pytest.raises(ValueError, match=message):
        replace(PRESETS["standard"], **change)


def test_the_stages_are_one_function_each_with_their_measured_times():
    from lensrim.demo import STAGE_FUNCTIONS, expected_seconds

    assert len(STAGE_FUNCTIONS) == len(STAGES) == 7
    for preset in PRESETS:
        times = expected_seconds(preset)
        assert list(times) == list(STAGES) and all(t > 0 for t in times.values())
    assert expected_seconds("not measured") == {}


def test_a_cpu_without_native_bfloat16_gets_the_times_measured_on_such_a_cpu(monkeypatch):
    """The standard demo's RIM asks for bfloat16; a CPU that only emulates it trains in float32,
    at half the batch and still about 1.5 times as long (its RIM stage 1,140 s against 749 in the
    measured rows), and the stages' ETAs must say so rather than promise the bfloat16 machine's
    minutes."""
    from dataclasses import replace

    import torch

    from lensrim import demo, model

    standard, float32 = demo.expected_seconds("standard"), demo.expected_seconds("standard", float32_cpu=True)
    assert list(float32) == list(STAGES) and all(t > 0 for t in float32.values())
    rim = STAGES[3]
    assert float32[rim] > 1.5 * standard[rim]
    assert demo.expected_seconds("quick", float32_cpu=True) == demo.expected_seconds("quick")  # no such row
    for native, device, bf16, expected in (
        (False, "cpu", True, True),
        (True, "cpu", True, False),
        (False, "cpu", False, False),
        (False, torch.device("cuda"), True, False),
    ):
        monkeypatch.setattr(model, "native_bf16_cpu", lambda native=native: native)
        config = replace(PRESETS["standard"], rim_bf16=bf16)
        assert demo._float32_cpu_run(config, device) is expected


def test_the_rim_trains_at_its_float32_batch_only_where_it_runs_in_float32_for_want_of_bfloat16(monkeypatch):
    """A CPU that emulates bfloat16 takes as long per lens at batch 4 as at 8 in float32: there the
    standard demo halves its batch (rim_float32_batch) rather than nearly triple its time;
    everywhere else, and with rim_float32_batch None, the batch is rim_batch."""
    from dataclasses import replace

    import torch

    from lensrim import demo, model

    standard = PRESETS["standard"]
    assert (standard.rim_batch, standard.rim_float32_batch) == (8, 4)
    for native, device, config, expected in (
        (False, "cpu", standard, 4),
        (True, "cpu", standard, 8),
        (False, torch.device("cuda"), standard, 8),
        (False, "cpu", replace(standard, rim_bf16=False), 8),  # asked for float32: its own batch
        (False, "cpu", replace(standard, rim_float32_batch=None), 8),
    ):
        monkeypatch.setattr(model, "native_bf16_cpu", lambda native=native: native)
        assert demo._rim_batch(config, device) == expected


@pytest.mark.slow
def test_a_demo_on_a_cpu_without_native_bfloat16_trains_at_its_float32_batch_and_says_so(tmp_path, monkeypatch):
    from dataclasses import replace

    from lensrim import model

    monkeypatch.setattr(model, "native_bf16_cpu", lambda: False)
    config = replace(PRESETS["quick"], rim_bf16=True, rim_batch=4, rim_float32_batch=2)
    result = run_demo(tmp_path / "demo", config, seed=3, say=lambda line: None)
    stored = json.loads((tmp_path / "demo" / "rim" / "config.json").read_text())
    assert stored["batch_size"] == 2 and stored["bf16"] is True
    assert "the RIM trained in float32 at batch 2" in result["verdict"]["RIM batch"]
    assert "at batch 4" in result["verdict"]["RIM batch"]
    # the directory moved to a CPU with native bfloat16: refused in one line, nothing retrained
    monkeypatch.setattr(model, "native_bf16_cpu", lambda: True)
    before = (tmp_path / "demo" / "rim" / "metrics.jsonl").read_text()
    with pytest.raises(DemoError, match=r"trains at batch 2, and here \(cpu\) it would train at batch 4"):
        run_demo(tmp_path / "demo", config, seed=3, say=lambda line: None)
    assert (tmp_path / "demo" / "rim" / "metrics.jsonl").read_text() == before
