"""IllustrisTNG particles: readers for web-API cutouts and full snapshots, and synthetic halos.

Both readers return :class:`Particles` in physical units: positions in kpc relative to the
halo's centre (unwrapped across the periodic box), masses in Msun. TNG stores coordinates in
comoving kpc/h and masses in 1e10 Msun/h: x_phys = x * a / h, m = m * 1e10 / h, with the scale
factor a = ``Header.Time`` and h = ``Header.HubbleParam``. Dark matter has no ``Masses``
dataset; its mass is ``Header.MassTable[1]``.

Layouts, as the TNG project serves them:

* cutout (``cutout_ID.hdf5`` from the web API): ``Header`` and ``PartType{0,1,4,5}`` groups with
  ``Coordinates`` (N, 3) and ``Masses`` (N,) (not for type 1), coordinates in box units.
* snapshot: ``BASE/snapdir_NNN/snap_NNN.{i}.hdf5`` chunks, each with ``Header``
  (``NumPart_ThisFile``, ``NumPart_Total``, ``NumFilesPerSnapshot``, ...); the group catalogue
  ``BASE/groups_NNN/fof_subhalo_tab_NNN.{i}.hdf5`` (``Group/GroupLenType``, ``Group/GroupPos``,
  ``Subhalo/SubhaloLenType``, ``Subhalo/SubhaloPos``, header ``Ngroups_ThisFile``,
  ``Nsubgroups_ThisFile``, ``NumFiles``); and the offsets ``postprocessing/offsets/offsets_NNN.hdf5``
  (``Group/SnapByType``, ``Subhalo/SnapByType``, ``FileOffsets/...``) next to BASE or inside it.
  Without an offsets file, halo offsets are the running sum of ``GroupLenType`` (FoF groups are
  stored contiguously in order).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lenscore.files import open_hdf5, written

__all__ = [
    "PARTICLE_TYPES",
    "Particles",
    "TNGFormatError",
    "read_cutout",
    "read_snapshot_halo",
    "synthetic_halo",
    "synthetic_particles",
    "write_synthetic_cutout",
]

PARTICLE_TYPES = (0, 1, 4, 5)
"""Gas, dark matter, stars (and wind), black holes: every type that carries mass."""


class TNGFormatError(ValueError):
    """An IllustrisTNG file is missing or not in the layout the TNG project serves."""


@dataclass
class Particles:
    """One halo's particles in physical units.

    Attributes
    ----------
    positions
        ``(P, 3)`` kpc, relative to ``meta["centre_kpc"]`` (unwrapped).
    masses
        ``(P,)`` Msun.
    types
        ``(P,)`` TNG particle type of each particle.
    meta
        Provenance: redshift, scale factor, hubble, box size, file, halo id, ...
    """

    positions: np.ndarray
    masses: np.ndarray
    types: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return self.positions.shape[0]


def _open(path: Path):
    return open_hdf5(path, TNGFormatError)


def _header(f, path: Path) -> dict[str, Any]:
    if "Header" not in f:
        raise TNGFormatError(f"{path}: no Header group (not a TNG snapshot or cutout)")
    attrs = dict(f["Header"].attrs.items())
    for key in ("HubbleParam", "MassTable"):
        if key not in attrs:
            raise TNGFormatError(f"{path}: Header lacks the attribute {key}")
    if "Time" not in attrs and "Redshift" not in attrs:
        raise TNGFormatError(f"{path}: Header has neither Time nor Redshift")
    h = float(attrs["HubbleParam"])
    a = float(attrs["Time"]) if "Time" in attrs else 1.0 / (1.0 + float(attrs["Redshift"]))
    if not (0 < h < 10):
        raise TNGFormatError(f"{path}: HubbleParam {h} is not a Hubble parameter")
    if not (0 < a <= 1.0 + 1e-9):
        raise TNGFormatError(f"{path}: scale factor {a} is outside (0, 1]")
    mt = np.asarray(attrs["MassTable"], dtype=np.float64).reshape(-1)
    if mt.shape[0] < 6:
        raise TNGFormatError(f"{path}: MassTable has {mt.shape[0]} entries, expected 6")
    attrs["_h"], attrs["_a"], attrs["_masstable"] = h, a, mt
    attrs["_box"] = float(attrs.get("BoxSize", 0.0))
    return attrs


def _read_type(f, path: Path, ptype: int, header: dict, start: int = 0, stop: int | None = None):
    """Coordinates (ckpc/h) and masses (1e10 Msun/h) of one type; ``None`` when absent."""
    name = f"PartType{ptype}"
    if name not in f:
        return None
    g = f[name]
    if "Coordinates" not in g:
        raise TNGFormatError(f"{path}: {name} has no Coordinates")
    c = g["Coordinates"]
    if c.ndim != 2 or c.shape[1] != 3 or c.dtype.kind != "f":
        raise TNGFormatError(
            f"{path}: {name}/Coordinates has shape {c.shape} and dtype {c.dtype}, expected (N, 3) float"
        )
    stop = c.shape[0] if stop is None else stop
    coords = np.asarray(c[start:stop], dtype=np.float64)
    if "Masses" in g:
        mds = g["Masses"]
        if mds.shape != (c.shape[0],) or mds.dtype.kind != "f":
            raise TNGFormatError(f"{path}: {name}/Masses has shape {mds.shape}, expected ({c.shape[0]},) float")
        masses = np.asarray(mds[start:stop], dtype=np.float64)
    else:
        m = header["_masstable"][ptype]
        if not m > 0:
            raise TNGFormatError(f"{path}: {name} has no Masses and MassTable[{ptype}] is {m}")
        masses = np.full(coords.shape[0], m)
    if not (np.isfinite(coords).all() and np.isfinite(masses).all()):
        raise TNGFormatError(f"{path}: {name} holds NaN or infinite coordinates or masses")
    if (masses < 0).any():
        raise TNGFormatError(f"{path}: {name} has negative masses")
    return coords, masses


def _unwrap(coords: np.ndarray, centre: np.ndarray, box: float) -> np.ndarray:
    d = coords - centre
    if box > 0:
        d = (d + box / 2) % box - box / 2
    return d


def _to_particles(parts: dict[int, tuple[np.ndarray, np.ndarray]], header: dict, centre: np.ndarray | None, meta):
    if not parts:
        raise TNGFormatError(f"{meta.get('file')}: no particles of types {PARTICLE_TYPES}")
    coords = np.concatenate([c for c, _ in parts.values()])
    masses = np.concatenate([m for _, m in parts.values()])
    types = np.concatenate([np.full(len(m), t, dtype=np.int8) for t, (_, m) in parts.items()])
    box = header["_box"]
    if centre is None:
        # Unwrap about one particle (a halo is far smaller than half the box), then centre on
        # the mass-weighted median, a robust reference; the kappa maps refine the centre.
        d = _unwrap(coords, coords[int(np.argmax(masses))], box)
        order = np.argsort(d, axis=0)
        cum = np.cumsum(masses[order], axis=0)
        med = np.array([d[order[np.searchsorted(cum[:, k], cum[-1, k] / 2), k], k] for k in range(3)])
        centre = coords[int(np.argmax(masses))] + med
    d = _unwrap(coords, np.asarray(centre, dtype=np.float64), box)
    h, a = header["_h"], header["_a"]
    meta = dict(meta)
    meta.update(
        redshift=1.0 / a - 1.0,
        scale_factor=a,
        hubble=h,
        box_size_ckpc_h=box,
        centre_kpc=(np.asarray(centre) * a / h).tolist(),
        counts={int(t): int(len(m)) for t, (_, m) in parts.items()},
    )
    return Particles(positions=d * a / h, masses=masses * 1e10 / h, types=types, meta=meta)


def read_cutout(path: str | os.PathLike) -> Particles:
    """Read a TNG web-API cutout (all particle types present in the file)."""
    path = Path(path)
    with _open(path) as f:
        header = _header(f, path)
        parts = {}
        for t in PARTICLE_TYPES:
            r = _read_type(f, path, t, header)
            if r is not None and len(r[1]):
                parts[t] = r
    return _to_particles(parts, header, None, {"file": str(path), "layout": "cutout"})


def _offsets_file(base: Path, snap: int) -> Path | None:
    name = f"offsets_{snap:03d}.hdf5"
    for cand in (base / "postprocessing" / "offsets" / name, base.parent / "postprocessing" / "offsets" / name):
        if cand.is_file():
            return cand
    return None


def _catalogue_row(base: Path, snap: int, group: str, index: int) -> tuple[dict[str, np.ndarray], dict]:
    """One row of the group catalogue (``group`` is "Group" or "Subhalo") and its header."""
    gdir = base / f"groups_{snap:03d}"
    first = gdir / f"fof_subhalo_tab_{snap:03d}.0.hdf5"
    count_key = "Ngroups" if group == "Group" else "Nsubgroups"
    with _open(first) as f:
        if "Header" not in f:
            raise TNGFormatError(f"{first}: no Header group")
        hdr = dict(f["Header"].attrs.items())
    for key in ("NumFiles", f"{count_key}_Total"):
        if key not in hdr:
            raise TNGFormatError(f"{first}: Header lacks {key}")
    total = int(hdr[f"{count_key}_Total"])
    if not 0 <= index < total:
        what = "halo" if group == "Group" else "subhalo"
        raise TNGFormatError(f"{what} {index} does not exist: the catalogue holds {total} (0..{total - 1})")
    seen = 0
    for i in range(int(hdr["NumFiles"])):
        p = gdir / f"fof_subhalo_tab_{snap:03d}.{i}.hdf5"
        with _open(p) as f:
            n = int(f["Header"].attrs[f"{count_key}_ThisFile"])
            if seen + n > index:
                if group not in f:
                    raise TNGFormatError(f"{p}: no {group} group")
                row = {k: np.asarray(f[group][k][index - seen]) for k in f[group].keys()}
                return row, hdr
            seen += n
    raise TNGFormatError(f"{gdir}: the catalogue chunks hold fewer than {index + 1} entries")


def _group_offsets_by_sum(base: Path, snap: int, index: int) -> np.ndarray:
    """Particle offsets of FoF group ``index``: the running sum of GroupLenType."""
    gdir = base / f"groups_{snap:03d}"
    with _open(gdir / f"fof_subhalo_tab_{snap:03d}.0.hdf5") as f:
        nfiles = int(f["Header"].attrs["NumFiles"])
    off = np.zeros(6, dtype=np.int64)
    seen = 0
    for i in range(nfiles):
        with _open(gdir / f"fof_subhalo_tab_{snap:03d}.{i}.hdf5") as f:
            n = int(f["Header"].attrs["Ngroups_ThisFile"])
            if n == 0:
                continue
            lens = np.asarray(f["Group"]["GroupLenType"][: min(n, index - seen)], dtype=np.int64)
            off += lens.sum(axis=0)
            seen += n
            if seen >= index:
                break
    return off


def read_snapshot_halo(
    base: str | os.PathLike, snapshot: int = 99, *, halo: int | None = None, subhalo: int | None = None
) -> Particles:
    """Read one FoF halo or one subhalo's particles from a full TNG snapshot.

    Parameters
    ----------
    base
        The simulation's output directory (holding ``snapdir_NNN`` and ``groups_NNN``).
    halo, subhalo
        Exactly one of the two: a FoF group index or a Subfind subhalo index.
    """
    base = Path(base)
    if (halo is None) == (subhalo is None):
        raise ValueError("give exactly one of halo and subhalo")
    group, index = ("Group", halo) if halo is not None else ("Subhalo", subhalo)
    if index < 0:
        raise ValueError(f"{group.lower()} index must be non-negative, got {index}")
    snapdir = base / f"snapdir_{snapshot:03d}"
    if not snapdir.is_dir():
        raise TNGFormatError(f"{snapdir}: no such directory (is {base} a TNG output directory?)")
    row, _ = _catalogue_row(base, snapshot, group, index)
    len_key, pos_key = f"{group}LenType", f"{group}Pos"
    if len_key not in row or pos_key not in row:
        raise TNGFormatError(f"{base}: the group catalogue lacks {group}/{len_key} or {group}/{pos_key}")
    length = np.asarray(row[len_key], dtype=np.int64)
    offsets_path = _offsets_file(base, snapshot)
    if offsets_path is not None:
        with _open(offsets_path) as f:
            key = f"{group}/SnapByType"
            if key not in f:
                raise TNGFormatError(f"{offsets_path}: no {key}")
            offset = np.asarray(f[key][index], dtype=np.int64)
    elif group == "Group":
        offset = _group_offsets_by_sum(base, snapshot, index)
    else:
        raise TNGFormatError(
            f"no offsets file offsets_{snapshot:03d}.hdf5 under {base}/postprocessing/offsets or "
            f"{base.parent}/postprocessing/offsets: needed to locate a subhalo"
        )
    chunk0 = snapdir / f"snap_{snapshot:03d}.0.hdf5"
    with _open(chunk0) as f:
        header = _header(f, chunk0)
    nfiles = int(header.get("NumFilesPerSnapshot", 1))
    parts: dict[int, list] = {t: [] for t in PARTICLE_TYPES}
    file_start = np.zeros(6, dtype=np.int64)  # first particle index of each type in chunk i
    for i in range(nfiles):
        p = snapdir / f"snap_{snapshot:03d}.{i}.hdf5"
        with _open(p) as f:
            hdr = _header(f, p)
            n_this = np.asarray(hdr.get("NumPart_ThisFile"), dtype=np.int64).reshape(-1)
            if n_this.shape[0] < 6:
                raise TNGFormatError(f"{p}: Header lacks NumPart_ThisFile for 6 types")
            for t in PARTICLE_TYPES:
                lo = max(offset[t], file_start[t])
                hi = min(offset[t] + length[t], file_start[t] + n_this[t])
                if hi > lo:
                    r = _read_type(f, p, t, hdr, lo - file_start[t], hi - file_start[t])
                    if r is None:
                        raise TNGFormatError(f"{p}: PartType{t} missing though NumPart_ThisFile says {n_this[t]}")
                    parts[t].append(r)
            file_start += n_this
    got = {t: sum(len(m) for _, m in parts[t]) for t in PARTICLE_TYPES}
    for t in PARTICLE_TYPES:
        if got[t] != length[t]:
            raise TNGFormatError(
                f"{snapdir}: read {got[t]} particles of type {t} for {group.lower()} {index}, "
                f"the catalogue says {length[t]} (chunks missing or truncated?)"
            )
    merged = {t: (np.concatenate([c for c, _ in v]), np.concatenate([m for _, m in v])) for t, v in parts.items() if v}
    meta = {
        "file": str(snapdir),
        "layout": "snapshot",
        "snapshot": snapshot,
        ("halo" if group == "Group" else "subhalo"): index,
    }
    return _to_particles(merged, header, np.asarray(row[pos_key], dtype=np.float64), meta)


# --- synthetic halos -------------------------------------------------------------------------


def _nfw_radii(rng: np.random.Generator, n: int, rs: float, rmax: float) -> np.ndarray:
    # inverse of the NFW enclosed mass m(x) = ln(1 + x) - x / (1 + x) on a fine table
    x = np.geomspace(1e-4, rmax / rs, 4096)
    mx = np.log1p(x) - x / (1 + x)
    return rs * np.interp(rng.uniform(0, mx[-1], n), mx, x)


def _directions(rng: np.random.Generator, n: int) -> np.ndarray:
    v = rng.normal(size=(n, 3))
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    return q * np.sign(np.diag(r))


def synthetic_halo(
    seed: int | np.random.Generator = 0,
    *,
    n_dark: int = 20_000,
    n_stars: int = 8_000,
    n_gas: int = 4_000,
    n_subhalos: int = 4,
) -> dict[str, Any]:
    """A galaxy-scale halo as particles in TNG's units, for running everything with no download.

    A triaxial NFW dark-matter halo (M ~ 2-6e12 Msun/h, concentration 6-12, truncated at 200
    kpc/h), a flattened Hernquist stellar bulge (1-3e11 Msun/h, scale 2-5 kpc/h), an
    exponential gas disc, a central black hole and ``n_subhalos`` NFW subhalos of 1-5 % of the
    host's mass at 15-80 kpc/h. Returned as a dict ``{type: (coordinates ckpc/h, masses 1e10
    Msun/h)}`` plus the header values, centred near a corner of a 75 Mpc/h box so that it wraps
    around the periodic boundary (as real halos can).
    """
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    box = 75_000.0
    centre = np.array([box - 12.0, 8.0, 0.5 * box])
    m_dm = 10 ** rng.uniform(12.3, 12.8) / 1e10  # 1e10 Msun/h
    conc = rng.uniform(6, 12)
    r200 = 200.0
    rs = r200 / conc
    axes = np.sort(rng.uniform(0.6, 1.0, 3))[::-1]
    axes /= axes[0]
    rot = _random_rotation(rng)
    dm = _directions(rng, n_dark) * _nfw_radii(rng, n_dark, rs, r200)[:, None] * axes
    dm = dm @ rot.T
    mass_table = np.zeros(6)
    mass_table[1] = m_dm / n_dark
    # subhalos carved out of the host's dark matter budget: move some particles into clumps
    sub_frac = rng.uniform(0.01, 0.05, n_subhalos)
    start = 0
    for f in sub_frac:
        k = max(int(f * n_dark), 8)
        pos = _directions(rng, 1)[0] * rng.uniform(15, 80)
        dm[start : start + k] = pos + _directions(rng, k) * _nfw_radii(rng, k, 1.5, 15.0)[:, None]
        start += k
    m_star = 10 ** rng.uniform(11.0, 11.5) / 1e10
    a_h = rng.uniform(2.0, 5.0)
    u = rng.uniform(0, 0.98, n_stars)
    r_star = a_h * np.sqrt(u) / (1 - np.sqrt(u))  # Hernquist: M(<r) / M = r^2 / (r + a)^2
    stars = _directions(rng, n_stars) * r_star[:, None] * np.array([1.0, rng.uniform(0.7, 0.95), rng.uniform(0.5, 0.8)])
    stars = stars @ _random_rotation(rng).T
    m_gas = 0.15 * m_star
    rd = rng.uniform(3.0, 8.0)
    rad = rng.gamma(2.0, rd, n_gas)
    phi = rng.uniform(0, 2 * np.pi, n_gas)
    gas = np.stack([rad * np.cos(phi), rad * np.sin(phi), rng.normal(0, 0.5, n_gas)], axis=1) @ rot.T
    parts = {
        0: (gas, np.full(n_gas, m_gas / n_gas) * rng.uniform(0.8, 1.2, n_gas)),
        1: (dm, None),
        4: (stars, np.full(n_stars, m_star / n_stars) * rng.uniform(0.8, 1.2, n_stars)),
        5: (np.zeros((1, 3)), np.array([m_star * 2e-3])),
    }
    wrapped = {t: ((c + centre) % box, m) for t, (c, m) in parts.items()}
    return {
        "particles": wrapped,
        "header": {"BoxSize": box, "HubbleParam": 0.6774, "Time": 1.0, "Redshift": 0.0, "MassTable": mass_table},
        "centre": centre,
    }


def synthetic_particles(seed: int | np.random.Generator = 0, **kwargs) -> Particles:
    """:func:`synthetic_halo` converted to :class:`Particles`, exactly as a cutout file would be."""
    halo = synthetic_halo(seed, **kwargs)
    hdr = dict(halo["header"])
    hdr.update(_h=hdr["HubbleParam"], _a=hdr["Time"], _masstable=np.asarray(hdr["MassTable"]), _box=hdr["BoxSize"])
    parts = {}
    for t, (c, m) in halo["particles"].items():
        parts[t] = (c, np.full(len(c), hdr["_masstable"][t]) if m is None else m.astype(np.float32).astype(np.float64))
    return _to_particles(parts, hdr, None, {"file": None, "layout": "synthetic", "seed": str(seed)})


def write_synthetic_cutout(path: str | os.PathLike, seed: int | np.random.Generator = 0, **kwargs) -> Path:
    """Write :func:`synthetic_halo` as a TNG web-API cutout file (written atomically)."""
    import h5py

    halo = synthetic_halo(seed, **kwargs)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with written(path) as tmp, h5py.File(tmp, "w") as f:
        hdr = f.create_group("Header")
        counts = np.zeros(6, dtype=np.int64)
        for t, (c, _) in halo["particles"].items():
            counts[t] = len(c)
        for k, v in halo["header"].items():
            hdr.attrs[k] = v
        hdr.attrs["NumPart_ThisFile"] = counts
        hdr.attrs["NumPart_Total"] = counts
        hdr.attrs["NumFilesPerSnapshot"] = 1
        for t, (c, m) in halo["particles"].items():
            g = f.create_group(f"PartType{t}")
            g.create_dataset("Coordinates", data=c.astype(np.float64), track_times=False)
            if m is not None:
                g.create_dataset("Masses", data=m.astype(np.float32), track_times=False)
            g.create_dataset("ParticleIDs", data=np.arange(len(c), dtype=np.uint64), track_times=False)
    return path
