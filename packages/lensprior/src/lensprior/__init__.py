"""lensprior: generative priors over background sources and convergence maps.

The source VAE (Table 5) and the kappa VAE (Table 6) of Adam et al. (2022), their training with
exact resume (through lenscore.runs), and sampling. Needs torch, numpy, h5py and lenscore: no
lensing code.

Names load on first use (SPEC 1's lazy loading): ``import lensprior`` is instant and torch
loads with the first name that needs it; :mod:`lensprior.config` is torch-free.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lenscore.lazy import attach

__version__ = "0.1.0"

_EXPORTS = {
    "config": ("VAE_PRESETS", "DenoiserConfig", "VAEConfig", "kappa_vae_config", "source_vae_config"),
    "denoiser": ("Denoiser", "load_denoiser", "train_denoiser"),
    "training": ("RunError", "fit", "load_field", "load_vae", "step_generator", "train_vae"),
    "vae": ("VAE", "kappa_vae", "source_vae"),
}
_SUBMODULES = (
    "config",
    "denoiser",
    "training",
    "vae",
)

__all__ = [
    "VAE_PRESETS",
    "VAE",
    "Denoiser",
    "DenoiserConfig",
    "fit",
    "load_denoiser",
    "train_denoiser",
    "RunError",
    "VAEConfig",
    "__version__",
    "kappa_vae",
    "kappa_vae_config",
    "load_field",
    "load_vae",
    "source_vae",
    "source_vae_config",
    "step_generator",
    "train_vae",
]


__getattr__, __dir__, _WHERE = attach(__name__, _EXPORTS, _SUBMODULES)


if TYPE_CHECKING:  # what the lazy names are, for type checkers and editors
    from lensprior.config import VAE_PRESETS, DenoiserConfig, VAEConfig, kappa_vae_config, source_vae_config
    from lensprior.denoiser import Denoiser, load_denoiser, train_denoiser
    from lensprior.training import RunError, fit, load_field, load_vae, step_generator, train_vae
    from lensprior.vae import VAE, kappa_vae, source_vae
