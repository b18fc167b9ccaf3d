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

from lenscore.lazy import attach_stub

__version__ = "0.1.0"

_SUBMODULES = (
    "api",
    "baseline",
    "config",
    "demo",
    "finetune",
    "launch",
    "metrics",
    "model",
    "physics",
    "report",
    "training",
)


__getattr__, __dir__, __all__, _WHERE = attach_stub(__name__, __file__, _SUBMODULES)


class _Package(types.ModuleType):
    """``lensrim.finetune`` is the function, as it was when the package imported everything at
    once; importing the submodule of that name (which binds it on the package) leaves it so."""

    def __setattr__(self, name: str, value) -> None:
        if name in _WHERE and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
