"""Option parsing shared by the commands: devices, seeds, atomic outputs, one-line errors."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    import torch


def resolve_device(name: str) -> torch.device:
    """A torch device from a user string, refused in one line when it cannot be used."""
    import torch  # here, not at the top: `lens --help` should not wait for torch

    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise click.BadParameter(f"{name!r} is not a device (try 'cpu' or 'cuda')", param_hint="--device") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise click.BadParameter("CUDA was asked for but no GPU is available", param_hint="--device")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise click.BadParameter(
                f"{name!r}: only {torch.cuda.device_count()} GPU(s) present", param_hint="--device"
            )
    elif device.type != "cpu":
        raise click.BadParameter(f"{name!r}: only 'cpu' and 'cuda' devices are supported", param_hint="--device")
    return device


def device_option(f: Callable) -> Callable:
    return click.option("--device", default="cpu", show_default=True, help="Torch device: cpu, cuda or cuda:N.")(f)


def run_dir_option(f: Callable) -> Callable:
    """``-o/--output``: a training run directory, resumed when it exists."""
    return click.option(
        "-o",
        "--output",
        required=True,
        type=click.Path(file_okay=False, path_type=Path),
        help="Run directory (resumed if it exists).",
    )(f)


def seed_option(f: Callable) -> Callable:
    return click.option("--seed", default=0, show_default=True, type=click.IntRange(0, 2**63 - 1), help="Random seed.")(
        f
    )


def one_line_errors(f: Callable) -> Callable:
    """Turn the libraries' input errors into click's one-line message and exit status 1."""

    @functools.wraps(f)
    def wrapper(*args, **kwargs):
        try:
            return f(*args, **kwargs)
        except click.ClickException:
            raise
        except (ValueError, OSError, RuntimeError) as e:
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise click.ClickException(msg) from None

    return wrapper


def atomic_path(path: Path) -> Path:
    """A temporary sibling of ``path``: write there, then :func:`os.replace` it onto ``path``."""
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def refuse_overwriting_inputs(outputs: dict[str, Path], inputs: dict[str, str | Path | None]) -> None:
    """Refuse, in one line and before anything is written, an output that is (through symlinks
    too) one of the command's input files, or lies inside an input run directory or dataset
    directory. ``outputs`` and ``inputs`` map option names to paths (None and keywords such as
    'sie' that name no file are skipped)."""
    resolved = {}
    for option, value in inputs.items():
        if value is None:
            continue
        path = Path(value)
        if path.exists():
            resolved[option] = path.resolve()
    for out_option, out in outputs.items():
        target = Path(out).resolve()
        for option, src in resolved.items():
            if target == src or src.is_dir() and src in target.parents:
                where = "is" if target == src else "lies inside"
                raise click.BadParameter(
                    f"{out} {where} the input {option} {inputs[option]}: it would be overwritten; choose another path",
                    param_hint=out_option,
                )
