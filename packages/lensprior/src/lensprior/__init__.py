"""lensprior: generative priors over background sources and convergence maps.

The source VAE (Table 5) and the kappa VAE (Table 6) of Adam et al. (2022), their training with
exact resume, and sampling. Needs only torch, numpy and h5py: no lensing code.
"""

from lensprior.denoiser import Denoiser, DenoiserConfig, load_denoiser, train_denoiser
from lensprior.training import RunError, fit, load_field, load_vae, step_generator, train_vae
from lensprior.vae import VAE, VAEConfig, kappa_vae, kappa_vae_config, source_vae, source_vae_config

__version__ = "0.1.0"

__all__ = [
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
