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
    check_memory,
    check_resume,
    check_run,
    load_checkpoint,
    load_run,
    load_weights,
    on_device,
    prepare_run,
    read_metrics,
    restore,
    run_steps,
    save_checkpoint,
    seeded_init,
    step_generator,
    trim_metrics,
)
from lensprior.vae import VAE, VAEConfig

__all__ = [
    "RunError",
    "RunLock",
    "check_finite",
    "check_resumable",
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


def load_field(
    path: str | os.PathLike,
    field: str,
    *,
    split: str = "all",
    pixels: int | None = None,
    limit: int | None = None,
    check: bool = True,
) -> torch.Tensor:
    """Images ``(n, 1, P, P)`` of ``field`` from an HDF5 dataset, validated.

    ``split`` selects "train" (0), "test" (1) or "all" via the file's ``split`` field; ``limit``
    keeps only its first maps (only those are read). Every map of the file is checked (finite;
    kappa non-negative and, for the kappa VAE's log10, not empty), whichever split is read: a
    file with one bad map is refused whole. ``check=False`` skips that scan, for a second read
    of a file already checked (the shapes and the split are still validated).
    """
    import h5py

    path = Path(path)
    with open_hdf5(path, RunError) as f:
        if field not in f:
            raise RunError(f"{path}: no {field!r} dataset (fields: {sorted(f.keys())})")
        d = f[field]
        if not isinstance(d, h5py.Dataset):
            raise RunError(f"{path}: {field!r} is a group, not a dataset")
        if d.ndim != 4 or d.shape[1] != 1 or d.shape[2] != d.shape[3] or d.dtype.kind != "f":
            raise RunError(f"{path}: {field!r} has shape {d.shape} and dtype {d.dtype}, expected (n, 1, P, P) floats")
        if pixels is not None and d.shape[-1] != pixels:
            raise RunError(f"{path}: {field!r} maps are {d.shape[-1]} pixels wide, the model needs {pixels}")
        if d.shape[0] == 0:
            raise RunError(f"{path}: {field!r} is empty")
        for start in range(0, d.shape[0] if check else 0, 256):  # every map, a chunk at a time
            _check_maps(path, field, d[start : start + 256], start)
        if split == "all":
            data = d[: d.shape[0] if limit is None else limit]
        else:
            labels = _split_labels(f, path, d.shape[0])
            idx = np.flatnonzero(labels == (1 if split == "test" else 0))
            if idx.size == 0:
                raise RunError(f"{path}: no {split} examples")
            data = d[idx[:limit]]
    return torch.from_numpy(np.ascontiguousarray(data, dtype=np.float32))


def _check_maps(path: Path, field: str, maps: np.ndarray, start: int) -> None:
    if not np.isfinite(maps).all():
        raise RunError(f"{path}: {field!r} contains NaN or infinite values")
    if field == "kappa":
        if (maps < 0).any():
            raise RunError(f"{path}: 'kappa' contains negative values")
        empty = np.flatnonzero(maps.reshape(maps.shape[0], -1).max(axis=1) <= 0)
        if empty.size:
            raise RunError(
                f"{path}: kappa map {start + int(empty[0])} is zero everywhere (no mass; the kappa VAE models "
                "log10 kappa)"
            )


def _split_labels(f, path: Path, n: int) -> np.ndarray:
    """The file's ``split`` field (0 train, 1 test), validated."""
    import h5py

    if "split" not in f:
        raise RunError(f"{path}: no 'split' field to select a split from")
    s = f["split"]
    if not isinstance(s, h5py.Dataset) or s.ndim != 1 or s.shape[0] != n or s.dtype.kind not in "iu":
        what = "a group" if not isinstance(s, h5py.Dataset) else f"{s.dtype} of shape {s.shape}"
        raise RunError(f"{path}: 'split' is {what}, expected {n} integers (0 train, 1 test)")
    return s[()]


def has_test_split(path: str | os.PathLike, field: str) -> bool:
    """Whether the dataset has examples in the test split (a malformed ``split`` is refused)."""
    path = Path(path)
    with open_hdf5(path, RunError) as f:
        if "split" not in f or field not in f:
            return False
        return bool((_split_labels(f, path, f[field].shape[0]) == 1).any())


def load_vae(run_dir: str | os.PathLike, *, device: str | torch.device = "cpu") -> tuple[VAE, dict[str, Any]]:
    """The trained VAE of a run directory (weights from its checkpoint) and the run's metadata."""
    return load_run(run_dir, VAEConfig, VAE, device=device)


def check_resumable(config: Any, run_dir: str | os.PathLike, *, steps: int | None = None, seed: int = 0) -> int:
    """Refuse (reading only) what :func:`fit` would refuse of ``run_dir`` for ``config`` trained to
    ``steps`` (default ``config.steps``) from ``seed``: a run of another configuration, a
    checkpoint past ``steps``, another seed. Returns the step training would start from (0 for a
    new run). A command calls it to refuse before it reports anything."""
    steps = config.steps if steps is None else steps
    run_dir = Path(run_dir)
    check_run(run_dir, replace(config, steps=steps), ("steps",))
    return check_resume(run_dir, until=steps, seed=seed)


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
            model,
            config,
            data,
            Path(run_dir),
            steps=steps,
            seed=seed,
            device=device,
            checkpoint_every=checkpoint_every,
            log_every=log_every,
            validation=validation,
            metadata=metadata,
            progress=progress,
        )


def _fit(
    model,
    config,
    data,
    run_dir: Path,
    *,
    steps,
    seed,
    device,
    checkpoint_every,
    log_every,
    validation,
    metadata,
    progress,
) -> torch.nn.Module:
    device = torch.device(device)
    config = replace(config, steps=steps)
    check_run(run_dir, config, ("steps",))  # everything is checked before anything is written
    model = on_device(model, device)  # channels-last on a CPU: x1.2-1.8 a step (bench_prior)
    opt = torch.optim.Adam(model.parameters(), lr=config.learning_rate_at(0))
    start = restore(run_dir, model, opt, trim=False, until=steps, seed=seed)
    prepare_run(run_dir, config, ("steps",), metadata=metadata, seed=seed, resumed_at=start)
    trim_metrics(run_dir, start)
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
        run_dir,
        model,
        opt,
        batches,
        step_loss,
        start=start,
        steps=steps,
        learning_rate_at=config.learning_rate_at,
        clip_norm=config.clip_norm,
        log_every=log_every,
        checkpoint_every=checkpoint_every,
        log_terms=log_terms,
        progress=None if progress is None else lambda done, terms: progress(done, {**latest, **terms}),
    )
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
    check_memory(config, VAE, run_dir, batch=config.batch_size, factor=4)  # weights, gradients, Adam's moments
    model = seeded_init(lambda: VAE(config), seed)
    return fit(model, config, data, run_dir, steps=config.steps if steps is None else steps, seed=seed, **kwargs)
