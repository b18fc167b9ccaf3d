import pytest
import torch

import lenssim


def test_sersic_sources_peak_at_one_and_are_seeded():
    a = lenssim.sersic_sources(6, pixels=64, generator=torch.Generator().manual_seed(0))
    b = lenssim.sersic_sources(6, pixels=64, generator=torch.Generator().manual_seed(0))
    assert a.shape == (6, 1, 64, 64) and torch.equal(a, b)
    assert torch.allclose(a.amax(dim=(-1, -2)), torch.ones(6, 1))
    assert a.min() >= 0
    # compact: the edge of the 3" field is dark
    assert a[..., 0, :].max() < 0.05 and a[..., :, -1].max() < 0.05


def _one(kappa_value=None, theta_e=1.2):
    one = torch.ones(1, dtype=torch.float64)
    p = lenssim.SIEParameters(theta_e * one, 0.8 * one, 0.3 * one, 0 * one, 0 * one)
    kappa = lenssim.sie_convergence(p).float()
    if kappa_value is not None:
        kappa = torch.full_like(kappa, kappa_value)
    return kappa


def _disk(radius, pixels=128, fov=3.0):
    x, y = lenssim.pixel_grid(pixels, fov)
    return ((x**2 + y**2) < radius**2).float()[None, None]


def test_acceptance_accepts_a_ring_and_names_each_failure():
    kappa = _one()
    src = _disk(0.15)
    image = lenssim.lens_image(src, kappa)
    ok = lenssim.acceptance(src, kappa, image, image_fov=7.69, source_fov=3.0)
    assert ok["accepted"].item()
    # no lens: the image is the source itself, magnification 1
    flat = torch.zeros_like(kappa)
    image0 = lenssim.lens_image(src, flat)
    res = lenssim.acceptance(src, flat, image0, image_fov=7.69, source_fov=3.0)
    assert not res["magnification"].item() and not res["strong_lensing"].item() and not res["accepted"].item()
    # a bright border
    bright = image.clone()
    bright[..., 0, 10] = 1.0
    res = lenssim.acceptance(src, kappa, bright, image_fov=7.69, source_fov=3.0)
    assert not res["border"].item() and res["magnification"].item()
    # a source too small to count
    tiny = torch.zeros_like(src)
    tiny[..., 64, 64] = 1.0
    res = lenssim.acceptance(tiny, kappa, lenssim.lens_image(tiny, kappa), image_fov=7.69, source_fov=3.0)
    assert not res["source_size"].item()


def test_simulate_sie_lenses_is_reproducible_and_accepted():
    kw = dict(batch_size=4)
    a = lenssim.simulate_sie_lenses(5, generator=torch.Generator().manual_seed(3), **kw)
    b = lenssim.simulate_sie_lenses(5, generator=torch.Generator().manual_seed(3), **kw)
    assert len(a) == 5 and a.tried >= 5
    # every drawn lens is accounted for: kept, rejected, or accepted beyond the 5 asked for
    assert a.tried == len(a) + a.rejected_lenses + a.surplus
    assert a.surplus < 4 and max(a.rejected.values(), default=0) <= a.rejected_lenses <= sum(a.rejected.values())
    for k in lenssim.LENS_FIELDS:
        assert torch.equal(getattr(a, k), getattr(b, k))
    assert a.observation.shape == (5, 1, 128, 128) and a.psf.shape == (5, 1, 21, 21)
    cfg = lenssim.ObservationConfig()
    assert ((a.noise_sigma >= 0.001) & (a.noise_sigma <= 0.1)).all()
    # the stored observation is the lensed source plus noise of the stored sigma
    clean = lenssim.lens_image(a.source, a.kappa, psf=a.psf)
    chi2_nu = lenssim.chi2_nu(a.observation, clean, a.noise_sigma)
    assert ((chi2_nu - 1).abs() < 0.06).all()
    checks = lenssim.acceptance(a.source, a.kappa, clean, image_fov=cfg.image_fov, source_fov=cfg.source_fov)
    assert checks["accepted"].all()


def test_simulation_gives_up_with_a_clear_message():
    strict = lenssim.AcceptanceCriteria(min_magnification=1e9)
    try:
        gen = torch.Generator().manual_seed(0)
        lenssim.simulate_sie_lenses(2, criteria=strict, generator=gen, batch_size=2, max_tries=4)
    except RuntimeError as e:
        assert "magnification" in str(e) and "0 of 2" in str(e)
    else:
        raise AssertionError("expected a RuntimeError")


def test_a_lens_batch_round_trips_through_its_file_with_its_statistics(tmp_path):
    import json

    obs = lenssim.ObservationConfig(image_pixels=16, source_pixels=16, psf_size=5)
    batch = lenssim.simulate_sie_lenses(3, config=obs, generator=torch.Generator().manual_seed(4))
    batch.to_hdf5(tmp_path / "b.h5", image_fov=obs.image_fov, source_fov=obs.source_fov)
    back = lenssim.LensBatch.from_hdf5(tmp_path / "b.h5")
    for k in lenssim.LENS_FIELDS:
        assert torch.equal(getattr(back, k), getattr(batch, k).cpu()), k
    stats = json.loads(back.attrs["stats"])
    assert stats["tried"] == batch.tried == len(batch) + stats["rejected_lenses"] + stats["surplus"]
    assert back.attrs["image_fov"] == obs.image_fov and back.fields().keys() == set(lenssim.LENS_FIELDS)
    two = lenssim.LensBatch.from_hdf5(tmp_path / "b.h5", rows=slice(1, 3))
    assert torch.equal(two.kappa, batch.kappa[1:3])
    with pytest.raises(ValueError, match="missing .'psf'"):
        lenssim.LensBatch.from_fields({k: v for k, v in batch.fields().items() if k != "psf"})
