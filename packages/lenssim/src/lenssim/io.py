"""HDF5 lens datasets (SPEC section 9): atomic writes and validated reads.

Layout: ``source (n, 1, Ns, Ns)``, ``kappa (n, 1, N, N)``, ``observation (n, 1, N, N)``,
``psf (n, 1, k, k)``, ``noise_sigma (n,)``, float32, chunked one example per chunk; file
attributes ``image_fov``, ``source_fov``, ``z_lens``, ``z_source``, ``config`` (JSON),
``seed`` and ``versions`` (JSON). Files are written under a temporary name and renamed, so an
interrupted write never leaves a half-written file under the final name, and writing the same
data twice gives identical bytes.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["LENS_FIELDS", "DatasetError", "read_lens_dataset", "write_lens_dataset"]

LENS_FIELDS = ("source", "kappa", "observation", "psf", "noise_sigma")
_REQUIRED_ATTRS = ("image_fov", "source_fov", "z_lens", "z_source")


class DatasetError(ValueError):
    """A dataset file is missing, unreadable or not in the expected layout."""


def _versions() -> dict[str, str]:
    from importlib import metadata

    out = {}
    for name in ("lenssim", "lensprior", "lensrim", "lensapp", "torch", "numpy", "h5py"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def write_lens_dataset(
    path: str | os.PathLike,
    arrays: Mapping[str, torch.Tensor | np.ndarray],
    *,
    image_fov: float,
    source_fov: float,
    z_lens: float,
    z_source: float,
    config: Mapping[str, Any] | None = None,
    seed: int | None = None,
    extra_attrs: Mapping[str, Any] | None = None,
) -> Path:
    """Write a lens dataset atomically; return its path.

    ``arrays`` holds at least the fields of :data:`LENS_FIELDS` (more, such as predictions,
    may follow), all with the same first dimension.
    """
    import h5py

    path = Path(path)
    missing = [k for k in LENS_FIELDS if k not in arrays]
    if missing:
        raise DatasetError(f"cannot write {path}: missing fields {missing}")
    data = {k: (v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v)) for k, v in arrays.items()}
    n = {k: v.shape[0] for k, v in data.items()}
    if len(set(n.values())) != 1:
        raise DatasetError(f"cannot write {path}: fields have different lengths {n}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with h5py.File(tmp, "w", track_order=True) as f:
            for k, v in data.items():
                v = v.astype(np.float32)
                chunks = (1, *v.shape[1:]) if v.ndim > 1 else (max(1, min(v.shape[0], 4096)),)
                f.create_dataset(k, data=v, chunks=chunks if v.shape[0] else None, track_times=False)
            f.attrs["image_fov"] = float(image_fov)
            f.attrs["source_fov"] = float(source_fov)
            f.attrs["z_lens"] = float(z_lens)
            f.attrs["z_source"] = float(z_source)
            f.attrs["config"] = json.dumps(dict(config or {}), sort_keys=True)
            f.attrs["seed"] = -1 if seed is None else int(seed)
            f.attrs["versions"] = json.dumps(_versions(), sort_keys=True)
            for k, v in (extra_attrs or {}).items():
                f.attrs[k] = v
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def read_lens_dataset(path: str | os.PathLike, *, fields: tuple[str, ...] = LENS_FIELDS) -> dict[str, Any]:
    """Read and validate a lens dataset written by :func:`write_lens_dataset`.

    Returns a dict of float32 tensors for ``fields`` plus ``"attrs"``. Raises
    :class:`DatasetError` with a one-line reason for a missing file, a file that is not HDF5, a
    missing field or attribute, or inconsistent shapes.
    """
    import h5py

    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: no such file")
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise DatasetError(f"{path}: not a readable HDF5 file ({e})") from None
    with f:
        missing = [k for k in fields if k not in f]
        if missing:
            raise DatasetError(f"{path}: missing datasets {missing}")
        absent = [a for a in _REQUIRED_ATTRS if a not in f.attrs]
        if absent:
            raise DatasetError(f"{path}: missing attributes {absent}")
        out: dict[str, Any] = {}
        n = None
        for k in fields:
            d = f[k]
            want = 1 if k == "noise_sigma" else 4
            if d.ndim != want or (want == 4 and (d.shape[1] != 1 or d.shape[2] != d.shape[3])):
                raise DatasetError(
                    f"{path}: dataset {k!r} has shape {d.shape}, expected (n, 1, M, M)"
                    if want == 4
                    else f"{path}: dataset {k!r} has shape {d.shape}, expected (n,)"
                )
            if d.dtype.kind != "f":
                raise DatasetError(f"{path}: dataset {k!r} has dtype {d.dtype}, expected floating point")
            if n is not None and d.shape[0] != n:
                raise DatasetError(f"{path}: dataset {k!r} has {d.shape[0]} examples, others have {n}")
            n = d.shape[0]
            arr = d[()]
            if not np.isfinite(arr).all():
                raise DatasetError(f"{path}: dataset {k!r} contains NaN or infinite values")
            out[k] = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))
        out["attrs"] = {k: (v.item() if hasattr(v, "item") else v) for k, v in f.attrs.items()}
    for k in ("image_fov", "source_fov"):
        if not float(out["attrs"][k]) > 0:
            raise DatasetError(f"{path}: attribute {k} must be positive, got {out['attrs'][k]}")
    return out
