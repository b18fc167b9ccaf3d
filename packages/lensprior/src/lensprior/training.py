"""Training loops with exact resume: checkpoints, configs as JSON, metrics as JSON lines.

Randomness is a function of (seed, step): the minibatch of step t and its reparameterisation
noise come from generators seeded with both, so a run stopped at step t and resumed from its
checkpoint takes exactly the steps an uninterrupted run takes. Checkpoints hold state dicts only
and are read with ``torch.load(weights_only=True)``: a shared run directory cannot run code.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lenscore.files import open_hdf5
from lenscore.runs import (  # the run core, shared with lensrim; re-exported under its old names here
    RunError,
    RunLock,
    StepResult,
    check_finite,
    load_checkpoint,
    load_run,
    load_weights,
    prepare_run,
    read_metrics,
    restore,
    run_steps,
    save_checkpoint,
    seeded_init,
    step_generator,
)
from lensprior.vae import VAE, VAEConfig

__all__ = [
    "RunError",
    "RunLock",
    "check_finite",
    "load_checkpoint",
    "load_weights",
    "prepare_run",
    "read_metrics",
    "restore",
    "seeded_init",
    "fit",
    "load_field",
    "load_vae",
    "save_checkpoint",
    "step_generator",
    "train_vae",
]


def load_field(path: str | os.PathLike, field: str, *, split: str = "all", pixels: int | None = None) -> torch.Tensor:
    """Images ``(n, 1, P, P)`` of ``field`` from an HDF5 dataset, validated.

    ``split`` selects "train" (0), "test" (1) or "all" via the file's ``split`` field.
    """
    path = Path(path)
    with open_hdf5(path, RunError) as f:
        if field not in f:
            raise RunError(f"{path}: no {field!r} dataset (fields: {sorted(f.keys())})")
        d = f[field]
        if d.ndim != 4 or d.shape[1] != 1 or d.shape[2] != d.shape[3] or d.dtype.kind != "f":
            raise RunError(f"{path}: {field!r} has shape {d.shape} and dtype {d.dtype}, expected (n, 1, P, P) floats")
        if pixels is not None and d.shape[-1] != pixels:
            raise RunError(f"{path}: {field!r} maps are {d.shape[-1]} pixels wide, the model needs {pixels}")
        if split == "all":
            data = d[()]
        else:
            if "split" not in f:
                raise RunError(f"{path}: no 'split' field to select the {split} set from")
            idx = np.flatnonzero(f["split"][()] == (1 if split == "test" else 0))
            if idx.size == 0:
                raise RunError(f"{path}: no {split} examples")
            data = d[idx]
    if not np.isfinite(data).all():
        raise RunError(f"{path}: {field!r} contains NaN or infinite values")
    if field == "kappa" and (data < 0).any():
        raise RunError(f"{path}: 'kappa' contains negative values")
    if data.shape[0] == 0:
        raise RunError(f"{path}: {field!r} is empty")
    return torch.from_numpy(np.ascontiguousarray(data, dtype=np.float32))


def load_vae(run_dir: str | os.PathLike, *, device: str | torch.device = "cpu") -> tuple[VAE, dict[str, Any]]:
    """The trained VAE of a run directory (weights from its checkpoint) and the run's metadata."""
    return load_run(run_dir, VAEConfig, VAE, device=device)


def fit(
    model: torch.nn.Module,
    config: Any,
    data: torch.Tensor,
    run_dir: str | os.PathLike,
    *,
    steps: int,
    seed: int = 0,
    device: str | torch.device = "cpu",
    checkpoint_every: int = 1000,
    log_every: int = 100,
    validation: torch.Tensor | None = None,
    metadata: dict[str, Any] | None = None,
    progress: Callable[[int, dict[str, float]], None] | None = None,
) -> torch.nn.Module:
    """Train lensprior's models (VAEs, the denoiser) with Adam in :func:`lenscore.runs.run_steps`,
    the loop every model shares: the config's learning-rate schedule, gradient clipping,
    checkpoints, metrics, exact resume.

    ``config`` is a frozen dataclass with ``to_json``, ``from_json``, ``batch_size``,
    ``clip_norm`` and ``learning_rate_at(step)``; ``model.loss(batch, step, generator=...)``
    returns the loss and a dict of floats. ``model`` holds freshly initialised weights; an
    existing run directory with the same configuration (the number of steps may differ) resumes
    from its checkpoint, one with another configuration is refused.
    """
    with RunLock(run_dir):
        return _fit(
            model, config, data, Path(run_dir), steps=steps, seed=seed, device=device,
            checkpoint_every=checkpoint_every, log_every=log_every, validation=validation, metadata=metadata,
            progress=progress,
        )  # fmt: skip


def _fit(
    model, config, data, run_dir: Path, *, steps, seed, device, checkpoint_every, log_every, validation, metadata,
    progress,
) -> torch.nn.Module:  # fmt: skip
    device = torch.device(device)
    prepare_run(run_dir, replace(config, steps=steps), ("steps",), metadata=metadata, seed=seed)
    model = model.to(device)
    opt = torch.optim.Adam(model.parameters(), lr=config.learning_rate_at(0))
    start = restore(run_dir, model, opt)
    data = data.to(device)
    n = data.shape[0]
    batches = (
        data[torch.randint(0, n, (config.batch_size,), generator=step_generator(seed, step, 0)).to(device)]
        for step in range(start, steps)
    )

    latest: dict[str, Any] = {}  # the bar shows every step's figures, the log every log_every-th

    def step_loss(batch: torch.Tensor, step: int) -> StepResult:
        loss, terms = model.loss(batch, step, generator=step_generator(seed, step, 1))
        latest.update(terms)
        return StepResult(loss, aux=terms)

    def log_terms(logged: dict[str, Any], last: StepResult, history: torch.Tensor) -> dict[str, Any]:
        terms = dict(last.aux)
        if validation is not None:
            model.eval()
            with torch.no_grad():
                _, val = model.loss(validation.to(device), logged["step"] - 1, generator=step_generator(seed, 0, 2))
            model.train()
            terms["val_loss"] = val["loss"]
        return terms

    model.train()
    run_steps(
        run_dir, model, opt, batches, step_loss, start=start, steps=steps, learning_rate_at=config.learning_rate_at,
        clip_norm=config.clip_norm, log_every=log_every, checkpoint_every=checkpoint_every, log_terms=log_terms,
        progress=None if progress is None else lambda done, terms: progress(done, {**latest, **terms}),
    )  # fmt: skip
    return model.eval()


def train_vae(
    config: VAEConfig,
    data: torch.Tensor,
    run_dir: str | os.PathLike,
    *,
    steps: int | None = None,
    seed: int = 0,
    **kwargs: Any,
) -> VAE:
    """Train (or resume training) a VAE in ``run_dir`` up to ``steps`` (default ``config.steps``).

    The run directory holds ``config.json``, ``checkpoint.pt`` (model, optimiser and step),
    ``metrics.jsonl`` and ``run.json`` (``metadata``, e.g. the data's attributes); see
    :func:`fit` for the keywords (device, checkpoint_every, log_every, validation, metadata,
    progress).
    """
    p = config.pixels
    if data.dim() != 4 or data.shape[1:] != (1, p, p):
        raise RunError(f"training data must be (n, 1, {p}, {p}), got {tuple(data.shape)}")
    model = seeded_init(lambda: VAE(config), seed)
    return fit(model, config, data, run_dir, steps=config.steps if steps is None else steps, seed=seed, **kwargs)
