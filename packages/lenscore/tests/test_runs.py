"""Run directories: a killed run resumes to the same weights, checkpoints are validated before use,
configs round-trip through JSON strictly, and nothing here needs torch at import but the runs."""

import json
import subprocess
import sys
from dataclasses import dataclass
from typing import ClassVar

import pytest
import torch

from lenscore.config import JsonConfig
from lenscore.runs import (
    CHECKPOINT,
    METRICS,
    RunError,
    RunLock,
    check_finite,
    load_checkpoint,
    load_run,
    prepare_run,
    read_metrics,
    restore,
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


def test_a_run_with_another_configuration_is_refused(tmp_path):
    train(tmp_path, LineConfig(), 2)
    train(tmp_path, LineConfig(steps=20), 4)  # a mutable field: a longer run
    with pytest.raises(RunError, match="another configuration"):
        train(tmp_path, LineConfig(width=4), 4)


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


def test_files_and_configs_load_without_torch():
    code = "import sys, lenscore.files, lenscore.config; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
