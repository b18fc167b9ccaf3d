"""HDF5 datasets (SPEC section 9): atomic, resumable, sharded writes and validated reads.

A lens dataset holds ``source (n, 1, Ns, Ns)``, ``kappa (n, 1, N, N)``, ``observation (n, 1,
N, N)``, ``psf (n, 1, k, k)`` and ``noise_sigma (n,)``; kappa and source datasets hold
``kappa`` or ``source`` with their own extra fields (``theta_e``, ``halo_id``, ``split``,
``catalog_index``). Images are float32, one example per chunk; the file attributes carry
``image_fov``, ``source_fov``, ``z_lens``, ``z_source`` (as relevant), ``config`` (JSON),
``seed`` and ``versions`` (JSON).

Writes go to a temporary name and are renamed when complete, so an interrupted write never
leaves a half-written file under the final name, and the same data give identical bytes.
Long generations (:func:`write_in_blocks`) write fixed-size blocks, each drawn from its own
seed, into a hidden directory beside the output; a rerun skips the finished blocks, so a
resumed run gives the same bytes as an uninterrupted one, and shards of a job array hold exactly
the slices of the unsharded dataset.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lenscore.config import differences
from lenscore.files import (
    ExclusiveLock,
    hidden_sibling,
    open_hdf5,
    remove_stale_temporaries as _remove_stale,
    write_text,
    written,
)

__all__ = [
    "FIELD_NDIM",
    "LENS_ATTRS",
    "map_attrs",
    "LENS_FIELDS",
    "MAX_ABS",
    "DatasetError",
    "LensDataset",
    "check_dataset_values",
    "check_values",
    "dataset_info",
    "read_dataset",
    "read_lens_dataset",
    "shard_range",
    "write_dataset",
    "write_in_blocks",
    "write_lens_dataset",
]

LENS_FIELDS = ("source", "kappa", "observation", "psf", "noise_sigma")
FIELD_NDIM = {
    "source": 4,
    "kappa": 4,
    "observation": 4,
    "psf": 4,
    "noise_sigma": 1,
    "theta_e": 1,
    "halo_id": 1,
    "split": 1,
    "catalog_index": 1,
    "projection": 1,
    "source_pred": 4,
    "kappa_pred": 4,
    "chi2_nu": 1,
    "source_baseline": 4,
    "kappa_baseline": 4,
    "chi2_nu_baseline": 1,
    "finetune_steps": 1,
    "best_step": 1,
    "noise_map": 4,
    "flux_scale": 1,
}
"""Expected number of axes of every known field; images are ``(n, 1, M, M)``."""
LENS_ATTRS = ("image_fov", "source_fov", "z_lens", "z_source")


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


def _as_numpy(v) -> np.ndarray:
    a = v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v)
    if a.dtype.kind == "f":
        return a.astype(np.float32)
    if a.dtype.kind in "iub":
        return a.astype(np.int64) if a.dtype.kind != "b" else a.astype(np.uint8)
    raise TypeError(f"cannot store an array of dtype {a.dtype}")


def _create(f, name: str, shape: tuple, dtype) -> Any:
    chunks = (1, *shape[1:]) if len(shape) > 1 else (max(1, min(shape[0], 4096)),)
    return f.create_dataset(name, shape=shape, dtype=dtype, chunks=chunks if shape[0] else None, track_times=False)


def _write_attrs(f, attrs: Mapping[str, Any]) -> None:
    for k, v in attrs.items():
        if isinstance(v, dict | list | tuple) or v is None:
            v = json.dumps(v, sort_keys=True)
        f.attrs[k] = v
    if "versions" not in attrs:
        f.attrs["versions"] = json.dumps(_versions(), sort_keys=True)


def write_dataset(path: str | os.PathLike, arrays: Mapping[str, Any], attrs: Mapping[str, Any]) -> Path:
    """Write ``arrays`` (same first dimension) and ``attrs`` to ``path`` atomically.

    Floating-point arrays are stored as float32, integers as int64. Dict or list attributes are
    stored as JSON.
    """
    import h5py

    path = Path(path)
    data = {k: _as_numpy(v) for k, v in arrays.items()}
    lengths = {k: v.shape[0] for k, v in data.items()}
    if len(set(lengths.values())) > 1:
        raise DatasetError(f"cannot write {path}: fields have different lengths {lengths}")
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    with written(path) as tmp, h5py.File(tmp, "w", track_order=True) as f:
        for k, v in data.items():
            _create(f, k, v.shape, v.dtype)[...] = v
        _write_attrs(f, attrs)
    return path


def write_lens_dataset(
    path: str | os.PathLike,
    arrays: Mapping[str, Any],
    *,
    image_fov: float,
    source_fov: float,
    z_lens: float,
    z_source: float,
    config: Mapping[str, Any] | None = None,
    seed: int | None = None,
    extra_attrs: Mapping[str, Any] | None = None,
) -> Path:
    """Write a lens dataset (at least the fields of :data:`LENS_FIELDS`) atomically."""
    path = Path(path)
    missing = [k for k in LENS_FIELDS if k not in arrays]
    if missing:
        raise DatasetError(f"cannot write {path}: missing fields {missing}")
    attrs = {
        "image_fov": float(image_fov),
        "source_fov": float(source_fov),
        "z_lens": float(z_lens),
        "z_source": float(z_source),
        "config": dict(config or {}),
        "seed": -1 if seed is None else int(seed),
        **dict(extra_attrs or {}),
    }
    return write_dataset(path, arrays, attrs)


def _open(path: Path):
    return open_hdf5(path, DatasetError)


MAX_ABS = 1e6
"""Largest magnitude a stored map may hold: images are normalised to peak ~1, kappa is O(1)."""
MIN_NOISE = 1e-12
"""Smallest noise sigma, in units of the image (normalised to peak ~1): below it, chi2 of a
residual of order 1 overflows float32 (1/sigma^2 per pixel, summed over the image)."""
UNBOUNDED = ("chi2_nu", "chi2_nu_baseline", "flux_scale")
"""Fields that are figures, not maps: finite and non-negative (a flux scale positive), but not
bounded by MAX_ABS (a poor fit to a bright lens has chi2_nu far above 1e6; an image in counts can
peak far above it)."""


def _check_storage(f, path: Path, name: str) -> None:
    """Refuse a dataset whose bytes are not in this file, or that claims more data than it
    holds: an external link, external raw storage (it would read any local file), a virtual
    dataset, or unwritten chunks (a few-KB file that expands to gigabytes of fill value)."""
    import h5py

    link = f.get(name, getlink=True)
    if isinstance(link, h5py.ExternalLink):
        raise DatasetError(f"{path}: {name!r} is a link to another file ({link.filename}); refused")
    d = f[name]
    if not isinstance(d, h5py.Dataset):
        raise DatasetError(f"{path}: {name!r} is a group, not a dataset")
    if d.is_virtual:
        raise DatasetError(f"{path}: {name!r} is a virtual dataset (its data live in other files); refused")
    if d.id.get_create_plist().get_external_count():
        raise DatasetError(f"{path}: {name!r} keeps its data in an external file; refused")
    if d.size == 0:
        return
    if d.chunks is not None:
        expected = int(np.prod([-(-n // c) for n, c in zip(d.shape, d.chunks, strict=True)]))
        written = d.id.get_num_chunks()
        if written < expected:
            raise DatasetError(
                f"{path}: {name!r} claims {d.shape} but holds {written} of its {expected} chunks (a truncated "
                "or forged file); refused"
            )
    elif d.id.get_storage_size() < d.size * d.dtype.itemsize:
        raise DatasetError(f"{path}: {name!r} claims {d.shape} but its file holds fewer bytes; refused")


def _float_attr(f, path: Path, name: str) -> float:
    try:
        value = float(f.attrs[name])
    except (TypeError, ValueError):  # text, or an array of several values
        raise DatasetError(f"{path}: attribute {name} is {f.attrs[name]!r}, not a number") from None
    if not np.isfinite(value):
        raise DatasetError(f"{path}: attribute {name} is {value}, not a finite number")
    return value


def _check_attrs(f, path: Path, required_attrs: Sequence[str]) -> None:
    absent = [a for a in required_attrs if a not in f.attrs]
    if absent:
        raise DatasetError(f"{path}: missing attributes {absent}")
    values = {a: _float_attr(f, path, a) for a in LENS_ATTRS if a in f.attrs}  # present ones too
    for a, v in values.items():
        if not v > 0:
            raise DatasetError(f"{path}: attribute {a} must be positive, got {v}")
    if "image_fov" in values and "source_fov" in values and values["source_fov"] > values["image_fov"]:
        raise DatasetError(
            f"{path}: source_fov {values['source_fov']} exceeds image_fov {values['image_fov']} (arcsec): the lensed "
            "source plane is smaller than the image; is it in other units?"
        )
    if "z_lens" in values and "z_source" in values and not values["z_lens"] < values["z_source"]:
        raise DatasetError(f"{path}: z_lens {values['z_lens']} is not below z_source {values['z_source']}")


def check_values(path: Path | str, name: str, arr: np.ndarray, *, image_pixels: int | None = None) -> None:
    """What a field's values must mean, checked on (a chunk of) its rows: finite and within
    MAX_ABS; kappa non-negative; noise sigma and noise maps positive (a map +inf where a pixel is
    masked, but not everywhere); PSFs non-negative, odd, no larger than the image, each summing to
    1 within 1e-3."""
    if arr.dtype.kind != "f" or arr.size == 0:
        return
    if name == "noise_map" and np.isposinf(arr).any():  # +inf: a masked pixel
        if np.isposinf(arr).reshape(arr.shape[0], -1).all(axis=1).any():
            raise DatasetError(f"{path}: dataset 'noise_map' masks every pixel of a lens (all +inf)")
        arr = np.where(np.isposinf(arr), 1.0, arr)  # the remaining checks are on the pixels with data
    if not np.isfinite(arr).all():
        raise DatasetError(f"{path}: dataset {name!r} contains NaN or infinite values")
    if name in UNBOUNDED:
        if (arr < 0).any() or (name == "flux_scale" and (arr == 0).any()):
            raise DatasetError(f"{path}: dataset {name!r} has {'negative' if (arr < 0).any() else 'zero'} values")
        return
    if np.abs(arr).max() > MAX_ABS:
        raise DatasetError(
            f"{path}: dataset {name!r} holds values up to {np.abs(arr).max():.3g}, beyond {MAX_ABS:g} (normalise the "
            "images to a peak near 1)"
        )
    if name in ("kappa", "kappa_pred", "kappa_baseline") and (arr < 0).any():
        raise DatasetError(f"{path}: dataset {name!r} has negative convergence")
    if name in ("noise_sigma", "noise_map") and not (arr > 0).all():
        raise DatasetError(f"{path}: dataset {name!r} has values <= 0 (noise must be positive)")
    if name in ("noise_sigma", "noise_map") and arr.min() < MIN_NOISE:
        raise DatasetError(
            f"{path}: dataset {name!r} has values down to {arr.min():.3g}, below {MIN_NOISE:g} of the image's scale "
            "(chi2 would overflow float32): is the noise in the images' units?"
        )
    if name == "psf":
        k = arr.shape[-1]
        if k % 2 == 0:
            raise DatasetError(f"{path}: the PSF kernels are {k}x{k}, expected an odd size (centred)")
        if image_pixels is not None and k > image_pixels:
            raise DatasetError(f"{path}: the PSF kernels ({k}x{k}) are larger than the images ({image_pixels}^2)")
        if (arr < 0).any():
            raise DatasetError(f"{path}: dataset 'psf' has negative values")
        sums = arr.reshape(arr.shape[0], -1).sum(axis=1, dtype=np.float64)
        worst = float(np.abs(sums - 1).max())
        if worst > 1e-3:
            raise DatasetError(f"{path}: a PSF sums to {sums[np.abs(sums - 1).argmax()]:.6g}, expected 1 (within 1e-3)")


def _check_fields(f, path: Path, fields: Sequence[str], required_attrs: Sequence[str]) -> int:
    """Validate storage, shapes, dtypes and attributes without reading the arrays; return n."""
    missing = [k for k in fields if k not in f]
    if missing:
        raise DatasetError(f"{path}: missing datasets {missing}")
    _check_attrs(f, path, required_attrs)
    n = None
    for k in fields:
        _check_storage(f, path, k)
        d = f[k]
        want = FIELD_NDIM.get(k)
        if want == 4 and (d.ndim != 4 or d.shape[1] != 1 or d.shape[2] != d.shape[3]):
            raise DatasetError(f"{path}: dataset {k!r} has shape {d.shape}, expected (n, 1, M, M)")
        if want == 1 and d.ndim != 1:
            raise DatasetError(f"{path}: dataset {k!r} has shape {d.shape}, expected (n,)")
        if want == 4 and d.dtype.kind != "f":
            raise DatasetError(f"{path}: dataset {k!r} has dtype {d.dtype}, expected floating point")
        if d.dtype.kind == "f" and d.dtype.itemsize not in (4, 8):
            raise DatasetError(f"{path}: dataset {k!r} has dtype {d.dtype}, expected float32 or float64")
        if d.dtype.kind not in "fiu":
            raise DatasetError(f"{path}: dataset {k!r} has dtype {d.dtype}, expected numbers")
        if k == "split" and d.dtype.kind not in "iu":
            raise DatasetError(f"{path}: dataset 'split' has dtype {d.dtype}, expected integers (0 train, 1 test)")
        if n is not None and d.shape[0] != n:
            raise DatasetError(f"{path}: dataset {k!r} has {d.shape[0]} examples, others have {n}")
        n = d.shape[0]
    return 0 if n is None else n


def _attrs(f) -> dict[str, Any]:
    """The attributes as Python values (an array attribute as a list: never a number)."""

    def value(v: Any) -> Any:
        if isinstance(v, np.ndarray) and v.size != 1:
            return v.tolist()
        return v.item() if hasattr(v, "item") else v

    return {k: value(v) for k, v in f.attrs.items()}


def read_dataset(
    path: str | os.PathLike, fields: Sequence[str], *, required_attrs: Sequence[str] = (), rows: slice | None = None
) -> dict[str, Any]:
    """Read and validate ``fields`` of a dataset (``rows`` of them: a slice; all by default):
    a dict of tensors plus ``"attrs"``.

    Raises :class:`DatasetError` with a one-line reason for a missing file, a file that is not
    HDF5, a missing field or attribute, wrong shapes or dtypes, or non-finite values.
    """
    path = Path(path)
    with _open(path) as f:
        _check_fields(f, path, fields, required_attrs)
        out: dict[str, Any] = {}
        pixels = f["observation"].shape[-1] if "observation" in f and f["observation"].ndim == 4 else None
        for k in fields:
            arr = f[k][()] if rows is None else f[k][rows]
            if arr.dtype.kind == "f":
                check_values(path, k, arr, image_pixels=pixels)
                out[k] = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))
            else:
                out[k] = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.int64))
        out["attrs"] = _attrs(f)
    return out


def check_dataset_values(path: str | os.PathLike, name: str, *, rows: int = 256) -> None:
    """:func:`check_values` over every row of one field, ``rows`` at a time (memory stays flat
    whatever the file's size): a bad map anywhere is found before any work starts."""
    path = Path(path)
    with _open(path) as f:
        _check_fields(f, path, [name], ())
        d = f[name]
        for start in range(0, d.shape[0], rows):
            check_values(path, name, d[start : start + rows])


def read_lens_dataset(path: str | os.PathLike, *, fields: Sequence[str] = LENS_FIELDS) -> dict[str, Any]:
    """Read and validate a lens dataset (:func:`read_dataset` with the lens attributes)."""
    return read_dataset(path, fields, required_attrs=LENS_ATTRS)


def dataset_info(path: str | os.PathLike) -> dict[str, Any]:
    """The fields (name -> shape) and attributes of a dataset, without reading its arrays."""
    import h5py

    path = Path(path)
    with _open(path) as f:
        fields = {}
        for k in f.keys():
            item = f.get(k)
            if isinstance(item, h5py.Dataset):
                fields[k] = tuple(item.shape)
            elif k in FIELD_NDIM:  # a known field stored as a group (or a dangling link): not a dataset
                raise DatasetError(
                    f"{path}: {k!r} is {'a group' if item is not None else 'a broken link'}, not a dataset"
                )
        return {"fields": fields, "attrs": _attrs(f)}


def shard_range(n_blocks: int, shard: int, n_shards: int) -> range:
    """The contiguous blocks of shard ``shard`` (0-based) out of ``n_shards``."""
    if not (n_shards >= 1 and 0 <= shard < n_shards):
        raise ValueError(f"shard must be I/N with 1 <= I <= N, got {shard + 1}/{n_shards}")
    return range(shard * n_blocks // n_shards, (shard + 1) * n_blocks // n_shards)


def remove_stale_temporaries(path: Path) -> None:
    """Delete ``.NAME.PID.tmp`` files beside ``path`` left by processes that no longer run (a
    kill during a write); a live process's temporary file is left alone."""
    _remove_stale(path.parent, path.name)


class _Lock(ExclusiveLock):
    """An exclusive, non-blocking lock on ``path`` (a ``.NAME.lock`` file beside it): a second
    writer of the same output is refused at once instead of mixing its data in."""

    def __init__(self, path: Path) -> None:
        lockfile = hidden_sibling(path, "lock")
        refusal = (
            f"{path}: another process is writing it (lock {lockfile}); wait for it to finish or choose another output"
        )
        super().__init__(lockfile, lambda: DatasetError(refusal))


def _nbytes(data: Mapping[str, Any]) -> int:
    """Bytes the arrays take once stored (floats as float32, integers as int64)."""
    return sum(int(np.prod(np.shape(v))) * (4 if np.asarray(v).dtype.kind == "f" else 8) for v in data.values())


def _ensure_space(where: Path, need: int, what: str) -> None:
    free = shutil.disk_usage(where).free
    if free < need * 1.05 + 2**20:
        raise DatasetError(
            f"no space left on the device of {where}: {what} needs about {need / 2**20:.0f} MB, "
            f"{free / 2**20:.0f} MB free; finished blocks are kept: free space and run the command again to resume"
        )


class _Sizes:
    """Examples per block of ``n`` in blocks of ``size``, over the blocks of ``blocks``, without
    listing them (a request for 1e9 examples must fail at its first block, not build a table)."""

    def __init__(self, n: int, size: int, blocks: range) -> None:
        self.n, self.size, self.blocks = n, size, blocks

    def __getitem__(self, k: int) -> int:
        return min(self.size, self.n - k * self.size)

    def items(self):
        return ((k, self[k]) for k in self.blocks)

    def total(self) -> int:
        if not self.blocks:
            return 0
        return (len(self.blocks) - 1) * self.size + self[self.blocks[-1]]


def _check_block(path: Path, k: int, data: Mapping[str, Any]) -> None:
    """Refuse a block whose values no reader would accept (NaN, overflow): written, it would
    only be refused when read back."""
    for name, v in data.items():
        try:
            check_values(path, name, np.asarray(v))
        except DatasetError as e:
            why = str(e).split(": ", 1)[-1]
            raise DatasetError(f"{path}: the result of block {k} is not valid ({why}); it was not written") from None


def _make_blocks(path: Path, work: Path, sizes: _Sizes, make_block, seed: int, progress) -> None:
    projected = False
    for k, count in sizes.items():
        bp = work / f"block-{k:06d}.h5"
        if bp.is_file():
            try:
                if next(iter(dataset_info(bp)["fields"].values()))[0] == count:
                    if progress is not None:
                        progress(count)
                    continue
            except (DatasetError, StopIteration):
                pass
        result = make_block(k, count, np.random.SeedSequence(int(seed), spawn_key=(k,)))
        data, stats = result if isinstance(result, tuple) else (result, {})
        got = {name: np.shape(v)[0] for name, v in data.items()}
        if set(got.values()) != {count}:
            raise RuntimeError(f"block {k} produced {got} examples, expected {count}")
        _check_block(path, k, data)
        per_example = _nbytes(data) / count
        if not projected:  # the rest of the blocks plus the assembled copy, before the first write
            finished = [int(p.stem.split("-")[1]) for p in work.glob("block-*.h5")]
            todo = sizes.total() - sum(sizes[j] for j in finished if j in sizes.blocks)
            _ensure_space(work, int(per_example * (todo + sizes.total())), f"the {todo} examples left")
            projected = True
        _ensure_space(work, int(per_example * count), f"block {k}")
        try:
            write_dataset(bp, data, {"block": k, "stats": dict(stats)})
        except OSError as e:
            if getattr(e, "errno", None) == errno.ENOSPC or "No space left" in str(e):
                raise DatasetError(
                    f"no space left on the device of {work} while writing block {k} (about "
                    f"{per_example * count / 2**20:.0f} MB); finished blocks are kept: free space and run again"
                ) from None
            raise
        if progress is not None:
            progress(count)


def write_in_blocks(
    path: str | os.PathLike,
    n: int,
    make_block: Callable[[int, int, np.random.SeedSequence], Mapping[str, Any]],
    *,
    attrs: Mapping[str, Any],
    seed: int,
    block_size: int = 256,
    blocks: range | None = None,
    progress: Callable[[int], None] | None = None,
    inputs: Sequence[str | os.PathLike] = (),
    overwrite: bool = False,
) -> Path:
    """Generate a dataset block by block, resumably, and assemble it at ``path``.

    ``make_block(k, count, seedseq)`` returns ``count`` examples of global block ``k``, drawn
    only from ``seedseq`` (``SeedSequence(seed, spawn_key=(k,))``), as a dict of arrays or as
    ``(arrays, stats)`` with integer statistics that are summed over the blocks into the
    ``stats`` attribute. The n examples form
    ``ceil(n / block_size)`` blocks; ``blocks`` restricts the run to some of them (a shard).
    Finished blocks live in ``.NAME.blocks/`` beside ``path`` until the assembly; if ``path``
    already holds the finished dataset with the same attributes, nothing is done; a file made
    otherwise (other settings, or not by this function) is refused unless ``overwrite``, so a
    mistyped option never replaces a dataset that took hours to make, and so are the unfinished
    blocks of a run with other settings.

    ``progress`` is called with 0 once these checks have passed (nothing is reported before a
    refusal), then with each block's count as it is finished or found finished.

    One process writes ``path`` at a time (a second is refused). The size and modification
    time of the ``inputs`` files are kept with the blocks: a resume over inputs that changed since
    is refused rather than mixing blocks of the old and new data. Free space is checked before
    each block (and for the whole rest after the first); a full disk stops with one line and the
    finished blocks kept. Temporary files of killed runs are removed.
    """

    path = Path(path)
    if n < 1 or block_size < 1:
        raise ValueError(f"need n >= 1 and block_size >= 1, got {n} and {block_size}")
    n_blocks = -(-n // block_size)
    blocks = range(n_blocks) if blocks is None else blocks
    sizes = _Sizes(n, block_size, blocks)
    manifest = json.loads(
        json.dumps(
            {
                **dict(attrs),
                "seed": int(seed),
                "n_total": n,
                "block_size": block_size,
                "blocks": [blocks.start, blocks.stop],
            },
            sort_keys=True,
            default=str,
        )
    )
    identity = {}
    for q in inputs:
        for f in sorted(Path(q).glob("*.h5")) if Path(q).is_dir() else [Path(q)]:
            st = f.stat()
            identity[str(f.resolve())] = [st.st_size, st.st_mtime_ns]
    with _Lock(path):
        return _write_in_blocks(path, make_block, attrs, seed, sizes, manifest, identity, progress, overwrite)


def _settings_that_differ(made: dict, manifest: dict) -> str:
    """What differs between two runs' manifests, for a refusal: the block range is left out where
    the count or the block size differs, since it follows from them."""
    follows = {"blocks"} if any(made.get(k) != manifest[k] for k in ("n_total", "block_size")) else set()
    made, manifest = ({k: v for k, v in m.items() if k not in follows} for m in (made, manifest))
    return "; ".join(differences(made, manifest))


def _write_in_blocks(path, make_block, attrs, seed, sizes, manifest, identity, progress, overwrite) -> Path:
    import h5py

    remove_stale_temporaries(path)
    if path.is_file():
        made = None
        try:
            made = json.loads(dataset_info(path)["attrs"].get("manifest", "null"))
            if made == manifest:
                if progress is not None:
                    progress(sizes.total())
                return path
        except (DatasetError, json.JSONDecodeError):
            pass
        if not overwrite:
            why = _settings_that_differ(made, manifest) if isinstance(made, dict) else "not by lens"
            raise DatasetError(
                f"{path} exists and was not made with these settings ({why}): choose another output, or remove it "
                "to make it again"
            )
    work = hidden_sibling(path, "blocks")
    mfile = work / "manifest.json"
    stored = None
    if mfile.is_file():
        try:
            stored = json.loads(mfile.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            stored = None
    if work.is_dir() and (not isinstance(stored, dict) or stored.get("options") != manifest):
        made = stored.get("options") if isinstance(stored, dict) else None
        if any(work.glob("block-*.h5")) and not overwrite:  # hours of work, perhaps: never removed unasked
            why = _settings_that_differ(made, manifest) if isinstance(made, dict) else "no readable manifest.json"
            raise DatasetError(
                f"{work} holds the unfinished blocks of a run with other settings ({why}): run with those settings "
                "to finish it, or remove the directory to start again"
            )
        shutil.rmtree(work)  # nothing of another run's to keep
        stored = None
    if stored is not None and stored.get("inputs") != identity and any(work.glob("block-*.h5")):
        changed = sorted(
            set(identity) ^ set(stored.get("inputs") or {})
            | {k for k in identity if (stored.get("inputs") or {}).get(k) != identity[k]}
        )
        raise DatasetError(
            f"{path}: the unfinished blocks in {work} were made from inputs that changed since ({', '.join(changed)}); "
            f"resuming would mix old and new data: remove {work} to start again"
        )
    work.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(mfile)
    if stored is None:
        write_text(mfile, json.dumps({"options": manifest, "inputs": identity}, sort_keys=True))
    if progress is not None:
        progress(0)  # every check passed: a caller may open its bar now, not before a refusal
    try:
        _make_blocks(path, work, sizes, make_block, seed, progress)
    except Exception:
        if not any(work.glob("block-*.h5")):
            shutil.rmtree(work, ignore_errors=True)  # nothing to resume: leave nothing behind
        raise
    # assemble
    first = dataset_info(work / f"block-{sizes.blocks.start:06d}.h5")["fields"]
    total = sizes.total()
    _ensure_space(path.parent, sum(p.stat().st_size for p in work.glob("block-*.h5")), f"assembling {path.name}")
    with written(path) as tmp:
        with h5py.File(tmp, "w", track_order=True) as out:
            dsets = {}
            for name, shape in first.items():
                with _open(work / f"block-{sizes.blocks.start:06d}.h5") as b:
                    dtype = b[name].dtype
                dsets[name] = _create(out, name, (total, *shape[1:]), dtype)
            at = 0
            stats: dict[str, int] = {}
            for k, count in sizes.items():
                with _open(work / f"block-{k:06d}.h5") as b:
                    for name, d in dsets.items():
                        d[at : at + count] = b[name][()]
                    for key, v in json.loads(b.attrs.get("stats", "{}")).items():
                        stats[key] = stats.get(key, 0) + v
                at += count
            _write_attrs(out, {**dict(attrs), "seed": int(seed), "stats": stats, "manifest": manifest})
    shutil.rmtree(work, ignore_errors=True)
    return path


class LensDataset(torch.utils.data.Dataset):
    """A torch ``Dataset`` over one HDF5 file or a directory of shards (``*.h5``, sorted).

    Every file is validated (fields, shapes, dtypes, attributes) when the dataset is built;
    files are opened lazily in each worker process, so it works with ``num_workers > 0``.
    Items are dicts of float32 tensors (``noise_sigma`` a 0-d tensor).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        fields: Sequence[str] = LENS_FIELDS,
        *,
        required_attrs: Sequence[str] = LENS_ATTRS,
    ) -> None:
        p = Path(path)
        if p.is_dir():
            files = sorted(q for q in p.glob("*.h5") if not q.name.startswith("."))
            if not files:
                raise DatasetError(f"{p}: no *.h5 shards in this directory")
        else:
            files = [p]
        self.files = files
        self.fields = tuple(fields)
        self.lengths = []
        self.attrs = None
        shapes = None
        for q in files:
            with _open(q) as f:
                self.lengths.append(_check_fields(f, q, self.fields, required_attrs))
                attrs = {a: _attrs(f)[a] for a in required_attrs}
                mine = {k: tuple(f[k].shape[1:]) for k in self.fields}
            if shapes is not None and mine != shapes:
                k = next(k for k in self.fields if mine[k] != shapes[k])
                raise DatasetError(
                    f"{q}: {k!r} maps are {mine[k]}, the other shards' {shapes[k]}: one dataset holds one resolution"
                )
            shapes = mine
            if self.attrs is not None and attrs != self.attrs:
                raise DatasetError(f"{q}: attributes {attrs} differ from the other shards' {self.attrs}")
            self.attrs = attrs
        self.offsets = np.concatenate([[0], np.cumsum(self.lengths)])
        self._handles: dict[int, Any] = {}
        self._pid = None

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def _file(self, i: int):
        import h5py

        if self._pid != os.getpid():  # a new worker: never share handles across processes
            self._handles, self._pid = {}, os.getpid()
        if i not in self._handles:
            self._handles[i] = h5py.File(self.files[i], "r")
        return self._handles[i]

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} examples")
        index %= len(self)
        i = int(np.searchsorted(self.offsets, index, side="right") - 1)
        f = self._file(i)
        j = index - int(self.offsets[i])
        out = {}
        for k in self.fields:
            a = np.asarray(f[k][j], dtype=np.float32)
            try:
                check_values(self.files[i], k, a[None])
            except DatasetError as e:
                raise DatasetError(f"{e} (example {j})") from None
            out[k] = torch.from_numpy(a)
        return out

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_handles"], state["_pid"] = {}, None
        return state


def map_attrs(path: str | os.PathLike, *, param: str = "data") -> dict[str, float]:
    """The fields of view and redshifts (:data:`LENS_ATTRS`) a dataset states, validated finite and
    positive. A source field wider than the image it is lensed into (the file's or the
    simulator's, when the file states none) is a unit mistake, refused with a
    :class:`lenscore.config.SettingError` naming ``param``: a prior trained on it would be refused
    by every RIM later."""
    from lenscore.config import SettingError
    from lenssim.geometry import IMAGE_FOV

    present = read_dataset(path, [])["attrs"]
    attrs = {k: float(present[k]) for k in LENS_ATTRS if k in present}
    image = attrs.get("image_fov", IMAGE_FOV)
    if attrs.get("source_fov", 0.0) > image:
        where = "its image_fov" if "image_fov" in attrs else "the simulator's image field"
        raise SettingError(
            f"{path}: source_fov {attrs['source_fov']:g} arcsec exceeds {where} of {image:g} arcsec: is it in other "
            "units?",
            param=param,
        )
    return attrs
