"""lenscore: what the lens packages share, written once.

:mod:`lenscore.files` (atomic writes, locks, temporaries of killed processes, HDF5 opening) and
:mod:`lenscore.config` (JSON configs) need no torch; :mod:`lenscore.runs` holds the run
directories of every trained model (configs, checkpoints, metrics, resume). Import the
submodules; this module loads nothing.
"""

__version__ = "0.1.0"
