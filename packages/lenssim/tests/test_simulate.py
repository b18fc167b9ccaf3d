"""Dataset generation: determinism, resume after interruption, shards, splits, the torch Dataset."""

import h5py
import numpy as np
import pytest
import torch

import lenssim
from lenssim.data.tng import synthetic_particles
from lenssim.io import dataset_info


def _halos(n, fail_at=None, state=None):
    def load(i):
        if fail_at is not None and i == fail_at and not state.get("failed"):
            state["failed"] = True
            raise KeyboardInterrupt  # a kill midway
        return synthetic_particles(i, n_dark=3000, n_stars=1000, n_gas=300)

    return [lenssim.HaloSource(f"h{i}", (lambda i=i: load(i))) for i in range(n)]


def _arrays(path):
    with h5py.File(path) as f:
        return {k: f[k][()] for k in f}


@pytest.fixture(scope="module")
def kappa_file(tmp_path_factory):
    p = tmp_path_factory.mktemp("kappa") / "kappa.h5"
    lenssim.simulate_kappa_dataset(p, _halos(5), maps_per_halo=3, test_fraction=0.2, seed=4)
    return p


def test_kappa_dataset_fields_splits_and_einstein_radii(kappa_file):
    d = lenssim.read_dataset(kappa_file, ["kappa", "theta_e", "halo_id", "projection", "split"])
    assert d["kappa"].shape == (15, 1, 128, 128) and (d["kappa"] >= 0).all()
    assert ((d["theta_e"] >= 0.45) & (d["theta_e"] <= 2.6)).all()
    te = lenssim.einstein_radius(d["kappa"][:, 0].numpy(), 7.69 / 128)
    assert np.allclose(te, d["theta_e"].numpy(), rtol=1e-5)
    assert d["projection"].tolist() == [0, 1, 2] * 5
    # the split is by halo: one of the five halos is held out, all its maps with it
    split_of = {int(h): set() for h in d["halo_id"]}
    for h, s in zip(d["halo_id"].tolist(), d["split"].tolist(), strict=True):
        split_of[h].add(s)
    assert all(len(v) == 1 for v in split_of.values())
    assert sum(v == {1} for v in split_of.values()) == 1
    assert d["attrs"]["halos"] == '["h0", "h1", "h2", "h3", "h4"]'


def test_same_seed_same_bytes_and_resume_after_a_kill(tmp_path, kappa_file):
    state = {}
    p = tmp_path / "kappa.h5"
    with pytest.raises(KeyboardInterrupt):
        lenssim.simulate_kappa_dataset(p, _halos(5, fail_at=3, state=state), maps_per_halo=3, test_fraction=0.2, seed=4)
    assert not p.exists()
    blocks = sorted((tmp_path / ".kappa.h5.blocks").glob("block-*.h5"))
    assert len(blocks) == 3  # halos 0-2 finished before the kill
    done = []
    lenssim.simulate_kappa_dataset(
        p, _halos(5, fail_at=3, state=state), maps_per_halo=3, test_fraction=0.2, seed=4, progress=done.append
    )
    assert sum(done) == 15
    assert p.read_bytes() == kappa_file.read_bytes()
    assert not (tmp_path / ".kappa.h5.blocks").exists()


def test_a_failure_before_any_block_leaves_nothing(tmp_path):
    def boom():
        raise ValueError("corrupt halo")

    with pytest.raises(ValueError, match="corrupt"):
        lenssim.simulate_kappa_dataset(tmp_path / "k.h5", [lenssim.HaloSource("bad", boom)], maps_per_halo=2)
    assert list(tmp_path.iterdir()) == []


def test_shards_hold_exactly_the_slices_of_the_whole(tmp_path):
    ks = lenssim.sie_kappa_sampler()
    ss = lenssim.sersic_source_sampler()
    whole = lenssim.simulate_lens_dataset(tmp_path / "all.h5", 10, ks, ss, seed=9, block_size=3)
    parts = [
        lenssim.simulate_lens_dataset(tmp_path / f"s{i}.h5", 10, ks, ss, seed=9, block_size=3, shard=(i, 3))
        for i in range(3)
    ]
    a = _arrays(whole)
    b = [_arrays(p) for p in parts]
    for k in lenssim.LENS_FIELDS:
        assert np.array_equal(a[k], np.concatenate([x[k] for x in b]))
    stats = dataset_info(whole)["attrs"]["stats"]
    assert '"tried"' in stats


def test_lens_dataset_from_pools_respects_the_split(tmp_path, kappa_file):
    src = lenssim.simulate_source_dataset(tmp_path / "src.h5", 12, seed=1, block_size=4, test_fraction=0.5)
    ks, attrs = lenssim.h5_pool_sampler(kappa_file, "kappa", split="test", expected_pixels=128)
    ss, _ = lenssim.h5_pool_sampler(src, "source", split="all")
    assert attrs["kind"] == "kappa"
    out = lenssim.simulate_lens_dataset(tmp_path / "lenses.h5", 8, ks, ss, seed=2, block_size=4)
    d = lenssim.read_lens_dataset(out)
    test_maps = lenssim.read_dataset(kappa_file, ["kappa", "split"])
    held_out = test_maps["kappa"][test_maps["split"] == 1]
    for k in d["kappa"]:
        assert any(torch.equal(k, h) for h in held_out)  # every lens uses a held-out map
    with pytest.raises(lenssim.DatasetError, match="pixels wide"):
        lenssim.h5_pool_sampler(kappa_file, "kappa", expected_pixels=64)
    # a pool loaded once into memory gives the same draws as reads on demand
    mem, _ = lenssim.h5_pool_sampler(kappa_file, "kappa", split="test", in_memory=True)
    auto, _ = lenssim.h5_pool_sampler(kappa_file, "kappa", split="test", in_memory=None)  # small: loaded
    for sampler in (mem, auto):
        assert torch.equal(sampler(7, torch.Generator().manual_seed(4)), ks(7, torch.Generator().manual_seed(4)))


def test_torch_dataset_over_shards_with_workers(tmp_path):
    ks, ss = lenssim.sie_kappa_sampler(), lenssim.sersic_source_sampler()
    for i in range(2):
        lenssim.simulate_lens_dataset(
            tmp_path / "shards" / f"part-{i}.h5", 6, ks, ss, seed=3, block_size=3, shard=(i, 2)
        )
    ds = lenssim.LensDataset(tmp_path / "shards")
    assert len(ds) == 6
    loader = torch.utils.data.DataLoader(ds, batch_size=2, num_workers=2)
    batches = list(loader)
    obs = torch.cat([b["observation"] for b in batches])
    assert obs.shape == (6, 1, 128, 128)
    whole = torch.cat([lenssim.read_lens_dataset(p)["observation"] for p in sorted((tmp_path / "shards").glob("*.h5"))])
    assert torch.equal(obs, whole)
    with pytest.raises(IndexError):
        ds[6]
    with pytest.raises(lenssim.DatasetError, match="no \\*.h5"):
        lenssim.LensDataset(tmp_path)
