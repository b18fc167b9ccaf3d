"""The public names of :mod:`lensrim`, each written once, here: the package loads a name on first
use (:func:`lenscore.lazy.attach_stub` reads this file) and type checkers read its types here."""

from lensrim.api import (
    FineTune as FineTune,
    Reconstruction as Reconstruction,
    load as load,
    read_reconstruction as read_reconstruction,
    reconstruct as reconstruct,
)
from lensrim.config import PRESETS as PRESETS, FineTuneConfig as FineTuneConfig, RIMConfig as RIMConfig
from lensrim.finetune import FineTuneResult as FineTuneResult, finetune as finetune, fisher_diagonal as fisher_diagonal
from lensrim.launch import TrainingPlan as TrainingPlan, prepare_training as prepare_training
from lensrim.model import (
    RIM as RIM,
    ConvGRU as ConvGRU,
    ForwardModel as ForwardModel,
    build_rim as build_rim,
    preprocess_gradients as preprocess_gradients,
    rim_loss as rim_loss,
)
from lensrim.physics import LensingPhysics as LensingPhysics, LinearPhysics as LinearPhysics
from lensrim.training import (
    DatasetBatches as DatasetBatches,
    MixedBatches as MixedBatches,
    SimulatedBatches as SimulatedBatches,
    load_rim as load_rim,
    train_rim as train_rim,
    vae_sampler as vae_sampler,
)

__version__: str
