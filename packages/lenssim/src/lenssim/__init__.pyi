"""The public names of :mod:`lenssim`: every name of its subpackages, flat (each written once, in the
subpackage's stub). The package loads a name on first use (:func:`lenscore.lazy.attach_stub` reads
this file) and type checkers read its types here."""

from lenssim._checks import SimulationError as SimulationError
from lenssim.data import *
from lenssim.geometry import *
from lenssim.io import *
from lenssim.physics import *

__version__: str
