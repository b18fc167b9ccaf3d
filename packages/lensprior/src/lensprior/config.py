"""Configs saved next to every checkpoint as JSON (never pickled), and read back strictly.

The VAE and denoiser configurations and the VAE presets live here, without torch: a command line
takes its option defaults and preset choices from this module at start-up.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, ClassVar, Literal

from lenscore.config import JsonConfig, exponential_decay

__all__ = [
    "VAE_PRESETS",
    "DenoiserConfig",
    "JsonConfig",
    "VAEConfig",
    "kappa_vae_config",
    "source_vae_config",
    "vae_config",
]


@dataclass(frozen=True)
class VAEConfig(JsonConfig):
    """Architecture and optimisation of one VAE; the defaults of each kind are the paper's."""

    RUN_KIND: ClassVar[str] = "VAE"

    kind: Literal["source", "kappa"] = "source"
    """What the VAE models: "source" (Table 5; images in [0, 1]) or "kappa" (Table 6; log10 kappa)."""
    pixels: int = 128
    """Pixels across the maps (Tables 5/6: 128); divisible by 2^levels."""
    levels: int = 3
    """Stride-2 downsamplings of the encoder (Table 5: 3, Table 6: 4)."""
    convs_per_level: int = 2
    """3x3 convolutions per level, in encoder and decoder (Table 5: 2, Table 6: 1)."""
    latent_dim: int = 32
    """Dimension of the latent space (Table 5: 32, Table 6: 16)."""
    filters: int = 16
    """Channels at the first level (Tables 5/6: 16)."""
    filter_scaling: int = 2
    """Factor on the channels at each deeper level (Tables 5/6: 2)."""
    leaky_slope: float = 0.2
    """Negative slope of the leaky ReLU activations (Tables 5/6: 0.2)."""
    learning_rate: float = 1e-4
    """Initial Adam learning rate, per step (Tables 5/6: 1e-4)."""
    decay_rate: float = 0.5
    """Factor on the learning rate every ``decay_steps`` steps (Table 5: 0.5, Table 6: 0.7)."""
    decay_steps: int = 30_000
    """Steps over which the learning rate decays by ``decay_rate`` (Table 5: 30,000, Table 6: 20,000)."""
    steps: int = 500_000
    """Training steps (Table 5: 500,000, Table 6: 155,000)."""
    batch_size: int = 20
    """Maps per step (Table 5: 20, Table 6: 32)."""
    beta_start: float = 0.1
    """Weight of the KL term at step 0 (eq. B1's beta; Tables 5/6: 0.1)."""
    beta_max: float = 0.1
    """Weight of the KL term after the warm-up (Table 5: 0.1, Table 6: 0.2)."""
    beta_warmup_steps: int = 5_000
    """Steps of the linear KL warm-up from ``beta_start`` to ``beta_max``."""
    bottleneck_l2: float = 1e-2
    """Initial weight of the penalty keeping the dense bottleneck pair an identity (appendix B),
    dimensionless; annealed linearly to 0."""
    bottleneck_l2_steps: int = 10_000
    """Steps over which ``bottleneck_l2`` anneals to 0."""
    clip_norm: float = 5.0
    """Largest global gradient norm; larger gradients are scaled down to it."""

    def __post_init__(self) -> None:
        self.check_numbers()
        if self.kind not in ("source", "kappa"):
            raise ValueError(f"kind must be 'source' or 'kappa', got {self.kind!r}")
        if self.pixels % (2**self.levels):
            raise ValueError(f"pixels ({self.pixels}) must be divisible by 2^levels ({2**self.levels})")
        for name in ("levels", "latent_dim", "filters", "steps", "batch_size", "decay_steps", "filter_scaling"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.convs_per_level < 0:
            raise ValueError(f"convs_per_level must be >= 0, got {self.convs_per_level}")
        if self.pixels < 8:
            raise ValueError(f"pixels must be at least 8, got {self.pixels}")
        # sizes a file could otherwise set to anything: bounded so that a bad config fails at once
        for name, most in (
            ("pixels", 4096),
            ("levels", 12),
            ("filters", 65536),
            ("latent_dim", 65536),
            ("convs_per_level", 64),
            ("filter_scaling", 16),
        ):
            if getattr(self, name) > most:
                raise ValueError(f"{name} is {getattr(self, name)}, beyond the largest sensible value {most}")

    def beta(self, step: int) -> float:
        """KL weight: linear warm-up from ``beta_start`` to ``beta_max`` over ``beta_warmup_steps``."""
        f = min(1.0, step / max(1, self.beta_warmup_steps))
        return self.beta_start + (self.beta_max - self.beta_start) * f

    def bottleneck_weight(self, step: int) -> float:
        """Weight of the bottleneck identity penalty: linear from ``bottleneck_l2`` to 0."""
        return self.bottleneck_l2 * max(0.0, 1.0 - step / max(1, self.bottleneck_l2_steps))

    def learning_rate_at(self, step: int) -> float:
        """Exponential decay: ``learning_rate * decay_rate ** (step / decay_steps)``."""
        return exponential_decay(self.learning_rate, self.decay_rate, self.decay_steps, step)


def source_vae_config(**overrides) -> VAEConfig:
    """Table 5."""
    return replace(VAEConfig(), **overrides)


def kappa_vae_config(**overrides) -> VAEConfig:
    """Table 6."""
    base = VAEConfig(
        kind="kappa",
        levels=4,
        convs_per_level=1,
        latent_dim=16,
        decay_rate=0.7,
        decay_steps=20_000,
        steps=155_000,
        batch_size=32,
        beta_start=0.1,
        beta_max=0.2,
    )
    return replace(base, **overrides)


def vae_config(kind: str, preset: str = "paper", **given: Any) -> VAEConfig:
    """The configuration of a ``kind`` VAE ("source": Table 5, "kappa": Table 6) with ``preset``'s
    overrides (:data:`VAE_PRESETS`) and then the settings ``given`` (None: not given)."""
    if kind not in ("source", "kappa"):
        raise ValueError(f"kind must be 'source' or 'kappa', got {kind!r}")
    overrides = {**VAE_PRESETS[preset], **{k: v for k, v in given.items() if v is not None}}
    return (source_vae_config if kind == "source" else kappa_vae_config)(**overrides)


VAE_PRESETS: dict[str, dict[str, Any]] = {
    "paper": {},
    "small": {"filters": 8, "steps": 3000, "learning_rate": 3e-4, "decay_steps": 3000},
}
"""Named overrides of either kind's Table 5/6 configuration: ``paper`` is the tables as published,
``small`` trains in minutes on a CPU."""


@dataclass(frozen=True)
class DenoiserConfig(JsonConfig):
    """The denoiser's network, noise model and optimisation."""

    RUN_KIND: ClassVar[str] = "denoiser"

    filters: int = 24
    """Channels at the first level of the denoising U-net."""
    levels: int = 2
    """Stride-2 downsamplings of the U-net."""
    noise_min: float = 0.01
    """Smallest training noise sigma, in units of the stamp's peak (COSMOS: 0.017 at the 5th percentile)."""
    noise_max: float = 0.25
    """Largest training noise sigma, in units of the stamp's peak (COSMOS: 0.22 at the 95th percentile)."""
    correlation: float = 0.28
    """Weight of the 8 neighbours in the 3x3 kernel that correlates the training noise (centre 1):
    0.28 gives COSMOS's neighbour correlation of about 0.54; in [0, 1)."""
    crop: int = 64
    """Side of the random training crops, pixels (divisible by 2^levels and ``flux_block``)."""
    flux_weight: float = 0.0
    """Weight of the penalty on changes of ``flux_block`` x ``flux_block`` block sums (0: off)."""
    loss: Literal["l1", "mse"] = "l1"
    """Error of the denoised crop against the clean one: mean absolute ("l1") or squared ("mse")."""
    flux_block: int = 8
    """Side of the blocks whose flux the flux penalty keeps, pixels."""
    highpass: float = 3.0
    """Width (pixels, Gaussian sigma) below which the noise estimate is kept: its smoother part is
    removed, so no flux moves farther than a few pixels (0: only its mean is removed)."""
    learning_rate: float = 1e-3
    """Initial Adam learning rate, per step."""
    decay_rate: float = 0.5
    """Factor on the learning rate every ``decay_steps`` steps."""
    decay_steps: int = 2000
    """Steps over which the learning rate decays by ``decay_rate``."""
    steps: int = 3000
    """Training steps."""
    batch_size: int = 16
    """Clean stamps per step."""
    clip_norm: float = 5.0
    """Largest global gradient norm; larger gradients are scaled down to it."""

    def __post_init__(self) -> None:
        self.check_numbers()
        if not 0 < self.noise_min <= self.noise_max:
            raise ValueError(f"need 0 < noise_min <= noise_max, got {self.noise_min}, {self.noise_max}")
        if self.loss not in ("l1", "mse"):
            raise ValueError(f"loss must be 'l1' or 'mse', got {self.loss!r}")
        if not 0 <= self.correlation < 1:
            raise ValueError(f"correlation must lie in [0, 1), got {self.correlation}")
        if self.crop % (2**self.levels) or self.crop % self.flux_block:
            raise ValueError(f"crop ({self.crop}) must be divisible by 2^levels and by flux_block")

    def learning_rate_at(self, step: int) -> float:
        """Exponential decay: ``learning_rate * decay_rate ** (step / decay_steps)``."""
        return exponential_decay(self.learning_rate, self.decay_rate, self.decay_steps, step)
