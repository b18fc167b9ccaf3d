"""Run directories survive what users and crashes do to them: malformed checkpoints, half-written
metrics, kills before the first checkpoint, and a loss that turns non-finite."""

import json
import re

import pytest
import torch

import lensprior
from lensprior.training import fit, read_metrics, save_checkpoint

TINY = dict(pixels=32, levels=2, filters=4, latent_dim=4, batch_size=4)


def _data(n=8):
    g = torch.Generator().manual_seed(0)
    return torch.rand(n, 1, 32, 32, generator=g)


def _steps(run):
    return [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_checkpoint_bytes_depend_on_the_state_alone(tmp_path):
    # torch names the archive's inner folder after the path it writes: the temporary name held
    # the process id, so two identical runs wrote different bytes
    state = {"model": {"w": torch.arange(6.0)}, "step": 3}
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        save_checkpoint(tmp_path / name, state)
    assert (tmp_path / "a" / "checkpoint.pt").read_bytes() == (tmp_path / "b" / "checkpoint.pt").read_bytes()
    cfg = lensprior.source_vae_config(**TINY, steps=3)
    for name in ("c", "d"):
        lensprior.train_vae(cfg, _data(), tmp_path / name, seed=1, checkpoint_every=1)
    assert (tmp_path / "c" / "checkpoint.pt").read_bytes() == (tmp_path / "d" / "checkpoint.pt").read_bytes()


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ([1, 2, 3], "holds a list, not a dict"),
        ("weights", "holds a str, not a dict"),
        ({"step": 2}, r"no model"),
        ({"model": {"w": "x"}, "step": 2}, "not a state dict of tensors"),
        ({"model": {}, "step": "12a"}, "'step' is '12a'"),
        ({"model": {}, "step": -4}, "'step' is -4"),
    ],
)
def test_malformed_checkpoints_are_refused_in_one_line_naming_the_file(tmp_path, payload, message):
    cfg = lensprior.source_vae_config(**TINY, steps=2)
    lensprior.train_vae(cfg, _data(), tmp_path, checkpoint_every=1)
    torch.save(payload, tmp_path / "checkpoint.pt")
    for action in (lambda: lensprior.load_vae(tmp_path), lambda: lensprior.train_vae(cfg, _data(), tmp_path)):
        with pytest.raises(lensprior.RunError, match=message) as err:
            action()
        assert str(tmp_path / "checkpoint.pt") in str(err.value) and "\n" not in str(err.value)


def test_checkpoints_with_wrong_shapes_dtypes_or_nan_weights_are_refused(tmp_path):
    cfg = lensprior.source_vae_config(**TINY, steps=2)
    model = lensprior.train_vae(cfg, _data(), tmp_path, checkpoint_every=1)
    good = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    name = next(iter(model.state_dict()))
    cases = {
        "is (3,), the model's": {name: torch.zeros(3)},
        "torch.float64": {name: good["model"][name].double()},
        "NaN or infinite": {name: torch.full_like(good["model"][name], float("nan"))},
        "missing": {name: None},
    }
    for message, change in cases.items():
        weights = {**good["model"], **change}
        weights = {k: v for k, v in weights.items() if v is not None}
        torch.save({**good, "model": weights}, tmp_path / "checkpoint.pt")
        with pytest.raises(lensprior.RunError, match=re.escape(message)):
            lensprior.load_vae(tmp_path)


def test_a_half_written_last_metrics_line_is_dropped_a_malformed_earlier_one_refused(tmp_path):
    cfg = lensprior.source_vae_config(**TINY, steps=4)
    lensprior.train_vae(cfg, _data(), tmp_path, checkpoint_every=2, log_every=1)
    log = tmp_path / "metrics.jsonl"
    whole = log.read_text()
    log.write_text(whole + '{"step": 5, "lo')  # a kill in the middle of a write
    with pytest.warns(UserWarning, match="half-written last line"):
        records = read_metrics(log)
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    with pytest.warns(UserWarning):
        lensprior.train_vae(cfg, _data(), tmp_path, steps=6, checkpoint_every=2, log_every=1)
    assert _steps(tmp_path) == [1, 2, 3, 4, 5, 6]
    lines = log.read_text().splitlines()
    log.write_text("\n".join([lines[0], "{not json", *lines[1:]]) + "\n")
    with pytest.raises(lensprior.RunError, match=r"metrics.jsonl: line 2 is not a metrics record"):
        read_metrics(log)


def test_a_run_killed_before_its_first_checkpoint_logs_each_step_once(tmp_path):
    cfg = lensprior.source_vae_config(**TINY, steps=4)

    def killed(done, terms):
        if done == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        lensprior.train_vae(cfg, _data(), tmp_path, log_every=1, checkpoint_every=100, progress=killed)
    assert _steps(tmp_path) == [1, 2] and not (tmp_path / "checkpoint.pt").exists()
    lensprior.train_vae(cfg, _data(), tmp_path, log_every=1, checkpoint_every=100)
    assert _steps(tmp_path) == [1, 2, 3, 4]


class _Explodes(torch.nn.Module):
    """A model whose loss turns NaN at a chosen step."""

    def __init__(self, at):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(3))
        self.at = at

    def loss(self, batch, step, generator=None):
        loss = (self.w**2).sum() * batch.mean()
        if step + 1 >= self.at:
            loss = loss * float("nan")
        return loss, {"loss": float(loss.detach())}


def test_a_non_finite_loss_stops_training_and_keeps_the_last_good_checkpoint(tmp_path):
    cfg = lensprior.source_vae_config(**TINY, steps=10)
    with pytest.raises(lensprior.RunError, match=r"step 4: the loss is not finite.*checkpoint of step 2 is kept"):
        fit(_Explodes(at=4), cfg, _data(), tmp_path, steps=10, checkpoint_every=2, log_every=1)
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert state["step"] == 2 and torch.isfinite(state["model"]["w"]).all()
    assert _steps(tmp_path) == [1, 2, 3]


def test_an_update_to_non_finite_weights_writes_no_checkpoint(tmp_path):
    cfg = lensprior.source_vae_config(**TINY, steps=4)
    model = _Explodes(at=100)
    with torch.no_grad():
        model.w[0] = float("inf")  # the loss is inf from the start: refused at step 1
    with pytest.raises(lensprior.RunError, match="step 1: the loss is not finite.*no checkpoint was written"):
        fit(model, cfg, _data(), tmp_path, steps=4, checkpoint_every=1)
    assert not (tmp_path / "checkpoint.pt").exists()
    with pytest.raises(lensprior.RunError, match="weights 'w' are not finite"):
        save_checkpoint(tmp_path, {"model": {"w": torch.tensor([1.0, float("nan")])}, "step": 1})


@pytest.mark.parametrize("field", ["learning_rate", "beta_max", "clip_norm"])
@pytest.mark.parametrize("value", [float("inf"), float("nan")])
def test_configs_refuse_non_finite_numbers(field, value):
    with pytest.raises(ValueError, match=f"{field} must be finite"):
        lensprior.source_vae_config(**TINY, **{field: value})


def test_configs_refuse_wrongly_typed_json():
    text = lensprior.source_vae_config(**TINY).to_json()
    bad = json.loads(text)
    bad["steps"] = "100"
    with pytest.raises(ValueError, match="steps must be an integer"):
        lensprior.VAEConfig.from_json(json.dumps(bad))
    with pytest.raises(ValueError, match="a JSON list, not an object"):
        lensprior.VAEConfig.from_json("[1, 2]")


def test_a_second_process_on_a_run_directory_is_refused_and_stale_temporaries_go(tmp_path):
    import subprocess
    import sys

    from lensprior.training import RunLock

    cfg = lensprior.source_vae_config(**TINY, steps=2)
    with RunLock(tmp_path):  # flock: a second open file description conflicts, as another process's would
        with pytest.raises(lensprior.RunError, match="another process is training in this run directory"):
            lensprior.train_vae(cfg, _data(), tmp_path)
    assert not (tmp_path / "checkpoint.pt").exists()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".checkpoint.pt.{int(dead.stdout)}.tmp"
    stale.write_bytes(b"half a checkpoint")
    lensprior.train_vae(cfg, _data(), tmp_path)
    assert not stale.exists() and not (tmp_path / ".lock").exists()
    assert (tmp_path / "checkpoint.pt").is_file()
