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
