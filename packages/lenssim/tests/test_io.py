import h5py
import numpy as np
import pytest
import torch

import lenssim


def _arrays(n=3, npx=16, k=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {
        "source": torch.rand(n, 1, npx, npx, generator=g),
        "kappa": torch.rand(n, 1, npx, npx, generator=g),
        "observation": torch.rand(n, 1, npx, npx, generator=g),
        "psf": torch.rand(n, 1, k, k, generator=g),
        "noise_sigma": torch.rand(n, generator=g),
    }


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
