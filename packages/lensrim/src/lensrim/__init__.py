"""lensrim: the Recurrent Inference Machine for pixelated lens reconstruction.

A ConvGRU U-net that learns to optimise the lensing likelihood (Adam et al. 2022, sections
2.3-2.4, appendix C): the model, its gradient preprocessing and loss, the forward models it
runs with, its training, EWC fine-tuning on each observation (:mod:`lensrim.finetune`), the
evaluation metrics (:mod:`lensrim.metrics`), the evaluation report (:mod:`lensrim.report`) and
the whole-pipeline demo (:mod:`lensrim.demo`). The front door (:mod:`lensrim.api`)::

    rim = lensrim.load("runs/rim")
    rec = lensrim.reconstruct(rim, lenssim.Observation.from_fits("lens.fits", psf_fwhm=0.08))

Names load on first use (SPEC 1's lazy loading): ``import lensrim`` is instant, and torch loads
with the first name that needs it, so a command line can read :mod:`lensrim.demo`'s presets
without it.
"""

from __future__ import annotations

import sys
import types
from typing import TYPE_CHECKING

from lenscore.lazy import attach

__version__ = "0.1.0"

_EXPORTS = {
    "api": ("FineTune", "Reconstruction", "load", "reconstruct"),
    "config": ("FineTuneConfig", "PRESETS", "RIMConfig"),
    "finetune": ("FineTuneResult", "finetune", "fisher_diagonal"),
    "model": ("RIM", "ConvGRU", "ForwardModel", "build_rim", "preprocess_gradients", "rim_loss"),
    "physics": ("LensingPhysics", "LinearPhysics"),
    "training": ("DatasetBatches", "MixedBatches", "SimulatedBatches", "load_rim", "train_rim", "vae_sampler"),
}
_SUBMODULES = ("api", "baseline", "config", "demo", "finetune", "metrics", "model", "physics", "report", "training")

__all__ = [
    "ConvGRU",
    "DatasetBatches",
    "FineTune",
    "FineTuneConfig",
    "FineTuneResult",
    "ForwardModel",
    "LensingPhysics",
    "LinearPhysics",
    "MixedBatches",
    "PRESETS",
    "RIM",
    "RIMConfig",
    "Reconstruction",
    "SimulatedBatches",
    "build_rim",
    "finetune",
    "fisher_diagonal",
    "load",
    "load_rim",
    "preprocess_gradients",
    "reconstruct",
    "rim_loss",
    "train_rim",
    "vae_sampler",
    "__version__",
]


__getattr__, __dir__, _WHERE = attach(__name__, _EXPORTS, _SUBMODULES)


class _Package(types.ModuleType):
    """``lensrim.finetune`` is the function, as it was when the package imported everything at
    once; importing the submodule of that name (which binds it on the package) leaves it so."""

    def __setattr__(self, name: str, value) -> None:
        if name in _WHERE and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


if TYPE_CHECKING:  # what the lazy names are, for type checkers and editors
    from lensrim.api import FineTune, Reconstruction, load, reconstruct
    from lensrim.config import PRESETS, FineTuneConfig, RIMConfig
    from lensrim.finetune import FineTuneResult, finetune, fisher_diagonal
    from lensrim.model import RIM, ConvGRU, ForwardModel, build_rim, preprocess_gradients, rim_loss
    from lensrim.physics import LensingPhysics, LinearPhysics
    from lensrim.training import DatasetBatches, MixedBatches, SimulatedBatches, load_rim, train_rim, vae_sampler
