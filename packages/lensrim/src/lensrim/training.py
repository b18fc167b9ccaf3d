"""Training the RIM: from HDF5 lens datasets or on the fly, exact resume, multi-GPU with DDP.

Every step's global minibatch is a function of (seed, step): dataset indices, or the draws of
an on-the-fly simulation. Under DistributedDataParallel (``torchrun``) each of the W processes
takes its contiguous share of that global batch and the gradients are averaged, so W processes
take the same steps as one process with the same global batch. Checkpoints (model, optimiser,
step) are written by rank 0, atomically, and read with ``weights_only=True``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

import lenssim
from lensprior.training import (
    METRICS,
    RunError,
    _init,
    _load_checkpoint,
    load_run,
    prepare_run,
    restore,
    save_checkpoint,
    step_generator,
)
from lensrim.model import RIM, RIMConfig, rim_loss
from lensrim.physics import LensingPhysics

__all__ = [
    "Batch",
    "checkpoint_step",
    "DatasetBatches",
    "MixedBatches",
    "SimulatedBatches",
    "load_rim",
    "train_rim",
    "vae_sampler",
]

Batch = dict[str, torch.Tensor]
"""``observation``, ``source``, ``kappa``, ``psf`` (each ``(B, 1, ., .)``) and ``noise_sigma (B,)``."""


class DatasetBatches:
    """Global minibatches drawn (with replacement) from an HDF5 lens dataset or shard directory."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.dataset = lenssim.LensDataset(path)
        self.attrs = self.dataset.attrs

    def __call__(self, step: int, size: int, seed: int) -> Batch:
        idx = torch.randint(0, len(self.dataset), (size,), generator=step_generator(seed, step, 0)).tolist()
        items = [self.dataset[i] for i in idx]
        return {k: torch.stack([it[k] for it in items]) for k in items[0]}


class SimulatedBatches:
    """Global minibatches simulated on the fly from kappa and source samplers (lenssim)."""

    def __init__(
        self,
        kappa_sampler: lenssim.lenses.Sampler,
        source_sampler: lenssim.lenses.Sampler,
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

    def __call__(self, step: int, size: int, seed: int) -> Batch:
        b = lenssim.simulate_lenses(
            size, self.kappa_sampler, self.source_sampler, config=self.config, criteria=self.criteria,
            generator=step_generator(seed, step, 0), device=self.device, batch_size=max(2 * size, 8),
        )  # fmt: skip
        return {k: getattr(b, k) for k in lenssim.LENS_FIELDS}


def vae_sampler(model: torch.nn.Module, device: torch.device | str = "cpu") -> lenssim.lenses.Sampler:
    """Draws from a trained lensprior VAE (sources in [0, 1], or kappa) as a lenssim sampler."""

    def draw(count: int, generator: torch.Generator) -> torch.Tensor:
        return model.sample(count, generator=generator).to(device)

    return draw


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
            parts.append(self.base(step, size - k, seed))
        if k:
            parts.append(self.extra(step, k, seed + 1))
        return {key: torch.cat([p[key].cpu() for p in parts]) for key in parts[0]}


def _rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def batch_loss(
    model: torch.nn.Module, batch: Batch, config: RIMConfig, attrs: dict
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean eq. 7 loss of a batch, and the chi2_nu of the final estimates (detached)."""
    physics = LensingPhysics(
        batch["psf"], batch["noise_sigma"], float(attrs.get("image_fov", 7.69)), float(attrs.get("source_fov", 3.0))
    )
    est = model(batch["observation"], physics)
    loss = rim_loss(est, batch["source"], batch["kappa"].clamp_min(1e-6)).mean()
    chi2 = physics.reduced_chi_squared(batch["observation"], est[-1, :, :1].detach(), est[-1, :, 1:].detach())
    return loss, chi2


def checkpoint_step(run_dir: str | os.PathLike) -> int | None:
    """The step of a run directory's checkpoint, or None when it has none."""
    state = _load_checkpoint(Path(run_dir))
    return None if state is None else int(state["step"])


def load_rim(run_dir: str | os.PathLike, *, device: str | torch.device = "cpu") -> tuple[RIM, dict[str, Any]]:
    """The trained RIM of a run directory and its metadata."""
    return load_run(run_dir, RIMConfig, RIM, device=device)


def train_rim(
    config: RIMConfig,
    batches: Callable[[int, int, int], Batch],
    run_dir: str | os.PathLike,
    *,
    steps: int | None = None,
    seed: int = 0,
    device: str | torch.device = "cpu",
    checkpoint_every: int = 500,
    log_every: int = 50,
    validation: Batch | None = None,
    metadata: dict[str, Any] | None = None,
    progress: Callable[[int, dict[str, float]], None] | None = None,
) -> RIM:
    """Train (or resume) the RIM in ``run_dir`` up to ``steps`` (default ``config.train_steps``).

    ``batches(step, size, seed)`` returns the global minibatch of a step (:class:`DatasetBatches`
    or :class:`SimulatedBatches`). Adamax with Table 7's exponential decay, gradient clipping at
    ``clip_norm``. Logs the training loss and chi2_nu, and on ``validation`` the loss and chi2_nu,
    to ``metrics.jsonl``. Runs under DDP when ``torch.distributed`` is initialised.
    """
    rank, world = _rank_world()
    run_dir = Path(run_dir)
    device = torch.device(device)
    steps = config.train_steps if steps is None else steps
    if config.batch_size % world:
        raise RunError(f"batch size {config.batch_size} is not divisible by the {world} processes")
    attrs = getattr(batches, "attrs", {})
    if rank == 0:
        prepare_run(
            run_dir, replace(config, train_steps=steps), RIMConfig.OPTIMISATION_FIELDS, metadata=metadata, seed=seed
        )
    if world > 1:
        dist.barrier()
    model = _init(lambda: RIM(config), seed).to(device)
    opt = torch.optim.Adamax(model.parameters(), lr=config.learning_rate_at(0))
    start = restore(run_dir, model, opt, trim=rank == 0)
    net = model
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    share = config.batch_size // world
    model.train()
    log = open(run_dir / METRICS, "a") if rank == 0 else None
    try:
        for step in range(start, steps):
            batch = batches(step, config.batch_size, seed)
            batch = {k: v[rank * share : (rank + 1) * share].to(device) for k, v in batch.items()}
            for g in opt.param_groups:
                g["lr"] = config.learning_rate_at(step)
            loss, chi2 = batch_loss(net, batch, config, attrs)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), config.clip_norm)
            opt.step()
            done = step + 1
            terms = {"loss": loss.item(), "chi2_nu": float(chi2.mean()), "step": done}
            if world > 1:
                t = torch.tensor([terms["loss"], terms["chi2_nu"]], device=device)
                dist.all_reduce(t)
                terms["loss"], terms["chi2_nu"] = (t / world).tolist()
            if rank == 0 and (done % log_every == 0 or done == steps):
                terms.update(lr=config.learning_rate_at(step), grad_norm=float(grad_norm))
                if validation is not None:
                    model.eval()
                    with torch.no_grad():
                        vb = {k: v.to(device) for k, v in validation.items()}
                        vloss, vchi2 = batch_loss(model, vb, config, attrs)
                    model.train()
                    terms.update(val_loss=vloss.item(), val_chi2_nu=float(vchi2.mean()))
                log.write(json.dumps(terms, sort_keys=True) + "\n")
                log.flush()
            if rank == 0 and (done % checkpoint_every == 0 or done == steps):
                save_checkpoint(run_dir, {"model": model.state_dict(), "optimizer": opt.state_dict(), "step": done})
            if progress is not None and rank == 0:
                progress(done, terms)
    finally:
        if log is not None:
            log.close()
    if world > 1:
        dist.barrier()  # every rank leaves after rank 0 has written the last checkpoint
    return model.eval()
