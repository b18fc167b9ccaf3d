"""A training step never waits for the device: no value is read back from it and no tensor is made
on the host for it, so a GPU runs one step's kernels while Python queues the next (issue 24 §1).
On the CPU this is checked by recording every call that would synchronise a CUDA stream; the same
step under CUDA's own sync detector is in test_rim_gpu.py."""

import traceback
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch.overrides import TorchFunctionMode

import lensrim
import lenssim
from lensrim.training import LensingOf, _batch_terms

SRC = {str(Path(m.__file__).resolve().parent) for m in (lenssim, lensrim)}
READS_BACK = {
    torch.Tensor.__bool__,
    torch.Tensor.__float__,
    torch.Tensor.__int__,
    torch.Tensor.__index__,
    torch.Tensor.item,
    torch.Tensor.tolist,
    torch.Tensor.numpy,
    torch.Tensor.cpu,
    torch.Tensor.nonzero,
    torch.tensor,  # a host tensor copied to the device waits for it
}


class SyncCalls(TorchFunctionMode):
    """Records the calls in READS_BACK made from lenssim's or lensrim's code, by file and line."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in READS_BACK:
            ours = [f for f in traceback.extract_stack()[:-1] if any(f.filename.startswith(s) for s in SRC)]
            if ours:
                self.calls.append(f"{func.__name__} at {Path(ours[-1].filename).name}:{ours[-1].lineno}")
        return func(*args, **(kwargs or {}))


def _step(model, opt, batch, physics):
    loss, _ = _batch_terms(model, batch, physics)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()


@pytest.mark.parametrize(
    "options",
    [
        {"fit_weight": 0.02, "initial_log10_kappa": -0.3},  # the demo's loss and first estimate
        {"time_weights": "linear"},
        {"time_weights": "final", "gradient_preprocessing": "rmsprop", "skip_normalisation": "map"},
        {"gradient_skip": 0.0, "step_gains": True, "clipping": "per_tensor"},
    ],
)
def test_a_training_step_reads_nothing_back_from_the_device(options):
    config = replace(lensrim.PRESETS["tiny"], batch_size=3, **options)
    obs = lenssim.ObservationConfig.at_resolution(config.pixels)
    lenses = lenssim.simulate_sie_lenses(3, config=obs, generator=torch.Generator().manual_seed(0))
    batch = {k: getattr(lenses, k) for k in lenssim.LENS_FIELDS}
    torch.manual_seed(0)
    model = lensrim.RIM(config)
    opt = torch.optim.Adamax(model.parameters(), lr=1e-3)
    physics = LensingOf.of(config)
    _step(model, opt, batch, physics)  # the first step may make what is cached (time weights, kernels)
    probe = SyncCalls()
    with probe:
        _step(model, opt, batch, physics)
    assert probe.calls == []


def test_the_probe_sees_a_read_back():
    """The recorder itself: the positivity check of the public loss reads a value back."""
    est = torch.zeros(2, 1, 2, 4, 4)
    probe = SyncCalls()
    with probe:
        lensrim.rim_loss(est, torch.zeros(1, 1, 4, 4), torch.ones(1, 1, 4, 4))
    assert probe.calls and probe.calls[0].startswith("__bool__ at model.py")
    with pytest.raises(ValueError, match="positive"):
        lensrim.rim_loss(est, torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 4))


def test_simulating_a_batch_of_lenses_reads_the_device_back_once():
    """On-the-fly training simulates in a second thread; on a GPU each read-back there waits for
    the training kernels queued before it. The acceptance step reads every count at once."""
    obs = lenssim.ObservationConfig.at_resolution(32)
    probe = SyncCalls()
    with probe:
        b = lenssim.simulate_sie_lenses(4, config=obs, generator=torch.Generator().manual_seed(3), batch_size=16)
    assert b.tried == 16  # one batch of candidates
    from_lenses = sorted(c.split(" at ")[0] for c in probe.calls if " at lenses.py:" in c)
    assert from_lenses == ["__int__", "tolist"]  # the noise seed (a CPU generator's draw), then every count
