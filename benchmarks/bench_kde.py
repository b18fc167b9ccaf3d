"""Speed of the particle KDE (eq. 11) against the full-grid brute force (the original code's method).

Renders synthetic halos of about 20k and 1M particles onto 188^2 pixels (the default 71 kpc
grid) and prints the time of lenssim's truncated, separable Numba KDE, of the brute force
(every particle's Gaussian evaluated on every pixel, numpy) and their ratio, plus the largest
difference relative to the map's peak. At 1M particles the brute force is timed on a random 20k
subset and scaled linearly (its cost is exactly linear in the number of particles), which is
stated in the output. Never fails for being slow.

    python benchmarks/bench_kde.py [--sizes 20000 1000000]
"""

from __future__ import annotations

import argparse
import time

import numba
import numpy as np

import lenssim
from lenssim.data.kde import surface_density, surface_density_brute_force
from lenssim.data.tng import synthetic_particles


def _halo(n: int, seed: int = 0):
    parts = synthetic_particles(seed, n_dark=int(0.7 * n), n_stars=int(0.2 * n), n_gas=int(0.1 * n) - 1)
    return parts


def _best(fn, repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def bench_one(size: int, subset: int, n: int, fov: float, rng: np.random.Generator) -> str:
    parts = _halo(size)
    t0 = time.perf_counter()
    sl = lenssim.smoothing_lengths(parts.positions)
    t_nn = time.perf_counter() - t0
    pos, m = parts.positions[:, :2], parts.masses
    surface_density(pos[:100], m[:100], sl[:100], n=n, fov=fov)  # compile outside the timing
    t_fast = _best(lambda: surface_density(pos, m, sl, n=n, fov=fov, normalize=False))
    t_norm = _best(lambda: surface_density(pos, m, sl, n=n, fov=fov))
    idx = np.arange(len(parts)) if len(parts) <= subset else rng.choice(len(parts), subset, replace=False)
    t_sub = _best(lambda: surface_density_brute_force(pos[idx], m[idx], sl[idx], n=n, fov=fov), repeats=1)
    t_slow = t_sub * len(parts) / len(idx)  # the brute force is exactly linear in the particles
    slow = surface_density_brute_force(pos[idx], m[idx], sl[idx], n=n, fov=fov)
    fast = surface_density(pos[idx], m[idx], sl[idx], n=n, fov=fov, normalize=False)
    how = "measured" if len(idx) == len(parts) else f"scaled from {len(idx)} particles"
    on = "" if len(idx) == len(parts) else " on the subset"
    return (
        f"{len(parts):>8d} particles: KDE {t_fast * 1e3:8.1f} ms (normalised {t_norm * 1e3:8.1f} ms) | "
        f"brute force {t_slow:8.2f} s ({how}) | speed-up x{t_slow / t_fast:,.0f} | "
        f"max |diff| / peak{on} {np.abs(fast - slow).max() / slow.max():.1e} | "
        f"64-NN smoothing lengths {t_nn:.2f} s"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[20_000, 1_000_000])
    ap.add_argument("--subset", type=int, default=20_000, help="particles timed by brute force for larger halos")
    args = ap.parse_args()

    cfg = lenssim.KappaMapConfig()
    n, fov = cfg.render_pixels, cfg.render_fov()
    print(
        f"lenssim {lenssim.__version__}, numba {numba.__version__} ({numba.get_num_threads()} threads); "
        f"{n}^2 pixels over {fov:.1f} kpc"
    )
    rng = np.random.default_rng(0)
    for size in args.sizes:
        print(bench_one(size, args.subset, n, fov, rng), flush=True)


if __name__ == "__main__":
    main()
