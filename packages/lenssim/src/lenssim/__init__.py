"""lenssim: the physics of lens: grids, deflection, ray tracing, PSF, noise and likelihood.

The ray tracer is plain functions of torch tensors: batched, float32 or float64, CPU or CUDA,
and differentiable end to end. Around it: particle halos to convergence maps (Numba KDE), COSMOS
and synthetic sources (GalSim), lens acceptance and resumable HDF5 datasets. Three subpackages:

- :mod:`lenssim.physics`: grids, deflection, ray tracing, PSF, likelihood, SIE maps;
- :mod:`lenssim.data`: TNG particles (``tng``) and their KDE (``kde``) into kappa maps
  (``convergence``), COSMOS and synthetic sources (``sources``), analytic Sersic sources
  (``sersic``), Table 1's observing conditions (``observing``), lens simulation and acceptance
  (``lenses``), resumable datasets (``simulate``);
- :mod:`lenssim.io`: HDF5 datasets (``datasets``), FITS (``fits``), :class:`Observation`;

and the torch-free :mod:`lenssim.geometry`. Every public name is also here, flat.

Names load on first use (SPEC 1's lazy loading): ``import lenssim`` is instant and torch
loads with the first name that needs it, so a command line reads the torch-free
:mod:`lenssim.geometry` without it.
"""

from __future__ import annotations

from lenscore.lazy import attach_stub

__version__ = "0.1.0"

_SUBMODULES = {
    "data": "data",
    "geometry": "geometry",
    "io": "io",
    "physics": "physics",
    # the modules' names before the grouping, kept for code that reaches into them
    **{name: f"physics.{name}" for name in ("deflection", "grid", "likelihood", "psf", "raytrace", "sie")},
    **{name: f"data.{name}" for name in ("convergence", "kde", "lenses", "sersic", "simulate", "sources", "tng")},
    "sampling": "data.observing",
    "fits": "io.fits",
    "observation": "io.observation",
}


__getattr__, __dir__, __all__, _WHERE = attach_stub(__name__, __file__, _SUBMODULES)
