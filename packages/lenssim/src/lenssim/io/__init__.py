"""Files in and out: HDF5 datasets, validated on every read and written resumably in blocks
(``datasets``), FITS observations and reconstructions (``fits``) and catalogues of them
(``catalogue``), and :class:`Observation`, one or many lenses ready for a model's grid
(``observation``)."""

from __future__ import annotations

from lenscore.lazy import attach_stub

_SUBMODULES = ("catalogue", "datasets", "fits", "observation")

__getattr__, __dir__, __all__, _WHERE = attach_stub(__name__, __file__, _SUBMODULES)
