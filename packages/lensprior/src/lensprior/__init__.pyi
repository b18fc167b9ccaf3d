"""The public names of :mod:`lensprior`, each written once, here: the package loads a name on first
use (:func:`lenscore.lazy.attach_stub` reads this file) and type checkers read its types here."""

from lensprior.config import (
    VAE_PRESETS as VAE_PRESETS,
    DenoiserConfig as DenoiserConfig,
    VAEConfig as VAEConfig,
    kappa_vae_config as kappa_vae_config,
    source_vae_config as source_vae_config,
    vae_config as vae_config,
)
from lensprior.denoiser import Denoiser as Denoiser, load_denoiser as load_denoiser, train_denoiser as train_denoiser
from lensprior.training import (
    RunError as RunError,
    fit as fit,
    load_field as load_field,
    load_vae as load_vae,
    step_generator as step_generator,
    train_vae as train_vae,
)
from lensprior.vae import VAE as VAE, kappa_vae as kappa_vae, source_vae as source_vae

__version__: str
