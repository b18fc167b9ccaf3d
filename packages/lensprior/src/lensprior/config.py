"""Configs saved next to every checkpoint as JSON (never pickled), and read back strictly.

The VAE and denoiser configurations and the VAE presets live here, without torch: a command line
takes its option defaults and preset choices from this module at start-up.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, ClassVar, Literal

from lenscore.config import JsonConfig, exponential_decay

__all__ = ["VAE_PRESETS", "DenoiserConfig", "JsonConfig", "VAEConfig", "kappa_vae_config", "source_vae_config"]


@dataclass(frozen=True)
class VAEConfig(JsonConfig):
    """Architecture and optimisation of one VAE; the defaults of each kind are the paper's."""

    RUN_KIND: ClassVar[str] = "VAE"

    kind: Literal["source", "kappa"] = "source"
    pixels: int = 128
    levels: int = 3
    convs_per_level: int = 2
    latent_dim: int = 32
    filters: int = 16
    filter_scaling: int = 2
    leaky_slope: float = 0.2
    # optimisation
    learning_rate: float = 1e-4
    decay_rate: float = 0.5
    decay_steps: int = 30_000
    steps: int = 500_000
    batch_size: int = 20
    beta_start: float = 0.1
    beta_max: float = 0.1
    beta_warmup_steps: int = 5_000
    bottleneck_l2: float = 1e-2
    bottleneck_l2_steps: int = 10_000
    clip_norm: float = 5.0

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
    levels: int = 2
    noise_min: float = 0.01
    noise_max: float = 0.25
    correlation: float = 0.28
    crop: int = 64
    flux_weight: float = 0.0
    loss: Literal["l1", "mse"] = "l1"
    flux_block: int = 8
    highpass: float = 3.0
    """Width (pixels, Gaussian sigma) below which the noise estimate is kept: its smoother part is
    removed, so no flux moves farther than a few pixels (0: only its mean is removed)."""
    learning_rate: float = 1e-3
    decay_rate: float = 0.5
    decay_steps: int = 2000
    steps: int = 3000
    batch_size: int = 16
    clip_norm: float = 5.0

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
