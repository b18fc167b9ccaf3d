"""What the study scripts beside this file share: held-out lenses and trained RIMs read from
files, each refused in one line (no traceback) when it cannot be used."""

from __future__ import annotations

from pathlib import Path


def load_lenses(path: Path):
    """The lens dataset at ``path`` as a :class:`lenssim.LensBatch` and the lensing physics of its
    lenses on the file's own grid and fields of view, or one line why not."""
    import lensrim
    import lenssim

    try:
        test = lenssim.LensBatch.from_hdf5(path)
        attrs = lenssim.read_dataset(path, [], required_attrs=("image_fov", "source_fov"))["attrs"]
    except lenssim.io.datasets.DatasetError as e:
        raise SystemExit(str(e)) from None
    return test, lensrim.LensingPhysics(test.psf, test.noise_sigma, attrs["image_fov"], attrs["source_fov"])


def load_runs(lenses: Path, runs: list[Path]) -> list:
    """``(directory, RIM)`` of each trained RIM in ``runs``, after checking that ``lenses`` are on
    its grid and fields of view (:func:`lensrim.api.check_dataset`), or one line why not."""
    import lensrim
    from lensrim.api import check_dataset

    loaded = []
    for run in runs:
        try:
            rim = lensrim.load(run)
            check_dataset(lenses, rim, param="lenses")
        except ValueError as e:  # RunError, SettingError, DatasetError
            raise SystemExit(f"{run}: {e}") from None
        loaded.append((run, rim))
    return loaded
