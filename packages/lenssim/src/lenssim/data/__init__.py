"""What the models learn from: IllustrisTNG particles (``tng``) and their adaptive KDE (``kde``)
into convergence maps (``convergence``), COSMOS and synthetic sources (``sources``), analytic
Sersic sources (``sersic``), Table 1's observing conditions (``observing``), lenses simulated and
accepted on the fly (``lenses``), and the resumable dataset writers (``simulate``).

The submodules load when first used (``kde`` brings Numba, ``sources`` GalSim)."""

from __future__ import annotations

from lenscore.lazy import attach_stub

_SUBMODULES = ("convergence", "kde", "lenses", "observing", "sersic", "simulate", "sources", "tng")

__getattr__, __dir__, __all__, _WHERE = attach_stub(__name__, __file__, _SUBMODULES)
