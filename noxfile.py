"""Sessions: one per package (installed alone in a fresh virtualenv), integration, lint, bench, demo.

    nox                 # every package's tests, the cross-package tests and the lint
    nox -s lenssim      # one package
    nox -s demo         # the main job on built-in data
    nox -s bench        # benchmark figures (never fails for being slow)
    nox -s bench_finetune   # does EWC fine-tuning reach the noise? (Table 3, Fig. 8; ~30 min on 2 cores)
    nox -s gpu          # on a CUDA machine: CUDA tests, GPU throughput, 3 minutes of 128^2 training

Each session installs the pinned PyTorch first (LENS_TORCH, default torch==2.13.0) so that
resolving the packages' open `torch>=2.1` range never pulls a different, multi-GB build.
"""

from __future__ import annotations

import os

import nox

nox.options.sessions = ["lenssim", "lensprior", "lensrim", "cli", "integration", "lint"]
nox.options.error_on_missing_interpreters = True

TORCH = os.environ.get("LENS_TORCH", "torch==2.13.0")
LENSSIM = "packages/lenssim"
LENSPRIOR = "packages/lensprior"
LENSRIM = "packages/lensrim"
CLI = "apps/cli"


def _install(session: nox.Session, *paths: str) -> None:
    session.install(TORCH)
    # All in-repo packages in one call, so pip takes them from here and never from an index.
    session.install(*paths)


def _pytest(session: nox.Session, *paths: str) -> None:
    session.run("pytest", "-q", *paths, *session.posargs)


@nox.session
def lenssim(session: nox.Session) -> None:
    """lenssim alone."""
    _install(session, f"{LENSSIM}[test]")
    _pytest(session, f"{LENSSIM}/tests")


@nox.session
def lensprior(session: nox.Session) -> None:
    """lensprior alone (no lensing code)."""
    _install(session, f"{LENSPRIOR}[test]")
    _pytest(session, f"{LENSPRIOR}/tests")


@nox.session
def lensrim(session: nox.Session) -> None:
    """lensrim with its in-repo dependencies."""
    _install(session, LENSSIM, LENSPRIOR, f"{LENSRIM}[test]")
    _pytest(session, f"{LENSRIM}/tests")


@nox.session
def cli(session: nox.Session) -> None:
    """The `lens` app's own tests."""
    _install(session, LENSSIM, LENSPRIOR, LENSRIM, f"{CLI}[test]")
    _pytest(session, f"{CLI}/tests")


@nox.session
def integration(session: nox.Session) -> None:
    """Everything installed together: the cross-package tests in tests/."""
    _install(session, LENSSIM, LENSPRIOR, LENSRIM, CLI, "pytest")
    _pytest(session, "tests")


@nox.session
def lint(session: nox.Session) -> None:
    """ruff: lint and formatting."""
    session.install("ruff")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def bench(session: nox.Session) -> None:
    """Throughput figures; with caustics installed (optional), the same workload through it."""
    _install(session, LENSSIM, LENSPRIOR, LENSRIM)
    try:
        session.install("caustics==1.7.1")
    except nox.command.CommandFailed:
        session.warn("caustics could not be installed: benchmarking lenssim alone")
    session.run("python", "benchmarks/bench_lenssim.py", *session.posargs)
    session.run("python", "benchmarks/bench_kde.py")
    session.run("python", "benchmarks/bench_rim.py")


@nox.session
def bench_finetune(session: nox.Session) -> None:
    """EWC fine-tuning against the constant predictor and plain Adam on a 32^2 case (README figures)."""
    _install(session, LENSSIM, LENSPRIOR, LENSRIM, "matplotlib")
    session.run("python", "benchmarks/bench_finetune.py", *session.posargs)


@nox.session
def gpu(session: nox.Session) -> None:
    """On a CUDA machine (LENS_TORCH picks the CUDA build): CUDA tests, GPU throughput rows and
    3 minutes of 128^2 on-the-fly training against the constant predictor (about 8 min on an H100)."""
    _install(session, f"{LENSSIM}[test]", LENSPRIOR, f"{LENSRIM}[test]")
    session.run("python", "benchmarks/gpu_session.py", *session.posargs)


@nox.session
def demo(session: nox.Session) -> None:
    """The main job on built-in data: `lens demo -o demo-out` (pass other options after --)."""
    _install(session, LENSSIM, LENSPRIOR, LENSRIM, CLI)
    session.run("lens", "demo", *(session.posargs or ["-o", "demo-out"]))
