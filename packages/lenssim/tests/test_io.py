import os

import h5py
import numpy as np
import pytest
import torch

import lenssim
from lenssim.io.datasets import (
    DatasetError,
    LensDataset,
    dataset_info,
    read_dataset,
    write_in_blocks,
    write_lens_dataset,
)


def _arrays(n=3, npx=16, k=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {
        "source": torch.rand(n, 1, npx, npx, generator=g),
        "kappa": torch.rand(n, 1, npx, npx, generator=g),
        "observation": torch.rand(n, 1, npx, npx, generator=g),
        "psf": _normalised(torch.rand(n, 1, k, k, generator=g)),
        "noise_sigma": 0.01 + torch.rand(n, generator=g),
    }


def _normalised(psf):
    return psf / psf.sum(dim=(-1, -2), keepdim=True)


ATTRS = dict(image_fov=7.69, source_fov=3.0, z_lens=0.5, z_source=1.5)


def test_roundtrip_attributes_and_chunks(tmp_path):
    arrays = _arrays()
    path = lenssim.write_lens_dataset(tmp_path / "d.h5", arrays, config={"a": 1}, seed=7, **ATTRS)
    data = lenssim.read_lens_dataset(path)
    for k, v in arrays.items():
        assert torch.equal(data[k], v)
    assert data["attrs"]["seed"] == 7 and data["attrs"]["image_fov"] == 7.69
    assert '"a": 1' in data["attrs"]["config"] and "torch" in data["attrs"]["versions"]
    with h5py.File(path) as f:
        assert f["kappa"].chunks == (1, 1, 16, 16)
    assert list(tmp_path.iterdir()) == [path]  # no temporary left behind


def test_same_data_same_bytes(tmp_path):
    a = lenssim.write_lens_dataset(tmp_path / "a.h5", _arrays(), seed=1, **ATTRS)
    b = lenssim.write_lens_dataset(tmp_path / "b.h5", _arrays(), seed=1, **ATTRS)
    assert a.read_bytes() == b.read_bytes()


def test_failed_write_leaves_nothing(tmp_path):
    arrays = _arrays()
    arrays["noise_sigma"] = arrays["noise_sigma"][:2]
    with pytest.raises(lenssim.DatasetError, match="different lengths"):
        lenssim.write_lens_dataset(tmp_path / "d.h5", arrays, **ATTRS)
    bad = _arrays()
    bad["extra"] = np.array([object()] * 3, dtype=object)  # not numeric: fails after the file is open
    with pytest.raises(TypeError):
        lenssim.write_lens_dataset(tmp_path / "d.h5", bad, **ATTRS)
    assert list(tmp_path.iterdir()) == []


def test_missing_field_refused_on_write(tmp_path):
    arrays = _arrays()
    del arrays["psf"]
    with pytest.raises(lenssim.DatasetError, match="missing fields"):
        lenssim.write_lens_dataset(tmp_path / "d.h5", arrays, **ATTRS)


def _write_raw(path, **overrides):
    arrays = {k: v.numpy() for k, v in _arrays().items()}
    arrays.update(overrides)
    with h5py.File(path, "w") as f:
        for k, v in arrays.items():
            if v is not None:
                f[k] = v
        for k, v in ATTRS.items():
            f.attrs[k] = v
    return path


@pytest.mark.parametrize(
    "overrides, match",
    [
        ({"psf": None}, "missing datasets"),
        ({"kappa": np.zeros((3, 16, 16), np.float32)}, "shape"),
        ({"kappa": np.zeros((3, 1, 16, 15), np.float32)}, "shape"),
        ({"observation": np.zeros((3, 1, 16, 16), np.int32)}, "dtype"),
        ({"noise_sigma": np.ones(4, np.float32)}, "examples"),
        ({"source": np.full((3, 1, 16, 16), np.nan, np.float32)}, "NaN"),
    ],
)
def test_invalid_files_are_refused_in_one_line(tmp_path, overrides, match):
    path = _write_raw(tmp_path / "bad.h5", **overrides)
    with pytest.raises(lenssim.DatasetError, match=match) as e:
        lenssim.read_lens_dataset(path)
    assert "\n" not in str(e.value)


def _psf(values):
    return np.broadcast_to(np.asarray(values, np.float32), (3, 1, 5, 5)).copy()


def _one_hot_psf(k, total=1.0):
    psf = np.zeros((3, 1, k, k), np.float32)
    psf[..., k // 2, k // 2] = total
    return psf


@pytest.mark.parametrize(
    "overrides, attrs, match",
    [
        ({"noise_sigma": np.zeros(3, np.float32)}, {}, "noise must be positive"),
        ({"noise_sigma": -np.ones(3, np.float32)}, {}, "noise must be positive"),
        ({"psf": _psf(0.0)}, {}, "a PSF sums to 0"),
        ({"psf": _psf(-1 / 25)}, {}, "negative values"),
        ({"psf": _one_hot_psf(5, 7.0)}, {}, "a PSF sums to 7"),
        ({"psf": _one_hot_psf(4)}, {}, "odd size"),
        ({"psf": _one_hot_psf(17)}, {}, "larger than the images"),
        ({"kappa": -np.ones((3, 1, 16, 16), np.float32)}, {}, "negative convergence"),
        ({"observation": np.full((3, 1, 16, 16), 1e30, np.float32)}, {}, r"beyond 1e\+06"),
        ({"observation": np.zeros((3, 1, 16, 16), np.float16)}, {}, "expected float32 or float64"),
        ({}, {"source_fov": 30.0}, "source_fov 30.0 exceeds image_fov"),
        ({}, {"image_fov": "abc"}, "attribute image_fov is 'abc', not a number"),
        ({}, {"z_lens": 2.0}, "z_lens 2.0 is not below z_source"),
        ({}, {"image_fov": float("nan")}, "not a finite number"),
    ],
)
def test_meaningless_values_are_refused_naming_the_field(tmp_path, overrides, attrs, match):
    path = _write_raw(tmp_path / "bad.h5", **overrides)
    with h5py.File(path, "a") as f:
        for k, v in attrs.items():
            f.attrs[k] = v
    with pytest.raises(lenssim.DatasetError, match=match) as e:
        lenssim.read_lens_dataset(path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)


def test_hostile_storage_is_refused(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"x" * (3 * 16 * 16 * 4))
    # observation mapped onto a local text file: its bytes would decode as finite float32
    path = _write_raw(tmp_path / "external.h5", observation=None)
    with h5py.File(path, "a") as f:
        f.create_dataset(
            "observation", shape=(3, 1, 16, 16), dtype="f4", external=[(str(secret), 0, h5py.h5f.UNLIMITED)]
        )
    with pytest.raises(lenssim.DatasetError, match="external file"):
        lenssim.read_lens_dataset(path)
    # an external link to another file's dataset
    other = _write_raw(tmp_path / "other.h5")
    path = _write_raw(tmp_path / "link.h5", observation=None)
    with h5py.File(path, "a") as f:
        f["observation"] = h5py.ExternalLink(str(other), "/observation")
    with pytest.raises(lenssim.DatasetError, match="link to another file"):
        lenssim.read_lens_dataset(path)
    # a virtual dataset
    path = _write_raw(tmp_path / "virtual.h5", observation=None)
    layout = h5py.VirtualLayout(shape=(3, 1, 16, 16), dtype="f4")
    layout[:] = h5py.VirtualSource(str(other), "observation", shape=(3, 1, 16, 16))
    with h5py.File(path, "a") as f:
        f.create_virtual_dataset("observation", layout)
    with pytest.raises(lenssim.DatasetError, match="virtual dataset"):
        lenssim.read_lens_dataset(path)
    # a fill-value bomb: 1e7 chunks declared, none written; refused before anything is read
    path = _write_raw(tmp_path / "bomb.h5")
    with h5py.File(path, "a") as f:
        for k in lenssim.LENS_FIELDS:
            del f[k]
        for k in ("source", "kappa", "observation"):
            f.create_dataset(k, shape=(10**7, 1, 16, 16), dtype="f4", chunks=(1, 1, 16, 16))
        f.create_dataset("psf", shape=(10**7, 1, 5, 5), dtype="f4", chunks=(1, 1, 5, 5))
        f.create_dataset("noise_sigma", shape=(10**7,), dtype="f4", chunks=(4096,))
    assert path.stat().st_size < 100_000
    with pytest.raises(lenssim.DatasetError, match="holds 0 of its 10000000 chunks"):
        lenssim.read_lens_dataset(path)
    with pytest.raises(lenssim.DatasetError, match="holds 0 of"):
        lenssim.LensDataset(path)


def test_a_bad_map_anywhere_in_a_pool_is_found_before_the_first_draw(tmp_path):
    kappa = np.ones((900, 1, 16, 16), np.float32)
    kappa[871, 0, 3, 3] = np.nan
    lenssim.write_dataset(tmp_path / "k.h5", {"kappa": kappa}, {"image_fov": 7.69})
    with pytest.raises(lenssim.DatasetError, match="NaN"):
        lenssim.h5_pool_sampler(tmp_path / "k.h5", "kappa")


def test_not_hdf5_and_missing(tmp_path):
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"not an hdf5 file")
    with pytest.raises(lenssim.DatasetError, match="not a readable HDF5"):
        lenssim.read_lens_dataset(junk)
    with pytest.raises(lenssim.DatasetError, match="no such file"):
        lenssim.read_lens_dataset(tmp_path / "absent.h5")
    path = _write_raw(tmp_path / "noattr.h5")
    with h5py.File(path, "a") as f:
        del f.attrs["z_lens"]
    with pytest.raises(lenssim.DatasetError, match="missing attributes"):
        lenssim.read_lens_dataset(path)


def _blocks(count_calls):
    def make_block(k, count, seedseq):
        count_calls.append(k)
        rng = np.random.default_rng(seedseq)
        return {"x": rng.random((count, 1, 4, 4)).astype(np.float32)}

    return make_block


def test_a_second_writer_of_the_same_output_is_refused(tmp_path):
    from lenssim.io.datasets import _Lock

    out = tmp_path / "d.h5"
    with _Lock(out):  # another process holds the output
        import subprocess
        import sys

        code = (
            "import numpy as np, lenssim, sys\n"
            "try:\n"
            f"    lenssim.write_in_blocks({str(out)!r}, 4, lambda k, c, s: {{'x': np.zeros((c, 1, 4, 4))}},"
            " attrs={}, seed=0, block_size=2)\n"
            "except lenssim.DatasetError as e:\n"
            "    print(e); sys.exit(3)\n"
        )
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        assert proc.returncode == 3 and "another process is writing it" in proc.stdout
        assert not out.exists()
    lenssim.write_in_blocks(out, 4, _blocks([]), attrs={}, seed=0, block_size=2)  # free again
    assert out.is_file() and not (tmp_path / ".d.h5.lock").exists()


def test_a_resume_over_changed_inputs_is_refused(tmp_path):
    src = tmp_path / "in.h5"
    src.write_bytes(b"first version")
    out = tmp_path / "d.h5"
    calls = []

    def killed_after_one(k, count, seedseq):
        if calls:
            raise KeyboardInterrupt
        return _blocks(calls)(k, count, seedseq)

    with pytest.raises(KeyboardInterrupt):
        lenssim.write_in_blocks(out, 6, killed_after_one, attrs={}, seed=0, block_size=2, inputs=[src])
    src.write_bytes(b"second version, longer")
    with pytest.raises(lenssim.DatasetError, match="inputs that changed since") as e:
        lenssim.write_in_blocks(out, 6, _blocks([]), attrs={}, seed=0, block_size=2, inputs=[src])
    assert str(src.resolve()) in str(e.value)
    src.write_bytes(b"first version")  # same size; a different mtime is still a change
    with pytest.raises(lenssim.DatasetError, match="inputs that changed since"):
        lenssim.write_in_blocks(out, 6, _blocks([]), attrs={}, seed=0, block_size=2, inputs=[src])


def test_a_full_disk_stops_in_one_line_and_keeps_the_finished_blocks(tmp_path, monkeypatch):
    import errno
    import shutil

    import lenssim.io.datasets as io

    out = tmp_path / "d.h5"
    usage = shutil.disk_usage(tmp_path)
    # too little room for the whole dataset: refused before the first block is written
    monkeypatch.setattr(io.shutil, "disk_usage", lambda p: usage._replace(free=2**20))
    with pytest.raises(lenssim.DatasetError, match="no space left on the device.*needs about"):
        lenssim.write_in_blocks(out, 3 * 2**16, _blocks([]), attrs={}, seed=0, block_size=2**16)
    assert not any(tmp_path.glob(".d.h5.blocks/block-*.h5"))
    # the disk fills while writing (ENOSPC from HDF5): the finished blocks stay, the run resumes
    monkeypatch.setattr(io.shutil, "disk_usage", lambda p: usage)
    real = io.write_dataset
    written = []

    def filling(path, arrays, attrs):
        if len(written) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        written.append(path)
        return real(path, arrays, attrs)

    monkeypatch.setattr(io, "write_dataset", filling)
    with pytest.raises(lenssim.DatasetError, match="no space left on the device.*while writing block 2"):
        lenssim.write_in_blocks(out, 8, _blocks([]), attrs={}, seed=0, block_size=2)
    assert len(list(tmp_path.glob(".d.h5.blocks/block-*.h5"))) == 2
    monkeypatch.setattr(io, "write_dataset", real)
    calls = []
    lenssim.write_in_blocks(out, 8, _blocks(calls), attrs={}, seed=0, block_size=2)
    assert calls == [2, 3]  # resumed from the finished blocks
    whole = tmp_path / "whole.h5"
    lenssim.write_in_blocks(whole, 8, _blocks([]), attrs={}, seed=0, block_size=2)
    assert np.array_equal(lenssim.read_dataset(out, ["x"])["x"], lenssim.read_dataset(whole, ["x"])["x"])


def test_temporary_files_of_dead_processes_are_removed(tmp_path):
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".d.h5.{int(dead.stdout)}.tmp"
    stale.write_bytes(b"half a dataset")
    live = tmp_path / f".d.h5.{os.getppid()}.tmp"  # a running process's: kept
    live.write_bytes(b"in progress")
    lenssim.write_in_blocks(tmp_path / "d.h5", 2, _blocks([]), attrs={}, seed=0, block_size=2)
    assert not stale.exists() and live.exists()


def test_a_finished_dataset_made_otherwise_is_never_replaced_by_accident(tmp_path):
    import hashlib

    out = tmp_path / "d.h5"
    reported = []
    lenssim.write_in_blocks(out, 4, _blocks([]), attrs={"kind": "a"}, seed=0, block_size=2, progress=reported.append)
    assert reported == [0, 2, 2]  # 0 once the checks pass (a caller's bar opens then), then each block
    digest = hashlib.sha256(out.read_bytes()).hexdigest()
    calls = []
    lenssim.write_in_blocks(out, 4, _blocks(calls), attrs={"kind": "a"}, seed=0, block_size=2)  # same: done
    assert calls == []
    reported.clear()
    for other, says in (
        ({"attrs": {"kind": "a"}, "seed": 1}, "(seed 0 there, 1 here)"),
        ({"attrs": {"kind": "b"}, "seed": 0}, "(kind 'a' there, 'b' here)"),
    ):  # the message names what differs
        with pytest.raises(lenssim.DatasetError, match="exists and was not made with these settings") as e:
            lenssim.write_in_blocks(out, 4, _blocks(calls), block_size=2, progress=reported.append, **other)
        assert says in str(e.value)
    assert calls == [] and reported == []  # nothing reported before a refusal
    assert hashlib.sha256(out.read_bytes()).hexdigest() == digest
    (tmp_path / "plain.h5").write_bytes(b"someone else's file")
    with pytest.raises(
        lenssim.DatasetError, match=r"plain.h5 exists and was not made with these settings \(not by lens\)"
    ):
        lenssim.write_in_blocks(tmp_path / "plain.h5", 2, _blocks([]), attrs={}, seed=0, block_size=2)
    lenssim.write_in_blocks(out, 2, _blocks([]), attrs={"kind": "a"}, seed=1, block_size=2, overwrite=True)
    assert lenssim.read_dataset(out, ["x"])["x"].shape[0] == 2


def test_unfinished_blocks_of_a_run_made_otherwise_are_never_removed_unasked(tmp_path):
    out, blocks = tmp_path / "d.h5", tmp_path / ".d.h5.blocks"

    def killed_at(k_stop, calls):
        def make_block(k, count, seedseq):
            if k == k_stop:
                raise KeyboardInterrupt
            return _blocks(calls)(k, count, seedseq)

        return make_block

    with pytest.raises(KeyboardInterrupt):
        lenssim.write_in_blocks(out, 8, killed_at(2, []), attrs={"kind": "a"}, seed=0, block_size=2)
    kept = sorted(p.read_bytes() for p in blocks.glob("block-*.h5"))
    assert len(kept) == 2
    reported = []
    with pytest.raises(lenssim.DatasetError, match=r"blocks holds the unfinished blocks of a run with other") as e:
        lenssim.write_in_blocks(
            out, 10, _blocks([]), attrs={"kind": "a"}, seed=0, block_size=2, progress=reported.append
        )
    assert "(n_total 8 there, 10 here)" in str(e.value)  # the block range that follows from it is not named
    with pytest.raises(lenssim.DatasetError, match=r"\(seed 0 there, 1 here\)"):
        lenssim.write_in_blocks(out, 8, _blocks([]), attrs={"kind": "a"}, seed=1, block_size=2)
    assert sorted(p.read_bytes() for p in blocks.glob("block-*.h5")) == kept and reported == [] and not out.exists()
    calls = []
    lenssim.write_in_blocks(out, 8, _blocks(calls), attrs={"kind": "a"}, seed=0, block_size=2)  # the same: resumed
    assert calls == [2, 3] and not blocks.exists()
    # blocks without a readable manifest are refused too; a directory with no block is not anyone's work
    out, blocks = tmp_path / "e.h5", tmp_path / ".e.h5.blocks"
    blocks.mkdir()
    (blocks / "block-000000.h5").write_bytes(b"half")
    with pytest.raises(lenssim.DatasetError, match="no readable manifest.json"):
        lenssim.write_in_blocks(out, 2, _blocks([]), attrs={}, seed=1, block_size=2)
    lenssim.write_in_blocks(out, 2, _blocks([]), attrs={}, seed=1, block_size=2, overwrite=True)  # asked: replaced
    assert lenssim.read_dataset(out, ["x"])["x"].shape[0] == 2 and not blocks.exists()
    out, blocks = tmp_path / "f.h5", tmp_path / ".f.h5.blocks"
    blocks.mkdir()
    (blocks / "manifest.json").write_text('{"options": {"other": 1}}')
    lenssim.write_in_blocks(out, 2, _blocks([]), attrs={}, seed=1, block_size=2)
    assert lenssim.read_dataset(out, ["x"])["x"].shape[0] == 2 and not blocks.exists()


def test_a_block_no_reader_would_accept_is_never_written(tmp_path):
    def make_block(k, count, seedseq):  # a chi2 that overflowed float32 in the second block
        return {"chi2_nu": np.full(count, np.inf if k == 1 else 1.0, np.float32)}

    out = tmp_path / "out.h5"
    with pytest.raises(DatasetError, match=r"out.h5: the result of block 1 is not valid \(dataset 'chi2_nu' contains"):
        write_in_blocks(out, 4, make_block, attrs={}, seed=0, block_size=2)
    assert not out.exists()
    blocks = sorted(p.name for p in (tmp_path / ".out.h5.blocks").glob("block-*.h5"))
    assert blocks == ["block-000000.h5"]  # the valid block is kept for a resume; the invalid one is not written


def test_readers_refuse_groups_noise_below_float32_and_shards_of_two_resolutions(tmp_path):
    lenses = {
        "source": np.zeros((2, 1, 8, 8)),
        "kappa": np.ones((2, 1, 8, 8)),
        "observation": np.zeros((2, 1, 8, 8)),
        "psf": np.pad(np.ones((2, 1, 1, 1)), ((0, 0), (0, 0), (1, 1), (1, 1))),
        "noise_sigma": np.ones(2),
    }
    attrs = dict(image_fov=7.68, source_fov=3.0, z_lens=0.5, z_source=1.5)
    write_lens_dataset(tmp_path / "quiet.h5", {**lenses, "noise_sigma": np.full(2, 1e-30)}, **attrs)
    with pytest.raises(DatasetError, match=r"quiet.h5: dataset 'noise_sigma' has values down to 1e-30, below 1e-12"):
        read_dataset(tmp_path / "quiet.h5", ["noise_sigma"])
    write_lens_dataset(tmp_path / "group.h5", lenses, **attrs)
    with h5py.File(tmp_path / "group.h5", "r+") as f:
        del f["observation"]
        f.create_group("observation")
    with pytest.raises(DatasetError, match=r"group.h5: 'observation' is a group, not a dataset"):
        dataset_info(tmp_path / "group.h5")
    (tmp_path / "shards").mkdir()
    write_lens_dataset(tmp_path / "shards" / "a.h5", lenses, **attrs)
    wide = {k: np.repeat(np.repeat(v, 2, -1), 2, -2) if v.ndim == 4 and k != "psf" else v for k, v in lenses.items()}
    write_lens_dataset(tmp_path / "shards" / "b.h5", wide, **attrs)
    with pytest.raises(DatasetError, match=r"b.h5: 'source' maps are \(1, 16, 16\), the other shards' \(1, 8, 8\)"):
        LensDataset(tmp_path / "shards")


def _noise_map(*masked):
    noise = np.full((3, 1, 16, 16), 0.1, np.float32)
    for value, where in masked:
        noise[where] = value
    return noise


def test_a_noise_map_masks_pixels_with_inf_but_keeps_some_data_per_lens(tmp_path):
    path = _write_raw(tmp_path / "ok.h5", noise_map=_noise_map((np.inf, (1, 0, 3, slice(None)))))
    obs = lenssim.Observation.from_dataset(path)
    assert torch.isinf(obs.noise).sum() == 16 and torch.isinf(obs.noise[1, 0, 3]).all()
    assert torch.allclose(obs.noise_sigma(), torch.full((3,), 0.1))  # the median of the pixels with data
    cases = {
        "masks every pixel of a lens": (np.inf, (2,)),
        "contains NaN": (np.nan, (0, 0, 0, 0)),
        "contains NaN or infinite": (-np.inf, (0, 0, 0, 0)),
        "noise must be positive": (0.0, (0, 0, 0, 0)),
    }
    for match, masked in cases.items():
        bad = _write_raw(tmp_path / "bad.h5", noise_map=_noise_map((np.inf, (1, 0, 3)), masked))
        with pytest.raises(lenssim.DatasetError, match=match) as e:
            lenssim.Observation.from_dataset(bad)
        assert "noise_map" in str(e.value)
