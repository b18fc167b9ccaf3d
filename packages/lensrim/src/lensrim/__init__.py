"""lensrim: the Recurrent Inference Machine for pixelated lens reconstruction.

A ConvGRU U-net that learns to optimise the lensing likelihood (Adam et al. 2022, sections
2.3-2.4, appendix C): the model, its gradient preprocessing and loss, the forward models it
runs with, its training, EWC fine-tuning on each observation (:mod:`lensrim.finetune`) and the
evaluation metrics (:mod:`lensrim.metrics`). The front door (:mod:`lensrim.api`)::

    rim = lensrim.load("runs/rim")
    rec = lensrim.reconstruct(rim, lenssim.Observation.from_fits("lens.fits", psf_fwhm=0.08))
"""

from lensrim.api import FineTune, Reconstruction, load, reconstruct
from lensrim.finetune import FineTuneConfig, FineTuneResult, finetune, fisher_diagonal
from lensrim.model import PRESETS, RIM, ConvGRU, ForwardModel, RIMConfig, build_rim, preprocess_gradients, rim_loss
from lensrim.physics import LensingPhysics, LinearPhysics
from lensrim.training import DatasetBatches, MixedBatches, SimulatedBatches, load_rim, train_rim, vae_sampler

__version__ = "0.1.0"

__all__ = [
    "FineTune",
    "Reconstruction",
    "load",
    "reconstruct",
    "FineTuneConfig",
    "FineTuneResult",
    "finetune",
    "fisher_diagonal",
    "PRESETS",
    "RIM",
    "ConvGRU",
    "DatasetBatches",
    "MixedBatches",
    "vae_sampler",
    "SimulatedBatches",
    "load_rim",
    "train_rim",
    "ForwardModel",
    "LensingPhysics",
    "LinearPhysics",
    "RIMConfig",
    "__version__",
    "build_rim",
    "preprocess_gradients",
    "rim_loss",
]
