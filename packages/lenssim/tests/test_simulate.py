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


def test_a_sampler_specification_names_analytic_draws_or_a_dataset_on_the_same_geometry(tmp_path):
    from lenscore.config import SettingError

    obs = lenssim.ObservationConfig.at_resolution(16)
    g = torch.Generator().manual_seed(0)
    sie = lenssim.sampler_from_spec("sie", "kappa", config=obs)(3, g)
    sersic = lenssim.sampler_from_spec("sersic", "source", config=obs)(2, g)
    assert sie.shape == (3, 1, 16, 16) and (sie > 0).all() and sersic.shape == (2, 1, 16, 16)
    maps = np.abs(np.random.default_rng(0).normal(size=(4, 1, 16, 16))).astype(np.float32) + 0.1
    for fov, name in ((obs.image_fov, "good.h5"), (9.0, "wide.h5")):
        lenssim.write_dataset(tmp_path / name, {"kappa": maps, "split": np.zeros(4, np.int64)}, {"image_fov": fov})
    draws = lenssim.sampler_from_spec(tmp_path / "good.h5", "kappa", config=obs)(5, torch.Generator().manual_seed(1))
    assert draws.shape == (5, 1, 16, 16)
    assert all(any(torch.equal(d, torch.from_numpy(m)) for m in maps) for d in draws)  # drawn from the file
    with pytest.raises(SettingError, match="wide.h5: image_fov 9 differs from the simulation's 7.69") as e:
        lenssim.sampler_from_spec(tmp_path / "wide.h5", "kappa", config=obs, param="kappa")
    assert e.value.param == "kappa"
    with pytest.raises(lenssim.DatasetError, match="image_fov 9 differs"):
        lenssim.sampler_from_spec(tmp_path / "wide.h5", "kappa", config=obs)


def test_shards_split_the_lenses_and_name_their_files():
    from lenscore.config import SettingError

    for n, block in ((1000, 256), (7, 3), (5, 10)):
        for shards in (1, 2, 3, 7):
            assert sum(lenssim.shard_lenses(n, block, (i, shards)) for i in range(shards)) == n
    assert lenssim.shard_path("out.h5", (0, 1)).name == "out.h5"
    assert lenssim.shard_path("out", (2, 10)).name == "part-00003-of-00010.h5"
    with pytest.raises(SettingError, match="ends in a slash"):
        lenssim.shard_path("out", (0, 1), directory=True)


def test_halo_sources_come_from_exactly_one_input(tmp_path):
    from lenscore.config import SettingError

    halos = lenssim.halo_sources(synthetic=2, seed=5)
    assert [h.name for h in halos] == ["synthetic-5-0", "synthetic-5-1"]
    assert np.array_equal(halos[1].load().positions, synthetic_particles([5, 1]).positions)
    with pytest.raises(SettingError, match="exactly one"):
        lenssim.halo_sources()
    with pytest.raises(SettingError, match="need tng_base"):
        lenssim.halo_sources(synthetic=1, halos=[3])
    with pytest.raises(SettingError, match="no such file"):
        lenssim.halo_sources(cutouts=[tmp_path / "missing.hdf5"])


def test_split_counts_and_map_attrs_read_what_a_dataset_states(tmp_path):
    from lenscore.config import SettingError

    maps = np.ones((5, 1, 8, 8), np.float32)
    lenssim.write_dataset(tmp_path / "s.h5", {"source": maps, "split": np.array([0, 1, 0, 0, 1])}, {"source_fov": 3.0})
    assert lenssim.split_counts(tmp_path / "s.h5") == (3, 2)
    assert lenssim.io.map_attrs(tmp_path / "s.h5") == {"source_fov": 3.0}
    lenssim.write_dataset(tmp_path / "w.h5", {"source": maps}, {"source_fov": 30.0})
    assert lenssim.split_counts(tmp_path / "w.h5") is None
    with pytest.raises(SettingError, match="source_fov 30 arcsec exceeds the simulator's image field"):
        lenssim.io.map_attrs(tmp_path / "w.h5")
