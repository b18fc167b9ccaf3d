"""Speed of the particle KDE (eq. 11) against the full-grid brute force (the original code's method).

Renders synthetic halos of about 20k and 1M particles onto 188^2 pixels (the default 71 kpc
grid) and prints the time of lenssim's truncated, separable Numba KDE (median of 5 calls and their
range), of the brute force (every particle's Gaussian evaluated on every pixel, numpy; timed
once) and their ratio, plus the largest
difference relative to the map's peak. At 1M particles the brute force is timed on a random 20k
subset and scaled linearly (its cost is exactly linear in the number of particles), which is
stated in the output. Then the 64-neighbour smoothing lengths: lenssim's (SciPy's k-d tree) and,
when scikit-learn is installed, the previous path (scikit-learn's k-d tree) in alternating
rounds of the same run, with the median, the spread, the ratio and whether they agree to the bit.
Never fails for being slow.

    python benchmarks/bench_kde.py [--sizes 20000 1000000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import numba
import numpy as np

import lenssim
from lenssim.data.kde import surface_density, surface_density_brute_force
from lenssim.data.tng import synthetic_particles


def _halo(n: int, seed: int = 0):
    parts = synthetic_particles(seed, n_dark=int(0.7 * n), n_stars=int(0.2 * n), n_gas=int(0.1 * n) - 1)
    return parts


def _times(fn, repeats: int) -> list[float]:
    """Seconds of ``repeats`` calls, each timed directly."""
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def _ms(times: list[float]) -> str:
    """Median milliseconds and the range."""
    return f"{1e3 * statistics.median(times):8.1f} ms [{1e3 * min(times):.1f}-{1e3 * max(times):.1f}]"


def _sklearn_smoothing_lengths(positions3d: np.ndarray, k: int = 64) -> np.ndarray | None:
    """The previous path (scikit-learn's k-d tree, all k neighbours on every core), or None."""
    try:
        from sklearn.neighbors import NearestNeighbors
    except ImportError:
        return None
    nn = NearestNeighbors(n_neighbors=k + 1, algorithm="kd_tree", n_jobs=-1).fit(positions3d)
    dist, _ = nn.kneighbors(positions3d)
    return math.sqrt(103 / 1024) * dist[:, k]


def bench_smoothing_lengths(positions3d: np.ndarray, rounds: int) -> tuple[np.ndarray, str]:
    """lenssim's smoothing lengths, and a line timing them against the previous path (alternating)."""
    ours, theirs = [], []
    sl = ref = None
    for _ in range(rounds):
        t0 = time.perf_counter()
        sl = lenssim.smoothing_lengths(positions3d)
        ours.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        ref = _sklearn_smoothing_lengths(positions3d)
        if ref is not None:
            theirs.append(time.perf_counter() - t0)
    line = f"64-NN smoothing lengths {_spread(ours)}"
    if ref is None:
        return sl, line + " | scikit-learn not installed: no reference"
    same = "the same to the bit" if np.array_equal(sl, ref) else f"max rel diff {np.max(np.abs(sl - ref) / ref):.1e}"
    ratio = statistics.median(theirs) / statistics.median(ours)
    return sl, f"{line} | scikit-learn's k-d tree (previous path) {_spread(theirs)} | x{ratio:.2f}, {same}"


def _spread(times: list[float]) -> str:
    if len(times) == 1:
        return f"{times[0]:.2f} s (1 round)"
    return f"{statistics.median(times):.2f} s ({min(times):.2f}-{max(times):.2f}, median of {len(times)})"


def bench_one(size: int, subset: int, n: int, fov: float, rng: np.random.Generator, rounds: int) -> str:
    parts = _halo(size)
    sl, nn_line = bench_smoothing_lengths(parts.positions, rounds)
    pos, m = parts.positions[:, :2], parts.masses
    surface_density(pos[:100], m[:100], sl[:100], n=n, fov=fov)  # compile outside the timing
    fast_times = _times(lambda: surface_density(pos, m, sl, n=n, fov=fov, normalize=False), 5)
    norm_times = _times(lambda: surface_density(pos, m, sl, n=n, fov=fov), 5)
    t_fast = statistics.median(fast_times)
    idx = np.arange(len(parts)) if len(parts) <= subset else rng.choice(len(parts), subset, replace=False)
    (t_sub,) = _times(lambda: surface_density_brute_force(pos[idx], m[idx], sl[idx], n=n, fov=fov), 1)
    t_slow = t_sub * len(parts) / len(idx)  # the brute force is exactly linear in the particles
    slow = surface_density_brute_force(pos[idx], m[idx], sl[idx], n=n, fov=fov)
    fast = surface_density(pos[idx], m[idx], sl[idx], n=n, fov=fov, normalize=False)
    how = "measured" if len(idx) == len(parts) else f"scaled from {len(idx)} particles"
    on = "" if len(idx) == len(parts) else " on the subset"
    return (
        f"{len(parts):>8d} particles: KDE {_ms(fast_times)} (normalised {_ms(norm_times)}; median of 5) | "
        f"brute force {t_slow:8.2f} s ({how}, once) | speed-up x{t_slow / t_fast:,.0f} | "
        f"max |diff| / peak{on} {np.abs(fast - slow).max() / slow.max():.1e}\n"
        f"{'':>8s}            {nn_line}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[20_000, 1_000_000])
    ap.add_argument("--subset", type=int, default=20_000, help="particles timed by brute force for larger halos")
    ap.add_argument(
        "--rounds", type=int, default=3, help="alternating rounds of the smoothing lengths (1 above 100k particles)"
    )
    args = ap.parse_args()

    cfg = lenssim.KappaMapConfig()
    n, fov = cfg.render_pixels, cfg.render_fov()
    print(
        f"lenssim {lenssim.__version__}, numba {numba.__version__} ({numba.get_num_threads()} threads); "
        f"{n}^2 pixels over {fov:.1f} kpc"
    )
    rng = np.random.default_rng(0)
    for size in args.sizes:
        rounds = args.rounds if size <= 100_000 else 1
        print(bench_one(size, args.subset, n, fov, rng, rounds), flush=True)


if __name__ == "__main__":
    main()
