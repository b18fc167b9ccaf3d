"""lensprior on the CPU: the VAEs' and the denoiser's training steps and the VAEs' sampling, with
their weights channels-last (what lensprior's training and loaders now do on a CPU:
:func:`lenscore.runs.on_device`) against NCHW (the previous default), in the same run.

Each row alternates the two layouts round by round (the shared machine's speed drifts between
rounds), times every round directly and prints the median, the spread and the ratio. The models
are seeded and see the same batches. Never fails for being slow.

    python benchmarks/bench_prior.py [--rounds 7]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Callable
from dataclasses import replace

import torch

import lensprior
from lensprior.denoiser import Denoiser

LAYOUTS = (("NCHW (before)", torch.contiguous_format), ("channels-last", torch.channels_last))


def _spread(values: list[float]) -> str:
    return f"{1e3 * min(values):.1f}-{1e3 * max(values):.1f} ms"


def interleaved(calls: dict[str, Callable[[], object]], rounds: int) -> dict[str, list[float]]:
    """Seconds of each call, ``rounds`` times, the calls taking turns (one warm-up call each)."""
    for call in calls.values():
        call()
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(rounds):
        for name, call in calls.items():
            t0 = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - t0)
    return times


def _row(what: str, times: dict[str, list[float]], per: int, unit: str) -> str:
    rates = {name: per / statistics.median(t) for name, t in times.items()}
    first = next(iter(rates.values()))
    return f"{what}: " + "; ".join(
        f"{name} {rate:.1f} {unit} ({_spread(times[name])}, x{rate / first:.2f})" for name, rate in rates.items()
    )


def _training_step(model: torch.nn.Module, batch: torch.Tensor):
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    step = [0]

    def call():
        loss, _ = model.loss(batch, step[0], generator=torch.Generator().manual_seed(step[0]))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step[0] += 1

    return call


def _arms(build) -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    model = build()
    return {name: copy.deepcopy(model).to(memory_format=layout) for name, layout in LAYOUTS}


def bench_vae(kind: str, pixels: int, rounds: int, *, batch: int = 16, filters: int | None = None) -> list[str]:
    """A VAE's training step at ``batch`` and its sampling at 64 draws, both layouts. At 64^2 with
    ``filters`` 8 this is the demo's VAE (``lensrim.demo.DemoConfig``)."""
    config = lensprior.vae_config(kind, pixels=pixels, batch_size=batch)
    if filters is not None:
        config = replace(config, filters=filters, latent_dim=16, levels=min(config.levels, pixels.bit_length() - 3))
    x = torch.rand(batch, 1, pixels, pixels, generator=torch.Generator().manual_seed(1))
    x = x if kind == "source" else 0.05 + 2 * x  # kappa is positive
    arms = _arms(lambda: lensprior.VAE(config))
    size = f"{kind} VAE {pixels}^2, {config.filters} filters"
    train = interleaved({name: _training_step(m.train(), x) for name, m in arms.items()}, rounds)
    with torch.no_grad():
        draws = interleaved(
            {
                name: (lambda m=m.eval(): m.sample(64, generator=torch.Generator().manual_seed(2)))
                for name, m in arms.items()
            },
            rounds,
        )
    return [
        _row(f"{size}: training step, batch {batch}", train, batch, "maps/s"),
        _row(f"{size}: sampling, 64 draws", draws, 64, "draws/s"),
    ]


def bench_denoiser(rounds: int, batch: int = 16) -> str:
    """The denoiser's training step (its default config, 128^2 stamps), both layouts."""
    config = lensprior.DenoiserConfig()
    x = torch.rand(batch, 1, 128, 128, generator=torch.Generator().manual_seed(1))
    arms = _arms(lambda: Denoiser(config))
    train = interleaved({name: _training_step(m.train(), x) for name, m in arms.items()}, rounds)
    return _row(f"denoiser 128^2: training step, batch {batch}", train, batch, "stamps/s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()
    print(f"lensprior {lensprior.__version__}, torch {torch.__version__}, cpu ({torch.get_num_threads()} threads)")
    for kind in ("source", "kappa"):
        for line in bench_vae(kind, 64, args.rounds, filters=8):
            print(line, flush=True)
    for kind in ("source", "kappa"):
        for line in bench_vae(kind, 128, args.rounds):
            print(line, flush=True)
    print(bench_denoiser(args.rounds), flush=True)


if __name__ == "__main__":
    main()
