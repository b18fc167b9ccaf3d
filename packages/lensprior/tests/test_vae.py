import math

import h5py
import numpy as np
import pytest
import torch

import lensprior
from lensprior import VAEConfig, kappa_vae, source_vae

TINY = dict(pixels=32, levels=2, filters=4, latent_dim=4, batch_size=4)


def n_params(m):
    return sum(p.numel() for p in m.parameters())


def test_paper_parameter_counts():
    assert abs(n_params(source_vae()) / 3_567_361 - 1) < 0.02
    assert abs(n_params(kappa_vae()) / 1_980_033 - 1) < 0.02
    assert n_params(source_vae(filters=8, latent_dim=8)) < 1_000_000  # overrides by keyword


def test_shapes_and_output_ranges():
    s = source_vae(**TINY)
    x = torch.rand(3, 1, 32, 32)
    mu, logvar = s.encode(x)
    assert mu.shape == logvar.shape == (3, 4)
    y = s.decode(mu)
    assert y.shape == (3, 1, 32, 32) and (y >= 0).all() and (y <= 1).all()  # sigmoid
    k = kappa_vae(**TINY)
    kappa = 10 ** (torch.rand(2, 1, 32, 32) * 2 - 1)
    out = k.decode(k.encode(kappa)[0])
    assert (out > 0).all()  # 10 ** decoder output
    # the kappa model sees log10 kappa: scaling kappa by 10 shifts its input by exactly 1
    assert torch.allclose(k.preprocess(10 * kappa), k.preprocess(kappa) + 1, atol=1e-6)
    assert s.sample(5, generator=torch.Generator().manual_seed(0)).shape == (5, 1, 32, 32)
    with pytest.raises(ValueError, match=r"\(B, 1, 32, 32\)"):
        s.encode(torch.rand(2, 1, 16, 16))
    with pytest.raises(ValueError, match="latent"):
        s.decode(torch.zeros(2, 3))


def test_config_validation_and_json_roundtrip():
    c = lensprior.kappa_vae_config(steps=10)
    assert VAEConfig.from_json(c.to_json()) == c
    with pytest.raises(ValueError, match="divisible"):
        VAEConfig(pixels=100, levels=3)
    with pytest.raises(ValueError, match="unknown"):
        VAEConfig.from_json('{"model": "VAE", "kind": "source", "evil": 1}')


def test_schedules_follow_the_tables():
    s, k = lensprior.source_vae_config(), lensprior.kappa_vae_config()
    assert s.beta(0) == s.beta(10**6) == pytest.approx(0.1)
    assert (
        k.beta(0) == pytest.approx(0.1) and k.beta(2500) == pytest.approx(0.15) and k.beta(10**6) == pytest.approx(0.2)
    )
    assert s.learning_rate_at(30_000) == pytest.approx(0.5e-4) and k.learning_rate_at(20_000) == pytest.approx(0.7e-4)
    assert s.bottleneck_weight(0) == 1e-2 and s.bottleneck_weight(5_000) == pytest.approx(5e-3)
    assert s.bottleneck_weight(10_000) == 0.0


def test_sample_near_stays_near_its_centre():
    torch.manual_seed(0)
    m = source_vae(**TINY).eval()
    z0 = torch.randn(1, 4)
    centre = m.decode(z0)
    near = m.sample_near(z0, 0.01, n=16, generator=torch.Generator().manual_seed(1))
    far = m.sample_near(z0, 3.0, n=16, generator=torch.Generator().manual_seed(1))
    d_near = (near - centre).abs().mean()
    d_far = (far - centre).abs().mean()
    assert near.shape == (16, 1, 32, 32)
    assert d_near < 0.05 * d_far


def _data(n=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    x, y = torch.meshgrid(torch.linspace(-1, 1, 32), torch.linspace(-1, 1, 32), indexing="ij")
    c = torch.rand(n, 2, generator=g) - 0.5
    w = 0.15 + 0.2 * torch.rand(n, generator=g)
    return torch.exp(-((x - c[:, 0, None, None]) ** 2 + (y - c[:, 1, None, None]) ** 2) / (2 * w[:, None, None] ** 2))[
        :, None
    ]


def test_loss_falls_when_overfitting_a_tiny_set(tmp_path):
    cfg = lensprior.source_vae_config(**{**TINY, "batch_size": 8}, learning_rate=3e-4, steps=500)
    data = _data()
    lensprior.train_vae(cfg, data, tmp_path, seed=0, log_every=50, checkpoint_every=250)
    import json

    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    first, last = lines[0]["reconstruction"], lines[-1]["reconstruction"]
    assert last < 0.1 * first
    assert lines[-1]["kl"] > 1  # the latent code is used (no posterior collapse)
    assert (tmp_path / "checkpoint.pt").is_file() and (tmp_path / "config.json").is_file()


def test_resumed_run_equals_uninterrupted(tmp_path):
    cfg = lensprior.kappa_vae_config(**TINY, steps=40)
    data = 10 ** (_data() * 2 - 1)
    whole = lensprior.train_vae(
        cfg, data, tmp_path / "a", seed=3, checkpoint_every=10, log_every=5, validation=data[:2]
    )
    lensprior.train_vae(
        cfg, data, tmp_path / "b", seed=3, steps=20, checkpoint_every=10, log_every=5, validation=data[:2]
    )
    resumed = lensprior.train_vae(
        cfg, data, tmp_path / "b", seed=3, checkpoint_every=10, log_every=5, validation=data[:2]
    )
    for (k, a), b in zip(whole.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    assert (tmp_path / "a" / "metrics.jsonl").read_text() == (tmp_path / "b" / "metrics.jsonl").read_text()
    loaded, meta = lensprior.load_vae(tmp_path / "b")
    assert meta["step"] == 40
    before = {p.name: p.read_bytes() for p in (tmp_path / "b").iterdir()}
    with pytest.raises(lensprior.RunError, match=r"checkpoint is at step 40, past the last step asked for \(20\)"):
        lensprior.train_vae(cfg, data, tmp_path / "b", seed=3, steps=20)
    with pytest.raises(lensprior.RunError, match="was trained with seed 3, not 4"):
        lensprior.train_vae(cfg, data, tmp_path / "b", seed=4, steps=60)
    assert {p.name: p.read_bytes() for p in (tmp_path / "b").iterdir()} == before
    assert all(
        torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), whole.state_dict().values(), strict=True)
    )


def test_runs_refuse_other_configs_and_corrupt_checkpoints(tmp_path):
    data = _data()
    lensprior.train_vae(lensprior.source_vae_config(**TINY, steps=2), data, tmp_path, checkpoint_every=1)
    with pytest.raises(lensprior.RunError, match="another configuration"):
        lensprior.train_vae(lensprior.source_vae_config(**{**TINY, "latent_dim": 5}, steps=2), data, tmp_path)
    (tmp_path / "checkpoint.pt").write_bytes(b"garbage")
    with pytest.raises(lensprior.RunError, match="unreadable checkpoint"):
        lensprior.load_vae(tmp_path)
    with pytest.raises(lensprior.RunError, match="not a VAE run"):
        lensprior.load_vae(tmp_path / "nowhere")


def test_load_field_validates(tmp_path):
    p = tmp_path / "d.h5"
    with h5py.File(p, "w") as f:
        f["kappa"] = np.ones((4, 1, 8, 8), np.float32)
        f["split"] = np.array([0, 0, 1, 0])
        f["bad"] = np.ones((4, 8, 8), np.float32)
        f["neg"] = -np.ones((2, 1, 8, 8), np.float32)
    assert lensprior.load_field(p, "kappa", split="train").shape == (3, 1, 8, 8)
    assert lensprior.load_field(p, "kappa", split="test").shape == (1, 1, 8, 8)
    with pytest.raises(lensprior.RunError, match="shape"):
        lensprior.load_field(p, "bad")
    with pytest.raises(lensprior.RunError, match="no 'source'"):
        lensprior.load_field(p, "source")
    with pytest.raises(lensprior.RunError, match="pixels wide"):
        lensprior.load_field(p, "kappa", pixels=128)
    with h5py.File(tmp_path / "n.h5", "w") as f:
        f["kappa"] = -np.ones((2, 1, 8, 8), np.float32)
    with pytest.raises(lensprior.RunError, match="negative"):
        lensprior.load_field(tmp_path / "n.h5", "kappa")
    assert math.isfinite(float(lensprior.load_field(p, "kappa").sum()))


def test_load_field_reads_the_first_maps_of_a_split_and_can_skip_the_scan(tmp_path):
    p = tmp_path / "d.h5"
    maps = np.arange(1.0, 7.0, dtype=np.float32)[:, None, None, None] * np.ones((6, 1, 4, 4), np.float32)
    maps[0] = -1.0  # a bad map in the train split: every read that scans the file refuses it
    with h5py.File(p, "w") as f:
        f["kappa"] = maps
        f["split"] = np.array([0, 1, 0, 1, 1, 0])
    test = lensprior.load_field(p, "kappa", split="test", limit=2, check=False)
    assert test[:, 0, 0, 0].tolist() == [2.0, 4.0]  # the first two test maps, in file order
    assert lensprior.load_field(p, "kappa", split="all", limit=3, check=False)[:, 0, 0, 0].tolist() == [-1.0, 2.0, 3.0]
    with pytest.raises(lensprior.RunError, match="negative"):
        lensprior.load_field(p, "kappa", split="test", limit=2)


def test_source_vae_encodes_sparse_galaxies_instead_of_collapsing(tmp_path):
    # compact blobs at random places on an empty 32^2 sky (3 % of pixels lit, like real stamps):
    # a collapsed VAE (decoder ignoring z) cannot beat the mean image
    g = torch.Generator().manual_seed(0)
    n = 64
    yy, xx = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    cx, cy = 8 + 16 * torch.rand(n, 1, 1, generator=g), 8 + 16 * torch.rand(n, 1, 1, generator=g)
    width = 1.0 + 1.5 * torch.rand(n, 1, 1, generator=g)
    data = torch.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * width**2)).unsqueeze(1)
    cfg = lensprior.source_vae_config(
        **{**TINY, "latent_dim": 8, "filters": 8, "batch_size": 16}, steps=300, learning_rate=1e-3
    )
    model = lensprior.train_vae(cfg, data, tmp_path / "run", log_every=300).eval()
    with torch.no_grad():
        mu, _ = model.encode(data)
        err = (model.decode(mu) - data).pow(2).sum((1, 2, 3)).mean()
    mean_err = (data - data.mean(0)).pow(2).sum((1, 2, 3)).mean()
    assert err < 0.6 * mean_err
    import json

    last = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["kl"] > 0.5
