"""Adaptive Gaussian kernel density estimate of projected particles (paper eq. 11, SPEC 2.1).

    Sigma(x) = sum_i m_i / (2 pi l_i^2) exp(-|x - x_i|^2 / (2 l_i^2))

evaluated at the pixel centres of an ``n x n`` grid. The sum over particles is the hot loop: it
runs in Numba, in parallel over a fixed number of particle blocks (each with its own grid, added
in a fixed order, so the result does not depend on the number of threads), with each kernel
truncated to a square of half-width ``t * l_i`` where ``t`` is chosen so that the mass outside
the square is ``truncation`` of the particle's (4.06 l for the default 1e-4). A square window
makes the Gaussian separable: one exponential per row and per column instead of one per pixel.

With ``normalize=True`` (default) each kernel's samples are scaled so that they sum exactly to
the particle's mass over its whole window, including the part that falls outside the grid:
mass is conserved exactly for kernels inside the grid (and a kernel narrower than a pixel, which
pixel-centre sampling would miss or inflate, lands in the pixels around it). With
``normalize=False`` the formula is evaluated as written, which is what the brute-force reference
(:func:`surface_density_brute_force`, every particle on every pixel, the original code's
method) computes.
"""

from __future__ import annotations

import math

import numpy as np

from lenssim._checks import check_positive, check_size

__all__ = ["smoothing_lengths", "surface_density", "surface_density_brute_force", "truncation_radius"]

N_BLOCKS = 16
"""Fixed number of particle blocks (private grids): results are independent of the thread count."""


def truncation_radius(truncation: float) -> float:
    """Half-width t (in units of l) of the square holding all but ``truncation`` of a 2-D Gaussian.

    Solves erf(t / sqrt 2)^2 = 1 - truncation by bisection.
    """
    if not 0 < truncation < 1:
        raise ValueError(f"truncation must lie in (0, 1), got {truncation}")
    lo, hi = 0.0, 40.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if math.erf(mid / math.sqrt(2)) ** 2 < 1 - truncation:
            lo = mid
        else:
            hi = mid
    return hi


def smoothing_lengths(positions3d: np.ndarray, k: int = 64, factor: float = math.sqrt(103 / 1024)) -> np.ndarray:
    """Kernel widths ``l_i = factor * D_k,i`` with ``D_k,i`` the 3-D distance to the k-th neighbour.

    The neighbours come from SciPy's k-d tree, queried for the k-th alone on every core this
    process may run on (:func:`lenscore.cpu.usable_cores`, not the machine's count): the
    same distances to the bit as scikit-learn's k-d tree (the previous path), about twice as fast
    (``benchmarks/bench_kde.py``: 13.4 s against 27.9 s for a million particles on 2 cores), and
    without the previous path's ~2 KB per particle of all k neighbours' distances and indices
    (its peak memory rose by 2.0 GB for a million particles; this one's by none measurable).

    Parameters
    ----------
    positions3d
        ``(P, 3)`` particle positions (any length unit; the result has the same unit).
    k
        Neighbour rank (the particle itself not counted; a particle at the same position is); 64
        in the paper.
    factor
        sqrt(103/1024) in the paper (the original code used sqrt(103/1120)).

    Returns
    -------
    numpy.ndarray
        ``(P,)`` float64.
    """
    from scipy.spatial import KDTree

    from lenscore.cpu import usable_cores

    pos = np.asarray(positions3d, dtype=np.float64)
    if pos.ndim != 2 or pos.shape[1] != 3:
        raise ValueError(f"positions3d must have shape (P, 3), got {pos.shape}")
    if not np.isfinite(pos).all():
        raise ValueError("positions3d contains NaN or infinite values")
    if isinstance(k, bool) or not (isinstance(k, int | np.integer) and k >= 1):
        raise ValueError(f"k must be a positive integer, got {k!r}")
    if pos.shape[0] <= k:
        raise ValueError(f"need more than k = {k} particles for a {k}-th neighbour, got {pos.shape[0]}")
    # each particle is its own nearest point (distance 0): its k-th neighbour is the (k+1)-th point
    dist, _ = KDTree(pos).query(pos, k=[int(k) + 1], workers=usable_cores())
    return factor * dist[:, 0]


def _numba_kernel():
    import numba

    @numba.njit(parallel=True, cache=True, fastmath=False)
    def kde(px, py, m, sl, n, left, step, t, normalize, n_blocks):  # pragma: no cover - compiled
        out = np.zeros((n_blocks, n, n))
        npart = px.shape[0]
        for blk in numba.prange(n_blocks):
            grid = out[blk]
            ex = np.empty(n)
            ey = np.empty(n)
            for p in range(blk * npart // n_blocks, (blk + 1) * npart // n_blocks):
                x, y, l_ = px[p], py[p], sl[p]
                # continuous pixel coordinates: centre of pixel j is at u = j
                u = (x - left) / step - 0.5
                v = (y - left) / step - 0.5
                half = t * l_ / step
                j0 = int(math.ceil(u - half))
                j1 = int(math.floor(u + half))
                i0 = int(math.ceil(v - half))
                i1 = int(math.floor(v + half))
                if j1 < j0 or i1 < i0 or half < 0.5:
                    # narrower than a pixel: no or too few centres to sample it; deposit the
                    # mass in the nearest pixel (normalised mode) or skip (formula mode, where
                    # the sampled value is what it is)
                    if normalize:
                        jn, in_ = int(math.floor(u + 0.5)), int(math.floor(v + 0.5))
                        if 0 <= jn < n and 0 <= in_ < n:
                            grid[in_, jn] += m[p] / (step * step)
                        continue
                    if j1 < j0 or i1 < i0:
                        continue
                if j1 < 0 or i1 < 0 or j0 >= n or i0 >= n:
                    if not normalize:
                        continue
                inv = step * step / (2.0 * l_ * l_)
                # normalisation over the full (unclipped) window
                if normalize:
                    sx = 0.0
                    for j in range(j0, j1 + 1):
                        sx += math.exp(-((j - u) ** 2) * inv)
                    sy = 0.0
                    for i in range(i0, i1 + 1):
                        sy += math.exp(-((i - v) ** 2) * inv)
                    w = m[p] / (sx * sy * step * step)
                else:
                    w = m[p] / (2.0 * math.pi * l_ * l_)
                a0, a1 = max(j0, 0), min(j1, n - 1)
                b0, b1 = max(i0, 0), min(i1, n - 1)
                if a1 < a0 or b1 < b0:
                    continue
                for j in range(a0, a1 + 1):
                    ex[j] = math.exp(-((j - u) ** 2) * inv)
                for i in range(b0, b1 + 1):
                    ey[i] = w * math.exp(-((i - v) ** 2) * inv)
                for i in range(b0, b1 + 1):
                    wy = ey[i]
                    for j in range(a0, a1 + 1):
                        grid[i, j] += wy * ex[j]
        total = np.zeros((n, n))
        for blk in range(n_blocks):
            total += out[blk]
        return total

    return kde


_KDE = None


def _check_particles(positions, masses, smoothing):
    pos = np.ascontiguousarray(positions, dtype=np.float64)
    m = np.ascontiguousarray(masses, dtype=np.float64)
    sl = np.ascontiguousarray(smoothing, dtype=np.float64)
    if pos.ndim != 2 or pos.shape[1] != 2:
        raise ValueError(f"positions must have shape (P, 2), got {pos.shape}")
    if m.shape != (pos.shape[0],) or sl.shape != (pos.shape[0],):
        raise ValueError(f"masses {m.shape} and smoothing {sl.shape} must have shape ({pos.shape[0]},)")
    for name, a in (("positions", pos), ("masses", m), ("smoothing", sl)):
        if not np.isfinite(a).all():
            raise ValueError(f"{name} contains NaN or infinite values")
    if (m < 0).any():
        raise ValueError("masses must be non-negative")
    if (sl <= 0).any():
        raise ValueError("smoothing lengths must be positive")
    return pos, m, sl


def surface_density(
    positions: np.ndarray,
    masses: np.ndarray,
    smoothing: np.ndarray,
    *,
    n: int,
    fov: float,
    truncation: float = 1e-4,
    normalize: bool = True,
) -> np.ndarray:
    """Surface density of projected particles on an ``n x n`` pixel-centred grid (eq. 11).

    Parameters
    ----------
    positions
        ``(P, 2)`` projected positions (x, y) in kpc, centred on the grid's centre.
    masses
        ``(P,)`` masses (e.g. Msun).
    smoothing
        ``(P,)`` kernel widths l_i, kpc.
    n, fov
        Pixels per side and side length (kpc).
    truncation
        Mass fraction of each kernel neglected by its square window.
    normalize
        Scale each kernel's samples to sum to its mass (see the module docstring).

    Returns
    -------
    numpy.ndarray
        ``(n, n)`` float64 mass per unit area (e.g. Msun / kpc^2), ``[row = y, col = x]``.
    """
    global _KDE
    pos, m, sl = _check_particles(positions, masses, smoothing)
    check_size("n", n)
    check_positive("fov", fov)
    if _KDE is None:
        _KDE = _numba_kernel()
    t = truncation_radius(truncation)
    return _KDE(pos[:, 0].copy(), pos[:, 1].copy(), m, sl, n, -fov / 2, fov / n, t, normalize, N_BLOCKS)


def surface_density_brute_force(
    positions: np.ndarray, masses: np.ndarray, smoothing: np.ndarray, *, n: int, fov: float, block: int = 64
) -> np.ndarray:
    """Eq. 11 with every particle's Gaussian evaluated on every pixel: the original code's method.

    No truncation, no normalisation, numpy; the slow reference for tests and benchmarks.
    """
    pos, m, sl = _check_particles(positions, masses, smoothing)
    step = fov / n
    c = -fov / 2 + step * (np.arange(n) + 0.5)
    X, Y = np.meshgrid(c, c)
    out = np.zeros((n, n))
    for s in range(0, pos.shape[0], block):
        x, y = pos[s : s + block, 0, None, None], pos[s : s + block, 1, None, None]
        l2 = sl[s : s + block, None, None] ** 2
        d2 = (X - x) ** 2 + (Y - y) ** 2
        out += (m[s : s + block, None, None] / (2 * np.pi * l2) * np.exp(-d2 / (2 * l2))).sum(0)
    return out
