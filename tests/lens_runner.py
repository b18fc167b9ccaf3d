"""Running the installed `lens` script as a user does, for the end-to-end tests."""

import shutil
import subprocess

import pytest

LENS = shutil.which("lens")
requires_lens = pytest.mark.skipif(LENS is None, reason="the lens script is not installed")


def run(*args, check=True, cwd=None, timeout=900):
    """``lens ARGS`` in a subprocess; raises with its stderr when ``check`` and it fails."""
    proc = subprocess.run([LENS, *map(str, args)], capture_output=True, text=True, timeout=timeout, cwd=cwd)
    if check and proc.returncode != 0:
        raise AssertionError(f"lens {' '.join(map(str, args))} failed ({proc.returncode}):\n{proc.stderr}")
    return proc
