"""Run directories: a killed run resumes to the same weights, checkpoints are validated before use,
configs round-trip through JSON strictly, and nothing here needs torch at import but the runs."""

import json
import subprocess
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import ClassVar

import pytest
import torch

from lenscore.config import JsonConfig, differences
from lenscore.runs import (
    CHECKPOINT,
    METRICS,
    RunError,
    RunLock,
    StepResult,
    check_finite,
    check_memory,
    check_resume,
    check_run,
    load_checkpoint,
    load_run,
    memory_estimate,
    on_device,
    prepare_run,
    read_config,
    read_json,
    read_metrics,
    restore,
    resumed_config,
    run_metadata,
    run_steps,
    save_checkpoint,
    seeded_init,
    step_generator,
)


@dataclass(frozen=True)
class LineConfig(JsonConfig):
    RUN_KIND: ClassVar[str] = "line"

    width: int = 3
    learning_rate: float = 0.1
    steps: int = 10

    def __post_init__(self) -> None:
        self.check_numbers()


def build(config: LineConfig) -> torch.nn.Module:
    return torch.nn.Linear(config.width, 1)


def train(run_dir, config, stop: int, seed: int = 0) -> torch.nn.Module:
    """A minimal run: steps whose data are a function of (seed, step), checkpoint every 2."""
    with RunLock(run_dir):
        prepare_run(run_dir, config, ("steps",), metadata={"note": "test"}, seed=seed)
        model = seeded_init(lambda: build(config), seed)
        opt = torch.optim.SGD(model.parameters(), lr=config.learning_rate)
        start = restore(run_dir, model, opt)
        for step in range(start, stop):
            x = torch.randn(4, config.width, generator=step_generator(seed, step))
            loss = (model(x) - x.sum(dim=1, keepdim=True)).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            with open(run_dir / METRICS, "a") as f:
                f.write(json.dumps({"step": step + 1, "loss": float(loss.detach())}) + "\n")
            if (step + 1) % 2 == 0:
                save_checkpoint(run_dir, {"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step + 1})
    return model


def test_a_run_stopped_between_checkpoints_resumes_to_the_same_weights(tmp_path):
    config = LineConfig()
    whole = train(tmp_path / "whole", config, 10)
    train(tmp_path / "parts", config, 5)  # steps 1-5 logged, checkpoint at 4
    resumed = train(tmp_path / "parts", config, 10)  # restarts at 4, trims the log line of step 5
    for a, b in zip(whole.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(a, b)
    steps = [r["step"] for r in read_metrics(tmp_path / "parts" / METRICS)]
    assert steps == list(range(1, 11))  # each step logged once
    model, meta = load_run(tmp_path / "parts", LineConfig, build)
    assert meta == {"note": "test", "seed": 0, "step": 10} and torch.equal(model.weight, whole.weight)


def _batch(step, poison=None):
    x = torch.randn(4, 3, generator=step_generator(0, step))
    if step == poison:
        x[0, 0] = float("nan")
    return x


def _looped(run_dir, stop, *, log_every=3, checkpoint_every=4, seen=None, poison=None):
    """A run through :func:`run_steps`: SGD, a decaying learning rate, clipping at 0.5."""
    config = LineConfig()
    with RunLock(run_dir):
        prepare_run(run_dir, config, ("steps",), seed=0)
        model = seeded_init(lambda: build(config), 0)
        opt = torch.optim.SGD(model.parameters(), lr=1.0)
        start = restore(run_dir, model, opt)

        def step_loss(x, step):
            err = model(x.nan_to_num(0.0)) - x.sum(dim=1, keepdim=True)
            loss = err.pow(2).mean() + 0 * x[0, 0]  # a NaN input makes the loss NaN, not the target
            return StepResult(loss, watch=err.abs().max(), aux=x.shape[0])

        def log_terms(logged, last, history):
            return {"rows": history.shape[0], "watched": history[:, 2].tolist(), "examples": last.aux}

        run_steps(
            run_dir,
            model,
            opt,
            (_batch(s, poison) for s in range(start, stop)),
            step_loss,
            start=start,
            steps=stop,
            learning_rate_at=lambda step: 0.1 * 0.9**step,
            clip_norm=0.5,
            log_every=log_every,
            checkpoint_every=checkpoint_every,
            log_terms=log_terms,
            progress=None if seen is None else lambda done, terms: seen.append(dict(terms)),
        )
    return model


def test_run_steps_takes_the_steps_a_hand_written_loop_takes_and_logs_on_its_cadence(tmp_path):
    seen = []
    model = _looped(tmp_path / "a", 8, seen=seen)
    ref = seeded_init(lambda: build(LineConfig()), 0)
    opt = torch.optim.SGD(ref.parameters(), lr=1.0)
    for step in range(8):
        x = _batch(step)
        opt.param_groups[0]["lr"] = 0.1 * 0.9**step
        loss = (ref(x) - x.sum(dim=1, keepdim=True)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(ref.parameters(), 0.5)
        opt.step()
        if step == 7:
            last_norm, last_lr = float(norm), 0.1 * 0.9**step
    for a, b in zip(model.parameters(), ref.parameters(), strict=True):
        assert torch.equal(a, b)
    lines = read_metrics(tmp_path / "a" / METRICS)
    assert [r["step"] for r in lines] == [3, 6, 8]  # every 3rd step and the last
    assert [r["rows"] for r in lines] == [3, 3, 2]  # the steps since the last log
    assert all(len(r["watched"]) == r["rows"] and r["examples"] == 4 for r in lines)
    assert lines[-1]["grad_norm"] == pytest.approx(last_norm) and lines[-1]["lr"] == pytest.approx(last_lr)
    assert [t["step"] for t in seen] == list(range(1, 9))
    assert [sorted(t) for t in seen if len(t) > 1] == [sorted(lines[0])] * 3
    assert load_checkpoint(tmp_path / "a")["step"] == 8
    # a run to step 5 (its last step logged and saved), then taken on to 8: the same weights
    _looped(tmp_path / "b", 5)
    resumed = _looped(tmp_path / "b", 8)
    assert torch.equal(resumed.weight, model.weight)
    assert [r["step"] for r in read_metrics(tmp_path / "b" / METRICS)] == [3, 5, 6, 8]


def test_read_metrics_refuses_a_record_without_an_integer_step_before_the_last_line(tmp_path):
    path = tmp_path / METRICS
    for step in ("true", "2.0", '"2"', "null"):
        path.write_text(f'{{"step": 1}}\n{{"step": {step}}}\n{{"step": 3}}\n')
        with pytest.raises(RunError, match=r"line 2 is not a metrics record \(no integer 'step'\)"):
            read_metrics(path)
    path.write_text('{"step": 1}\n{"step": 2}\n')
    assert [r["step"] for r in read_metrics(path)] == [1, 2]


def test_run_steps_names_the_first_non_finite_step_and_keeps_the_last_good_checkpoint(tmp_path):
    with pytest.raises(RunError, match=r"step 7: the loss is not finite.*checkpoint of step 4 is kept"):
        _looped(tmp_path, 12, log_every=100, checkpoint_every=4, poison=6)  # found at step 8, the next checkpoint
    assert load_checkpoint(tmp_path)["step"] == 4


def test_a_run_with_another_configuration_is_refused(tmp_path):
    train(tmp_path, LineConfig(), 2)
    train(tmp_path, LineConfig(steps=20), 4)  # a mutable field: a longer run
    with pytest.raises(RunError, match="another configuration") as e:
        train(tmp_path, LineConfig(width=4), 4)
    # the fields that differ, the stored value first; the mutable ones are not named
    assert "(width 3 there, 4 here)" in str(e.value)
    with pytest.raises(RunError, match=r"\(width 3 there, 5 here; learning_rate 0.1 there, 0.2 here\)"):
        check_run(tmp_path, LineConfig(width=5, learning_rate=0.2, steps=30), ("steps",))


def test_a_resume_keeps_the_runs_settings_but_those_given_again(tmp_path):
    assert resumed_config(tmp_path, LineConfig, {"width": 4}) is None and run_metadata(tmp_path) == {}  # new run
    train(tmp_path, LineConfig(width=5, learning_rate=0.3), 2)
    assert resumed_config(tmp_path, LineConfig, {"steps": 20, "width": None}) == LineConfig(5, 0.3, 20)
    assert resumed_config(tmp_path, LineConfig, {"width": 6}) == LineConfig(6, 0.3, 10)  # for check_run to refuse
    assert resumed_config(tmp_path, LineConfig, {"learning_rate": float("nan")}) is None  # not a value it takes
    assert run_metadata(tmp_path) == {"note": "test", "seed": 0}
    (tmp_path / "config.json").write_text('{"kind": "other"}')
    with pytest.raises(RunError, match="config.json"):
        resumed_config(tmp_path, LineConfig, {})


def test_checkpoints_are_validated_before_use(tmp_path):
    torch.save({"model": {"w": torch.tensor([float("nan")])}, "step": 3}, tmp_path / CHECKPOINT)
    with pytest.raises(RunError, match="'w' hold NaN"):
        load_checkpoint(tmp_path)
    torch.save({"model": {"w": torch.ones(1)}, "step": -1}, tmp_path / CHECKPOINT)
    with pytest.raises(RunError, match="not a non-negative integer"):
        load_checkpoint(tmp_path)
    (tmp_path / CHECKPOINT).write_bytes(b"garbage")
    with pytest.raises(RunError, match="unreadable checkpoint"):
        load_checkpoint(tmp_path)
    (tmp_path / CHECKPOINT).unlink()
    with pytest.raises(RunError, match="not finite; training stopped .no checkpoint was written"):
        save_checkpoint(tmp_path, {"model": {"w": torch.tensor([float("inf")])}, "step": 1})
    with pytest.raises(RunError, match="loss is not finite"):
        check_finite(5, tmp_path, loss=float("nan"))


def test_configs_round_trip_and_refuse_other_kinds_and_keys():
    c = LineConfig(width=5)
    assert LineConfig.from_json(c.to_json()) == c
    with pytest.raises(ValueError, match="not a line configuration"):
        LineConfig.from_json(json.dumps({"model": "RIM", "width": 5}))
    with pytest.raises(ValueError, match="unknown line configuration keys"):
        LineConfig.from_json(json.dumps({"model": "line", "depth": 5}))
    with pytest.raises(ValueError, match="learning_rate must be finite"):
        LineConfig(learning_rate=float("inf"))


def test_a_stored_config_that_is_not_one_is_refused_in_one_line_naming_the_file(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(LineConfig(width=5).to_json())
    assert read_config(LineConfig, path) == LineConfig(width=5)
    cases = {
        json.dumps({"model": "VAE"}): "not a line configuration (model: 'VAE')",
        json.dumps([1, 2]): "not a line configuration (a JSON list, not an object)",
        json.dumps({"model": "line", "depth": 5}): "not a line configuration (unknown line configuration keys",
        json.dumps({"model": "line", "learning_rate": None}): "not a line configuration (learning_rate must be",
        "{": "not a line configuration (Expecting property name",
    }
    for text, message in cases.items():
        path.write_text(text)
        for read in (lambda: read_config(LineConfig, path), lambda: check_run(tmp_path, LineConfig(), ())):
            with pytest.raises(RunError) as e:
                read()
            assert str(e.value).startswith(f"{path}: {message}")
            assert str(e.value).count("not a line configuration") == 1  # said once, not wrapped twice
    path.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(RunError, match="not a line configuration .*can't decode"):
        read_config(LineConfig, path)


def test_files_and_configs_load_without_torch():
    code = "import sys, lenscore.files, lenscore.config; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def _adam_run(run_dir, stop, checkpoint_every):
    config = LineConfig()
    with RunLock(run_dir):
        check_run(run_dir, config, ("steps",))
        model = seeded_init(lambda: build(config), 0)
        opt = torch.optim.Adam(model.parameters(), lr=0.01)
        start = restore(run_dir, model, opt, trim=False)
        prepare_run(run_dir, config, ("steps",), seed=0)

        def step_loss(x, step):
            return StepResult((model(x) - x.sum(dim=1, keepdim=True)).pow(2).mean())

        run_steps(
            run_dir,
            model,
            opt,
            (_batch(s) for s in range(start, stop)),
            step_loss,
            start=start,
            steps=stop,
            learning_rate_at=lambda step: 0.01,
            clip_norm=1.0,
            log_every=2,
            checkpoint_every=checkpoint_every,
        )


def test_a_resumed_run_writes_the_checkpoint_bytes_of_an_uninterrupted_one(tmp_path):
    # Adam's state keys come back from a checkpoint as new string objects; pickled as they are,
    # the same state took other bytes after a resume
    _adam_run(tmp_path / "whole", 6, checkpoint_every=3)
    _adam_run(tmp_path / "parts", 3, checkpoint_every=3)
    _adam_run(tmp_path / "parts", 6, checkpoint_every=3)
    assert (tmp_path / "parts" / CHECKPOINT).read_bytes() == (tmp_path / "whole" / CHECKPOINT).read_bytes()


def test_a_refused_resume_leaves_every_file_of_the_run_as_it_was(tmp_path):
    run_dir = tmp_path / "run"
    _adam_run(run_dir, 4, checkpoint_every=2)
    wider = replace(LineConfig(), width=5)  # another architecture's checkpoint in the run directory
    state = {"model": build(wider).state_dict(), "optimizer": {"state": {}, "param_groups": []}, "step": 2}
    torch.save(state, run_dir / CHECKPOINT)
    before = {p.name: p.read_bytes() for p in run_dir.iterdir()}
    with pytest.raises(RunError, match="weights do not fit"):
        _adam_run(run_dir, 8, checkpoint_every=2)
    assert {p.name: p.read_bytes() for p in run_dir.iterdir()} == before


def test_a_run_is_not_rewound_to_fewer_steps_than_its_checkpoint_took(tmp_path):
    run_dir = tmp_path / "run"
    _adam_run(run_dir, 4, checkpoint_every=2)
    before = {p.name: p.read_bytes() for p in run_dir.iterdir()}
    model = build(LineConfig())
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    with pytest.raises(
        RunError, match=r"checkpoint is at step 4, past the last step asked for \(3\).*ask for 4 steps or more"
    ):
        restore(run_dir, model, opt, until=3)  # refused before trimming the metrics too
    with pytest.raises(RunError, match=r"past the last step asked for \(3\)"):
        check_resume(run_dir, until=3)  # what a command asks before it reports anything
    assert {p.name: p.read_bytes() for p in run_dir.iterdir()} == before
    assert check_resume(run_dir, until=4, seed=0) == 4 and check_resume(tmp_path / "new", until=1, seed=3) == 0
    assert restore(run_dir, model, opt, until=4) == 4  # a finished run asked for its own steps resumes


def test_a_run_resumes_only_with_the_seed_it_started_with(tmp_path):
    run_dir = tmp_path / "run"
    _adam_run(run_dir, 4, checkpoint_every=2)
    assert read_json(run_dir / "run.json") == {"seed": 0}  # recorded without metadata too
    before = {p.name: p.read_bytes() for p in run_dir.iterdir()}
    model = build(LineConfig())
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    with pytest.raises(RunError, match="was trained with seed 0, not 1: resume it with seed 0"):
        restore(run_dir, model, opt, seed=1)
    with pytest.raises(RunError, match="was trained with seed 0, not 1"):
        check_resume(run_dir, seed=1)
    assert {p.name: p.read_bytes() for p in run_dir.iterdir()} == before
    assert restore(run_dir, model, opt, seed=0) == 4
    # metadata given once stay when a later call gives none
    prepare_run(run_dir, LineConfig(), ("steps",), metadata={"data": "x.h5"}, seed=0)
    prepare_run(run_dir, LineConfig(), ("steps",), seed=0)
    assert read_json(run_dir / "run.json") == {"data": "x.h5", "seed": 0}
    # a run directory with no checkpoint yet starts afresh with any seed
    fresh = tmp_path / "fresh"
    prepare_run(fresh, LineConfig(), ("steps",), seed=0)
    assert restore(fresh, model, opt, seed=7) == 0


def test_a_run_resumed_on_other_data_keeps_what_it_ran_on_before(tmp_path):
    import warnings

    run_dir, config = tmp_path / "run", LineConfig()
    prepare_run(run_dir, config, ("steps",), metadata={"data": "a.h5", "world_size": 1}, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the same metadata again: no word, no history
        prepare_run(run_dir, config, ("steps",), metadata={"data": "a.h5", "world_size": 1}, seed=0, resumed_at=4)
    assert read_json(run_dir / "run.json") == {"data": "a.h5", "world_size": 1, "seed": 0}
    with pytest.warns(
        UserWarning,
        match=r"resumed at step 4 with other metadata than it ran with \(data 'a.h5' there, 'b.h5' here\); run",
    ):
        prepare_run(run_dir, config, ("steps",), metadata={"data": "b.h5", "world_size": 1}, seed=0, resumed_at=4)
    with pytest.warns(UserWarning, match=r"\(data 'b.h5' there, 'c.h5' here; world_size 1 there, 2 here\)"):
        prepare_run(run_dir, config, ("steps",), metadata={"data": "c.h5", "world_size": 2}, seed=0, resumed_at=6)
    prepare_run(run_dir, config, ("steps",), seed=0, resumed_at=8)  # no metadata given: all kept
    assert read_json(run_dir / "run.json") == {
        "data": "c.h5",
        "world_size": 2,
        "seed": 0,
        "history": [
            {"until_step": 4, "data": "a.h5", "world_size": 1},
            {"until_step": 6, "data": "b.h5", "world_size": 1},
        ],
    }


def test_a_checkpoint_the_disk_cannot_hold_fails_in_one_line_naming_it(tmp_path, monkeypatch):
    import contextlib

    import lenscore.runs

    @contextlib.contextmanager
    def full_disk(path):  # writes go to /dev/full, which fails them as a full disk does (ENOSPC)
        yield Path("/dev/full")

    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full on this system")
    model = build(LineConfig())
    monkeypatch.setattr(lenscore.runs, "written", full_disk)
    with pytest.raises(OSError, match=r"checkpoint.pt: the checkpoint could not be written \(no space left"):
        save_checkpoint(tmp_path, {"model": model.state_dict(), "step": 1})


def test_configs_too_large_for_memory_are_refused_before_allocation(tmp_path):
    huge = replace(LineConfig(), width=10**12)  # 4 TB of weights: built on the meta device only
    with pytest.raises(RunError, match=r"run: the model would need at least .* GiB, more than"):
        check_memory(huge, build, tmp_path / "run")
    check_memory(LineConfig(), build, tmp_path / "run")  # a small one passes
    assert memory_estimate(LineConfig(), build) == 4 * (3 + 1)  # weight and bias, float32


def test_exponential_decay_is_keras_schedule_continuous_or_in_whole_periods():
    from lenscore.config import exponential_decay

    assert exponential_decay(1e-3, 0.5, 100, 0) == 1e-3
    assert exponential_decay(1e-3, 0.5, 100, 150) == pytest.approx(1e-3 * 0.5**1.5)
    assert exponential_decay(1e-3, 0.5, 100, 150, staircase=True) == pytest.approx(0.5e-3)
    assert exponential_decay(1e-3, 0.5, 100, 200, staircase=True) == pytest.approx(0.25e-3)


def conv_net(config: LineConfig) -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Conv2d(config.width, 4, 3), torch.nn.Flatten(), torch.nn.Linear(4 * 4 * 4, 1))


def test_on_a_cpu_models_run_channels_last_with_the_same_weights_and_outputs(tmp_path):
    torch.manual_seed(0)
    net = conv_net(LineConfig())
    before = {k: v.clone() for k, v in net.state_dict().items()}
    x = torch.randn(2, 3, 6, 6)
    expected = net(x)
    net = on_device(net, "cpu")
    conv, linear = net[0].weight, net[2].weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    assert linear.is_contiguous()  # only 4-d weights change layout
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k]), k
    torch.testing.assert_close(net(x), expected, rtol=1e-5, atol=1e-6)  # the same function, rounded otherwise

    # a trained model loaded back on the CPU comes in the same layout
    config = LineConfig()
    prepare_run(tmp_path, config, ("steps",))
    save_checkpoint(tmp_path, {"model": net.state_dict(), "step": 1})
    loaded, _ = load_run(tmp_path, LineConfig, conv_net)
    assert loaded[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(loaded(x), net(x))


def test_differences_name_each_setting_that_differs_dotted_and_short():
    before = {"seed": 0, "config": {"steps": 10, "fov": 7.69}, "halos": list(range(40)), "gone": 1}
    now = {"seed": 1, "config": {"steps": 10, "fov": 6.0, "new": True}, "halos": list(range(1, 41))}
    said = differences(before, now)
    assert said[:3] == ["seed 0 there, 1 here", "config.fov 7.69 there, 6.0 here", "config.new absent there, True here"]
    assert said[3].startswith("halos [0, 1, 2") and said[3].count("...") == 2 and len(said[3]) < 140
    assert said[4] == "gone 1 there, absent here" and len(said) == 5
    assert differences(now, now) == [] and differences(1, 2) == ["the settings 1 there, 2 here"]
    lenses = [{"name": "a", "psf_fwhm": 0.1}, {"name": "b", "psf_fwhm": 0.2}]  # records: each one's keys named
    changed = [lenses[0], {"name": "b", "psf_fwhm": 0.3}]
    assert differences({"lenses": lenses}, {"lenses": changed}) == ["lenses[1].psf_fwhm 0.2 there, 0.3 here"]
    assert differences(lenses, lenses[:1])[0].startswith("the settings [{'name': 'a', 'psf_fwhm': 0.1}, {")  # whole
    many = differences({f"k{i}": i for i in range(9)}, {f"k{i}": -i for i in range(9)}, most=3)
    assert many == ["k1 1 there, -1 here", "k2 2 there, -2 here", "k3 3 there, -3 here", "... 5 more"]
