"""Readers of IllustrisTNG files, tested on small files written in the exact TNG layouts."""

import shutil

import h5py
import numpy as np
import pytest

from lenssim import tng

H, A, BOX = 0.7, 0.5, 1000.0
TYPES = (0, 1, 4, 5)
MASSTABLE = np.array([0, 0.01, 0, 0, 0, 0])


def _header(g, counts_this, counts_total, nfiles):
    g.attrs["BoxSize"] = BOX
    g.attrs["HubbleParam"] = H
    g.attrs["Time"] = A
    g.attrs["Redshift"] = 1 / A - 1
    g.attrs["MassTable"] = MASSTABLE
    g.attrs["NumPart_ThisFile"] = np.asarray(counts_this, dtype=np.int32)
    g.attrs["NumPart_Total"] = np.asarray(counts_total, dtype=np.uint32)
    g.attrs["NumPart_Total_HighWord"] = np.zeros(6, dtype=np.uint32)
    g.attrs["NumFilesPerSnapshot"] = nfiles
    g.attrs["Omega0"] = 0.3089
    g.attrs["OmegaLambda"] = 0.6911


def write_snapshot(base, rng):
    """Three FoF groups (the second straddling the periodic box edge) plus unbound fuzz, in two
    snapshot chunks, a two-chunk group catalogue with two subhalos, and an offsets file."""
    snap = 99
    group_len = np.zeros((3, 6), dtype=np.int32)
    for t, lens in zip(TYPES, ([4, 3, 2], [6, 7, 5], [3, 4, 1], [1, 1, 0]), strict=True):
        group_len[:, t] = lens
    fuzz = np.array([2, 3, 0, 0, 1, 0])
    group_pos = np.array([[200.0, 300.0, 400.0], [999.0, 500.0, 0.5], [600.0, 600.0, 600.0]])
    coords, masses = {}, {}
    for t in TYPES:
        cs, ms = [], []
        for g in range(3):
            n = group_len[g, t]
            cs.append((group_pos[g] + rng.normal(0, 2.0, (n, 3))) % BOX)
            ms.append(rng.uniform(0.001, 0.01, n))
        cs.append(rng.uniform(0, BOX, (fuzz[t], 3)))
        ms.append(rng.uniform(0.001, 0.01, fuzz[t]))
        coords[t], masses[t] = np.concatenate(cs), np.concatenate(ms)
    total = np.array([len(coords[t]) if t in coords else 0 for t in range(6)])
    # chunk boundary inside group 1 for every type
    split = {t: group_len[0, t] + max(group_len[1, t] // 2, 0) for t in TYPES}
    sdir = base / f"snapdir_{snap:03d}"
    sdir.mkdir(parents=True)
    file_offsets = np.zeros((2, 6), dtype=np.int64)
    for i in range(2):
        this = np.zeros(6, dtype=np.int64)
        with h5py.File(sdir / f"snap_{snap:03d}.{i}.hdf5", "w") as f:
            for t in TYPES:
                sl = slice(0, split[t]) if i == 0 else slice(split[t], None)
                c = coords[t][sl]
                this[t] = len(c)
                if len(c) == 0:
                    continue
                g = f.create_group(f"PartType{t}")
                g["Coordinates"] = c
                if t != 1:
                    g["Masses"] = masses[t][sl].astype(np.float32)
                g["ParticleIDs"] = np.arange(len(c), dtype=np.uint64)
            _header(f.create_group("Header"), this, total, 2)
        if i == 0:
            file_offsets[1] = this
    group_offsets = np.concatenate([np.zeros((1, 6), dtype=np.int64), np.cumsum(group_len, axis=0)[:-1]])
    # subhalos: the first half of group 1's particles (by type), and all of group 2's
    sub_len = np.stack([group_len[1] // 2, group_len[2]])
    sub_off = np.stack([group_offsets[1], group_offsets[2]])
    sub_pos = np.stack([group_pos[1], group_pos[2]])
    gdir = base / f"groups_{snap:03d}"
    gdir.mkdir()
    for i, (groups, subs) in enumerate((([0, 1], [0]), ([2], [1]))):
        with h5py.File(gdir / f"fof_subhalo_tab_{snap:03d}.{i}.hdf5", "w") as f:
            h = f.create_group("Header")
            h.attrs["Ngroups_ThisFile"], h.attrs["Ngroups_Total"] = len(groups), 3
            h.attrs["Nsubgroups_ThisFile"], h.attrs["Nsubgroups_Total"] = len(subs), 2
            h.attrs["NumFiles"] = 2
            g = f.create_group("Group")
            g["GroupLenType"] = group_len[groups]
            g["GroupPos"] = group_pos[groups].astype(np.float32)
            g["GroupMass"] = np.ones(len(groups), dtype=np.float32)
            s = f.create_group("Subhalo")
            s["SubhaloLenType"] = sub_len[subs]
            s["SubhaloPos"] = sub_pos[subs].astype(np.float32)
    odir = base.parent / "postprocessing" / "offsets"
    odir.mkdir(parents=True)
    with h5py.File(odir / f"offsets_{snap:03d}.hdf5", "w") as f:
        f["Group/SnapByType"] = group_offsets
        f["Subhalo/SnapByType"] = sub_off
        f["FileOffsets/Group"] = np.array([0, 2])
        f["FileOffsets/Subhalo"] = np.array([0, 1])
        f["FileOffsets/SnapByType"] = file_offsets
    expected = {}
    for g in range(3):
        sel = {t: slice(group_offsets[g, t], group_offsets[g, t] + group_len[g, t]) for t in TYPES}
        expected[g] = ({t: coords[t][sel[t]] for t in TYPES}, {t: masses[t][sel[t]] for t in TYPES}, group_pos[g])
    return expected, (sub_off, sub_len, sub_pos, coords, masses)


def _physical(c, centre):
    d = c - centre
    d = (d + BOX / 2) % BOX - BOX / 2
    return d * A / H


@pytest.fixture
def snapshot(tmp_path):
    base = tmp_path / "TNG-test" / "output"
    expected, subs = write_snapshot(base, np.random.default_rng(0))
    return base, expected, subs


def _check(parts, coords, masses, centre):
    for t in TYPES:
        sel = parts.types == t
        assert sel.sum() == len(coords[t])
        if len(coords[t]) == 0:
            continue
        assert np.allclose(parts.positions[sel], _physical(coords[t], centre), atol=1e-9)
        m = np.full(len(coords[t]), MASSTABLE[1]) if t == 1 else masses[t].astype(np.float32)
        assert np.allclose(parts.masses[sel], m * 1e10 / H, rtol=1e-6)


@pytest.mark.parametrize("halo", [0, 1, 2])
def test_snapshot_halo_across_chunks_and_the_periodic_edge(snapshot, halo):
    base, expected, _ = snapshot
    parts = tng.read_snapshot_halo(base, 99, halo=halo)
    coords, masses, centre = expected[halo]
    _check(parts, coords, masses, centre.astype(np.float32))
    assert np.abs(parts.positions).max() < 20 * A / H  # unwrapped: no particle a box away
    assert parts.meta["redshift"] == pytest.approx(1.0) and parts.meta["halo"] == halo


def test_snapshot_without_offsets_file_uses_the_running_sum(snapshot):
    base, expected, _ = snapshot
    shutil.rmtree(base.parent / "postprocessing")
    parts = tng.read_snapshot_halo(base, 99, halo=2)
    _check(parts, *expected[2][:2], expected[2][2].astype(np.float32))
    with pytest.raises(tng.TNGFormatError, match="offsets"):
        tng.read_snapshot_halo(base, 99, subhalo=0)


def test_snapshot_subhalo(snapshot):
    base, _, (sub_off, sub_len, sub_pos, coords, masses) = snapshot
    parts = tng.read_snapshot_halo(base, 99, subhalo=0)
    sel = {t: slice(sub_off[0, t], sub_off[0, t] + sub_len[0, t]) for t in TYPES}
    _check(
        parts,
        {t: coords[t][sel[t]] for t in TYPES},
        {t: masses[t][sel[t]] for t in TYPES},
        sub_pos[0].astype(np.float32),
    )


def test_snapshot_errors(snapshot):
    base, _, _ = snapshot
    with pytest.raises(tng.TNGFormatError, match="halo 3 does not exist"):
        tng.read_snapshot_halo(base, 99, halo=3)
    with pytest.raises(ValueError, match="exactly one"):
        tng.read_snapshot_halo(base, 99)
    with pytest.raises(tng.TNGFormatError, match="snapdir_098"):
        tng.read_snapshot_halo(base, 98, halo=0)
    (base / "snapdir_099" / "snap_099.1.hdf5").unlink()
    with pytest.raises(tng.TNGFormatError, match="no such file"):
        tng.read_snapshot_halo(base, 99, halo=1)


def _cutout(path, dm, gas=None, gas_mass=None, masstable=MASSTABLE, header=True):
    with h5py.File(path, "w") as f:
        if header:
            _header(f.create_group("Header"), [0, len(dm), 0, 0, 0, 0], [0, len(dm), 0, 0, 0, 0], 1)
            f["Header"].attrs["MassTable"] = masstable
        f["PartType1/Coordinates"] = np.asarray(dm, dtype=np.float64)
        if gas is not None:
            f["PartType0/Coordinates"] = np.asarray(gas, dtype=np.float64)
            f["PartType0/Masses"] = np.asarray(gas_mass, dtype=np.float32)
    return path


def test_cutout_units_and_periodic_unwrapping(tmp_path):
    # two DM particles 1 ckpc/h either side of the box edge, one gas particle between
    p = _cutout(tmp_path / "cutout_1.hdf5", [[999.5, 10.0, 10.0], [0.5, 10.0, 10.0]], [[0.0, 10.0, 10.0]], [0.02])
    parts = tng.read_cutout(p)
    assert len(parts) == 3
    x = np.sort(parts.positions[:, 0])
    assert x[-1] - x[0] == pytest.approx(1.0 * A / H)  # 1 ckpc/h apart, not a box apart
    assert np.allclose(np.sort(parts.masses), np.sort([0.01e10 / H, 0.01e10 / H, np.float32(0.02) * 1e10 / H]))


def test_synthetic_cutout_roundtrip(tmp_path):
    p = tng.write_synthetic_cutout(tmp_path / "halo.hdf5", 5, n_dark=3000, n_stars=1000, n_gas=500)
    a, b = tng.read_cutout(p), tng.synthetic_particles(5, n_dark=3000, n_stars=1000, n_gas=500)
    assert np.array_equal(a.positions, b.positions) and np.array_equal(a.masses, b.masses)
    assert a.meta["counts"] == {0: 500, 1: 3000, 4: 1000, 5: 1}
    # the halo sits across the box edge in the file but is whole after unwrapping
    assert np.abs(a.positions).max() < 1000


@pytest.mark.parametrize(
    "kwargs, match",
    [({"header": False}, "no Header"), ({"masstable": np.zeros(6)}, "MassTable"), ({"masstable": np.zeros(3)}, "6")],
)
def test_cutout_errors(tmp_path, kwargs, match):
    p = _cutout(tmp_path / "bad.hdf5", [[1.0, 2.0, 3.0]], **kwargs)
    with pytest.raises(tng.TNGFormatError, match=match):
        tng.read_cutout(p)


def test_cutout_not_hdf5(tmp_path):
    p = tmp_path / "junk.hdf5"
    p.write_text("no")
    with pytest.raises(tng.TNGFormatError, match="not a readable HDF5"):
        tng.read_cutout(p)
    with pytest.raises(tng.TNGFormatError, match="no such file"):
        tng.read_cutout(tmp_path / "absent.hdf5")
