"""Running the installed `lens` script as a user does, for the end-to-end tests."""

import os
import shutil
import subprocess

import pytest

LENS = shutil.which("lens")
REQUIRED = bool(os.environ.get("CI") or os.environ.get("LENS_REQUIRE_SCRIPT"))
"""Under CI (and in `nox -s integration`) a missing script fails these tests instead of skipping them."""
requires_lens = pytest.mark.skipif(LENS is None and not REQUIRED, reason="the lens script is not installed")


def run(*args, check=True, cwd=None, timeout=900):
    """``lens ARGS`` in a subprocess; raises with its stderr when ``check`` and it fails."""
    if LENS is None:
        raise AssertionError("the lens script is not on the PATH: install apps/cli (pip install apps/cli)")
    proc = subprocess.run([LENS, *map(str, args)], capture_output=True, text=True, timeout=timeout, cwd=cwd)
    if check and proc.returncode != 0:
        raise AssertionError(f"lens {' '.join(map(str, args))} failed ({proc.returncode}):\n{proc.stderr}")
    return proc
