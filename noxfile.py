"""Sessions: one per package (installed alone in a fresh virtualenv), integration, lint, bench, demo.

    nox                 # every package's tests, the cross-package tests and the lint
    nox -s quick        # every test but the slow ones, all packages together (< 2 min)
    nox -s lenssim      # one package
    nox -s demo         # the main job on built-in data
    nox -s fuzz         # the fuzzer against every reader, with a large budget (~5 min)
    nox -s bench        # benchmark figures (never fails for being slow)
    nox -s bench_finetune   # does EWC fine-tuning reach the noise? (Table 3, Fig. 8; ~30 min on 2 cores)
    nox -s gpu          # on a CUDA machine: CUDA tests, GPU throughput, torchrun/NCCL, 3 min of 128^2 training
    nox -s gpu_fit      # on a CUDA machine: does the 128^2 RIM, fine-tuned on the GPU, reach the noise?

PyTorch is pinned (LENS_TORCH, default torch==2.13.0) so that resolving the packages' open
`torch>=2.1` range never pulls a different, multi-GB build. It is installed once, into
`.nox/_torch`, and every session's virtualenv sees it through a `.pth` file: the sessions stay
separate for the project's own packages and everything else they install, but share the one
large dependency (about 1 GB each otherwise). LENS_SHARED_TORCH=0 installs it in every session.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import nox

nox.options.sessions = ["lenscore", "lenssim", "lensprior", "lensrim", "cli", "integration", "lint"]
nox.options.error_on_missing_interpreters = True

TORCH = os.environ.get("LENS_TORCH", "torch==2.13.0")
LENSCORE = "packages/lenscore"
LENSSIM = "packages/lenssim"
LENSPRIOR = "packages/lensprior"
LENSRIM = "packages/lensrim"
CLI = "apps/cli"


SHARED_TORCH = os.environ.get("LENS_SHARED_TORCH", "1") != "0"


def _purelib(python: str) -> str:
    code = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    return subprocess.run([python, "-c", code], check=True, capture_output=True, text=True).stdout.strip()


def _shared_torch(session: nox.Session) -> str:
    """The site-packages of `.nox/_torch`, a virtualenv holding only TORCH (built on first use;
    rebuilt when TORCH or the Python version changes)."""
    python = str(Path(session.virtualenv.location, "bin", "python"))
    code = "import sys; print(sys._base_executable, *sys.version_info[:2])"
    base, *version = subprocess.run([python, "-c", code], check=True, capture_output=True, text=True).stdout.split()
    home = Path(session.virtualenv.location).parent / "_torch"
    marker = home / "lens-torch.txt"
    wanted = f"{TORCH}\n{'.'.join(version)}\n"
    if not (marker.is_file() and marker.read_text() == wanted):
        shutil.rmtree(home, ignore_errors=True)
        session.run(base, "-m", "venv", str(home), external=True)
        session.run(str(home / "bin" / "python"), "-m", "pip", "install", "-q", TORCH, external=True)
        marker.write_text(wanted)
    return _purelib(str(home / "bin" / "python"))


def _install(session: nox.Session, *paths: str) -> None:
    if SHARED_TORCH and sys.platform != "win32":
        shared = _shared_torch(session)
        site = _purelib(str(Path(session.virtualenv.location, "bin", "python")))
        # after the session's own site-packages on sys.path: whatever the session installs wins
        Path(site, "lens_shared_torch.pth").write_text(shared + "\n")
    session.install(TORCH)  # already satisfied through the .pth when shared: pip installs nothing
    # All in-repo packages in one call, so pip takes them from here and never from an index;
    # every package depends on lenscore, so it always comes along.
    session.install(*([LENSCORE] if not any(p.startswith(LENSCORE) for p in paths) else []), *paths)


def _pytest(session: nox.Session, *paths: str) -> None:
    session.run("pytest", "-q", *paths, *session.posargs)


@nox.session
def lenscore(session: nox.Session) -> None:
    """lenscore alone (what the packages share)."""
    _install(session, f"{LENSCORE}[test]")
    _pytest(session, f"{LENSCORE}/tests")


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
    """Everything installed together: the cross-package tests in tests/ (the `lens` script must
    be there: a missing one fails them instead of skipping them)."""
    _install(session, LENSSIM, LENSPRIOR, f"{LENSRIM}[report]", CLI, "pytest", "hypothesis")
    session.run("pytest", "-q", "tests", *session.posargs, env={"LENS_REQUIRE_SCRIPT": "1"})


@nox.session
def fuzz(session: nox.Session) -> None:
    """The fuzzer of tests/test_fuzz.py with a large budget (LENS_FUZZ_EXAMPLES, default 500 per
    reader; about 5 minutes on 2 cores): malformed datasets, FITS files and run directories."""
    _install(session, LENSSIM, LENSPRIOR, f"{LENSRIM}[report]", CLI, "pytest", "hypothesis")
    examples = os.environ.get("LENS_FUZZ_EXAMPLES", "500")
    session.run("pytest", "-q", "tests/test_fuzz.py", *session.posargs, env={"LENS_FUZZ_EXAMPLES": examples})


@nox.session
def quick(session: nox.Session) -> None:
    """Every test but the slow ones (subprocesses, DDP, the denoiser, long training), all
    packages in one environment: under 2 minutes on 2 cores, for the edit-test loop."""
    _install(
        session,
        f"{LENSCORE}[test]",
        f"{LENSSIM}[test]",
        f"{LENSPRIOR}[test]",
        f"{LENSRIM}[test]",
        f"{CLI}[test]",
        "hypothesis",
    )
    packages = (LENSCORE, LENSSIM, LENSPRIOR, LENSRIM, CLI)
    for tests in (*(f"{p}/tests" for p in packages), "tests"):
        # one run per directory: each test directory has its own conftest module
        session.run("pytest", "-q", "-m", "not slow", tests, *session.posargs, success_codes=[0, 5])


@nox.session
def lint(session: nox.Session) -> None:
    """ruff: lint and formatting."""
    session.install("ruff")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def bench(session: nox.Session) -> None:
    """Throughput figures; with caustics and scikit-learn installed (optional), the references through them."""
    _install(session, LENSSIM, LENSPRIOR, LENSRIM)
    try:
        session.install("caustics==1.7.1")
    except nox.command.CommandFailed:
        session.warn("caustics could not be installed: benchmarking lenssim alone")
    try:  # the smoothing lengths' previous path, bench_kde's reference
        session.install("scikit-learn")
    except nox.command.CommandFailed:
        session.warn("scikit-learn could not be installed: the smoothing lengths without their reference")
    session.run("python", "benchmarks/bench_lenssim.py", *session.posargs)
    session.run("python", "benchmarks/bench_kde.py")
    session.run("python", "benchmarks/bench_rim.py")
    session.run("python", "benchmarks/bench_prior.py")


@nox.session
def bench_finetune(session: nox.Session) -> None:
    """EWC fine-tuning against the constant predictor and plain Adam on a 32^2 case (README figures)."""
    _install(session, LENSSIM, LENSPRIOR, LENSRIM, "matplotlib")
    session.run("python", "benchmarks/bench_finetune.py", *session.posargs)


@nox.session
def gpu(session: nox.Session) -> None:
    """On a CUDA machine (LENS_TORCH picks the CUDA build): CUDA tests, GPU throughput rows,
    torchrun through NCCL against the plain command, and 3 minutes of 128^2 on-the-fly training
    against the constant predictor (about 8 min on an H100)."""
    _install(session, f"{LENSSIM}[test]", LENSPRIOR, f"{LENSRIM}[test]", CLI)
    session.run("python", "benchmarks/gpu_session.py", *session.posargs)


@nox.session
def gpu_fit(session: nox.Session) -> None:
    """On a CUDA machine: does the 128^2 small RIM, fine-tuned batched on the GPU, reach the noise?
    (issue 23's one-GPU case: RIM, VAEs, 32 lenses, references and the Fisher chi2 scan; sized
    for 10 minutes on an H100/H200, not yet run on one)."""
    _install(session, LENSSIM, LENSPRIOR, LENSRIM, "matplotlib")
    session.run("python", "benchmarks/bench_finetune.py", "--gpu", "--work", "gpu-fit", *session.posargs)


@nox.session
def demo(session: nox.Session) -> None:
    """The main job on built-in data: `lens demo -o demo-out` (pass other options after --)."""
    _install(session, LENSSIM, LENSPRIOR, LENSRIM, CLI)
    session.run("lens", "demo", *(session.posargs or ["-o", "demo-out"]))
