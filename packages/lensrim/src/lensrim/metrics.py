"""Evaluation of reconstructions (section 5; SPEC section 7).

- chi2_nu per example (from :mod:`lenssim`), summarised before and after fine-tuning;
- the log10 moments of the eq. 7 loss over a test set (the layout of the paper's Table 4);
- the constant predictor, the reference every loss is judged against: source 0 and the single
  constant log10 kappa that minimises eq. 7 on the same lenses;
- the coherence spectrum gamma(k) = Re P12(k) / sqrt(P11(k) P22(k)) of a reconstruction against
  the truth in radial wavenumber bins. The real part of the cross spectrum keeps phase errors
  (a map against its negative has gamma = -1, against a shifted copy gamma < 1); the modulus
  taken by the original code would call both perfect.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

__all__ = [
    "EVAL_CHUNK",
    "RESIDUAL_BLOCK",
    "ConstantReference",
    "block_scan",
    "constant_reference",
    "coherence_spectrum",
    "coherence_bands",
    "log_loss_moments",
    "chi2_summary",
    "chunks",
    "median",
    "residual_block",
    "snr",
]


EVAL_CHUNK = 256
"""Examples per pass of the per-example metrics: their temporaries (FFTs and sums in float64) then
take a few hundred MB at 128^2 however many lenses a test set holds, not several times its size."""


RESIDUAL_BLOCK = 4
"""The block side in pixels of the binned chi2_nu that reports and FITS copies give beside chi2_nu
(:func:`lenssim.binned_chi2_nu`): about 1 when the residuals are noise, above chi2_nu when they are
structure. 4 x 4 blocks leave 256 of them on a 64^2 image, so pure noise scatters it by +-0.09."""


def residual_block(pixels: int) -> int:
    """The binned chi2_nu's block side on an image of ``pixels`` a side: :data:`RESIDUAL_BLOCK`, or
    the whole image where it is smaller."""
    return min(RESIDUAL_BLOCK, pixels)


def block_scan(pixels: int) -> tuple[int, ...]:
    """The block sides a report scans on an image of ``pixels`` a side: 1 (chi2_nu itself), 2, 4, ...
    while at least 16 blocks fit, and :func:`residual_block` always."""
    sides = [b for b in (1, 2, 4, 8, 16, 32, 64) if b <= pixels // 4]
    return tuple(sorted({*sides, residual_block(pixels)}))


def chunks(n: int, size: int | None = None) -> list[slice]:
    """Consecutive slices of at most ``size`` (default :data:`EVAL_CHUNK`) of ``n`` examples."""
    size = EVAL_CHUNK if size is None else size
    return [slice(i, min(i + size, n)) for i in range(0, n, size)] or [slice(0, 0)]


def _maps(x: torch.Tensor) -> torch.Tensor:
    x = torch.as_tensor(x)
    if x.dim() == 4 and x.shape[1] == 1:
        x = x[:, 0]
    if x.dim() == 2:
        x = x.unsqueeze(0)
    if x.dim() != 3 or x.shape[-1] != x.shape[-2]:
        raise ValueError(f"expected square maps (B, 1, N, N), (B, N, N) or (N, N), got {tuple(x.shape)}")
    return x


def coherence_spectrum(
    prediction: torch.Tensor, truth: torch.Tensor, *, fov: float = 1.0, bins: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Phase-aware coherence of ``prediction`` against ``truth`` per radial wavenumber bin.

    Maps are ``(B, 1, N, N)`` (or ``(B, N, N)``, ``(N, N)``) on a field of side ``fov``. The
    ``bins`` (default N/2) equal-width annuli cover 0 < |k| <= the Nyquist wavenumber; the
    constant (k = 0) mode is left out. Returns the bin centres in cycles per unit of ``fov`` and
    gamma ``(B, bins)``; a bin with no power in either map is NaN.
    """
    a, b = _maps(prediction), _maps(truth)
    if a.shape != b.shape:
        raise ValueError(f"prediction {tuple(a.shape)} and truth {tuple(b.shape)} differ in shape")
    n = a.shape[-1]
    bins = n // 2 if bins is None else bins
    k = torch.fft.fftfreq(n, d=1.0 / n, dtype=torch.float64)  # integer wavenumbers
    kr = torch.sqrt(k[:, None] ** 2 + k[None, :] ** 2)
    edges = torch.linspace(0.0, n / 2, bins + 1, dtype=torch.float64)
    idx = torch.bucketize(kr, edges, right=False) - 1  # (edges[i], edges[i+1]] -> i
    inside = (kr > 0) & (idx >= 0) & (idx < bins)
    idx = idx[inside]

    def binned(v: torch.Tensor) -> torch.Tensor:
        return torch.zeros(v.shape[0], bins, dtype=v.dtype).index_add_(1, idx, v)

    def gamma_of(rows: slice) -> torch.Tensor:  # in chunks of examples: the float64 FFTs stay small
        fa, fb = torch.fft.fft2(a[rows].double()), torch.fft.fft2(b[rows].double())
        cross = (fa * fb.conj()).real[:, inside]
        denom = torch.sqrt(binned(fa.abs().pow(2)[:, inside]) * binned(fb.abs().pow(2)[:, inside]))
        return torch.where(denom > 0, binned(cross) / denom.clamp_min(1e-300), torch.full_like(denom, math.nan))

    gamma = torch.cat([gamma_of(rows) for rows in chunks(a.shape[0])])
    centres = 0.5 * (edges[1:] + edges[:-1]) / fov
    return centres.numpy(), gamma.numpy()


def coherence_bands(gamma: np.ndarray, *, interval: float = 0.68) -> dict[str, list[float]]:
    """Mean and central ``interval`` band of coherence spectra ``(B, bins)`` over the examples."""
    lo, hi = 50 * (1 - interval), 50 * (1 + interval)
    return {
        "mean": np.nanmean(gamma, axis=0).tolist(),
        "low": np.nanpercentile(gamma, lo, axis=0).tolist(),
        "high": np.nanpercentile(gamma, hi, axis=0).tolist(),
    }


def log_loss_moments(loss: torch.Tensor | np.ndarray) -> dict[str, float]:
    """Mean and standard deviation (ddof = 1) of log10 of per-example losses (Table 4)."""
    arr = np.asarray(loss, dtype=np.float64).ravel()
    if arr.size == 0 or (arr <= 0).any() or not np.isfinite(arr).all():
        raise ValueError("losses must be positive and finite to take their log10")
    logs = np.log10(arr)
    return {"mu": float(logs.mean()), "sigma": float(logs.std(ddof=1)) if arr.size > 1 else 0.0}


def median(values: torch.Tensor) -> torch.Tensor:
    """The median of all ``values`` as numpy and the reports define it (the mean of the two middle
    values of an even count), on their device: ``Tensor.median`` returns the lower one, which over
    a batch of 4 is the second best."""
    return torch.quantile(values.detach().flatten().double(), 0.5)


def chi2_summary(chi2_nu: torch.Tensor | np.ndarray) -> dict[str, float]:
    """Median, mean, central 68 % and the fraction at noise level (chi2_nu <= 1, <= 1.1)."""
    c = np.asarray(chi2_nu, dtype=np.float64).ravel()
    return {
        "median": float(np.median(c)),
        "mean": float(c.mean()),
        "p16": float(np.percentile(c, 16)),
        "p84": float(np.percentile(c, 84)),
        "fraction_at_or_below_1": float((c <= 1).mean()),
        "fraction_at_or_below_1.1": float((c <= 1.1).mean()),
    }


def snr(noise_sigma: torch.Tensor | np.ndarray) -> np.ndarray:
    """The paper's peak SNR, 1 / sigma (sources peak at 1)."""
    return 1.0 / np.asarray(noise_sigma, dtype=np.float64)


@dataclass(frozen=True)
class ConstantReference:
    """The constant predictor on a set of lenses: ``log10_kappa`` is the constant, ``loss``
    the eq. 7 loss of (source 0, that constant) per lens ``(B,)``."""

    log10_kappa: float
    loss: torch.Tensor

    @property
    def log10_loss(self) -> float:
        """Mean over the lenses of log10 of the loss (Table 4's statistic)."""
        return float(torch.log10(self.loss.double()).mean())


def constant_reference(source: torch.Tensor, kappa: torch.Tensor) -> ConstantReference:
    """Source 0 and the one constant log10 kappa c that minimises the mean eq. 7 loss over
    the lenses ``source, kappa (B, 1, ., .)``.

    The kappa term of lens b is sum_i w_bi (c - xi_bi)^2 with weights summing to 1, so its mean
    over the lenses is least at c = mean_b sum_i w_bi xi_bi (closed form); the source term of
    a zero source is the mean of s^2. A model that does not beat this has learned nothing
    beyond the mean of the training set.
    """
    if source.dim() != 4 or kappa.dim() != 4 or source.shape[0] != kappa.shape[0]:
        raise ValueError(f"expected (B, 1, N, N) source and kappa, got {tuple(source.shape)}, {tuple(kappa.shape)}")

    def weights(rows: slice) -> tuple[torch.Tensor, torch.Tensor]:  # in chunks: float64 copies stay small
        k = kappa[rows, 0].double().clamp_min(1e-6)
        w = torch.sqrt(k)
        return w / w.sum(dim=(-1, -2), keepdim=True), torch.log10(k)

    def loss(rows: slice, c: float) -> torch.Tensor:
        w, xi = weights(rows)
        return source[rows, 0].double().pow(2).mean(dim=(-1, -2)) + (w * (c - xi).pow(2)).sum(dim=(-1, -2))

    parts = chunks(kappa.shape[0])
    c = float(torch.cat([(w * xi).sum(dim=(-1, -2)) for w, xi in map(weights, parts)]).mean())
    return ConstantReference(c, torch.cat([loss(rows, c) for rows in parts]).to(source.dtype))
