"""A training run resolved from its settings: the configuration (a preset, the options given and a
resumed run's own schedule), the batches (a lens dataset, lenses simulated on the fly from
datasets, analytic maps or VAE draws, or both), the validation lenses and the first estimate's
log10 kappa. ``lens train rim`` parses its options into :func:`prepare_training`, then calls
:func:`lensrim.train_rim` with the plan; a notebook can do the same::

    plan = prepare_training("runs/rim", preset="tiny", data="lenses.h5")
    lensrim.train_rim(plan.config, plan.batches, "runs/rim", validation=plan.validation, metadata=plan.metadata)

A setting that cannot work raises :class:`lenscore.config.SettingError` naming the keyword.
"""

from __future__ import annotations

import functools
import math
import os
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, NoReturn

import torch

import lenssim
from lenscore.config import SettingError
from lenscore.runs import CONFIG, RunError, check_resume, check_run, read_config, run_metadata
from lensrim.config import PRESETS, RIMConfig
from lensrim.finetune import check_prior
from lensrim.training import (
    DatasetBatches,
    MixedBatches,
    SimulatedBatches,
    checkpoint_step,
    constant_log10_kappa,
    vae_sampler,
)

__all__ = [
    "TRAINING_CHOICES",
    "TrainingPlan",
    "close_distributed",
    "init_distributed",
    "launched_distributed",
    "leave_distributed",
    "prepare_training",
    "resolve_config",
    "run_preset",
    "sampler",
    "summary",
]

TRAINING_CHOICES = (
    "gradient_preprocessing",
    "beta2",
    "time_weights",
    "clipping",
    "step_gains",
    "fit_weight",
    "fit_kappa",
    "gradient_skip",
    "skip_normalisation",
    "residual_input",
)
"""Training options a resumed run keeps from its own configuration unless they are given again."""

RESUMED_SETTINGS = ("batch_size", "activation_checkpointing", "bf16")
"""Settings of the computation that a resumed run (a second stage too) keeps unless given again."""

SECOND_STAGE_STEPS = 870_000
"""Steps of Table 7's second stage when none are given."""


@dataclass
class TrainingPlan:
    """What :func:`lensrim.train_rim` is called with, and the step a resumed run goes on from."""

    config: RIMConfig
    batches: Any
    validation: lenssim.LensBatch | None
    external: lenssim.LensBatch | None
    metadata: dict[str, Any]
    start: int


def launched_distributed() -> bool:
    """Whether a launcher (torchrun, or SLURM's ``srun`` with torchrun's variables set) started this
    process as one rank of a process group: ``RANK``, ``WORLD_SIZE`` and ``MASTER_ADDR`` are set."""
    return all(os.environ.get(k) for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR"))


def init_distributed(device: torch.device) -> tuple[torch.device, int, int]:
    """``(device, rank, world size)`` of this process.

    Under a launcher (:func:`launched_distributed`) the process group is initialised, NCCL on GPUs
    (each process on its ``LOCAL_RANK``'s GPU) and gloo on CPUs, and :func:`lensrim.train_rim`
    then trains through DistributedDataParallel. It does so for one process too:
    ``torchrun --nproc-per-node 1`` runs the multi-GPU code path (DDP, NCCL) on one GPU, and gives
    the plain command's result. Alone, ``device`` with rank 0 of 1. :func:`close_distributed`
    ends the group."""
    import torch.distributed as dist

    if not launched_distributed():
        return device, 0, 1
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device, dist.get_rank(), dist.get_world_size()


def close_distributed() -> None:
    """Destroy the process group :func:`init_distributed` began, if any (before the process exits,
    so that NCCL shuts down cleanly)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def leave_distributed(code: int = 0) -> NoReturn:
    """End a rank's process that has finished its work and closed its group, without Python's
    interpreter teardown. A DistributedDataParallel wrapper keeps its process group alive (in C++)
    past ``destroy_process_group`` and ``gc.collect()``, until the interpreter is torn down, where
    gloo's threads can abort the process (``terminate called without an active exception``,
    SIGABRT: seen in CI, after a two-node run had trained and written everything); torchrun then
    reports the whole job failed. Everything is written and closed by then; the standard
    streams are flushed here."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def run_preset(output: str | os.PathLike, preset: str | None = None) -> str:
    """``preset``; when None, the preset the run in ``output`` was started with (its ``run.json``),
    or ``small`` for a new run: a resume that names no preset keeps the run's."""
    if preset is not None:
        return preset
    ran = run_metadata(output).get("preset") if (Path(output) / CONFIG).is_file() else None
    return ran if ran in PRESETS else "small"


def resolve_config(
    output: str | os.PathLike,
    preset: str | None = None,
    *,
    steps: int | None = None,
    second_stage: bool = False,
    batch_size: int | None = None,
    learning_rate: float | None = None,
    init: str | None = None,
    staircase: bool = False,
    activation_checkpointing: bool | None = None,
    bf16: bool | None = None,
    **training: Any,
) -> RIMConfig:
    """The run's configuration: ``preset`` with the settings given (None: not given; ``training``
    holds :data:`TRAINING_CHOICES`). A run directory that holds a configuration resumes with its own
    preset, schedule, training options, batch size, bf16 and activation checkpointing unless given again;
    ``second_stage`` continues its checkpoint with Table 7's second stage for ``steps`` steps,
    keeping the rest. Given again (a preempted job requeued), ``second_stage`` resumes the stage
    begun, ``steps`` counted from its start."""
    unknown = set(training) - set(TRAINING_CHOICES)
    if unknown:
        raise TypeError(f"unknown training options {sorted(unknown)}")
    given = {
        "batch_size": batch_size,
        "learning_rate": learning_rate,
        "init": init,
        "train_steps": None if second_stage else steps,
        "staircase": True if staircase else None,
        "activation_checkpointing": activation_checkpointing,
        "bf16": bf16,
        **training,
    }
    overrides = {k: v for k, v in given.items() if v is not None}
    config = replace(PRESETS[run_preset(output, preset)], **overrides)
    output = Path(output)
    existing = stored_config(output) if (output / CONFIG).is_file() else None
    if existing is not None:  # resuming: the run's own settings, and its schedule but for a new stage
        keep = (*TRAINING_CHOICES, *RESUMED_SETTINGS)
        keep += () if second_stage else RIMConfig.OPTIMISATION_FIELDS
        config = replace(config, **{k: getattr(existing, k) for k in keep if k not in overrides})
    if second_stage:
        if existing is not None and existing.schedule_start > 0:
            # a second stage already begun (a preempted job run again) resumes from where it began,
            # on its own schedule, not begun anew from its last checkpoint with steps added
            start = existing.schedule_start
        else:
            start = checkpoint_step(output)
            if start is None:
                raise SettingError(f"{output} has no checkpoint to continue", param="second_stage")
        config = config.second_stage(start, steps or SECOND_STAGE_STEPS)
    return config


def stored_config(output: Path) -> RIMConfig:
    """The configuration a run directory holds, refused in one line when it is not one."""
    try:
        return read_config(RIMConfig, output / CONFIG)
    except RunError as e:
        raise SettingError(str(e), param="output") from None


def sampler(
    kind: str,
    spec: str | os.PathLike | None = None,
    vae: str | os.PathLike | None = None,
    *,
    config: lenssim.ObservationConfig,
    device: torch.device | str = "cpu",
    split: str = "all",
    param: str | None = None,
) -> lenssim.data.lenses.Sampler:
    """Draws of ``kind`` ("kappa" or "source") from a trained VAE run ``vae``, or from ``spec``
    (:func:`lenssim.sampler_from_spec`: a dataset, or "sie" / "sersic", the default). A VAE of
    the other kind, or trained on maps of another size or field than ``config``'s, is refused as
    a :class:`SettingError` naming ``kappa_vae`` or ``source_vae``."""
    if vae is not None:
        import lensprior

        model, meta = lensprior.load_vae(vae, device=device)
        pixels, fov = (
            (config.image_pixels, config.image_fov) if kind == "kappa" else (config.source_pixels, config.source_fov)
        )
        check_prior(model, kind, pixels=pixels, fov=fov, meta=meta, param=f"{kind}_vae")
        return vae_sampler(model, device)
    spec = lenssim.data.simulate.ANALYTIC[kind] if spec is None else spec
    return lenssim.sampler_from_spec(spec, kind, config=config, split=split, device=device, in_memory=None, param=param)


def prepare_training(
    output: str | os.PathLike,
    *,
    preset: str | None = None,
    data: str | os.PathLike | None = None,
    kappa: str | None = None,
    sources: str | None = None,
    kappa_vae: str | os.PathLike | None = None,
    source_vae: str | os.PathLike | None = None,
    vae_fraction: float = 0.5,
    validation: str | os.PathLike | None = None,
    external: str | os.PathLike | None = None,
    validation_size: int = 32,
    workers: int = 0,
    initial_log10_kappa: str | float = "auto",
    seed: int = 0,
    device: torch.device | str = "cpu",
    world_size: int = 1,
    **settings: Any,
) -> TrainingPlan:
    """Resolve a training run (``settings``: :func:`resolve_config`'s). Batches come from the lens
    dataset ``data``, from lenses simulated on the fly (``kappa``/``kappa_vae`` with
    ``sources``/``source_vae``), or both (``vae_fraction`` of each batch from VAE draws). The
    validation lenses are ``validation``'s (default: held out of ``data``, or simulated), the
    external ones ``external``'s. ``initial_log10_kappa`` "auto" starts the first estimate at the
    constant predictor's log10 kappa on 64 training lenses (a resumed run keeps its own). ``preset``
    None: a resumed run's (:func:`run_preset`), else ``small``."""
    preset = run_preset(output, preset)
    config = resolve_config(output, preset, **settings)
    # refused before any data is read: another model or settings (the data's fields and the first
    # estimate are checked by train_rim once known), a rewind, another seed
    check_run(Path(output), config, (*RIMConfig.OPTIMISATION_FIELDS, "image_fov", "source_fov", "initial_log10_kappa"))
    start = check_resume(output, until=config.train_steps, seed=seed)
    given = {"kappa": kappa, "sources": sources, "kappa_vae": kappa_vae, "source_vae": source_vae}
    provenance = {k: str(v) for k, v in given.items() if v is not None}
    data_fields: dict[str, float] = {}
    if data is not None:
        holdout = 0 if validation is not None else None  # held out only when no validation set is given
        batches = DatasetBatches(data, holdout=holdout, max_holdout=validation_size, workers=workers)
        n = batches.dataset[0]["observation"].shape[-1]
        provenance["data"] = str(data)
        if n != config.pixels:
            raise SettingError(
                f"{data}: maps are {n} pixels wide, the {preset} preset needs {config.pixels}", param="data"
            )
        data_fields = {k: float(batches.attrs[k]) for k in ("image_fov", "source_fov") if k in batches.attrs}
    # lenses simulated on the fly, alone or beside the dataset's, on the dataset's grid
    obs = lenssim.ObservationConfig.at_resolution(config.pixels, **data_fields)

    def draws(kind: str, spec, vae, param: str):
        return sampler(kind, spec, vae, config=obs, device=device, param=param)

    if data is None or kappa_vae is not None or source_vae is not None:
        simulated = SimulatedBatches(
            draws("kappa", kappa, kappa_vae, "kappa"),
            draws("source", sources, source_vae, "sources"),
            obs,
            device=device,
        )
        if data is None:
            batches = simulated
        else:
            batches = MixedBatches(batches, simulated, vae_fraction)
            provenance["vae_fraction"] = vae_fraction
    fovs = {"image_fov": obs.image_fov, "source_fov": obs.source_fov}  # every training lens's grid
    geometry = replace(config, **fovs).geometry
    held = [
        _lenses(p, name, config.pixels, geometry, validation_size) if p is not None else None
        for p, name in ((validation, "validation"), (external, "external"))
    ]
    offset = _initial_offset(initial_log10_kappa, Path(output), batches, seed)
    config = replace(config, initial_log10_kappa=offset, **fovs)  # the RIM keeps its data's geometry
    meta = {**provenance, **fovs, "preset": preset, "world_size": world_size}
    return TrainingPlan(config, batches, held[0], held[1], meta, start)


def _lenses(path, param: str, pixels: int, geometry: lenssim.Geometry, size: int) -> lenssim.LensBatch:
    """Validation lenses, on the training lenses' grid and fields of view."""
    lenses = lenssim.LensBatch.from_hdf5(path, rows=slice(0, size))
    error = functools.partial(SettingError, param=param)
    geometry.refuse_other(
        str(path),
        pixels=lenses.observation.shape[-1],
        image_fov=lenses.attrs.get("image_fov"),
        source_fov=lenses.attrs.get("source_fov"),
        whose="the training lenses'",
        error=error,
    )
    return lenses


def _initial_offset(value: str | float, output: Path, batches, seed: int) -> float:
    if value == "auto":
        if (output / CONFIG).is_file():
            return stored_config(output).initial_log10_kappa  # a resumed run keeps its own
        return constant_log10_kappa(batches, seed)
    try:
        offset = float(value)
    except ValueError:
        raise SettingError(f"{value!r} is neither a number nor 'auto'", param="initial_log10_kappa") from None
    if not math.isfinite(offset):
        raise SettingError(f"{value!r} must be finite", param="initial_log10_kappa")
    return offset


def summary(output: str | os.PathLike, steps: int) -> str:
    """One line on a finished run: its last loss and, for each validation set logged, its mean
    log10 loss beside the constant predictor's."""
    from lenscore.runs import read_metrics

    last = read_metrics(Path(output) / "metrics.jsonl")[-1]
    line = f"trained {output} to step {steps}: loss {last['loss']:.4g}"
    for prefix, name in (("val_", "validation"), ("ext_", "external")):
        if prefix + "log10_loss" in last:
            ours, const = last[prefix + "log10_loss"], last[prefix + "constant_log10_loss"]
            side = "better" if const > ours else "worse"
            line += (
                f"; {name} mean log10 loss {ours:.3f} against the constant predictor's {const:.3f} "
                f"({abs(const - ours):.3f} dex {side})"
            )
    return line
