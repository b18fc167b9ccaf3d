"""The physics of a lens, as functions of torch tensors (batched, any dtype and device,
differentiable): pixel grids (``grid``), deflection by FFT (``deflection``), the lens equation and
bilinear ray tracing (``raytrace``), PSFs (``psf``), noise, chi^2 and the likelihood's gradients
(``likelihood``), and analytic SIE lenses (``sie``)."""

from __future__ import annotations

from lenscore.lazy import attach_stub

_SUBMODULES = ("deflection", "grid", "likelihood", "psf", "raytrace", "sie")

__getattr__, __dir__, __all__, _WHERE = attach_stub(__name__, __file__, _SUBMODULES)
