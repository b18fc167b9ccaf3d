"""The GPU session (`nox -s gpu`, or this script on any CUDA machine), in about 7 minutes on one
H100 (249 s measured with ``--train-seconds 150`` before the compile row and the paper, batch-64
and caustics rows of 2. and the torchrun check of 3. were added: an estimated 2-3 minutes more;
each group of rows prints its seconds):

1. every test parametrised over CUDA (``-m gpu``): physics CUDA == CPU in float32 and float64,
   RIM forward and backward, bf16 autocast, batched fine-tuning == one lens at a time,
   on-the-fly simulation on the device;
2. the GPU throughput rows of issue 24's table, each with its reference from the same run
   (:func:`throughput`): the ray tracer against caustics at batches 1, 16 and 64 (and Table 1's
   21x21 PSF convolved directly, the CUDA default, against the FFT product), the small and paper
   presets' training and inference (the U-net through torch.compile against eager, its compile
   time printed), on-the-fly training against fixed batches, batched fine-tuning against one lens
   at a time (small and paper, extrapolated to Table 3's budget);
3. the multi-GPU path on one GPU: ``torchrun --standalone --nproc-per-node 1 lens train rim ...
   --device cuda`` (DDP through NCCL) against the plain command, their weights compared;
4. ``--train-seconds`` (default 180) of 128^2 on-the-fly training of the small RIM, printing its
   held-out learning curve beside the constant predictor's loss on the same lenses.

    python benchmarks/gpu_session.py [--train-seconds 180] [--out gpu-session]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))


def tests() -> int:
    """One pytest per package: each package's tests import helpers from their own ``conftest``, and
    two test folders collected together share one ``conftest`` module name."""
    failed = 0
    for package in ("packages/lenssim", "packages/lensrim"):
        args = ["-q", "-m", "gpu", "-p", "no:cacheprovider", str(ROOT / package / "tests")]
        failed |= subprocess.call([sys.executable, "-m", "pytest", *args])
    return failed


def _row(label: str, bench, *args, **kwargs) -> None:
    """Print one benchmark row; a failure (out of memory, a compiler error) is printed in its place
    and the session goes on, with the GPU's cached memory handed back either way."""
    try:
        print(bench(*args, **kwargs), flush=True)
    except Exception as e:  # noqa: BLE001 (reported, and the session goes on)
        print(f"{label}: FAILED ({type(e).__name__}: {str(e).splitlines()[0][:300]})", flush=True)
    finally:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def throughput() -> float:
    """Issue 24's table, each row beside its reference in the same run: the ray tracer against
    caustics (batches 1, 16 and 64; Table 1's PSF convolved directly and by FFT), the small and paper
    presets (training at batch 16 / 4 and 1, inference; paper in bfloat16 too), the compiled U-net
    against eager, on-the-fly training against fixed batches, and fine-tuning together against one
    lens at a time (small and paper, extrapolated to Table 3's budget). Returns the small preset's
    on-the-fly steps per second (the training run's length)."""
    import bench_lenssim
    import bench_rim

    gpu = torch.device("cuda")
    t0 = time.perf_counter()
    print(bench_lenssim.header(3))
    for batch in (1, 16, 64):
        print(bench_lenssim.ray_tracer_row(gpu, batch, 3, 20)[1], flush=True)
    for batch in (1, 16):  # should CUDA take the FFT path for Table 1's PSF too? (FFT_FROM_SIDE)
        print(bench_lenssim.psf_paths_row(gpu, batch, 3, 20)[1], flush=True)
    print(f"[ray tracer rows: {time.perf_counter() - t0:.0f} s]", flush=True)
    t0 = time.perf_counter()
    print(bench_rim.bench("small", gpu, 16, 64, 3), flush=True)
    for batch, flags in ((4, {}), (1, {}), (4, {"bf16": True})):  # issue 24: >= 8 and >= 12 steps/s, >= 200 lenses/s
        _row(f"paper preset, batch {batch} {flags}", bench_rim.bench, "paper", gpu, batch, 8, 3, **flags)
    print(f"[RIM rows: {time.perf_counter() - t0:.0f} s]", flush=True)
    # issue 24 §1: should --device cuda compile by default?
    _row("torch.compile'd U-net", bench_rim.bench_compiled, "small", gpu, 16, 64, 3)
    rates = bench_rim.on_the_fly_rates("small", gpu, 16, 50)
    print(
        f"training small 128^2 batch 16 on cuda: on the fly {rates['on the fly']:.2f} steps/s, fixed batch "
        f"{rates['fixed']:.2f} steps/s ({100 * rates['on the fly'] / rates['fixed']:.0f} %)",
        flush=True,
    )
    t0 = time.perf_counter()
    print(bench_rim.bench_finetune("small", gpu, 16, 5), flush=True)
    print(bench_rim.bench_finetune("small", gpu, 16, 5, rounds=2, bf16=True), flush=True)  # fine-tuning follows --bf16
    _row("fine-tuning paper", bench_rim.bench_finetune, "paper", gpu, 2, 3, rounds=2)  # issue 24: >= 30 lenses/h
    print(f"[fine-tuning rows: {time.perf_counter() - t0:.0f} s]", flush=True)
    return rates["on the fly"]


def torchrun_check(out: Path, device: str = "cuda") -> bool:
    """``lens train rim`` alone and under torchrun (one process: DDP, through NCCL on a GPU and gloo
    on a CPU); True when their weights agree within 1 % of one Adamax step (without the gradient
    skip, whose first steps take the sign of rounding: tests/test_cli_torchrun.py)."""
    lens = shutil.which("lens")
    if lens is None:
        print("torchrun: UNCHECKED, the lens script is not installed (pip install apps/cli)")
        return False
    lr, steps = 3e-3, 20
    train = [lens, "train", "rim", "--kappa", "sie", "--sources", "sersic", "--preset", "tiny", "--steps", str(steps)]
    train += ["--batch-size", "8", "--learning-rate", str(lr), "--gradient-skip", "0", "--device", device]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    runs = {
        "plain": [],
        "torchrun": [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "1"],
    }
    for name, launcher in runs.items():
        proc = subprocess.run(
            [*launcher, *train, "-o", str(out / f"ddp-{name}")], capture_output=True, text=True, env=env
        )
        if proc.returncode != 0:
            print(f"torchrun on {device}: the {name} run FAILED:\n{proc.stderr[-3000:]}")
            return False
        if name == "torchrun":
            print(
                "  "
                + next((line for line in proc.stderr.splitlines() if "distributed:" in line), "no distributed line")
            )
    a, b = (torch.load(out / f"ddp-{name}" / "checkpoint.pt", weights_only=True)["model"] for name in runs)
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    same = all(torch.equal(a[k], b[k]) for k in a)
    ok = worst < 0.01 * lr
    print(
        f"torchrun --nproc-per-node 1 (DDP) on {device} against the plain command, {steps} steps: largest weight "
        f"difference {worst:.2g} ({'bitwise equal' if same else 'not bitwise equal'}; bound {0.01 * lr:g}): "
        f"{'passed' if ok else 'FAILED'}",
        flush=True,
    )
    return ok


def train(seconds: float, rate: float, out: Path, batch: int, learning_rate: float, init: str) -> None:
    import lensrim
    import lenssim
    from lensrim.training import SimulatedBatches, constant_log10_kappa

    dev = torch.device("cuda")
    log_every = 50
    steps = max(log_every, int(seconds * rate * 0.85) // log_every * log_every)  # validation takes the rest
    obs = lenssim.ObservationConfig()
    cfg = replace(lensrim.PRESETS["small"], batch_size=batch, learning_rate=learning_rate, init=init)
    sim = SimulatedBatches(
        lenssim.sie_kappa_sampler(config=obs, device=dev),
        lenssim.sersic_source_sampler(obs, device=dev),
        obs,
        device=dev,
    )
    cfg = replace(cfg, initial_log10_kappa=constant_log10_kappa(sim))
    print(
        f"128^2 on-the-fly training: small preset, batch {batch}, lr {learning_rate:g}, init {init}, "
        f"first estimate at log10 kappa {cfg.initial_log10_kappa}, {steps} steps"
    )
    t0 = time.perf_counter()

    def progress(done, terms):
        if "val_log10_loss" in terms:
            print(
                f"  step {done:6d}  {time.perf_counter() - t0:6.0f} s  held-out log10 loss "
                f"{terms['val_log10_loss']:.3f}  constant predictor {terms['val_constant_log10_loss']:.3f}  "
                f"median chi2_nu {terms['val_chi2_nu']:.3g}",
                flush=True,
            )

    lensrim.train_rim(
        cfg,
        sim,
        out / "rim-128",
        steps=steps,
        device=dev,
        log_every=log_every,
        checkpoint_every=steps,
        validation_size=64,
        progress=progress,
    )
    last = json.loads((out / "rim-128" / "metrics.jsonl").read_text().splitlines()[-1])
    gap = last["val_constant_log10_loss"] - last["val_log10_loss"]
    print(f"after {steps} steps ({time.perf_counter() - t0:.0f} s): {gap:+.3f} dex against the constant predictor")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train-seconds", type=float, default=180.0)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--learning-rate", type=float, default=None, help="default: the small preset's")
    ap.add_argument("--init", default=None, choices=["torch", "glorot"], help="default: the small preset's")
    ap.add_argument("--out", type=Path, default=Path("gpu-session"))
    ap.add_argument("--skip-tests", action="store_true")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("gpu_session: no CUDA device")
    import lensrim

    small = lensrim.PRESETS["small"]
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}", flush=True)
    t0 = time.perf_counter()
    failed = 0 if args.skip_tests else tests()
    print(f"[tests: {'passed' if failed == 0 else 'FAILED'}, {time.perf_counter() - t0:.0f} s]", flush=True)
    rate = throughput()
    failed |= not torchrun_check(args.out)
    train(
        args.train_seconds,
        rate,
        args.out,
        args.batch_size,
        args.learning_rate or small.learning_rate,
        args.init or small.init,
    )
    print(f"[gpu session: {time.perf_counter() - t0:.0f} s]")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
