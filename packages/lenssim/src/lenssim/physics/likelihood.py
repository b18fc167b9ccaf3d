"""Noise, the Gaussian log-likelihood and its gradients (eq. 1 and 3, SPEC section 1).

All reductions are per example: a ``(B, 1, N, N)`` image gives ``(B,)`` values, and the
gradient of their sum with respect to a batch of parameters is the batch of per-example
gradients, since examples do not interact.

A noise map may hold ``+inf`` at pixels without data (masked: a cosmic ray, a chip gap, the edge
of a drizzled frame): they weigh nothing in chi^2 and its gradient, ``chi2_nu`` counts only the
pixels with data, and ``add_noise`` leaves them as they are.
"""

from __future__ import annotations

import math
import warnings
from typing import Literal

import torch

from lenssim._checks import check_bchw
from lenssim.physics.psf import SeparablePSF
from lenssim.physics.raytrace import IMAGE_FOV, SOURCE_FOV, _lens_image_vjp, lens_image

__all__ = [
    "add_noise",
    "binned_chi2_nu",
    "chi_squared",
    "chi2_nu",
    "data_pixels",
    "likelihood_gradient",
    "log_likelihood",
    "reduced_chi_squared",
]


def _is_map(sigma: torch.Tensor | float, like: torch.Tensor) -> bool:
    """Whether ``sigma`` is a noise map (one sigma per pixel of ``like``), not one per example."""
    return isinstance(sigma, torch.Tensor) and sigma.dim() == like.dim() and sigma.dim() > 1


def _per_example(sigma: torch.Tensor | float, like: torch.Tensor) -> torch.Tensor:
    s = torch.as_tensor(sigma, dtype=like.dtype, device=like.device)
    if _is_map(s, like):
        if s.shape[1:] != like.shape[1:] or s.shape[0] not in (1, like.shape[0]):
            raise ValueError(f"a noise map must have the image's shape {tuple(like.shape)}, got {tuple(s.shape)}")
        return s
    if s.dim() == 0:
        s = s.expand(like.shape[0])
    if s.dim() != 1 or s.shape[0] not in (1, like.shape[0]):
        raise ValueError(
            f"noise sigma must be a scalar, (B,) with B = {like.shape[0]} or a noise map, got {tuple(s.shape)}"
        )
    return s.reshape(-1, *([1] * (like.dim() - 1)))


def add_noise(
    image: torch.Tensor, sigma: torch.Tensor | float, *, generator: torch.Generator | None = None
) -> torch.Tensor:
    """``image + eta`` with white Gaussian ``eta`` of standard deviation ``sigma`` per example.

    ``sigma`` is a scalar, ``(B,)`` or a noise map (nothing added where it is infinite);
    ``generator`` (on ``image``'s device) makes it reproducible.
    """
    s = _per_example(sigma, image)
    noise = s * torch.randn(image.shape, generator=generator, dtype=image.dtype, device=image.device)
    if _is_map(sigma, image):  # its masked (infinite) pixels get no noise
        noise = torch.where(torch.isfinite(s), noise, 0.0)
    return image + noise


def chi_squared(observation: torch.Tensor, model: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
    """chi^2 = sum_i (y_i - F(x)_i)^2 / sigma_i^2 per example, ``(B,)``.

    ``sigma`` is a scalar, one value per example ``(B,)``, or a noise map of the image's shape.
    """
    if observation.shape != model.shape:
        raise ValueError(f"observation {tuple(observation.shape)} and model {tuple(model.shape)} differ in shape")
    s = _per_example(sigma, observation)
    r = (observation - model) / s
    return r.pow(2).flatten(1).sum(dim=1)


def data_pixels(sigma: torch.Tensor | float, like: torch.Tensor) -> torch.Tensor:
    """The number of pixels with data in each example of ``like``, ``(B,)``: all of them, except
    where a noise map is infinite (masked)."""
    if _is_map(sigma, like):
        s = _per_example(sigma, like)
        return torch.isfinite(s).flatten(1).sum(dim=1).expand(like.shape[0]).to(like.dtype)
    return torch.full((like.shape[0],), float(like[0].numel()), dtype=like.dtype, device=like.device)


def chi2_nu(observation: torch.Tensor, model: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
    """chi^2_nu = chi^2 / (the number of image pixels with data: N^2 unless a noise map masks
    some), ``(B,)``: 1 where the residuals are the noise."""
    chi2 = chi_squared(observation, model, sigma)
    if _is_map(sigma, observation):
        return chi2 / data_pixels(sigma, observation)
    return chi2 / observation[0].numel()


def binned_chi2_nu(
    observation: torch.Tensor,
    model: torch.Tensor,
    sigma: torch.Tensor | float,
    *,
    block: int = 4,
    correlation: torch.Tensor | None = None,
) -> torch.Tensor:
    """chi2_nu of the residual summed in ``block`` x ``block`` pixel blocks, each sum over its own
    noise, ``(B,)``: whether what chi2_nu leaves is noise or structure.

    A block's residual sum R over its data pixels has variance V = sum sigma_i^2 when the residuals
    are white noise, so the mean of R^2 / V over the blocks is 1 at any block size, and equals
    chi2_nu where the noise is under- or overestimated by one factor. Structure smooth on the
    block's scale (a missed arc, a wrong total flux) adds up coherently instead: a residual d per
    pixel adds d^2 / sigma^2 to chi2_nu but block^2 d^2 / sigma^2 here, while structure that
    alternates within a block (a checkerboard) cancels. Masked pixels (infinite sigma) and blocks
    without data are left out; the last row and column of blocks are partial when ``block`` does
    not divide the image. ``block`` 1 is chi2_nu.

    Correlated noise (a drizzled or resampled frame) adds up too, and would read as structure.
    ``correlation`` gives it: the noise's correlation coefficient between pixels ``(dy, dx)``
    apart, ``(2L + 1, 2L + 1)`` (or one per example, ``(B, 2L + 1, 2L + 1)``) with offset 0 at the
    centre (1 there), 0 beyond L pixels; V is then sum_ij rho(i - j) sigma_i sigma_j over the
    block's pairs, and residuals that are that noise give about 1 again
    (:func:`lenssim.io.fits.sky_correlation` measures it from the sky).
    """
    if observation.shape != model.shape:
        raise ValueError(f"observation {tuple(observation.shape)} and model {tuple(model.shape)} differ in shape")
    if observation.dim() < 3:
        raise ValueError(f"expected a batch of images (B, ..., H, W), got {tuple(observation.shape)}")
    height, width = observation.shape[-2:]
    if isinstance(block, bool) or not isinstance(block, int) or not 1 <= block <= min(height, width):
        raise ValueError(f"block must be a whole number of pixels from 1 to {min(height, width)}, got {block!r}")
    std = _per_example(sigma, observation).expand_as(observation)
    data = torch.isfinite(std)
    pad = (0, -width % block, 0, -height % block)  # partial blocks: padded with pixels without data
    r = torch.nn.functional.pad(torch.where(data, observation - model, 0.0), pad)
    s = torch.nn.functional.pad(torch.where(data, std, 0.0), pad)
    blocks = (*s.shape[:-2], s.shape[-2] // block, block, s.shape[-1] // block, block)

    def block_sums(x: torch.Tensor) -> torch.Tensor:
        return x.reshape(blocks).sum(dim=(-3, -1)).flatten(1)

    total, white = block_sums(r), block_sums(s * s)
    var = white if correlation is None else _correlated_block_variance(s.reshape(blocks), correlation, white)
    has_data = white > 0
    chi2 = torch.where(has_data, total.pow(2) / var.clamp_min(torch.finfo(var.dtype).tiny), 0.0).sum(dim=1)
    return chi2 / has_data.sum(dim=1).clamp_min(1).to(chi2.dtype)


def _correlated_block_variance(s: torch.Tensor, correlation: torch.Tensor, white: torch.Tensor) -> torch.Tensor:
    """The variance of each block's sum of noise with sigmas ``s`` (``(B, ..., rows, block, columns,
    block)``, 0 without data) correlated by ``correlation`` (see :func:`binned_chi2_nu`), flattened
    per example like ``white``, the sum of the sigma^2 (the offset-0 term)."""
    batch, block = s.shape[0], s.shape[-1]
    rho = torch.as_tensor(correlation, dtype=s.dtype, device=s.device)
    given = tuple(rho.shape)
    if rho.dim() == 2:
        rho = rho.unsqueeze(0)
    k = rho.shape[-1]
    if rho.dim() != 3 or rho.shape[-2] != k or k % 2 == 0 or rho.shape[0] not in (1, batch):
        raise ValueError(f"correlation must be (2L + 1, 2L + 1) or ({batch}, 2L + 1, 2L + 1), got {given}")
    lags = k // 2
    if (
        not torch.isfinite(rho).all()
        or (rho.abs() > 1).any()
        or not torch.allclose(rho[:, lags, lags], rho.new_ones(1))
    ):
        raise ValueError("correlation must hold coefficients in [-1, 1], with 1 at the centre (offset 0)")
    rho = rho.expand(batch, k, k).reshape(batch, k, k, *([1] * (s.dim() - 1)))
    var = white.clone()
    reach = min(lags, block - 1)  # offsets beyond the block pair no pixels of it
    for dy in range(-reach, reach + 1):
        for dx in range(-reach, reach + 1):
            if dy == 0 and dx == 0:
                continue
            a = s[..., max(0, -dy) : block - max(0, dy), :, max(0, -dx) : block - max(0, dx)]
            b = s[..., max(0, dy) : block - max(0, -dy), :, max(0, dx) : block - max(0, -dx)]
            var += (rho[:, lags + dy, lags + dx] * (a * b)).sum(dim=(-3, -1)).flatten(1)
    return var


def reduced_chi_squared(observation: torch.Tensor, model: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
    """Deprecated name of :func:`chi2_nu` (the statistic has one name across the packages)."""
    warnings.warn("lenssim.reduced_chi_squared is deprecated: use lenssim.chi2_nu", DeprecationWarning, stacklevel=2)
    return chi2_nu(observation, model, sigma)


def log_likelihood(observation: torch.Tensor, model: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
    """log p(y | x) = -chi^2 / 2 per example (eq. 3, up to a constant), ``(B,)``."""
    return -0.5 * chi_squared(observation, model, sigma)


def likelihood_gradient(
    observation: torch.Tensor,
    source: torch.Tensor,
    kappa: torch.Tensor,
    sigma: torch.Tensor | float,
    *,
    psf: torch.Tensor | SeparablePSF | None = None,
    image_fov: float = IMAGE_FOV,
    source_fov: float = SOURCE_FOV,
    kappa_param: Literal["kappa", "log10"] = "kappa",
    create_graph: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradient of log p(y | source, kappa) through the whole ray tracer.

    Parameters
    ----------
    observation
        ``(B, 1, N, N)`` data y.
    source
        ``(B, 1, Ns, Ns)`` source pixels.
    kappa
        ``(B, 1, N, N)``: the convergence when ``kappa_param="kappa"``, or xi = log10 kappa
        when ``kappa_param="log10"`` (the RIM's parametrisation, kappa = 10^xi).
    create_graph
        Keep the graph of the gradient (for second derivatives): autograd through
        :func:`lens_image`. By default the gradient comes from the transposes of the ray tracer
        written out (the same numbers, fewer passes over memory) and is detached from the
        inputs' graph.

    Returns
    -------
    (grad_source, grad_kappa, log_likelihood)
        The gradients have the shapes of ``source`` and ``kappa`` (the latter with respect to
        whatever ``kappa_param`` names); the log-likelihood is ``(B,)``.
    """
    check_bchw("observation", observation)
    if kappa_param not in ("kappa", "log10"):
        raise ValueError(f"kappa_param must be 'kappa' or 'log10', got {kappa_param!r}")
    kw = dict(image_fov=image_fov, source_fov=source_fov, psf=psf)
    if create_graph:
        with torch.enable_grad():
            s = source if source.requires_grad else source.detach().requires_grad_(True)
            k = kappa if kappa.requires_grad else kappa.detach().requires_grad_(True)
            conv = torch.pow(10.0, k) if kappa_param == "log10" else k
            logp = log_likelihood(observation, lens_image(s, conv, **kw), sigma)
            gs, gk = torch.autograd.grad(logp.sum(), (s, k), create_graph=True)
        return gs, gk, logp
    # No graph wanted: the transposes written out (the same values, fewer passes over memory)
    with torch.no_grad():
        conv = torch.pow(10.0, kappa) if kappa_param == "log10" else kappa
        model, pullback = _lens_image_vjp(source, conv, **kw)
        logp = log_likelihood(observation, model, sigma)
        # d log p / d model = (y - F(x)) / sigma^2
        residual = (observation - model) / _per_example(sigma, observation).square()
    gs, gk = pullback(residual)
    if kappa_param == "log10":  # d kappa / d xi = kappa ln 10
        gk = gk.mul_(conv).mul_(math.log(10.0))
    return gs, gk, logp
