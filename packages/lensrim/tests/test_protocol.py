"""The forward-model protocol is all that training, evaluation and fine-tuning use: each runs on
the linear toy operator, and the lensing model's ``subset`` and ``add_noise`` are what indexing
and adding noise by hand give."""

import json
import math
from dataclasses import replace

import numpy as np
import pytest
import torch

import lenssim
from lensprior import kappa_vae, source_vae
from lensrim import PRESETS, RIM, LensingPhysics, LinearPhysics, train_rim
from lensrim.finetune import FineTuneConfig, finetune
from lensrim.training import evaluate_rim

N = 32
CONFIG = replace(PRESETS["tiny"], steps=3, batch_size=8, learning_rate=3e-3, initial_log10_kappa=0.0)


def toy_lenses(size: int, generator: torch.Generator, physics: LinearPhysics) -> dict[str, torch.Tensor]:
    """Smooth random sources in [0, 1] and kappa maps, observed through the toy operator."""
    coarse = torch.rand(size, 1, 4, 4, generator=generator)
    source = torch.nn.functional.interpolate(coarse, size=(N, N), mode="bilinear", align_corners=False)
    xi = torch.nn.functional.interpolate(
        0.5 * torch.rand(size, 1, 4, 4, generator=generator) - 0.25, size=(N, N), mode="bilinear"
    )
    eps = torch.randn(size, 1, N, N, generator=generator)
    y = physics.add_noise(physics.simulate(source, xi), eps)
    return {"observation": y, "source": source, "kappa": torch.pow(10.0, xi)}


class ToyBatches:
    def __init__(self, physics: LinearPhysics) -> None:
        self.physics = physics

    def __call__(self, step: int, size: int, seed: int) -> dict[str, torch.Tensor]:
        return toy_lenses(size, torch.Generator().manual_seed(seed * 100_003 + step), self.physics)


def test_the_rim_trains_and_is_evaluated_on_the_linear_toy(tmp_path):
    toy = LinearPhysics(a=1.0, b=0.5, sigma=0.05)
    held = toy_lenses(16, torch.Generator().manual_seed(999), toy)
    torch.manual_seed(0)
    rim = train_rim(
        CONFIG,
        ToyBatches(toy),
        tmp_path,
        steps=60,
        log_every=20,
        checkpoint_every=60,
        validation=held,
        tensorboard=False,
        physics=lambda batch: toy,
    )
    logs = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in logs] == [20, 40, 60]
    # it learns: the held-out loss falls well below the constant predictor's on the same lenses
    assert logs[-1]["val_loss"] < 0.5 * logs[-1]["val_constant_loss"]
    assert logs[-1]["val_loss"] < logs[0]["val_loss"]
    # chi2_nu in the log is the toy model's, computed here by hand from the trained RIM's estimates
    with torch.no_grad():
        est = rim(held["observation"], toy)[-1]
    by_hand = ((held["observation"] - est[:, :1] - 0.5 * est[:, 1:]) / 0.05).pow(2).mean(dim=(1, 2, 3))
    median = float(np.median(by_hand.numpy()))  # numpy's: the mean of the middle two of an even count
    assert logs[-1]["val_chi2_nu"] == pytest.approx(median, rel=1e-4)
    assert evaluate_rim(rim, held, lambda batch: toy)["chi2_nu"] == pytest.approx(median, rel=1e-4)


TINY_VAE = dict(pixels=N, levels=2, filters=4, latent_dim=4)


@pytest.fixture(scope="module")
def toy_setup():
    torch.manual_seed(0)
    rim = RIM(CONFIG).eval()
    svae, kvae = source_vae(**TINY_VAE).eval(), kappa_vae(**TINY_VAE).eval()
    sigma = torch.tensor([0.05, 0.1, 0.2])  # one noise level per lens: subset must carry it
    toy = LinearPhysics(a=1.0, b=0.5, sigma=sigma)
    lenses = toy_lenses(3, torch.Generator().manual_seed(5), toy)
    return rim, svae, kvae, toy, lenses


def gens(n, seed=0):
    return [torch.Generator().manual_seed(seed + i) for i in range(n)]


def test_fine_tuning_runs_on_the_linear_toy_and_lowers_its_chi2(toy_setup):
    rim, svae, kvae, toy, lenses = toy_setup
    cfg = FineTuneConfig(fisher_samples=2, learning_rate=1e-3, max_steps=8, target_chi2_nu=0.0, ewc_lambda=0.0)
    res = finetune(rim, svae, kvae, lenses["observation"], toy, cfg, generators=gens(3))
    assert (res.chi2_nu < res.chi2_nu_baseline).all()
    # the reported chi2_nu is the toy's of the reported maps, each lens with its own sigma
    y = lenses["observation"]
    resid = (y - res.source - 0.5 * torch.log10(res.kappa)) / toy.sigma.view(-1, 1, 1, 1)
    torch.testing.assert_close(res.chi2_nu, resid.pow(2).mean(dim=(1, 2, 3)), rtol=1e-4, atol=0)


def test_fine_tuning_a_lens_alone_or_in_a_batch_is_the_same_on_the_toy(toy_setup):
    # a lens's forward model travels with it through subset (its sigma here): alone or
    # together, the same lens gives the same result
    rim, svae, kvae, toy, lenses = toy_setup
    cfg = FineTuneConfig(fisher_samples=2, learning_rate=1e-3, max_steps=4, target_chi2_nu=0.0, ewc_lambda=10.0)
    together = finetune(rim, svae, kvae, lenses["observation"], toy, cfg, generators=gens(3))
    for i in range(3):
        alone = finetune(
            rim,
            svae,
            kvae,
            lenses["observation"][i : i + 1],
            toy.subset(torch.tensor([i])),
            cfg,
            generators=gens(1, seed=i),
        )
        torch.testing.assert_close(alone.chi2_nu, together.chi2_nu[i : i + 1], rtol=1e-4, atol=1e-7)
        torch.testing.assert_close(alone.source, together.source[i : i + 1], rtol=0, atol=1e-5)


def test_lensing_subset_and_noise_are_indexing_and_adding_by_hand():
    obs = lenssim.ObservationConfig(image_pixels=N, source_pixels=N, psf_size=5)
    lenses = lenssim.simulate_sie_lenses(3, config=obs, generator=torch.Generator().manual_seed(2))
    physics = LensingPhysics(lenses.psf, lenses.noise_sigma)
    index = torch.tensor([2, 0, 2])
    sub = physics.subset(index)
    torch.testing.assert_close(sub.psf, lenses.psf[index])
    torch.testing.assert_close(sub.sigma, lenses.noise_sigma[index])
    s, xi = lenses.source[index], torch.log10(lenses.kappa[index])
    image = sub.simulate(s, xi)
    eps = torch.randn(image.shape, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(sub.add_noise(image, eps), image + lenses.noise_sigma[index].view(-1, 1, 1, 1) * eps)
    # one PSF for all stays one PSF; a noise map is indexed like the images
    shared = LensingPhysics(lenses.psf[:1], torch.full((3, 1, N, N), 0.1))
    assert shared.subset(index).psf.shape[0] == 1 and shared.subset(index).sigma.shape == (3, 1, N, N)
    # separable PSFs are indexed field by field
    sep = lenssim.SeparablePSF.gaussian(torch.tensor([0.1, 0.2, 0.3]), 0.06, 5)
    picked = LensingPhysics(sep, lenses.noise_sigma).subset(torch.tensor([1]))
    torch.testing.assert_close(picked.psf.row_kernel, sep.row_kernel[1:2])


def test_the_rims_physics_refuses_a_noise_that_is_not_positive():
    with pytest.raises(ValueError, match="positive"):
        CONFIG.physics(torch.ones(2, 1, 5, 5) / 25, torch.tensor([0.1, 0.0]))
    with pytest.raises(ValueError, match="positive"):
        CONFIG.physics(torch.ones(1, 1, 5, 5) / 25, float("nan"))


def test_a_noise_map_may_mask_pixels_but_not_a_whole_lens():
    psf = torch.ones(2, 1, 5, 5) / 25
    noise = torch.full((2, 1, N, N), 0.1)
    noise[0, 0, :3] = math.inf
    physics = CONFIG.physics(psf, noise)
    image = torch.rand(2, 1, N, N)
    noisy = physics.add_noise(image, torch.randn(2, 1, N, N))
    assert torch.equal(noisy[0, 0, :3], image[0, 0, :3]) and torch.isfinite(noisy).all()
    assert (noisy[0, 0, 3:] != image[0, 0, 3:]).all()
    for value, match in [(math.nan, "NaN or <= 0"), (0.0, "NaN or <= 0"), (math.inf, "masks every pixel of a lens")]:
        bad = noise.clone()
        bad[1] = value
        with pytest.raises(ValueError, match=match):
            CONFIG.physics(psf, bad)
    with pytest.raises(ValueError, match="positive and finite"):
        CONFIG.physics(psf, torch.tensor([0.1, math.inf]))  # one sigma per lens: no masking


def test_the_whitened_residual_is_the_misfit_in_units_of_each_lens_noise():
    g = torch.Generator().manual_seed(3)
    s, xi, y = (torch.rand(2, 1, N, N, generator=g, requires_grad=True) for _ in range(3))
    toy = LinearPhysics(a=2.0, b=0.5, sigma=torch.tensor([0.1, 0.4]))
    r = toy.whitened_residual(y, s, xi)
    by_hand = (y - 2.0 * s - 0.5 * xi) / torch.tensor([0.1, 0.4]).view(2, 1, 1, 1)
    assert torch.allclose(r, by_hand.detach()) and not r.requires_grad  # an input, never differentiated
    assert torch.allclose(r[1], (y[1] - 2.0 * s[1] - 0.5 * xi[1]).detach() / 0.4)  # each lens its own sigma
