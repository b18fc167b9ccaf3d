"""Resumable, sharded generation of kappa, source and lens datasets (SPEC sections 1-3 and 9).

Each generator writes through :func:`lenssim.io.write_in_blocks`: fixed-size blocks, each from
its own seed, so a run can be killed and resumed, and job-array shards hold exactly the slices of
the single-run dataset. Splits are made by halo (kappa) or by catalogue galaxy (sources) before
any augmentation, so a test example never shares its origin with a training one.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from lenscore.config import SettingError
from lenssim._checks import SimulationError
from lenssim.data.convergence import KappaMapConfig, augment_kappa, einstein_radius, kappa_maps
from lenssim.data.lenses import (
    AcceptanceCriteria,
    Sampler,
    pool_sampler,
    sersic_source_sampler,
    sie_kappa_sampler,
    simulate_lenses,
)
from lenssim.data.observing import ObservationConfig
from lenssim.data.sources import CosmosSources, SourceStampConfig, prepare_source, synthetic_galaxy_stamp
from lenssim.data.tng import Particles
from lenssim.geometry import SOURCE_FOV, Geometry
from lenssim.io.datasets import DatasetError, _check_fields, _open, check_dataset_values, shard_range, write_in_blocks

__all__ = [
    "HaloSource",
    "h5_pool_sampler",
    "halo_sources",
    "shard_lenses",
    "shard_path",
    "split_counts",
    "sampler_from_spec",
    "simulate_kappa_dataset",
    "simulate_lens_dataset",
    "simulate_source_dataset",
    "split_labels",
]

_SPLIT_KEY = 2**31 - 1  # spawn key of the split's own random stream, apart from the blocks'
TRAIN, TEST = 0, 1


@dataclass(frozen=True)
class HaloSource:
    """A named halo and how to load its particles (from a cutout, a snapshot or a generator)."""

    name: str
    """The halo's name in the dataset's ``halos`` attribute (a file name, snapNNN-haloH, synthetic-SEED-I)."""
    load: Callable[[], Particles]
    """Reads the halo's particles when its maps are made (none is held in memory before)."""


def halo_sources(
    *,
    cutouts: Sequence[str | os.PathLike] = (),
    tng_base: str | os.PathLike | None = None,
    snapshot: int = 99,
    halos: Sequence[int] = (),
    subhalos: Sequence[int] = (),
    synthetic: int | None = None,
    seed: int = 0,
) -> list[HaloSource]:
    """The halos of one input: TNG web-API ``cutouts``, FoF ``halos`` and ``subhalos`` of a TNG
    output directory ``tng_base`` at ``snapshot``, or ``synthetic`` built-in halos (from
    ``seed``). Loading waits until a halo's maps are made; a choice that names no input, or
    several, is refused (:class:`lenscore.config.SettingError`)."""
    from lenssim.data import tng

    if sum([bool(cutouts), tng_base is not None, synthetic is not None]) != 1:
        raise SettingError(
            "give exactly one of cutouts, tng_base (with halos/subhalos) or synthetic", param="synthetic"
        )
    if (halos or subhalos) and tng_base is None:
        raise SettingError("halos and subhalos need tng_base", param="tng_base")
    if tng_base is not None and not (halos or subhalos):
        raise SettingError("tng_base needs at least one halo or subhalo", param="halos")
    for c in cutouts:
        if not Path(c).is_file():
            raise SettingError(f"{c}: no such file", param="cutouts")
    if cutouts:
        return [HaloSource(Path(c).name, functools.partial(tng.read_cutout, c)) for c in cutouts]
    if tng_base is not None:
        read = functools.partial(tng.read_snapshot_halo, tng_base, snapshot)
        return [HaloSource(f"snap{snapshot:03d}-halo{h}", functools.partial(read, halo=h)) for h in halos] + [
            HaloSource(f"snap{snapshot:03d}-subhalo{s}", functools.partial(read, subhalo=s)) for s in subhalos
        ]
    return [
        HaloSource(f"synthetic-{seed}-{i}", functools.partial(tng.synthetic_particles, [seed, i]))
        for i in range(synthetic)
    ]


def shard_path(output: str | os.PathLike, shard: tuple[int, int], *, directory: bool = False) -> Path:
    """Where shard ``shard`` (0-based I, N) of a dataset goes: ``output`` itself unsharded, else
    ``output/part-IIIII-of-NNNNN.h5``; ``directory``: the user wrote ``output`` as one (a trailing
    slash). Refuses a directory for an unsharded file and a file for shards."""
    output = Path(output)
    if shard == (0, 1):
        if directory:
            raise SettingError(
                f"{output}/ ends in a slash, a directory: give a file name, or a shard (--shard I/N) to write into it",
                param="output",
            )
        if output.is_dir():
            raise SettingError(f"{output} is a directory; give a file name (or a shard, --shard I/N)", param="output")
        return output
    if output.exists() and not output.is_dir():
        raise SettingError(f"{output} is a file; with --shard, OUTPUT is a directory", param="output")
    return output / f"part-{shard[0] + 1:05d}-of-{shard[1]:05d}.h5"


def shard_lenses(n_lenses: int, block_size: int, shard: tuple[int, int]) -> int:
    """How many of ``n_lenses`` (in blocks of ``block_size``) shard ``shard`` writes."""
    mine = shard_range(-(-n_lenses // block_size), *shard)
    return min(mine.stop * block_size, n_lenses) - mine.start * block_size if mine else 0


def split_counts(path: str | os.PathLike) -> tuple[int, int] | None:
    """(train, test) examples of a dataset (file or shard directory), None without a split."""
    path = Path(path)
    counts = np.zeros(2, dtype=int)
    for p in sorted(path.glob("part-*.h5")) if path.is_dir() else [path]:
        with _open(p) as f:
            if "split" not in f:
                return None
            counts += np.bincount(f["split"][()].astype(int).clip(0, 1), minlength=2)
    return int(counts[0]), int(counts[1])


def split_labels(n: int, test_fraction: float, seed: int) -> np.ndarray:
    """0 (train) or 1 (test) for each of ``n`` origins (halos, galaxies): exactly
    ``round(test_fraction * n)`` test ones, chosen from the seed."""
    if not 0 <= test_fraction < 1:
        raise ValueError(f"test fraction must lie in [0, 1), got {test_fraction}")
    rng = np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=(_SPLIT_KEY,)))
    labels = np.zeros(n, dtype=np.int64)
    labels[rng.permutation(n)[: int(round(test_fraction * n))]] = TEST
    return labels


def _torch_generator(ss: np.random.SeedSequence) -> torch.Generator:
    return torch.Generator().manual_seed(int(ss.generate_state(1, np.uint64)[0] >> 1))


def simulate_kappa_dataset(
    path: str | os.PathLike,
    halos: Sequence[HaloSource],
    *,
    maps_per_halo: int = 12,
    config: KappaMapConfig = KappaMapConfig(),
    theta_e_range: tuple[float, float] = (0.5, 2.5),
    max_shift: float = 0.3,
    test_fraction: float = 0.1,
    seed: int = 0,
    shard: tuple[int, int] = (0, 1),
    progress: Callable[[int], None] | None = None,
) -> Path:
    """Augmented kappa maps from particle halos: ``maps_per_halo`` maps per halo.

    Map ``j`` of a halo uses projection ``j mod 3`` (xy, xz, yz) with its own rotation, shift and
    Einstein-radius rescaling (:func:`augment_kappa`). Fields: ``kappa (n, 1, N, N)``,
    ``theta_e``, ``halo_id`` (index into the ``halos`` attribute), ``projection`` and ``split``
    (0 train, 1 test, by halo).
    """
    from lenssim.io.datasets import shard_range

    if not halos:
        raise ValueError("no halos to render")
    if maps_per_halo < 1:
        raise ValueError(f"maps per halo must be positive, got {maps_per_halo}")
    lo, hi = theta_e_range
    if not 0 < lo <= hi:
        raise ValueError(f"Einstein radius range must satisfy 0 < min <= max, got {theta_e_range}")
    labels = split_labels(len(halos), test_fraction, seed)
    projections = ("xy", "xz", "yz")

    def make_block(k: int, count: int, ss: np.random.SeedSequence):
        rng = np.random.default_rng(ss)
        rendered = kappa_maps(halos[k].load(), config, projections=projections)
        maps, theta_e, proj = [], [], []
        for j in range(count):
            p = j % len(projections)
            for _ in range(5):
                r = augment_kappa(
                    rendered[p],
                    rng,
                    pixels=config.pixels,
                    pixel_scale=config.pixel_scale,
                    theta_e_range=theta_e_range,
                    max_shift=max_shift,
                )
                if r is not None:
                    break
            else:
                raise SimulationError(
                    f"halo {halos[k].name}: no rescaling reaches an Einstein radius in {theta_e_range}"
                )
            stored = r[0].astype(np.float32)  # the Einstein radius of the map as stored
            maps.append(stored)
            theta_e.append(float(einstein_radius(stored, config.pixel_scale)))
            proj.append(p)
        return {
            "kappa": np.stack(maps)[:, None],
            "theta_e": np.asarray(theta_e),
            "halo_id": np.full(count, k),
            "projection": np.asarray(proj),
            "split": np.full(count, labels[k]),
        }

    attrs = {
        "kind": "kappa",
        "image_fov": config.image_fov,
        "z_lens": config.z_lens,
        "z_source": config.z_source,
        "config": {
            "kappa_maps": asdict(config),
            "maps_per_halo": maps_per_halo,
            "theta_e_range": list(theta_e_range),
            "max_shift": max_shift,
            "test_fraction": test_fraction,
        },
        "halos": [h.name for h in halos],
        "projections": list(projections),
    }
    blocks = shard_range(len(halos), *shard)
    return write_in_blocks(
        path,
        len(halos) * maps_per_halo,
        make_block,
        attrs=attrs,
        seed=seed,
        block_size=maps_per_halo,
        blocks=blocks,
        progress=progress,
    )


def simulate_source_dataset(
    path: str | os.PathLike,
    n: int,
    *,
    cosmos: CosmosSources | None = None,
    stamp: SourceStampConfig = SourceStampConfig(),
    source_fov: float = SOURCE_FOV,
    test_fraction: float = 0.1,
    seed: int = 0,
    block_size: int = 64,
    shard: tuple[int, int] = (0, 1),
    denoise: Callable[[np.ndarray], np.ndarray] | None = None,
    provenance: dict | None = None,
    progress: Callable[[int], None] | None = None,
) -> Path:
    """``n`` prepared source stamps, from COSMOS galaxies (``cosmos``) or GalSim synthetic ones.

    COSMOS galaxies are split 90/10 by catalogue index before drawing (the ``split`` field);
    each stamp draws a random galaxy of the catalogue, so galaxies repeat with new rotations,
    shifts and noise padding. Synthetic galaxies are all distinct; their split is random.
    Fields: ``source (n, 1, P, P)``, ``catalog_index`` (-1 for synthetic) and ``split``.
    ``denoise`` is applied to every stamp before it is clipped (see :func:`prepare_source`);
    ``provenance`` (e.g. the denoiser's run) is stored in the ``config`` attribute.
    """
    from lenssim.io.datasets import shard_range

    if n < 1:
        raise ValueError(f"number of sources must be positive, got {n}")
    labels = split_labels(len(cosmos), test_fraction, seed) if cosmos is not None else None

    def make_block(k: int, count: int, ss: np.random.SeedSequence):
        rng = np.random.default_rng(ss)
        out, index, split = [], [], []
        while len(out) < count:
            if cosmos is not None:
                gi = int(rng.integers(len(cosmos)))
                img = prepare_source(cosmos.stamp(gi, rng), rng, stamp, denoise=denoise)
                lab = int(labels[gi])
            else:
                gi = -1
                img = prepare_source(synthetic_galaxy_stamp(rng, stamp), rng, stamp, denoise=denoise)
                lab = int(rng.random() < test_fraction)
            if img is None:
                continue
            out.append(img)
            index.append(gi)
            split.append(lab)
        return {
            "source": np.stack(out)[:, None].astype(np.float32),
            "catalog_index": np.asarray(index),
            "split": np.asarray(split),
        }

    attrs = {
        "kind": "source",
        "source_fov": float(source_fov),
        "config": {
            "stamp": asdict(stamp),
            "test_fraction": test_fraction,
            "catalogue": None if cosmos is None else str(cosmos.path),
            "use_real": None if cosmos is None else cosmos.use_real,
            **(provenance or {}),
        },
    }
    n_blocks = math.ceil(n / block_size)
    return write_in_blocks(
        path,
        n,
        make_block,
        attrs=attrs,
        seed=seed,
        block_size=block_size,
        blocks=shard_range(n_blocks, *shard),
        progress=progress,
    )


def _dataset_files(path: Path) -> list[Path]:
    if path.is_dir():
        files = sorted(q for q in path.glob("*.h5") if not q.name.startswith("."))
        if not files:
            raise DatasetError(f"{path}: no *.h5 files in this directory")
        return files
    return [path]


def h5_pool_sampler(
    path: str | os.PathLike,
    field: str,
    *,
    split: str = "all",
    expected_pixels: int | None = None,
    device: torch.device | str = "cpu",
    in_memory: bool | None = False,
) -> tuple[Sampler, dict]:
    """Random draws from the ``field`` maps of an HDF5 kappa or source dataset.

    ``path`` is a file or a directory of shards. ``split`` is "train", "test" or "all" (uses the
    files' ``split`` field). Returns the sampler and the first file's attributes. Every file is
    validated first. By default the maps are read on demand, so a pool can be larger than
    memory; ``in_memory=True`` loads the pool once onto ``device`` (draws are then an index on
    the device, as on-the-fly training on a GPU wants), ``None`` does so when it takes at most
    1 GiB. The draws are the same either way.
    """
    import h5py

    if split not in ("train", "test", "all"):
        raise ValueError(f"split must be train, test or all, got {split!r}")
    files = _dataset_files(Path(path))
    index, attrs = [], None
    for fi, q in enumerate(files):
        with _open(q) as f:
            n = _check_fields(f, q, [field] if split == "all" else [field, "split"], ())
            if attrs is None:
                attrs = {k: (v.item() if hasattr(v, "item") else v) for k, v in f.attrs.items()}
            pixels = f[field].shape[-1]
            if expected_pixels is not None and pixels != expected_pixels:
                raise DatasetError(
                    f"{q}: {field} maps are {pixels} pixels wide, the simulation needs {expected_pixels}"
                )
            if split != "all":
                if "split" not in f:
                    raise DatasetError(f"{q}: no 'split' field to select the {split} set from")
                local = np.flatnonzero(f["split"][()] == (TEST if split == "test" else TRAIN))
            else:
                local = np.arange(n)
        index.append(np.stack([np.full(local.size, fi), local], axis=1))
    pool = np.concatenate(index)
    if pool.shape[0] == 0:
        raise DatasetError(f"{path}: no {split} examples of {field}")
    for q in files:  # every map, before the first draw: a bad one fails now, not hours in
        check_dataset_values(q, field)
    handles: dict[tuple[int, int], h5py.File] = {}

    def read(fi: int, rows: np.ndarray) -> np.ndarray:
        key = (os.getpid(), fi)
        if key not in handles:
            handles[key] = h5py.File(files[fi], "r")
        maps = handles[key][field][rows]  # h5py needs increasing indices
        if not np.isfinite(maps).all():
            raise DatasetError(f"{files[fi]}: {field} holds NaN or infinite values")
        if field == "kappa" and (maps < 0).any():
            raise DatasetError(f"{files[fi]}: kappa holds negative values")
        return maps

    def load(pick: np.ndarray) -> np.ndarray:
        out = np.empty((pick.shape[0], *read(int(pick[0, 0]), pick[:1, 1]).shape[1:]), dtype=np.float32)
        for fi in np.unique(pick[:, 0]):
            rows = np.flatnonzero(pick[:, 0] == fi)
            uniq, inverse = np.unique(pick[rows, 1], return_inverse=True)
            out[rows] = read(int(fi), uniq)[inverse]
        return out

    if in_memory is None:
        with _open(files[0]) as f:
            in_memory = pool.shape[0] * int(np.prod(f[field].shape[1:])) * 4 <= 2**30
    if in_memory:
        maps = torch.from_numpy(load(pool))
        for h in handles.values():
            h.close()
        handles.clear()
        return pool_sampler(maps, device), attrs

    def draw(count: int, generator: torch.Generator) -> torch.Tensor:
        pick = pool[torch.randint(0, pool.shape[0], (count,), generator=generator).numpy()]
        return torch.from_numpy(load(pick)).to(device)

    return draw, attrs


ANALYTIC = {"kappa": "sie", "source": "sersic"}
"""The analytic draws a sampler specification may name instead of a dataset, per kind."""


def sampler_from_spec(
    spec: str | os.PathLike,
    kind: str,
    *,
    config: ObservationConfig,
    split: str = "all",
    device: torch.device | str = "cpu",
    in_memory: bool | None = False,
    param: str | None = None,
) -> Sampler:
    """The sampler a specification names: for ``kind`` "kappa", ``"sie"`` (Table 2's SIE maps)
    or a kappa dataset (file or shard directory); for "source", ``"sersic"`` (analytic Sersic
    sources) or a source dataset. A dataset's maps must be on ``config``'s grid, its field of
    view ``config``'s (refused in one line, a :class:`lenscore.config.SettingError` naming
    ``param`` when given). ``split`` and ``in_memory`` are :func:`h5_pool_sampler`'s."""
    if kind not in ANALYTIC:
        raise ValueError(f"kind must be 'kappa' or 'source', got {kind!r}")
    if str(spec) == ANALYTIC[kind]:
        make = sie_kappa_sampler if kind == "kappa" else sersic_source_sampler
        return make(config=config, device=device)
    pixels, fov = (config.image_pixels, "image_fov") if kind == "kappa" else (config.source_pixels, "source_fov")
    sampler, attrs = h5_pool_sampler(
        Path(spec), kind, split=split, expected_pixels=pixels, device=device, in_memory=in_memory
    )
    error = DatasetError if param is None else functools.partial(SettingError, param=param)
    geometry = Geometry(config.image_pixels, config.image_fov, config.source_fov)
    geometry.refuse_other(str(spec), **{fov: attrs.get(fov)}, whose="the simulation's", error=error)
    return sampler


def simulate_lens_dataset(
    path: str | os.PathLike,
    n: int,
    kappa_sampler: Sampler,
    source_sampler: Sampler,
    *,
    config: ObservationConfig = ObservationConfig(),
    criteria: AcceptanceCriteria = AcceptanceCriteria(),
    provenance: dict | None = None,
    seed: int = 0,
    device: torch.device | str = "cpu",
    block_size: int = 256,
    shard: tuple[int, int] = (0, 1),
    progress: Callable[[int], None] | None = None,
    inputs: tuple[str | os.PathLike, ...] = (),
) -> Path:
    """``n`` accepted lenses from random kappa-source pairs, with Table 1 PSFs and noise.

    ``inputs``: the files the samplers read (a resume over changed inputs is refused).

    The ``stats`` attribute sums over the blocks: ``tried`` lenses drawn = ``n`` kept +
    ``rejected`` (failed a check) + ``surplus`` (accepted beyond a block's count), and per
    check the ``rejected_CHECK`` failures (a lens can fail several). ``provenance`` (e.g. the
    input files) is stored in the ``config`` attribute.
    """
    from lenssim.io.datasets import shard_range

    def make_block(k: int, count: int, ss: np.random.SeedSequence):
        batch = simulate_lenses(
            count,
            kappa_sampler,
            source_sampler,
            config=config,
            criteria=criteria,
            generator=_torch_generator(ss),
            device=device,
            batch_size=min(64, 2 * count),
        )
        arrays = {k_: getattr(batch, k_).numpy() for k_ in ("source", "kappa", "observation", "psf", "noise_sigma")}
        stats = {
            "tried": batch.tried,
            "rejected": batch.rejected_lenses,
            "surplus": batch.surplus,
            **{f"rejected_{k_}": v for k_, v in batch.rejected.items()},
        }
        return arrays, stats

    attrs = {
        "kind": "lenses",
        "image_fov": config.image_fov,
        "source_fov": config.source_fov,
        "z_lens": config.z_lens,
        "z_source": config.z_source,
        "config": {"observation": asdict(config), "acceptance": asdict(criteria), **(provenance or {})},
    }
    n_blocks = math.ceil(n / block_size)
    return write_in_blocks(
        path,
        n,
        make_block,
        attrs=attrs,
        seed=seed,
        block_size=block_size,
        blocks=shard_range(n_blocks, *shard),
        progress=progress,
        inputs=inputs,
    )
