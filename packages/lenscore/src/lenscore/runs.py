"""Run directories: configs as JSON, checkpoints, metrics as JSON lines, exact resume.

A run directory holds ``config.json`` (the model's configuration), ``checkpoint.pt`` (model and
optimiser state dicts and the step, read with ``torch.load(weights_only=True)`` and validated:
a shared run directory cannot run code), ``metrics.jsonl`` and ``run.json`` (metadata). The
randomness of a step is a function of (seed, step) (:func:`step_generator`), so a run resumed
from its checkpoint takes exactly the steps an uninterrupted one takes. lensprior's VAEs and
denoiser and lensrim's RIM all train in such directories.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lenscore.config import differences
from lenscore.files import ExclusiveLock, remove_stale_temporaries, write_text, written

__all__ = [
    "CHECKPOINT",
    "CONFIG",
    "METRICS",
    "RUN_JSON",
    "available_memory",
    "check_memory",
    "check_resume",
    "check_run",
    "memory_estimate",
    "on_device",
    "RunError",
    "RunLock",
    "check_finite",
    "clip_each_tensor",
    "load_checkpoint",
    "load_run",
    "load_weights",
    "prepare_run",
    "read_config",
    "read_json",
    "read_metrics",
    "restore",
    "resumed_config",
    "run_metadata",
    "run_steps",
    "save_checkpoint",
    "StepResult",
    "seeded_init",
    "step_generator",
    "trim_metrics",
]

CONFIG = "config.json"
CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.jsonl"
RUN_JSON = "run.json"


class RunError(ValueError):
    """A run directory or data file is missing, corrupt or inconsistent."""


def step_generator(seed: int, step: int, stream: int = 0) -> torch.Generator:
    """A CPU generator determined by (seed, step, stream) alone."""
    state = np.random.SeedSequence([int(seed), int(step), int(stream)]).generate_state(1, np.uint64)[0]
    return torch.Generator().manual_seed(int(state >> 1))


def save_checkpoint(run_dir: Path, state: dict[str, Any]) -> None:
    """Write the checkpoint atomically (a kill mid-write leaves the previous one). Its bytes are
    a function of ``state`` alone: torch names the archive's inner folder after a path it is
    given, so it is given an open file instead of the (process-specific) temporary name."""
    path = run_dir / CHECKPOINT
    floats = [v for v in state["model"].values() if v.is_floating_point()]
    finite = bool(torch.stack([torch.isfinite(v).all() for v in floats]).all()) if floats else True  # one sync
    bad = (
        []
        if finite
        else [k for k, v in state["model"].items() if v.is_floating_point() and not torch.isfinite(v).all()]
    )
    if bad:  # an update that produced NaN or inf from a finite loss (too large a step)
        kept = load_checkpoint(run_dir)
        where = f"the checkpoint of step {kept['step']} is kept" if kept else "no checkpoint was written"
        raise RunError(
            f"step {state.get('step')}: weights {bad[0]!r} are not finite; training stopped ({where}): lower the "
            "learning rate"
        )
    with written(path) as tmp:
        try:
            with open(tmp, "wb") as f:
                torch.save(_interned(state), f)
        except (OSError, RuntimeError) as e:  # torch's C++ writer reports a failed write as a RuntimeError
            raise OSError(f"{path}: the checkpoint could not be written ({_why_unwritten(e, tmp)})") from None


def _interned(value: Any) -> Any:
    """``value`` with every string key interned. Pickle writes a string once per object: a
    resumed run's optimiser state has the keys torch unpickled (new objects), an uninterrupted
    run's the interned literals of torch's code, so without this the same state pickles to other
    bytes after a resume."""
    if isinstance(value, dict):
        return {sys.intern(k) if isinstance(k, str) else k: _interned(v) for k, v in value.items()}
    if type(value) in (list, tuple):
        return type(value)(_interned(v) for v in value)
    return value


def _why_unwritten(error: Exception, tmp: Path) -> str:
    """What a failed ``torch.save`` means, in words: a full disk names itself."""
    try:
        free = shutil.disk_usage(tmp.parent).free
    except OSError:
        free = None
    full = getattr(error, "errno", None) == errno.ENOSPC or "No space" in str(error)
    if full or free is not None and free < 64 << 20:
        return "no space left on the device; free some and run the same command again to resume"
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


def _check_state(path: Path, state: Any) -> dict[str, Any]:
    """The structure every checkpoint has: a dict with a ``model`` state dict of tensors, a
    non-negative integer ``step`` and, when present, an ``optimizer`` state dict."""
    if not isinstance(state, dict):
        raise RunError(f"{path}: not a checkpoint (holds a {type(state).__name__}, not a dict)")
    missing = [k for k in ("model", "step") if k not in state]
    if missing:
        raise RunError(f"{path}: not a checkpoint (no {', '.join(missing)}; keys: {sorted(map(str, state))})")
    model = state["model"]
    if not isinstance(model, dict) or not all(isinstance(v, torch.Tensor) for v in model.values()):
        raise RunError(f"{path}: 'model' is not a state dict of tensors")
    bad = [k for k, v in model.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise RunError(f"{path}: weights {bad[0]!r} hold NaN or infinite values")
    step = state["step"]
    if isinstance(step, torch.Tensor) and step.numel() == 1:
        step = step.item()
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise RunError(f"{path}: 'step' is {step!r}, not a non-negative integer")
    if "optimizer" in state and not isinstance(state["optimizer"], dict):
        raise RunError(f"{path}: 'optimizer' is not a state dict")
    return {**state, "step": step}


def load_checkpoint(run_dir: Path) -> dict[str, Any] | None:
    """A run directory's checkpoint, read with ``weights_only=True`` and validated (structure,
    keys, finite weights), or None when it has none."""
    path = run_dir / CHECKPOINT
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable checkpoint gets the same message
        why = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise RunError(f"{path}: unreadable checkpoint ({type(e).__name__}: {why})") from None
    return _check_state(path, state)


def load_weights(module: torch.nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    """``module.load_state_dict(state)``, with a mismatch of names, shapes or dtypes refused
    in one line naming ``path`` before anything is copied."""
    own = module.state_dict()
    missing, extra = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or extra:
        what = f"missing {missing[:3]}" if missing else f"unexpected {extra[:3]}"
        raise RunError(f"{path}: weights do not fit the configuration ({what})")
    for k, v in own.items():
        if state[k].shape != v.shape:
            raise RunError(
                f"{path}: weights do not fit the configuration ({k} is {tuple(state[k].shape)}, "
                f"the model's {tuple(v.shape)})"
            )
        if state[k].dtype != v.dtype:
            raise RunError(f"{path}: {k} is {state[k].dtype}, the model's {v.dtype}")
    module.load_state_dict(state)


def on_device(model: torch.nn.Module, device: str | torch.device) -> torch.nn.Module:
    """``model`` on ``device``, and on a CPU with its 4-d weights channels-last (NHWC), the layout
    oneDNN's convolutions run fastest on. The weights are the same; only their rounding differs.
    Measured on the 2-core development machine against NCHW (``benchmarks/bench_prior.py``,
    ``benchmarks/bench_rim.py``): a VAE training step x1.2-1.8, VAE sampling x1.2-1.8, the
    denoiser's training step x1.3, the RIM's inference x1.07-1.13 and training x1.08. On a GPU
    the layout stays NCHW (not measured there)."""
    model = model.to(device)
    if torch.device(device).type == "cpu":
        model = model.to(memory_format=torch.channels_last)
    return model


def read_config(config_class: Any, path: Path) -> Any:
    """The ``config_class`` (a :class:`lenscore.config.JsonConfig`) stored in the JSON file
    ``path``, refused in one line naming the file (:class:`RunError`) when it is not one: another
    model's configuration, unknown keys, bad values, not JSON, not text."""
    what = getattr(config_class, "RUN_KIND", config_class.__name__)
    try:
        return config_class.from_json(path.read_text())
    except (ValueError, TypeError) as e:  # JSON and Unicode decoding errors are ValueErrors
        kind = f"not a {what} configuration"
        raise RunError(f"{path}: {e}" if str(e).startswith(kind) else f"{path}: {kind} ({e})") from None


def load_run(
    run_dir: str | os.PathLike,
    config_class: type,
    build: Callable[[Any], torch.nn.Module],
    *,
    device: str | torch.device = "cpu",
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The trained model of a run directory: its JSON config, its checkpoint's weights and the
    run's metadata (``run.json`` plus the checkpoint's step), each checked with a one-line error."""
    run_dir = Path(run_dir)
    what = getattr(config_class, "RUN_KIND", config_class.__name__)
    path = run_dir / CONFIG
    if not path.is_file():
        raise RunError(f"{run_dir}: no {CONFIG} (not a {what} run directory)")
    config = read_config(config_class, path)
    state = load_checkpoint(run_dir)
    if state is None:
        raise RunError(f"{run_dir}: no {CHECKPOINT} (has the run started?)")
    check_memory(config, build, path)
    model = build(config)
    load_weights(model, state["model"], run_dir / CHECKPOINT)
    meta = run_metadata(run_dir)
    meta["step"] = state["step"]
    return on_device(model, device).eval(), meta


def available_memory() -> int | None:
    """Bytes of memory this process can still take (Linux ``MemAvailable``, else the physical
    memory), or None where neither is known."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


def memory_estimate(config: Any, build: Callable[[Any], torch.nn.Module], *, batch: int = 1) -> int:
    """A lower bound of the bytes a model of ``config`` takes to run on ``batch`` examples,
    without allocating it: its weights (built on torch's meta device, which holds no data)
    and one float32 feature map of ``filters`` channels at full resolution per example."""
    with torch.device("meta"):
        model = build(config)
    tensors = [*model.parameters(), *model.buffers()]
    weights = sum(t.numel() * t.element_size() for t in tensors)
    pixels, filters = int(getattr(config, "pixels", 0)), int(getattr(config, "filters", 1))
    return weights + batch * pixels**2 * max(filters, 1) * 4


def check_memory(
    config: Any, build: Callable[[Any], torch.nn.Module], where: str | os.PathLike, *, batch: int = 1, factor: int = 1
) -> None:
    """Refuse, in one line naming ``where`` and before anything is allocated, a configuration
    whose model cannot fit in this machine's memory (:func:`memory_estimate` times ``factor``:
    e.g. 4 for training, with gradients and two optimiser moments)."""
    try:
        need = memory_estimate(config, build, batch=batch) * factor
    except (RuntimeError, ValueError, TypeError, OverflowError) as e:  # sizes no layer accepts (0 channels, ...)
        raise RunError(f"{where}: no model can be built from this configuration ({e})") from None
    have = available_memory()
    if have is not None and need > have:
        raise RunError(
            f"{where}: the model would need at least {need / 2**30:.3g} GiB, more than the {have / 2**30:.3g} GiB of "
            "memory available here (pixels, filters, kernel sizes or batch size too large)"
        )


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RunError(f"{path}: not valid JSON ({e})") from None


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl``. A half-written last line (a run killed mid-write) is
    dropped with a warning; a malformed line before it is refused, naming the line."""
    import warnings

    lines = path.read_text().splitlines()
    records = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            step = record.get("step") if isinstance(record, dict) else None
            if not isinstance(step, int) or isinstance(step, bool):  # JSON true is an int to Python
                raise ValueError("no integer 'step'")
        except ValueError as e:
            if i == len(lines) - 1:
                warnings.warn(f"{path}: dropped a half-written last line ({e})", stacklevel=2)
                break
            raise RunError(f"{path}: line {i + 1} is not a metrics record ({e})") from None
        records.append(record)
    return records


def trim_metrics(run_dir: Path, step: int) -> None:
    path = run_dir / METRICS
    if not path.is_file():
        return
    keep = [r for r in read_metrics(path) if r["step"] <= step]
    write_text(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in keep))


class RunLock:
    """An exclusive, non-blocking lock on a run directory (``.lock`` inside it), held while a
    process trains there: a second process on the same run is refused at once instead of
    interleaving checkpoints and metrics. Stale ``.NAME.PID.tmp`` files of killed runs are
    removed when the lock is taken."""

    def __init__(self, run_dir: str | os.PathLike) -> None:
        self.run_dir = Path(run_dir)
        self._lock = ExclusiveLock(
            self.run_dir / ".lock",
            lambda: RunError(f"{self.run_dir}: another process is training in this run directory"),
        )

    def __enter__(self) -> RunLock:
        self._lock.__enter__()
        remove_stale_temporaries(self.run_dir)
        return self

    def __exit__(self, *exc) -> None:
        self._lock.__exit__(*exc)


def prepare_run(
    run_dir: Path,
    config: Any,
    mutable: tuple[str, ...],
    *,
    metadata: dict[str, Any] | None = None,
    seed: int = 0,
    resumed_at: int = 0,
) -> None:
    """Create or reopen a run directory: refuse one whose stored configuration differs from
    ``config`` in anything but the ``mutable`` fields (steps, schedules), then store ``config``
    and the run's ``metadata`` with the seed as JSON (``run.json``; without ``metadata``, the
    stored metadata stay and the seed is recorded all the same, for :func:`restore` to check).
    A run resumed (from step ``resumed_at`` > 0) with other metadata than it ran with (other
    data, another number of processes) keeps the earlier ones in ``run.json``'s ``history``,
    each with the step it ran until, and says so in a warning.

    A trainer checks everything first (:func:`check_run`, :func:`restore` with ``trim=False``,
    its data) and calls this last, so that a refused resume leaves every file as it was."""
    check_run(run_dir, config, mutable)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_text(run_dir / CONFIG, config.to_json())
    stored = run_metadata(run_dir)
    history = stored.pop("history", [])
    stored.pop("seed", None)
    if metadata is None:
        metadata = stored
    metadata = json.loads(json.dumps(metadata))  # compared as JSON keeps it (tuples as lists)
    if resumed_at > 0 and stored and metadata != stored:
        import warnings

        history = [*history, {"until_step": resumed_at, **stored}]
        warnings.warn(
            f"{run_dir}: resumed at step {resumed_at} with other metadata than it ran with "
            f"({'; '.join(differences(stored, metadata))}); {RUN_JSON} keeps the earlier ones under 'history'",
            stacklevel=3,
        )
    record = {**metadata, "seed": seed, **({"history": history} if history else {})}
    write_text(run_dir / RUN_JSON, json.dumps(record, indent=2, sort_keys=True))


def run_metadata(run_dir: str | os.PathLike) -> dict[str, Any]:
    """A run directory's ``run.json`` (its metadata and seed; empty for a new run), refused in one
    line when it is not a JSON object."""
    path = Path(run_dir) / RUN_JSON
    meta = read_json(path) if path.is_file() else {}
    if not isinstance(meta, dict):
        raise RunError(f"{path}: not a JSON object")
    return meta


def check_run(run_dir: Path, config: Any, mutable: tuple[str, ...]) -> None:
    """Refuse (reading only) a run directory whose stored configuration differs from ``config``
    in anything but the ``mutable`` fields."""
    cls = type(config)
    if (run_dir / CONFIG).is_file():
        existing = read_config(cls, run_dir / CONFIG)
        if replace(existing, **{k: getattr(config, k) for k in mutable}) != config:
            fixed = [f.name for f in fields(config) if f.name not in mutable]
            said = "; ".join(
                differences({k: getattr(existing, k) for k in fixed}, {k: getattr(config, k) for k in fixed})
            )
            raise RunError(
                f"{run_dir} holds a run with another configuration ({said}): give the run's settings to resume "
                "it, or use a new directory"
            )


def resumed_config(run_dir: str | os.PathLike, config_class: type, given: dict[str, Any]) -> Any | None:
    """The configuration a run directory holds with only the settings ``given`` (those not None)
    changed, so that a resume keeps what the run was started with unless it is given again; None
    for a new run (no configuration stored) or where the stored one cannot take what is given (the
    caller's configuration for a new run is then refused by :func:`check_run`, naming each
    difference)."""
    path = Path(run_dir) / CONFIG
    if not path.is_file():
        return None
    stored = read_config(config_class, path)
    try:
        return replace(stored, **{k: v for k, v in given.items() if v is not None})
    except (TypeError, ValueError):
        return None


def restore(
    run_dir: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    *,
    trim: bool = True,
    until: int | None = None,
    seed: int | None = None,
) -> int:
    """Load the run's checkpoint (if any) into ``model`` and ``optimizer``; return its step.

    With ``trim``, metrics logged after the checkpoint (by a run killed before its next one)
    are dropped (all of them when there is no checkpoint yet), so that the resumed run logs them
    again exactly once. ``until`` (the steps the run is asked to reach) and ``seed`` refuse,
    before anything is written, what :func:`check_resume` refuses."""
    state = load_checkpoint(run_dir)
    step = 0
    if state is not None:
        path = run_dir / CHECKPOINT
        check_resume(run_dir, until=until, seed=seed, step=state["step"])
        if "optimizer" not in state:
            raise RunError(f"{path}: no optimizer state to resume from")
        load_weights(model, state["model"], path)
        try:
            optimizer.load_state_dict(state["optimizer"])
        except (KeyError, ValueError, TypeError, RuntimeError) as e:
            raise RunError(f"{path}: optimizer state does not fit the model ({e})") from None
        step = state["step"]
    if trim:
        trim_metrics(run_dir, step)
    return step


def check_resume(
    run_dir: str | os.PathLike, *, until: int | None = None, seed: int | None = None, step: int | None = None
) -> int:
    """Refuse (reading only) to resume the run in ``run_dir`` when its checkpoint is past
    ``until``, the steps asked for (a run is not rewound, and its configuration must not claim
    fewer steps than its weights took), or when it began with another seed than ``seed``
    (``run.json``'s: a resumed run draws what an uninterrupted one would). Returns the
    checkpoint's step, 0 without one; ``step`` is that step when the checkpoint is already read.
    :func:`restore` calls it; a command calls it first, to refuse before it reports anything."""
    run_dir = Path(run_dir)
    if step is None:
        state = load_checkpoint(run_dir)
        if state is None:
            return 0
        step = int(state["step"])
    started = run_metadata(run_dir).get("seed")
    if seed is not None and started is not None and started != seed:
        raise RunError(
            f"{run_dir} was trained with seed {started}, not {seed}: resume it with seed {started} "
            "(its batches and validation lenses are drawn from it), or use a new directory"
        )
    if until is not None and step > until:
        raise RunError(
            f"{run_dir}: its checkpoint is at step {step}, past the last step asked for ({until}); "
            f"a run is not rewound: ask for {step} steps or more to go on, or use a new directory"
        )
    return step


def check_finite(step: int, run_dir: Path, **values: float | torch.Tensor) -> None:
    """Stop training at a non-finite loss or gradient, before it reaches the weights or a
    checkpoint: the last good checkpoint stays."""
    for name, value in values.items():
        if not bool(torch.isfinite(torch.as_tensor(value)).all()):
            kept = load_checkpoint(run_dir)
            where = f"the checkpoint of step {kept['step']} is kept" if kept else "no checkpoint was written"
            raise RunError(
                f"step {step}: the {name} is not finite; training stopped ({where}): lower the learning rate "
                "or check the data"
            )


def seeded_init(build: Callable[[], torch.nn.Module], seed: int) -> torch.nn.Module:
    """``build()`` with its initial weights drawn from ``seed`` alone (torch's global RNG untouched)."""
    with torch.random.fork_rng(devices=[]):  # initial weights from the seed, globals untouched
        torch.manual_seed(seed)
        return build()


@dataclass
class StepResult:
    """What the loss of one training step hands to :func:`run_steps`: the differentiable
    ``loss``; ``watch``, figures of this step kept on the device (a 1-d tensor, e.g. a batch's
    median chi2_nu) until the next log step; ``aux``, anything the log hook needs of the last step."""

    loss: torch.Tensor
    watch: torch.Tensor | None = None
    aux: Any = None


def run_steps(
    run_dir: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: Iterable[Any],
    step_loss: Callable[[Any, int], StepResult],
    *,
    start: int,
    steps: int,
    learning_rate_at: Callable[[int], float],
    clip_norm: float,
    log_every: int,
    checkpoint_every: int,
    log_terms: Callable[[dict[str, Any], StepResult, torch.Tensor], dict[str, Any]] | None = None,
    progress: Callable[[int, dict[str, Any]], None] | None = None,
    rank: int = 0,
    clip_per_tensor: bool = False,
) -> None:
    """The training loop every model of the lens packages runs: steps ``start .. steps - 1``.

    Each step sets the learning rate of ``learning_rate_at(step)``, computes
    ``step_loss(batch, step)`` on the next item of ``batches``, back-propagates, clips the
    gradient norm of ``model``'s parameters at ``clip_norm`` (all together, or with
    ``clip_per_tensor`` each parameter tensor on its own, as Keras' ``clipnorm``; the logged
    ``grad_norm`` is the global norm before clipping either way) and takes the optimiser step.
    (``step_loss`` may call a DDP wrapper of ``model``; its gradients are then all-reduced.)

    Nothing waits for the device between log steps: each step's loss, gradient norm and
    ``watch`` figures stay there as one row of a history. At every ``log_every``-th step and the
    last, every rank calls ``log_terms(terms, result, history)`` (``terms``: the ``step``, ``lr``
    and ``grad_norm`` of this step; ``result``: this step's; ``history``: ``(k, 2 + m)``, the
    loss, gradient norm and watched figures of the ``k`` steps since the last log; it may run
    collectives) and rank 0 appends ``terms`` and the figures it returns to ``metrics.jsonl`` as
    one JSON line. At every ``checkpoint_every``-th step and the last, rank 0
    saves the checkpoint (model, optimiser, step). Before either, a non-finite loss or gradient
    in the history stops training naming its first step, so it never reaches a checkpoint.
    ``progress(done, terms)`` (rank 0) follows every step; ``terms`` holds the logged figures at
    log steps and only ``step`` otherwise. The iterator of ``batches`` is closed on the way out.
    """
    stream = iter(batches)
    log = open(run_dir / METRICS, "a") if rank == 0 else None
    history: list[torch.Tensor] = []
    try:
        for step, batch in zip(range(start, steps), stream, strict=False):
            for group in optimizer.param_groups:
                group["lr"] = learning_rate_at(step)
            result = step_loss(batch, step)
            optimizer.zero_grad(set_to_none=True)
            result.loss.backward()
            if clip_per_tensor:
                grad_norm = clip_each_tensor(model.parameters(), clip_norm)
            else:
                grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), clip_norm)
            optimizer.step()
            done = step + 1
            row = [result.loss.detach().reshape(1), grad_norm.detach().reshape(1).to(result.loss.device)]
            if result.watch is not None:
                row.append(result.watch.detach().reshape(-1).to(result.loss.device))
            history.append(torch.cat(row))
            terms: dict[str, Any] = {"step": done}
            log_now = done % log_every == 0 or done == steps
            save_now = done % checkpoint_every == 0 or done == steps
            if log_now or save_now:  # every rank: an all-reduced gradient is non-finite on all at once
                recent = torch.stack(history)
                _check_history(run_dir, done, recent)
            if log_now:
                history.clear()
                terms.update(lr=learning_rate_at(step), grad_norm=float(grad_norm))
                if log_terms is not None:
                    terms = {**log_terms(dict(terms), result, recent), **terms}
                if log is not None:
                    log.write(json.dumps(terms, sort_keys=True) + "\n")
                    log.flush()
            if save_now and rank == 0:
                save_checkpoint(
                    run_dir, {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": done}
                )
            if progress is not None and rank == 0:
                progress(done, terms)
    finally:
        if hasattr(stream, "close"):
            stream.close()  # stops a prefetching thread or DataLoader workers
        if log is not None:
            log.close()


def clip_each_tensor(parameters: Iterable[torch.nn.Parameter], max_norm: float) -> torch.Tensor:
    """Scale each parameter's gradient down to norm ``max_norm`` where it is larger (Keras'
    ``clipnorm``, per weight tensor); returns the global norm of the gradients before clipping.
    Nothing waits for the device."""
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return torch.zeros(())
    norms = torch.stack([torch.linalg.vector_norm(g.detach()) for g in grads])
    scales = (max_norm / (norms + 1e-6)).clamp(max=1.0)
    for g, scale in zip(grads, scales.unbind(), strict=True):
        g.detach().mul_(scale)
    return torch.linalg.vector_norm(norms)


def _check_history(run_dir: Path, done: int, history: torch.Tensor) -> None:
    """:func:`check_finite` on the loss and gradient norm of the steps ending at ``done``, naming
    the first step where one stopped being finite."""
    finite = torch.isfinite(history[:, :2])
    if bool(finite.all()):
        return
    first = int((~finite).any(dim=1).nonzero()[0])
    row = history[first]
    check_finite(done - len(history) + 1 + first, run_dir, loss=row[0], gradient=row[1])
