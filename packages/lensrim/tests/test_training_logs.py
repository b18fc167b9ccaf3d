"""What training shows: per-step terms, the constant reference, held-out lenses, TensorBoard,
prefetching that changes nothing, and the initialisation option."""

import json
import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from conftest import sie_lenses as _lenses

import lensrim
import lenssim
from lensprior import RunError
from lensrim import PRESETS, RIM, train_rim
from lensrim.metrics import constant_reference
from lensrim.model import rim_loss, rim_loss_terms
from lensrim.training import DatasetBatches, SimulatedBatches, _Prefetch


def test_constant_reference_is_the_best_constant():
    data = _lenses()
    ref = constant_reference(data["source"], data["kappa"])

    def mean_loss(c):
        est = torch.cat([torch.zeros_like(data["source"]), torch.full_like(data["kappa"], c)], dim=1)[None]
        return float(rim_loss(est, data["source"], data["kappa"]).mean())

    grid = np.linspace(ref.log10_kappa - 0.5, ref.log10_kappa + 0.5, 201)
    brute = grid[np.argmin([mean_loss(c) for c in grid])]
    assert abs(brute - ref.log10_kappa) <= 0.5 / 100 + 1e-9
    assert float(ref.loss.mean()) == pytest.approx(mean_loss(ref.log10_kappa), rel=1e-5)
    assert mean_loss(ref.log10_kappa + 0.05) > float(ref.loss.mean())
    assert ref.log10_loss == pytest.approx(float(torch.log10(ref.loss.double()).mean()))


def test_loss_terms_add_up_to_eq7():
    data = _lenses(3)
    est = torch.randn(4, 3, 2, 32, 32) * 0.1
    ls, lk = rim_loss_terms(est, data["source"], data["kappa"])
    assert ls.shape == lk.shape == (4, 3)
    assert torch.allclose((ls + lk).mean(0), rim_loss(est, data["source"], data["kappa"]))
    s = data["source"][:, 0]
    assert torch.allclose(ls[2], (est[2, :, 0] - s).pow(2).mean(dim=(-1, -2)))


def test_glorot_init_matches_keras():
    model = RIM(replace(PRESETS["tiny"], init="glorot"))
    conv = model.unet.enc[0][0]
    fan_in, fan_out = conv.in_channels * 9, conv.out_channels * 9
    bound = math.sqrt(6 / (fan_in + fan_out))
    assert conv.weight.abs().max() <= bound and conv.weight.abs().max() > 0.9 * bound
    assert all(float(m.bias.detach().abs().max()) == 0 for m in model.unet.modules() if isinstance(m, torch.nn.Conv2d))
    default = RIM(PRESETS["tiny"]).unet.enc[0][0]
    assert default.bias.abs().max() > 0  # PyTorch's default draws biases
    with pytest.raises(ValueError, match="init"):
        replace(PRESETS["tiny"], init="he")


def test_training_logs_terms_references_and_tensorboard(tmp_path):
    data = _lenses(6)
    train = {k: v[:4] for k, v in data.items()}
    ext = {k: v[4:] for k, v in data.items()}
    cfg = replace(PRESETS["tiny"], steps=3, batch_size=2)
    train_rim(
        cfg,
        lambda step, size, seed: {k: v[:size] for k, v in train.items()},
        tmp_path,
        steps=4,
        log_every=2,
        validation=train,
        external=ext,
    )
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines] == [2, 4]
    m = lines[-1]
    assert len(m["loss_t"]) == 3 and len(m["val_loss_t"]) == 3
    assert m["loss"] == pytest.approx(m["loss_source"] + m["loss_kappa"], rel=1e-6)
    assert m["loss"] == pytest.approx(sum(m["loss_t"]) / 3, rel=1e-5)
    ref = constant_reference(train["source"], train["kappa"])
    assert m["val_constant_loss"] == pytest.approx(float(ref.loss.mean()), rel=1e-5)
    assert m["val_constant_log10_loss"] == pytest.approx(ref.log10_loss, rel=1e-5)
    assert m["ext_constant_loss"] == pytest.approx(float(constant_reference(ext["source"], ext["kappa"]).loss.mean()))
    # the validation figures are the model's on those lenses
    model, _ = lensrim.load_rim(tmp_path)
    again = lensrim.training.evaluate_rim(model, train)
    assert again["loss"] == pytest.approx(m["val_loss"], rel=1e-5)
    assert again["chi2_nu"] == pytest.approx(m["val_chi2_nu"], rel=1e-5)
    events = list(tmp_path.glob("events.out.tfevents.*"))
    assert events, "no TensorBoard event file"
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tmp_path))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"train/loss", "validation/loss", "validation/constant_loss", "external/loss", "train/loss_t/2"} <= tags
    assert [e.step for e in acc.Scalars("train/loss")] == [1, 2, 3, 4]
    assert m["objective"] == pytest.approx(acc.Scalars("train/loss")[-1].value, rel=1e-6)  # what the step minimised
    assert acc.Scalars("validation/loss")[-1].value == pytest.approx(m["val_loss"], rel=1e-5)
    # the bar's chi2_nu: the median over the steps since the last log of each step's median
    # (numpy's median: the mean of the middle two of an even count, as the reports)
    per_step = [e.value for e in acc.Scalars("train/chi2_nu")]
    assert m["chi2_nu_window"] == pytest.approx(float(np.median(per_step[2:4])), rel=1e-6)
    assert lines[0]["chi2_nu_window"] == pytest.approx(float(np.median(per_step[0:2])), rel=1e-6)


def test_lens_batches_train_exactly_as_their_fields_do(tmp_path):
    data = _lenses(6)
    lenses = lenssim.LensBatch.from_fields(data)
    cfg = replace(PRESETS["tiny"], steps=3, batch_size=2)
    runs = {
        "fields": (lambda step, size, seed: {k: v[step % 3 : step % 3 + size] for k, v in data.items()}, data),
        "lenses": (
            lambda step, size, seed: lenssim.LensBatch.from_fields(
                {k: v[step % 3 : step % 3 + size] for k, v in data.items()}
            ),
            lenses,
        ),
    }
    for name, (batches, held) in runs.items():
        train_rim(
            cfg, batches, tmp_path / name, steps=3, log_every=1, validation=held, external=held, tensorboard=False
        )
    assert (tmp_path / "fields/metrics.jsonl").read_bytes() == (tmp_path / "lenses/metrics.jsonl").read_bytes()
    model, _ = lensrim.load_rim(tmp_path / "lenses")
    assert lensrim.training.evaluate_rim(model, lenses) == lensrim.training.evaluate_rim(model, data)
    with pytest.raises(ValueError, match=r"needs observation, source and kappa; missing \['kappa'\]"):
        lensrim.training.evaluate_rim(model, {k: v for k, v in data.items() if k != "kappa"})
    with pytest.raises(TypeError, match="a lenssim.LensBatch or a mapping of tensors, not tuple"):
        lensrim.training.batch_loss(model, (data["observation"], data["source"]))


def test_a_non_finite_loss_stops_rim_training_before_a_checkpoint(tmp_path):
    data = _lenses(4)
    cfg = replace(PRESETS["tiny"], steps=2, batch_size=2)

    def batches(step, size, seed):  # the third step's lenses are NaN
        batch = {k: v[:size].clone() for k, v in data.items()}
        if step == 2:
            batch["observation"][0, 0, 3, 3] = float("nan")
        return batch

    # found at the checkpoint of step 4, named at its first step
    with pytest.raises(RunError, match=r"step 3: the loss is not finite.*checkpoint of step 2 is kept"):
        train_rim(
            cfg, batches, tmp_path, steps=6, log_every=4, checkpoint_every=2, validation_size=0, tensorboard=False
        )
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert state["step"] == 2
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def _write_lenses(path, n=20):
    data = _lenses(n)
    attrs = {"image_fov": 7.69, "source_fov": 3.0, "z_lens": 0.5, "z_source": 1.5}
    lenssim.write_dataset(path, data, attrs)
    return data


def test_dataset_holds_out_lenses_and_workers_change_nothing(tmp_path):
    data = _write_lenses(tmp_path / "l.h5", 20)
    batches = DatasetBatches(tmp_path / "l.h5")
    assert batches.holdout == 2 and batches.train_size == 18
    drawn = {i for step in range(200) for i in batches.indices(step, 4, 0)}
    assert drawn == set(range(18))  # the last two are never drawn for training
    held = batches.held_out(32, 0)
    assert torch.equal(held["observation"], data["observation"][18:])
    direct = [batches(step, 3, 5) for step in range(2, 6)]
    workers = list(DatasetBatches(tmp_path / "l.h5", workers=2).stream(2, 6, 3, 5))
    assert len(workers) == 4
    for a, b in zip(direct, workers, strict=True):
        assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(ValueError, match="hold out"):
        DatasetBatches(tmp_path / "l.h5", holdout=20)


def test_prefetch_keeps_order_and_raises():
    assert list(_Prefetch(iter(range(50)), 3)) == list(range(50))

    def broken():
        yield 1
        raise RuntimeError("simulation failed")

    it = iter(_Prefetch(broken(), 2))
    assert next(it) == 1
    with pytest.raises(RuntimeError, match="simulation failed"):
        next(it)


def test_prefetched_on_the_fly_training_equals_plain(tmp_path):
    obs = lenssim.ObservationConfig(image_pixels=32, source_pixels=32, psf_size=5)
    sim = SimulatedBatches(lenssim.sie_kappa_sampler(config=obs), lenssim.sersic_source_sampler(config=obs), obs)
    held = sim.held_out(3, 0)
    assert not torch.equal(held["observation"][:2], sim(0, 2, 0)["observation"])  # its own stream
    cfg = replace(PRESETS["tiny"], steps=2, batch_size=2)
    a = train_rim(cfg, sim, tmp_path / "a", steps=3, prefetch=0, validation_size=3, tensorboard=False)
    b = train_rim(cfg, sim, tmp_path / "b", steps=3, prefetch=2, validation_size=3, tensorboard=False)
    for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True):
        assert torch.equal(x, y)
    assert (tmp_path / "a" / "metrics.jsonl").read_text() == (tmp_path / "b" / "metrics.jsonl").read_text()
    assert "val_constant_loss" in json.loads((tmp_path / "a" / "metrics.jsonl").read_text().splitlines()[-1])


def test_initial_log10_kappa_shifts_the_first_estimate_only_by_the_constant():
    torch.manual_seed(0)
    plain = RIM(replace(PRESETS["tiny"], steps=1))
    shifted = RIM(replace(PRESETS["tiny"], steps=1, initial_log10_kappa=-0.6))
    shifted.load_state_dict(plain.state_dict())
    data = _lenses(2)
    physics = lensrim.LensingPhysics(data["psf"], data["noise_sigma"])
    with torch.no_grad():
        a, b = plain(data["observation"], physics), shifted(data["observation"], physics)
    torch.testing.assert_close(b[0, :, 0], a[0, :, 0])
    torch.testing.assert_close(b[0, :, 1], a[0, :, 1] - 0.6)
    batches = lambda step, size, seed: {k: v[:size] for k, v in data.items()}  # noqa: E731
    c = lensrim.training.constant_log10_kappa(batches, lenses=2)
    assert c == round(constant_reference(data["source"][:2], data["kappa"][:2]).log10_kappa, 3)
    with pytest.raises(ValueError, match="finite"):
        replace(PRESETS["tiny"], initial_log10_kappa=float("nan"))
