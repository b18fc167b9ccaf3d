"""lensprior: generative priors over background sources and convergence maps.

The source VAE (Table 5) and the kappa VAE (Table 6) of Adam et al. (2022), their training with
exact resume (through lenscore.runs), and sampling. Needs torch, numpy, h5py and lenscore: no
lensing code.

Names load on first use (SPEC 1's lazy loading): ``import lensprior`` is instant and torch
loads with the first name that needs it; :mod:`lensprior.config` is torch-free.
"""

from __future__ import annotations

from lenscore.lazy import attach_stub

__version__ = "0.1.0"

_SUBMODULES = ("config", "denoiser", "training", "vae")


__getattr__, __dir__, __all__, _WHERE = attach_stub(__name__, __file__, _SUBMODULES)
