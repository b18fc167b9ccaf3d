"""How many CPU threads a job should use: the cores it may run on, and those other jobs leave idle.

No torch: a command line decides before torch loads.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from lenscore.config import SettingError

__all__ = ["choose_threads", "idle_cores", "max_threads", "usable_cores"]


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity where the system says)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def max_threads() -> int:
    """The most threads a job accepts: twice the usable cores (more only contend: thousands drove a
    2-core machine's load to ~575 and crashed at thread creation)."""
    return 2 * usable_cores()


def idle_cores(window: float = 0.5) -> int:
    """Cores that other jobs leave idle: the usable cores less the cores busy during ``window``
    seconds (Linux /proc/stat; elsewhere all usable cores), at least one. Threads beyond these
    contend with the other jobs and slow torch down many times over."""
    cores = usable_cores()

    def sample() -> tuple[int, int]:
        with open("/proc/stat") as f:
            ticks = [int(x) for x in f.readline().split()[1:]]
        return sum(ticks), ticks[3] + ticks[4]  # all, idle + iowait

    try:
        total0, idle0 = sample()
        time.sleep(window)
        total1, idle1 = sample()
    except (OSError, ValueError, IndexError):
        return cores
    busy = (total1 - total0 - (idle1 - idle0)) / max(total1 - total0, 1) * (os.cpu_count() or cores)
    return max(1, min(cores, round(cores - busy)))


def choose_threads(requested: int | None, stored: Path) -> tuple[int, bool]:
    """The threads of a job that keeps its first call's count in ``stored`` (a resumed or repeated
    run computes the same way): ``requested``, else the stored count (capped at
    :func:`max_threads`, for a file from a larger machine), else :func:`idle_cores`, then written
    to ``stored`` when it holds none. Returns the count and whether it was measured.
    ``requested`` beyond :func:`max_threads` is refused (:class:`SettingError` naming ``threads``)."""
    most = max_threads()
    if requested is not None and requested > most:
        message = f"{requested} threads on a machine of {usable_cores()} usable cores: at most {most}"
        raise SettingError(message, param="threads")
    measured = False
    text = stored.read_text().strip() if stored.is_file() else ""
    if requested is not None:
        threads = requested
    elif text.isdigit():
        threads = min(max(1, int(text)), most)
    else:
        threads, measured = idle_cores(), True
    if not text.isdigit():  # the first call's count; an explicit count later does not replace it
        stored.parent.mkdir(parents=True, exist_ok=True)
        stored.write_text(f"{threads}\n")
    return threads, measured
