"""A denoiser for COSMOS source stamps (paper section 3.1; the original network is lost).

Design. The paper trained a bottleneck autoencoder on the noisy stamps themselves and relied on
the spectral bias of CNNs to drop the noise. That gives no control over what is removed. Here the
denoiser is trained with supervision instead: clean galaxies (GalSim-drawn synthetic sources, or
any clean source dataset) plus noise drawn on the fly to look like the stamps' noise: Gaussian,
correlated over neighbouring pixels as drizzled HST noise is, with a standard deviation drawn per
stamp from the range seen in normalised COSMOS stamps. The defaults were measured on the real
COSMOS stamps of ../shared/data (background-subtracted, divided by the peak): border noise from
0.017 to 0.22 of the peak (5th to 95th percentile) and a correlation of 0.54 between neighbouring
pixels, which a 3x3 kernel with neighbours at 0.28 of the centre reproduces. Then it can be checked on real
stamps, where the truth is unknown, by what it must do: lower the noise measured on the empty
border and keep each galaxy's flux.

Network. A small residual U-net (two levels by default, ~0.1M parameters) that predicts the
noise, which is subtracted from the input (residual learning, DnCNN-style): an identity map is
the easy default, so the galaxy passes through and only the noise has to be learnt. The loss is the
mean absolute error to the clean image (optionally MSE, plus a penalty on the error of
``flux_block`` x ``flux_block`` block sums, ``flux_weight``, off by default): clean galaxies are
never negative, so the minimum-MSE estimate of an empty background pixel is positive, a pedestal
that raised the aperture flux of faint real galaxies by 15-45 %; the L1 estimate (the posterior
median) stays at zero there.

Flux. Before it is subtracted, the noise estimate loses its smooth part: a Gaussian blur of width
``highpass`` (3 pixels) of the estimate is taken away (through the FFT, so the kernel sums to one
and the estimate to zero). Whatever the network takes for noise, removing it then moves flux by a
few pixels at most: every aperture wider than that keeps its flux by construction, and each
stamp's total flux exactly. The price is the noise on scales above ~3 pixels, which stays.
Without it (``highpass=0``, only the estimate's mean removed), faint extended light that the
network, trained on synthetic galaxies, took for noise moved galaxy fluxes by -10 % to +23 %.

Measured on the 100 real COSMOS stamps of ../shared/data after 600 steps on 64 synthetic galaxies
(none of them seen in training): the border noise falls to 0.15 of its value (median; at most
0.36); the flux in a 25-pixel-radius aperture of each of the 26 galaxies measured there at SNR > 30
changes by -3.1 % to +1.7 % (median -0.5 %; SNR > 80: -1.8 % to +1.1 %), within the noise-limited
flux error of those measurements (<= 3.3 %). In a 15-pixel aperture: -6.4 % to +5.0 %, as light
moves out of sharp cores by up to a few pixels.
Fully convolutional: trained on crops, applied to whole stamps (sides divisible by 2^levels).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lensprior.config import DenoiserConfig

__all__ = ["Denoiser", "DenoiserConfig", "load_denoiser", "train_denoiser"]


def _gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Circular Gaussian blur through the FFT: its kernel sums to one exactly, so ``x - blur(x)``
    has zero sum over the image."""
    h, w = x.shape[-2:]
    ky = torch.fft.fftfreq(h, device=x.device, dtype=torch.float64)
    kx = torch.fft.rfftfreq(w, device=x.device, dtype=torch.float64)
    gain = torch.exp(-2 * (torch.pi * sigma) ** 2 * (ky[:, None] ** 2 + kx[None, :] ** 2)).to(x.dtype)
    return torch.fft.irfft2(torch.fft.rfft2(x) * gain, s=(h, w))


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(), nn.Conv2d(cout, cout, 3, padding=1), nn.ReLU())


class Denoiser(nn.Module):
    """Residual U-net: ``denoised = x - net(x)`` for ``(B, 1, H, W)`` images in [0, ~1]."""

    def __init__(self, config: DenoiserConfig = DenoiserConfig()) -> None:
        super().__init__()
        self.config = c = config
        widths = [c.filters * 2**i for i in range(c.levels + 1)]
        self.inc = _block(1, widths[0])
        self.down = nn.ModuleList(_block(widths[i], widths[i + 1]) for i in range(c.levels))
        self.up = nn.ModuleList(
            nn.ConvTranspose2d(widths[i + 1], widths[i], 2, stride=2) for i in reversed(range(c.levels))
        )
        self.dec = nn.ModuleList(_block(2 * widths[i], widths[i]) for i in reversed(range(c.levels)))
        self.out = nn.Conv2d(widths[0], 1, 1)

    def noise(self, x: torch.Tensor) -> torch.Tensor:
        """The network's estimate of the noise in ``x``."""
        m = 2**self.config.levels
        if x.dim() != 4 or x.shape[1] != 1 or x.shape[-1] % m or x.shape[-2] % m:
            raise ValueError(f"expected (B, 1, H, W) with H and W divisible by {m}, got {tuple(x.shape)}")
        skips = [self.inc(x)]
        for down in self.down:
            skips.append(down(F.max_pool2d(skips[-1], 2)))
        h = skips.pop()
        for up, dec in zip(self.up, self.dec, strict=True):
            h = dec(torch.cat([up(h), skips.pop()], dim=1))
        n = self.out(h)
        if self.config.highpass > 0:
            # keep only the estimate's structure on scales below ~highpass pixels: removing it
            # then moves no flux farther than that, so every aperture wider than a few pixels
            # keeps its flux, whatever the network takes for noise
            return n - _gaussian_blur(n, self.config.highpass)
        # noise has zero mean: removing a zero-mean estimate conserves each image's total flux
        # (a plain MMSE denoiser adds a positive pedestal, since clean images are never negative)
        return n - n.mean(dim=(-1, -2), keepdim=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x - self.noise(x)

    @torch.no_grad()
    def denoise(self, images: torch.Tensor, *, batch_size: int = 32) -> torch.Tensor:
        """Denoise ``(B, 1, H, W)`` images in evaluation mode, in batches."""
        device = next(self.parameters()).device
        return torch.cat([self(images[i : i + batch_size].to(device)).cpu() for i in range(0, len(images), batch_size)])

    def denoise_stamp(self, stamp: np.ndarray) -> np.ndarray:
        """One ``(H, W)`` stamp denoised, float64 in and out: the ``denoise`` that
        ``lenssim.simulate_source_dataset`` takes."""
        return self.denoise(torch.from_numpy(stamp).float()[None, None])[0, 0].double().numpy()

    def make_noise(self, shape: torch.Size, generator: torch.Generator) -> torch.Tensor:
        """Training noise: per image sigma ~ U(noise_min, noise_max), correlated by a 3x3 kernel
        (centre 1, neighbours ``correlation``) and renormalised to that sigma."""
        c = self.config
        sigma = c.noise_min + (c.noise_max - c.noise_min) * torch.rand(shape[0], generator=generator)
        white = torch.randn(shape, generator=generator)
        if c.correlation > 0:
            k = torch.full((3, 3), c.correlation)
            k[1, 1] = 1.0
            k = (k / k.pow(2).sum().sqrt()).view(1, 1, 3, 3)  # unit variance out for unit variance in
            white = F.conv2d(F.pad(white, (1, 1, 1, 1), mode="circular"), k)
        return white * sigma.view(-1, 1, 1, 1)

    def loss(self, clean: torch.Tensor, step: int, *, generator: torch.Generator | None = None):
        """MSE of the denoised random crop of ``clean`` plus noise, and a flux-change penalty."""
        c = self.config
        g = generator or torch.Generator().manual_seed(0)
        size = clean.shape[-1]
        if size > c.crop:
            i, j = (int(v) for v in torch.randint(0, size - c.crop + 1, (2,), generator=g))
            clean = clean[..., i : i + c.crop, j : j + c.crop]
        noisy = clean + self.make_noise(clean.shape, g).to(clean.device)
        out = self(noisy)
        # L1 estimates the posterior median, which is ~0 in empty background: no pedestal there
        err = (out - clean).abs().mean() if c.loss == "l1" else (out - clean).pow(2).mean()
        # local flux: the squared error of 8 x 8 block sums (per pixel), so that no flux moves
        # across scales of a few pixels, where noise and faint extended light look alike
        b = c.flux_block
        flux = (F.avg_pool2d(out, b) - F.avg_pool2d(clean, b)).pow(2).mean() * b * b
        total = err + c.flux_weight * flux
        return total, {"loss": total.item(), "error": err.item(), "flux": flux.item()}


def train_denoiser(
    config: DenoiserConfig,
    clean: torch.Tensor,
    run_dir: str | os.PathLike,
    *,
    steps: int | None = None,
    seed: int = 0,
    **kwargs: Any,
) -> Denoiser:
    """Train (or resume) a denoiser on clean images ``(n, 1, P, P)``; see ``training.fit``."""
    from lensprior.training import RunError, fit, seeded_init

    if clean.dim() != 4 or clean.shape[1] != 1 or clean.shape[-1] < config.crop or clean.shape[-2] < config.crop:
        raise RunError(f"clean images must be (n, 1, P, P) with P >= {config.crop}, got {tuple(clean.shape)}")
    model = seeded_init(lambda: Denoiser(config), seed)
    return fit(model, config, clean, run_dir, steps=config.steps if steps is None else steps, seed=seed, **kwargs)


def load_denoiser(run_dir: str | os.PathLike, *, device: str | torch.device = "cpu") -> Denoiser:
    """The trained denoiser of a run directory."""
    from lensprior.training import load_run

    return load_run(run_dir, DenoiserConfig, Denoiser, device=device)[0]
