"""Argument checks that turn a user's mistake into one clear line. Torch-free at import, so
that :mod:`lenssim.geometry` and the KDE can use the number checks without loading torch."""

from __future__ import annotations

import math
import numbers
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


class SimulationError(RuntimeError):
    """A simulation the settings make impossible (no lens passes the acceptance checks, no
    rescaling of a halo reaches the Einstein radius range): a fault of the options, not the code."""


def check_size(name: str, n: int) -> None:
    """A count of pixels or points: a Python integer >= 1, never a boolean (Python counts True as 1)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"{name} must be a positive integer, got {n!r}")


def check_positive(name: str, value: float) -> None:
    """A positive, finite real number (Python's or NumPy's). A boolean is not one (Python counts True
    as 1: a field of view of True would be 1 arcsec), nor is a string that ``float`` would read."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a positive number, got {value!r}")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")


def check_square(name: str, t: torch.Tensor, *, min_dim: int = 2) -> int:
    """Check that the last two axes of ``t`` form a square map; return its side."""
    import torch  # already loaded by whoever has a tensor to check

    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() < min_dim or t.shape[-1] != t.shape[-2]:
        raise ValueError(f"{name} must end in two equal axes (..., N, N), got shape {tuple(t.shape)}")
    if not t.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {t.dtype}")
    return int(t.shape[-1])


def check_bchw(name: str, t: torch.Tensor) -> int:
    """Check a ``(B, 1, N, N)`` tensor; return ``N``."""
    n = check_square(name, t, min_dim=4)
    if t.dim() != 4 or t.shape[1] != 1:
        raise ValueError(f"{name} must have shape (B, 1, N, N), got {tuple(t.shape)}")
    return n
