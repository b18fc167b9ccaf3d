"""lensprior: VAE priors over background sources and convergence maps (in progress)."""

__version__ = "0.1.0"

__all__ = ["__version__"]
