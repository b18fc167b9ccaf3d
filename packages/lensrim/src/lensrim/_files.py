"""Atomic file writes, without torch (the demo's presets are read at a command line's start-up)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def written(path: Path) -> Iterator[Path]:
    """A temporary name beside ``path`` (``.NAME.PID.tmp``) that replaces it once the block
    succeeds: a kill mid-write leaves the previous file, never half of one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
