"""Training the RIM: from HDF5 lens datasets or on the fly, exact resume, multi-GPU with DDP.

Every step's global minibatch is a function of (seed, step): dataset indices, or the draws of
an on-the-fly simulation. Under DistributedDataParallel (``torchrun``) each of the W processes
takes its contiguous share of that global batch and the gradients are averaged, so W processes
take the same steps as one process with the same global batch. Checkpoints (model, optimiser,
step) are written by rank 0, atomically, and read with ``weights_only=True``.
"""

from __future__ import annotations

import contextlib
import functools
import os
import queue
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch
import torch.distributed as dist

import lenssim
from lenscore.runs import (
    RunError,
    RunLock,
    StepResult,
    check_memory,
    check_run,
    load_checkpoint,
    load_run,
    on_device,
    prepare_run,
    restore,
    run_steps,
    seeded_init,
    step_generator,
    trim_metrics,
)
from lensrim.metrics import constant_reference, median
from lensrim.model import RIM, ForwardModel, RIMConfig, rim_loss_terms
from lensrim.physics import LensingPhysics

__all__ = [
    "Batch",
    "Lenses",
    "as_batch",
    "checkpoint_step",
    "constant_log10_kappa",
    "DatasetBatches",
    "evaluate_rim",
    "LensingOf",
    "PhysicsOf",
    "MixedBatches",
    "SimulatedBatches",
    "load_rim",
    "train_rim",
    "vae_sampler",
    "write_vae_draws",
]

Batch = dict[str, torch.Tensor]
"""``observation``, ``source``, ``kappa``, ``psf`` (each ``(B, 1, ., .)``) and ``noise_sigma (B,)``:
the :meth:`lenssim.LensBatch.fields` of a batch of lenses, the form DataLoader collation and DDP
slicing work on. Every function here takes a :class:`lenssim.LensBatch` wherever it takes a
batch; a forward model other than lensing may train on any mapping with ``observation``,
``source``, ``kappa`` and what its :data:`PhysicsOf` reads."""

Lenses = Union["lenssim.LensBatch", Mapping[str, torch.Tensor]]
"""A batch as callers hand it: a :class:`lenssim.LensBatch` or a mapping of its fields."""


def as_batch(lenses: Lenses) -> Batch:
    """The :data:`Batch` of a :class:`lenssim.LensBatch` (its :meth:`~lenssim.LensBatch.fields`)
    or of a mapping of fields (as it is)."""
    if isinstance(lenses, lenssim.LensBatch):
        return lenses.fields()
    if isinstance(lenses, Mapping):
        missing = [k for k in ("observation", "source", "kappa") if k not in lenses]
        if missing:
            raise ValueError(f"a batch of lenses needs observation, source and kappa; missing {missing}")
        return dict(lenses)
    raise TypeError(f"a batch of lenses is a lenssim.LensBatch or a mapping of tensors, not {type(lenses).__name__}")


def _collate(items: list[dict[str, torch.Tensor]]) -> Batch:
    return {k: torch.stack([it[k] for it in items]) for k in items[0]}


class _StepIndices:
    """The dataset indices of steps ``start .. stop - 1``, one list per step (a batch sampler)."""

    def __init__(self, batches: DatasetBatches, start: int, stop: int, size: int, seed: int) -> None:
        self.batches, self.start, self.stop, self.size, self.seed = batches, start, stop, size, seed

    def __iter__(self) -> Iterator[list[int]]:
        for step in range(self.start, self.stop):
            yield self.batches.indices(step, self.size, self.seed)

    def __len__(self) -> int:
        return max(0, self.stop - self.start)


class DatasetBatches:
    """Global minibatches drawn (with replacement) from an HDF5 lens dataset or shard directory.

    The last ``holdout`` lenses (default: 10 % of the set, at most ``max_holdout``) are never drawn for
    training: they are the automatic validation set (:meth:`held_out`). With ``workers > 0``
    the reads run ahead in that many DataLoader worker processes (:meth:`stream`), so the
    accelerator never waits on HDF5; the batches are the same either way.
    """

    def __init__(
        self, path: str | os.PathLike, *, holdout: int | None = None, max_holdout: int = 32, workers: int = 0
    ) -> None:
        self.dataset = lenssim.LensDataset(path)
        self.attrs = self.dataset.attrs
        n = len(self.dataset)
        holdout = min(max_holdout, n // 10) if holdout is None else holdout
        if not 0 <= holdout < n:
            raise ValueError(f"{path}: cannot hold out {holdout} of its {n} lenses for validation")
        if workers < 0:
            raise ValueError(f"workers must be >= 0, got {workers}")
        self.holdout, self.train_size, self.workers = holdout, n - holdout, workers

    def indices(self, step: int, size: int, seed: int) -> list[int]:
        """The dataset indices of step ``step``'s global minibatch."""
        return torch.randint(0, self.train_size, (size,), generator=step_generator(seed, step, 0)).tolist()

    def __call__(self, step: int, size: int, seed: int) -> Batch:
        return _collate([self.dataset[i] for i in self.indices(step, size, seed)])

    def stream(self, start: int, stop: int, size: int, seed: int, *, pin_memory: bool = False) -> Iterator[Batch]:
        """The batches of steps ``start .. stop - 1`` in order, read ahead by the workers."""
        if self.workers == 0:
            for step in range(start, stop):
                yield self(step, size, seed)
            return
        loader = torch.utils.data.DataLoader(
            self.dataset,
            batch_sampler=_StepIndices(self, start, stop, size, seed),
            num_workers=self.workers,
            collate_fn=_collate,
            pin_memory=pin_memory,
            prefetch_factor=4,
        )
        yield from loader

    def held_out(self, size: int, seed: int) -> Batch | None:
        """Up to ``size`` of the held-out lenses (None when none are held out)."""
        if not self.holdout:
            return None
        return _collate([self.dataset[i] for i in range(self.train_size, self.train_size + min(size, self.holdout))])


class SimulatedBatches:
    """Global minibatches simulated on the fly from kappa and source samplers (lenssim).

    Everything after the parameter draws runs on ``device`` and the batch stays there; the
    draws come from a CPU generator seeded by (seed, step), so a seed gives the same batches
    on a given device. The held-out set is simulated from its own stream of random numbers.
    """

    def __init__(
        self,
        kappa_sampler: lenssim.data.lenses.Sampler,
        source_sampler: lenssim.data.lenses.Sampler,
        config: lenssim.ObservationConfig = lenssim.ObservationConfig(),
        device: torch.device | str = "cpu",
        criteria: lenssim.AcceptanceCriteria = lenssim.AcceptanceCriteria(),
    ) -> None:
        self.kappa_sampler, self.source_sampler, self.config, self.device = (
            kappa_sampler,
            source_sampler,
            config,
            device,
        )
        self.criteria = criteria
        self.attrs = {"image_fov": config.image_fov, "source_fov": config.source_fov}

    def _simulate(self, size: int, generator: torch.Generator) -> Batch:
        b = lenssim.simulate_lenses(
            size,
            self.kappa_sampler,
            self.source_sampler,
            config=self.config,
            criteria=self.criteria,
            generator=generator,
            device=self.device,
            batch_size=max(2 * size, 8),
            output_device=None,
        )
        return b.fields()

    def __call__(self, step: int, size: int, seed: int) -> Batch:
        return self._simulate(size, step_generator(seed, step, 0))

    def held_out(self, size: int, seed: int) -> Batch:
        """``size`` lenses from the training distribution that no training step draws."""
        return self._simulate(size, step_generator(seed, 0, 1))


def vae_sampler(model: torch.nn.Module, device: torch.device | str = "cpu") -> lenssim.data.lenses.Sampler:
    """Draws from a trained lensprior VAE (sources in [0, 1], or kappa) as a lenssim sampler."""

    def draw(count: int, generator: torch.Generator) -> torch.Tensor:
        return model.sample(count, generator=generator).to(device)

    return draw


def write_vae_draws(
    run_dir: str | os.PathLike,
    n: int,
    output: str | os.PathLike,
    *,
    batch_size: int = 64,
    seed: int = 0,
    device: torch.device | str = "cpu",
    progress: Callable[[int], None] | None = None,
) -> tuple[Path, dict[str, Any]]:
    """``n`` draws of the trained VAE in ``run_dir`` as a source or kappa dataset that
    ``lens simulate lenses`` reads (all in the train split, with the fields of view of the VAE's
    training data), ``batch_size`` per resumable block (memory stays flat whatever ``n``).
    Returns the path and the VAE run's metadata, with the VAE's ``kind``."""
    import json

    import lensprior

    model, meta = lensprior.load_vae(run_dir, device=device)
    kind = model.config.kind
    config = {"vae": str(run_dir), "step": meta.get("step"), "vae_config": json.loads(model.config.to_json())}
    attrs = {"kind": kind, "config": config, **meta.get("data_attrs", {})}
    if kind == "source":
        attrs.setdefault("source_fov", lenssim.SOURCE_FOV)
    else:
        attrs.setdefault("image_fov", lenssim.IMAGE_FOV)

    def make_block(k: int, count: int, seedseq) -> dict:
        g = torch.Generator().manual_seed(int(seedseq.generate_state(1, np.uint64)[0] >> 1))
        with torch.no_grad():
            maps = model.sample(count, generator=g).cpu().numpy()
        return {kind: maps, "split": np.zeros(count, dtype=np.int64)}

    inputs = (Path(run_dir) / "checkpoint.pt",)
    path = lenssim.write_in_blocks(
        output, n, make_block, attrs=attrs, seed=seed, block_size=batch_size, progress=progress, inputs=inputs
    )
    return path, {**meta, "kind": kind}


class MixedBatches:
    """Each global batch takes ``round(fraction * size)`` examples from ``extra`` (e.g. lenses
    simulated from VAE samples) and the rest from ``base`` (e.g. a dataset)."""

    def __init__(self, base, extra, fraction: float) -> None:
        if not 0 <= fraction <= 1:
            raise ValueError(f"fraction must lie in [0, 1], got {fraction}")
        self.base, self.extra, self.fraction = base, extra, fraction
        self.attrs = getattr(base, "attrs", {})

    def __call__(self, step: int, size: int, seed: int) -> Batch:
        k = round(self.fraction * size)
        parts = []
        if size - k:
            parts.append(as_batch(self.base(step, size - k, seed)))
        if k:
            parts.append(as_batch(self.extra(step, k, seed + 1)))
        device = parts[-1]["observation"].device
        return {key: torch.cat([p[key].to(device) for p in parts]) for key in parts[0]}

    def held_out(self, size: int, seed: int) -> Batch | None:
        """The base's held-out lenses."""
        held = getattr(self.base, "held_out", None)
        return None if held is None else held(size, seed)


def _distributed() -> bool:
    """Whether this process is one rank of a process group (of any size, one included)."""
    return dist.is_available() and dist.is_initialized()


def _rank_world() -> tuple[int, int]:
    if _distributed():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def constant_log10_kappa(batches: Callable[[int, int, int], Lenses], seed: int = 0, lenses: int = 64) -> float:
    """The constant predictor's log10 kappa on ``lenses`` training lenses (drawn as step 0's
    batch of that size), rounded to 3 decimals: the natural
    :attr:`RIMConfig.initial_log10_kappa`."""
    batch = as_batch(batches(0, lenses, seed))
    return round(constant_reference(batch["source"].cpu(), batch["kappa"].cpu()).log10_kappa, 3)


PhysicsOf = Callable[[Batch], ForwardModel]
"""The forward model of a batch's observations (training's and evaluation's one link to physics)."""


@dataclass(frozen=True)
class LensingOf:
    """The lensing forward model of a batch (its ``psf`` and ``noise_sigma``) on one grid: the
    default :data:`PhysicsOf` of :func:`train_rim` and :func:`evaluate_rim`."""

    image_fov: float = lenssim.IMAGE_FOV
    source_fov: float = lenssim.SOURCE_FOV

    @classmethod
    def of(cls, config: RIMConfig) -> LensingOf:
        return cls(config.image_fov, config.source_fov)

    def __call__(self, batch: Batch) -> LensingPhysics:
        return LensingPhysics(batch["psf"], batch["noise_sigma"], self.image_fov, self.source_fov)


def _physics_of(model: torch.nn.Module, physics: PhysicsOf | None) -> PhysicsOf:
    if physics is not None:
        return physics
    config = getattr(getattr(model, "module", model), "config", None)  # DDP wraps the RIM
    return LensingOf() if config is None else LensingOf.of(config)


def batch_loss(
    model: torch.nn.Module, batch: Lenses, physics: PhysicsOf | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean eq. 7 loss of a batch, and the chi2_nu of the final estimates (detached); the forward
    model defaults to lensing on the model's grid."""
    loss, terms = _batch_terms(model, as_batch(batch), _physics_of(model, physics))
    return loss, terms["chi2_nu"]


@functools.lru_cache(maxsize=16)
def _time_weights(weights: tuple[float, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The loss's time weights on the device, made once: a tensor from the host each step would
    wait for the device."""
    return torch.tensor(weights, dtype=dtype, device=device)


def _batch_terms(
    model: torch.nn.Module, batch: Batch, physics_of: PhysicsOf
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The training loss of a batch (differentiable: eq. 7 with the config's time weights, plus
    its data-fit term when ``fit_weight`` > 0) and, detached, per example: the source and kappa
    terms of eq. 7 at every time step ``(T, B)`` and the chi2_nu of the final estimates."""
    physics = physics_of(batch)
    kappa = batch["kappa"].clamp_min(1e-6)
    est = model(batch["observation"], physics)
    ls, lk = rim_loss_terms(est, batch["source"], kappa, check=False)  # positive: clamped
    config = getattr(getattr(model, "module", model), "config", None)  # DDP wraps the RIM
    if config is None or config.time_weights == "uniform":
        loss = (ls + lk).mean()
    elif config.time_weights == "final":  # the weights 0, ..., 0, 1 without a tensor from the host each step
        loss = (ls[-1] + lk[-1]).mean()
    else:
        weights = _time_weights(tuple(config.loss_time_weights()), ls.dtype, ls.device)
        loss = (weights[:, None] * (ls + lk)).sum(dim=0).mean()
    fit = 0.0 if config is None else config.fit_weight
    final = est[-1] if fit and torch.is_grad_enabled() else est[-1].detach()
    with torch.set_grad_enabled(final.requires_grad):
        xi = final[:, 1:]
        if config is not None and config.fit_kappa != 1:  # the same value, a scaled gradient
            xi = xi.detach() + config.fit_kappa * (xi - xi.detach())
        chi2 = physics.chi2_nu(batch["observation"], final[:, :1], xi)
    if final.requires_grad:  # the data-fit term: no reward for fitting below the noise
        loss = loss + fit * torch.log(chi2).clamp_min(0).mean()
    return loss, {"source": ls.detach(), "kappa": lk.detach(), "chi2_nu": chi2.detach()}


def _with_reference(terms: dict[str, torch.Tensor], batch: Batch) -> dict[str, torch.Tensor]:
    """``terms`` plus the constant predictor's loss per example on the same lenses."""
    return {**terms, "constant": constant_reference(batch["source"], batch["kappa"]).loss.to(terms["chi2_nu"])}


def _summary(terms: dict[str, torch.Tensor]) -> dict[str, Any]:
    """The logged figures of a set of lenses from :func:`_batch_terms`' per-example terms (with
    :func:`_with_reference`).

    ``loss`` is eq. 7 (mean over the T steps and the lenses), ``loss_source`` and
    ``loss_kappa`` its two terms, ``loss_t`` its value at each step; ``log10_loss`` is the mean
    over the lenses of log10 of the final estimate's loss (Table 4's statistic); ``chi2_nu``
    the median chi2_nu of the final estimates; ``constant_loss`` and ``constant_log10_loss``
    the same two losses of the constant predictor (source 0, the best constant log10 kappa) on
    the same lenses.
    """
    ls, lk = terms["source"].double(), terms["kappa"].double()
    total = ls + lk
    const = terms["constant"].double()
    return {
        "loss": float(total.mean()),
        "loss_source": float(ls.mean()),
        "loss_kappa": float(lk.mean()),
        "loss_t": [round(float(v), 7) for v in total.mean(dim=1)],
        "log10_loss": float(torch.log10(total[-1].clamp_min(1e-30)).mean()),
        "chi2_nu": float(median(terms["chi2_nu"])),
        "constant_loss": float(const.mean()),
        "constant_log10_loss": float(torch.log10(const.clamp_min(1e-30)).mean()),
    }


@torch.no_grad()
def evaluate_rim(
    model: torch.nn.Module, batch: Lenses, physics: PhysicsOf | None = None, *, chunk: int = 16
) -> dict[str, Any]:
    """Loss, its terms per time step, median chi2_nu and the constant-predictor reference of a
    model on a set of lenses (``chunk`` at a time); see the training log's keys. The forward
    model defaults to lensing on the model's grid."""
    physics = _physics_of(model, physics)
    batch = as_batch(batch)
    device = next(model.parameters()).device
    parts: dict[str, list[torch.Tensor]] = {}
    n = batch["observation"].shape[0]
    for i in range(0, n, chunk):
        sub = {k: v[i : i + chunk].to(device) for k, v in batch.items()}
        _, terms = _batch_terms(model, sub, physics)
        for k, v in _with_reference(terms, sub).items():
            parts.setdefault(k, []).append(v.cpu())
    return _summary({k: torch.cat(v, dim=-1) for k, v in parts.items()})


class _Prefetch:
    """Runs an iterator ahead in a background thread, ``depth`` items deep.

    Simulation and data loading then overlap the training step (torch releases the GIL in its
    kernels, and a GPU runs the step's kernels while the thread prepares the next batch). The
    items are the same as the iterator's, in the same order.
    """

    _END = object()

    def __init__(self, it: Iterator[Any], depth: int) -> None:
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(it,), daemon=True)
        self._thread.start()

    def _run(self, it: Iterator[Any]) -> None:
        try:
            for item in it:
                while not self._stop.is_set():
                    try:
                        self._queue.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if self._stop.is_set():
                    return
            self._queue.put(self._END)
        except BaseException as e:  # noqa: BLE001 - handed to the consumer
            self._queue.put(e)

    def __iter__(self) -> Iterator[Any]:
        try:
            while True:
                item = self._queue.get()
                if item is self._END:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            self._stop.set()


def _batch_stream(
    batches: Callable[[int, int, int], Lenses],
    start: int,
    stop: int,
    size: int,
    seed: int,
    device: torch.device,
    prefetch: int,
) -> Iterator[Batch]:
    stream = getattr(batches, "stream", None)
    if stream is not None:
        it = stream(start, stop, size, seed, pin_memory=device.type == "cuda")
    else:
        it = (batches(step, size, seed) for step in range(start, stop))
    return iter(_Prefetch(it, prefetch)) if prefetch > 0 else it


def _tensorboard(run_dir: Path, purge_step: int):
    """A TensorBoard writer in the run directory, or None (with a warning) without tensorboard."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # pragma: no cover - tensorboard is a dependency
        warnings.warn("tensorboard is not installed: no event files are written", stacklevel=3)
        return None
    return SummaryWriter(log_dir=str(run_dir), purge_step=purge_step if purge_step > 0 else None)


def _write_scalars(writer, prefix: str, terms: dict[str, Any], step: int) -> None:
    if writer is None:
        return
    for key, value in terms.items():
        if key == "loss_t":
            for t, v in enumerate(value):
                writer.add_scalar(f"{prefix}/loss_t/{t}", v, step)
        elif isinstance(value, int | float) and key != "step":
            writer.add_scalar(f"{prefix}/{key}", value, step)


def _refuse_diverging_ranks(run_dir: Path, start: int, config: RIMConfig) -> None:
    """Every process must resume from the same checkpoint with the same configuration: DDP keeps
    their gradients in step, not their step counts, learning rates or optimiser states. Across
    nodes whose run directories are not one shared directory they would differ silently (or hang
    at the last step), so each rank compares what it read and all of them refuse together."""
    seen: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(seen, (start, config.to_json()))
    if len({s for s, _ in seen}) > 1:
        steps = ", ".join(f"rank {r}: {s}" for r, (s, _) in enumerate(seen))
        raise RunError(
            f"the processes would resume {run_dir} from different steps ({steps}): every node must see the "
            "same run directory (put -o on a file system they share)"
        )
    if len({c for _, c in seen}) > 1:
        raise RunError(
            f"the processes resolved different configurations for {run_dir}: every node must see the same run "
            "directory (put -o on a file system they share) and be given the same options"
        )


def _gather(terms: dict[str, torch.Tensor], world: int) -> dict[str, torch.Tensor]:
    """Every rank's per-example terms, concatenated along the batch (DDP)."""
    if world == 1:
        return terms
    out = {}
    for k, v in terms.items():
        parts = [torch.empty_like(v) for _ in range(world)]
        dist.all_gather(parts, v.contiguous())
        out[k] = torch.cat(parts, dim=-1)
    return out


def checkpoint_step(run_dir: str | os.PathLike) -> int | None:
    """The step of a run directory's checkpoint, or None when it has none."""
    state = load_checkpoint(Path(run_dir))
    return None if state is None else int(state["step"])


def load_rim(run_dir: str | os.PathLike, *, device: str | torch.device = "cpu") -> tuple[RIM, dict[str, Any]]:
    """The trained RIM of a run directory and its metadata."""
    return load_run(run_dir, RIMConfig, RIM, device=device)


def train_rim(
    config: RIMConfig,
    batches: Callable[[int, int, int], Lenses],
    run_dir: str | os.PathLike,
    *,
    steps: int | None = None,
    seed: int = 0,
    device: str | torch.device = "cpu",
    checkpoint_every: int = 500,
    log_every: int = 50,
    validation: Lenses | None = None,
    validation_size: int = 32,
    external: Lenses | None = None,
    prefetch: int | None = None,
    tensorboard: bool = True,
    metadata: dict[str, Any] | None = None,
    progress: Callable[[int, dict[str, float]], None] | None = None,
    physics: PhysicsOf | None = None,
) -> RIM:
    """Train (or resume) the RIM in ``run_dir`` up to ``steps`` (default ``config.train_steps``).

    ``batches(step, size, seed)`` returns the global minibatch of a step (:class:`DatasetBatches`,
    :class:`SimulatedBatches` or :class:`MixedBatches`, or any function returning a
    :class:`lenssim.LensBatch` or a mapping of its fields). Adamax with Table 7's exponential decay,
    gradient clipping at ``clip_norm``. Runs under DDP when ``torch.distributed`` is initialised.

    Every ``log_every`` steps, ``metrics.jsonl`` (and TensorBoard event files in ``run_dir``)
    receive, for the training batch, for the validation lenses (``val_`` keys) and for the
    ``external`` lenses (``ext_`` keys): the eq. 7 loss (uniform over the T steps, whatever the
    training's ``time_weights``; the training batch's ``objective`` is what the step minimised),
    its source and kappa terms, its value at
    each RIM step (``loss_t``), the mean log10 loss of the final estimates, the median chi2_nu,
    and beside them the same losses of the constant predictor on the same lenses
    (``constant_loss``, ``constant_log10_loss``). ``validation`` defaults to
    ``batches.held_out(validation_size, seed)`` (none when 0): lenses from the training distribution that
    training never draws. TensorBoard also gets the training loss and median chi2_nu of every
    step (kept on the device and written at the log steps, so training never waits for them).
    ``progress(step, terms)`` is called after every step; ``terms`` holds the logged figures at
    log steps and only ``step`` otherwise.

    ``prefetch`` batches are prepared ahead in a background thread (default 2 on a GPU, 0 on the
    CPU, where the simulation competes with the step for the same cores); the batches do not
    depend on it.

    ``physics(batch)`` gives the forward model of a batch's observations (default: lensing with
    the batch's ``psf`` and ``noise_sigma`` on the config's grid); any
    :class:`~lensrim.model.ForwardModel` trains, e.g. :class:`~lensrim.LinearPhysics`.
    """
    rank, world = _rank_world()
    lock = RunLock(run_dir) if rank == 0 else contextlib.nullcontext()
    with lock:
        return _train_rim(
            config,
            batches,
            Path(run_dir),
            steps=steps,
            seed=seed,
            device=device,
            checkpoint_every=checkpoint_every,
            log_every=log_every,
            validation=validation,
            validation_size=validation_size,
            external=external,
            prefetch=prefetch,
            tensorboard=tensorboard,
            metadata=metadata,
            progress=progress,
            physics=physics,
        )


def _train_rim(
    config,
    batches,
    run_dir: Path,
    *,
    steps,
    seed,
    device,
    checkpoint_every,
    log_every,
    validation,
    validation_size,
    external,
    prefetch,
    tensorboard,
    metadata,
    progress,
    physics,
) -> RIM:
    rank, world = _rank_world()
    device = torch.device(device)
    steps = config.train_steps if steps is None else steps
    if config.batch_size % world:
        raise RunError(f"batch size {config.batch_size} is not divisible by the {world} processes")
    attrs = getattr(batches, "attrs", {}) or {}
    config.geometry.refuse_other(  # the lenses must be on the grid the config describes
        "the training lenses",
        image_fov=attrs.get("image_fov"),
        source_fov=attrs.get("source_fov"),
        hint=" (RIMConfig's image_fov and source_fov must be the data's)",
        error=RunError,
    )
    physics = LensingOf.of(config) if physics is None else physics
    check_memory(config, RIM, run_dir, batch=config.batch_size // world, factor=4)  # weights, gradients, moments
    stored = replace(config, train_steps=steps)
    check_run(run_dir, stored, RIMConfig.OPTIMISATION_FIELDS)  # everything is checked before anything is written
    model = on_device(seeded_init(lambda: RIM(config), seed), device)  # channels-last on a CPU
    opt = torch.optim.Adamax(model.parameters(), lr=config.learning_rate_at(0))
    start = restore(run_dir, model, opt, trim=False, until=steps, seed=seed)
    distributed = _distributed()
    if distributed:
        _refuse_diverging_ranks(run_dir, start, stored)
    net = model
    if distributed:  # a group of one too: torchrun --nproc-per-node 1 checks the multi-GPU path
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    if validation is None and validation_size > 0 and rank == 0 and hasattr(batches, "held_out"):
        validation = batches.held_out(validation_size, seed)
    checks = {"val": validation, "ext": external} if rank == 0 else {}
    checks = {k: {f: t.cpu() for f, t in as_batch(v).items()} for k, v in checks.items() if v is not None}
    if rank == 0:  # the run's files change only now, when nothing is left to refuse
        prepare_run(run_dir, stored, RIMConfig.OPTIMISATION_FIELDS, metadata=metadata, seed=seed, resumed_at=start)
        trim_metrics(run_dir, start)
    if distributed:
        dist.barrier()
    share = config.batch_size // world
    prefetch = (2 if device.type == "cuda" else 0) if prefetch is None else prefetch
    writer = _tensorboard(run_dir, start) if rank == 0 and tensorboard else None
    clock = time.perf_counter()

    def step_loss(lenses: Lenses, step: int) -> StepResult:
        rows = slice(rank * share, (rank + 1) * share)  # this process's share of the global batch
        batch = {k: v[rows].to(device, non_blocking=True) for k, v in as_batch(lenses).items()}
        loss, per_example = _batch_terms(net, batch, physics)
        # each step's median chi2_nu stays on the device with its loss until the next log step
        return StepResult(loss, watch=median(per_example["chi2_nu"]), aux=(batch, per_example))

    def log_terms(logged: dict[str, Any], last: StepResult, history: torch.Tensor) -> dict[str, Any]:
        nonlocal clock
        batch, per_example = last.aux
        done = logged["step"]
        # every rank: the summary gathers the whole global batch
        terms = _summary(_gather(_with_reference(per_example, batch), world))
        # one batch's median jumps by orders of magnitude between lenses: the median over the
        # steps since the last log is the figure to watch
        terms["chi2_nu_window"] = float(median(history[:, 2]))
        # what training minimises (eq. 7 with the time weights, plus the fit term): "loss" is eq. 7
        terms["objective"] = float(history[-1, 0])
        if rank != 0:
            return terms
        speed = len(history) / max(time.perf_counter() - clock, 1e-9)
        model.eval()
        for prefix, lenses in checks.items():
            terms.update({f"{prefix}_{k}": v for k, v in evaluate_rim(model, lenses, physics).items()})
        model.train()
        if writer is not None:  # this process's share of each step's batch
            first = done - len(history) + 1
            for i, (value, _, chi2) in enumerate(history.tolist()):
                writer.add_scalar("train/loss", value, first + i)
                writer.add_scalar("train/chi2_nu", chi2, first + i)
            skip = ("val_", "ext_", "loss", "chi2_nu")  # loss and chi2_nu went in at every step
            train = {k: v for k, v in {**terms, **logged}.items() if not k.startswith(skip) or k.startswith("loss_")}
            _write_scalars(writer, "train", train, done)
            for prefix in checks:
                sub = {k[len(prefix) + 1 :]: v for k, v in terms.items() if k.startswith(prefix + "_")}
                _write_scalars(writer, {"val": "validation", "ext": "external"}[prefix], sub, done)
            writer.add_scalar("train/steps_per_s", speed, done)
            writer.flush()
        clock = time.perf_counter()
        return terms

    model.train()
    try:
        run_steps(
            run_dir,
            model,
            opt,
            _batch_stream(batches, start, steps, config.batch_size, seed, device, prefetch),
            step_loss,
            start=start,
            steps=steps,
            learning_rate_at=config.learning_rate_at,
            clip_norm=config.clip_norm,
            log_every=log_every,
            checkpoint_every=checkpoint_every,
            log_terms=log_terms,
            progress=progress,
            rank=rank,
            clip_per_tensor=config.clipping == "per_tensor",
        )
    finally:
        if writer is not None:
            writer.close()
    if distributed:
        dist.barrier()  # every rank leaves after rank 0 has written the last checkpoint
    return model.eval()
