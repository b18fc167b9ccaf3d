"""lenscore: what the lens packages share, written once.

:mod:`lenscore.files` (atomic writes, locks, temporaries of killed processes, HDF5 opening),
:mod:`lenscore.config` (JSON configs) and :mod:`lenscore.lazy` (names loaded on first use) need no
torch; :mod:`lenscore.runs` holds the run
directories of every trained model (configs, checkpoints, metrics, resume). Import the
submodules; this module loads nothing.
"""

__version__ = "0.1.0"
