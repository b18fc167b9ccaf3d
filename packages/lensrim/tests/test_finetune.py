"""EWC fine-tuning: the Fisher diagonal, the penalty, the optimisation and its batching."""

from dataclasses import replace

import pytest
import torch

import lenssim
from lensprior import kappa_vae, source_vae
from lensrim import PRESETS, RIM, rim_loss
from lensrim.finetune import (
    FineTuneConfig,
    encode_prediction,
    ewc_penalty,
    finetune,
    finetune_objective,
    fisher_diagonal,
    peak_normalised,
    rmsprop_step,
    stacked_params,
)
from lensrim.physics import LensingPhysics, LinearPhysics

TINY_VAE = dict(pixels=32, levels=2, filters=4, latent_dim=4)


def skip_rim(seed: int = 2) -> RIM:
    """An untrained RIM with the gradient skip (the default) whose output layer looks trained: at
    its zero initialisation no inner weight would have a gradient, or a Fisher information."""
    torch.manual_seed(seed)
    rim = RIM(replace(PRESETS["tiny"], steps=3, gradient_skip=0.03)).eval()
    with torch.no_grad():
        rim.unet.out.weight.normal_(0, 0.01)
        rim.skip.copy_(torch.tensor([[0.02, 0.01], [0.04, 0.03]]))
    return rim


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    # without the skip, whose zero-initialised output layer would hold the inner weights' gradients
    # at zero in an untrained RIM (a skip RIM: skip_rim, below)
    rim = RIM(replace(PRESETS["tiny"], steps=3, gradient_skip=0.0)).eval()
    svae, kvae = source_vae(**TINY_VAE).eval(), kappa_vae(**TINY_VAE).eval()
    obs = lenssim.ObservationConfig(image_pixels=32, source_pixels=32, psf_size=5)
    lenses = lenssim.simulate_sie_lenses(3, config=obs, generator=torch.Generator().manual_seed(1))
    return rim, svae, kvae, lenses


def gens(n, seed=0):
    return [torch.Generator().manual_seed(seed + i) for i in range(n)]


@pytest.mark.parametrize("skip", [False, True], ids=["plain RIM", "gradient skip"])
@pytest.mark.parametrize("with_chi2", [True, False], ids=["eq. A5", "eq. 7 alone"])
def test_fisher_diagonal_equals_brute_force_per_sample_gradients(setup, with_chi2, skip):
    rim, svae, kvae, lenses = setup
    if skip:
        rim = skip_rim()
    psf, sigma = lenses.psf[:2], lenses.noise_sigma[:2]
    z_s, z_k = torch.randn(2, 4), torch.randn(2, 4)
    samples = 3
    fisher = fisher_diagonal(
        rim,
        svae,
        kvae,
        z_s,
        z_k,
        LensingPhysics(psf, sigma),
        samples=samples,
        latent_sigma=0.3,
        generators=gens(2),
        chunk=4,
        with_chi2=with_chi2,
    )
    # brute force: one draw at a time through the ordinary module, the same random numbers
    names = [k for k, _ in rim.unet.named_parameters()]
    for lens in range(2):
        g = torch.Generator().manual_seed(lens)
        eps_s, eps_k = torch.randn(samples, 4, generator=g), torch.randn(samples, 4, generator=g)
        noise = torch.randn(samples, 1, 32, 32, generator=g)
        acc = {k: torch.zeros_like(v) for k, v in rim.unet.named_parameters()}
        for i in range(samples):
            with torch.no_grad():
                src = svae.decode(z_s[lens : lens + 1] + 0.3 * eps_s[i : i + 1])
                src = torch.relu(src) / torch.relu(src).max()  # the original's peak-1 source draws
                kap = kvae.decode(z_k[lens : lens + 1] + 0.3 * eps_k[i : i + 1])
                y = lenssim.lens_image(src, kap, psf=psf[lens : lens + 1]) + sigma[lens] * noise[i : i + 1]
            physics = LensingPhysics(psf[lens : lens + 1], sigma[lens : lens + 1])
            est = rim(y, physics)
            chi2 = torch.stack(
                [lenssim.chi_squared(y, physics.simulate(e[:, :1], e[:, 1:]), physics.sigma) for e in est]
            )
            # the original's units: eq. 7 plus the mean over steps of chi^2 / N^2 (not chi^2 / 2)
            loss = rim_loss(est, src, kap).sum() + (chi2.mean() / 32**2 if with_chi2 else 0.0)
            grads = torch.autograd.grad(loss, [p for _, p in rim.unet.named_parameters()])
            for k, gr in zip(names, grads, strict=True):
                acc[k] += gr.pow(2) / samples
        for k in names:
            torch.testing.assert_close(fisher[k][lens], acc[k], rtol=2e-3, atol=1e-6 * acc[k].abs().max().item())
    assert all((f >= 0).all() for f in fisher.values())
    assert sum(f.sum() for f in fisher.values()) > 0


def test_objective_units_are_reduced_chi2_and_half_lambda_as_in_table_3():
    """The data term is chi^2 / N^2 averaged over the RIM's steps (the original code's unit, in
    which Table 3's lambda = 2e5 was set), not chi^2 / 2; the penalty is eq. 10's lambda / 2."""
    torch.manual_seed(3)
    rim = RIM(replace(PRESETS["tiny"], steps=2)).eval()
    a, b, sigma = 1.0, 0.5, 0.1
    physics = LinearPhysics(a=a, b=b, sigma=sigma)
    y = torch.rand(2, 1, 32, 32)
    anchor = {k: v.detach() for k, v in rim.unet.named_parameters()}
    params = stacked_params(rim, 2)
    with torch.no_grad():
        for v in params.values():
            v[1].add_(0.01)  # lens 1's weights moved by 0.01 each, lens 0's at phi*
    fisher = {k: torch.full((2, *v.shape), 3.0) for k, v in anchor.items()}
    count = sum(v.numel() for v in anchor.values())
    objective, est = finetune_objective(rim, params, y, physics, anchor, fisher, 2e5)
    # by hand, in float64: sum_i ((y - a s - b xi) / sigma)^2 / 1024 pixels, averaged over T = 2 steps
    e, yy = est.detach().double().numpy(), y.double().numpy()
    chi2_nu = [(((yy[:, 0] - a * e[t, :, 0] - b * e[t, :, 1]) / sigma) ** 2).sum(axis=(1, 2)) / 1024 for t in (0, 1)]
    data = (chi2_nu[0] + chi2_nu[1]) / 2
    penalty = [0.0, 0.5 * 2e5 * 3.0 * 0.01**2 * count]
    torch.testing.assert_close(objective.double(), torch.tensor(data + penalty), rtol=1e-4, atol=0)
    assert data.min() > 1.0  # a real data term, far above float noise


def test_fisher_source_draws_are_rescaled_to_peak_one():
    s = torch.tensor([[[[-0.5, 0.2], [0.4, 0.1]]], [[[0.0, 0.0], [0.0, -1.0]]]])
    out = peak_normalised(s)
    torch.testing.assert_close(out[0, 0], torch.tensor([[0.0, 0.5], [1.0, 0.25]]))
    assert torch.equal(out[1], torch.zeros(1, 2, 2))  # nothing positive: stays zero, no NaN


def test_penalty_is_a_weighted_squared_distance_and_pulls_toward_the_anchor(setup):
    rim = setup[0]
    anchor = {k: v.detach() for k, v in rim.unet.named_parameters()}
    params = stacked_params(rim, 2)
    fisher = {k: torch.rand(2, *v.shape) for k, v in anchor.items()}
    assert torch.equal(ewc_penalty(params, anchor, fisher, 2e5), torch.zeros(2))  # zero at phi*
    with torch.no_grad():
        for p in params.values():
            p.add_(0.1 * torch.randn_like(p))
    expected = torch.stack(
        [sum((fisher[k][i] * (params[k][i] - anchor[k]) ** 2).sum() for k in anchor) * 1e3 for i in range(2)]
    )
    torch.testing.assert_close(ewc_penalty(params, anchor, fisher, 2e3), expected)
    # gradient descent on the penalty alone moves every weight toward phi*
    before = sum((params[k] - anchor[k]).pow(2).sum() for k in anchor)
    pen = ewc_penalty(params, anchor, fisher, 1.0).sum()
    grads = torch.autograd.grad(pen, list(params.values()))
    with torch.no_grad():
        for p, g in zip(params.values(), grads, strict=True):
            p.sub_(0.5 * g)
    assert sum((params[k] - anchor[k]).pow(2).sum() for k in anchor) < 0.8 * before


def test_finetuning_lowers_chi2_without_labels_and_keeps_the_best_iterate(setup):
    rim, svae, kvae, lenses = setup
    cfg = FineTuneConfig(fisher_samples=2, learning_rate=1e-3, max_steps=15, target_chi2_nu=0.0, ewc_lambda=1.0)
    res = finetune(
        rim,
        svae,
        kvae,
        lenses.observation[:1],
        LensingPhysics(lenses.psf[:1], lenses.noise_sigma[:1]),
        cfg,
        generators=gens(1),
    )
    assert res.chi2_nu[0] < 0.9 * res.chi2_nu_baseline[0]
    assert res.best_step[0] > 0 and res.steps[0] == 15
    # the reported chi2 is the chi2 of the reported maps
    physics = LensingPhysics(lenses.psf[:1], lenses.noise_sigma[:1])
    chi2 = physics.chi2_nu(lenses.observation[:1], res.source, torch.log10(res.kappa))
    torch.testing.assert_close(chi2, res.chi2_nu, rtol=1e-4, atol=0)
    # the weights of the trained model are untouched
    base = rim(lenses.observation[:1], physics)[-1]
    torch.testing.assert_close(base[:, :1], res.source_baseline)


def test_a_huge_lambda_holds_the_weights_at_the_baseline(setup):
    # RMSProp normalises step sizes, so lambda acts through the direction: the penalty's pull
    # back to phi* dominates and the prediction barely moves
    rim, svae, kvae, lenses = setup
    free = FineTuneConfig(fisher_samples=2, learning_rate=1e-3, max_steps=5, target_chi2_nu=0.0, ewc_lambda=0.0)
    held = replace(free, ewc_lambda=1e12)
    args = (rim, svae, kvae, lenses.observation[:1], LensingPhysics(lenses.psf[:1], lenses.noise_sigma[:1]))
    r_free = finetune(*args, free, generators=gens(1))
    r_held = finetune(*args, held, generators=gens(1))
    move_free = (r_free.source - r_free.source_baseline).abs().max()
    move_held = (r_held.source - r_held.source_baseline).abs().max()
    assert move_held < 0.05 * move_free


def test_batched_finetuning_equals_one_lens_at_a_time(setup):
    rim, svae, kvae, lenses = setup
    # at lr 1e-3 the tiny RIM's fine-tuning is chaotic (rounding differences between batched and
    # single convolutions grow to 1e-2 in six steps); at 1e-4 the two agree to float precision
    cfg = FineTuneConfig(fisher_samples=2, learning_rate=1e-4, max_steps=6, target_chi2_nu=0.0, ewc_lambda=10.0)
    together = finetune(
        rim, svae, kvae, lenses.observation, LensingPhysics(lenses.psf, lenses.noise_sigma), cfg, generators=gens(3)
    )
    for i in range(3):
        sl = slice(i, i + 1)
        alone = finetune(
            rim,
            svae,
            kvae,
            lenses.observation[sl],
            LensingPhysics(lenses.psf[sl], lenses.noise_sigma[sl]),
            cfg,
            generators=gens(1, seed=i),
        )
        torch.testing.assert_close(alone.chi2_nu, together.chi2_nu[sl], rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(alone.source, together.source[sl], rtol=0, atol=2e-4)
        torch.testing.assert_close(alone.kappa, together.kappa[sl], rtol=1e-3, atol=2e-4)
    assert (together.chi2_nu < 0.95 * together.chi2_nu_baseline).all()  # the comparison is not trivial


def test_early_stop_at_the_target_and_lenses_leave_the_batch(setup):
    rim, svae, kvae, lenses = setup
    cfg = FineTuneConfig(fisher_samples=2, learning_rate=1e-3, max_steps=8, ewc_lambda=1.0)
    base = finetune(
        rim,
        svae,
        kvae,
        lenses.observation,
        LensingPhysics(lenses.psf, lenses.noise_sigma),
        replace(cfg, max_steps=0),
        generators=gens(3),
    )
    # a target between the lenses' baselines: the lenses already below it take no step
    target = float(base.chi2_nu_baseline.median())
    res = finetune(
        rim,
        svae,
        kvae,
        lenses.observation,
        LensingPhysics(lenses.psf, lenses.noise_sigma),
        replace(cfg, target_chi2_nu=target),
        generators=gens(3),
    )
    below = base.chi2_nu_baseline <= target
    assert below.any() and (~below).any()
    assert (res.steps[below] == 0).all() and torch.equal(res.chi2_nu[below], base.chi2_nu_baseline[below])
    assert ((res.chi2_nu[~below] <= target) | (res.steps[~below] == 8)).all()


def test_trace_and_monitor_follow_every_step_of_the_running_lenses(setup):
    rim, svae, kvae, lenses = setup
    cfg = FineTuneConfig(fisher_samples=2, learning_rate=1e-3, max_steps=6, ewc_lambda=1.0)
    base = finetune(
        rim,
        svae,
        kvae,
        lenses.observation,
        LensingPhysics(lenses.psf, lenses.noise_sigma),
        replace(cfg, max_steps=0),
        generators=gens(3),
    )
    target = float(base.chi2_nu_baseline.median())  # one lens stops at once, the others run
    seen = {}
    res = finetune(
        rim,
        svae,
        kvae,
        lenses.observation,
        LensingPhysics(lenses.psf, lenses.noise_sigma),
        replace(cfg, target_chi2_nu=target),
        generators=gens(3),
        monitor=lambda k, ids, est: seen.setdefault(k, (ids.clone(), est.clone())),
    )
    trace = res.chi2_nu_trace
    assert trace.shape == (7, 3)
    torch.testing.assert_close(trace[0], res.chi2_nu_baseline)
    stopped = base.chi2_nu_baseline <= target
    assert torch.isnan(trace[1:, stopped]).all() and not torch.isnan(trace[1:, ~stopped]).any()
    # the kept iterate is the best of the trace, at the step the trace says
    for j in (~stopped).nonzero().flatten().tolist():
        best = int(torch.argmin(trace[:, j]))
        assert int(res.best_step[j]) == best and float(res.chi2_nu[j]) == pytest.approx(float(trace[best, j]))
    # the monitor sees the running lenses' final estimates, whose chi2_nu is the trace's
    ids, est = seen[3]
    assert ids.tolist() == (~stopped).nonzero().flatten().tolist() and est.shape == (len(ids), 2, 32, 32)
    physics = LensingPhysics(lenses.psf[ids], lenses.noise_sigma[ids])
    chi2 = physics.chi2_nu(lenses.observation[ids], est[:, :1], est[:, 1:])
    torch.testing.assert_close(chi2, trace[3, ids], rtol=1e-4, atol=0)


def test_bad_inputs_are_refused(setup):
    rim, svae, kvae, lenses = setup
    y = lenses.observation[:1].clone()
    y[0, 0, 3, 3] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        finetune(rim, svae, kvae, y, LensingPhysics(lenses.psf[:1], lenses.noise_sigma[:1]), generators=gens(1))
    with pytest.raises(ValueError, match="kappa VAE"):
        finetune(
            rim,
            svae,
            svae,
            lenses.observation[:1],
            LensingPhysics(lenses.psf[:1], lenses.noise_sigma[:1]),
            generators=gens(1),
        )
    with pytest.raises(ValueError, match="64"):
        big = source_vae(**{**TINY_VAE, "pixels": 64})
        finetune(
            rim,
            big,
            kvae,
            lenses.observation[:1],
            LensingPhysics(lenses.psf[:1], lenses.noise_sigma[:1]),
            generators=gens(1),
        )
    with pytest.raises(ValueError, match="fisher_samples"):
        FineTuneConfig(fisher_samples=0)


def test_rmsprop_is_keras_rmsprop_by_hand():
    cfg = FineTuneConfig(learning_rate=0.1)
    assert (cfg.rmsprop_alpha, cfg.rmsprop_eps) == (0.9, 1e-7)  # Keras' defaults, the original's
    p, v = torch.tensor([1.0, -2.0]), torch.zeros(2)
    g1, g2 = torch.tensor([0.5, 1e-9]), torch.tensor([-0.2, 3.0])
    rmsprop_step([p], [g1], [v], cfg)
    v1 = 0.1 * g1**2
    expect = torch.tensor([1.0, -2.0]) - 0.1 * g1 / (v1.sqrt() + 1e-7)
    torch.testing.assert_close(p, expect)
    rmsprop_step([p], [g2], [v], cfg)
    v2 = 0.9 * v1 + 0.1 * g2**2
    torch.testing.assert_close(v, v2)
    torch.testing.assert_close(p, expect - 0.1 * g2 / (v2.sqrt() + 1e-7))


def test_encoding_clips_to_the_vae_domain(setup):
    _, svae, kvae, _ = setup
    s = torch.full((1, 1, 32, 32), 2.0)
    k = torch.full((1, 1, 32, 32), -1.0)
    z_s, z_k = encode_prediction(svae, kvae, s, k)
    torch.testing.assert_close(z_s, svae.encode(torch.ones_like(s))[0])
    assert torch.isfinite(z_k).all()


def test_a_rim_with_a_gradient_skip_is_fine_tuned_through_the_same_updates(setup):
    _, _, _, lenses = setup
    rim = skip_rim()
    physics = LensingPhysics(lenses.psf, lenses.noise_sigma)
    with torch.no_grad():
        plain = rim(lenses.observation, physics)
        per_lens = rim(lenses.observation, physics, params=stacked_params(rim, 3))  # fine-tuning's path
        without = RIM(replace(rim.config, gradient_skip=0.0)).eval()
        without.unet.load_state_dict(rim.unet.state_dict())
        no_skip = without(lenses.observation, physics)
    # The per-lens weights (vmapped) round differently from the shared ones: 1e-9 at the first two
    # steps. Adam's normalisation divides each gradient by its own running size, which makes the
    # rounding of near-zero gradients 1e3-1e4 times larger at the third (up to 1.2e-5 on one
    # thread); a skip path missing from either moves the estimate by its gain, 1e-2.
    torch.testing.assert_close(per_lens[:2], plain[:2], rtol=0, atol=1e-7)
    torch.testing.assert_close(per_lens, plain, rtol=0, atol=1e-4)
    assert not torch.allclose(plain[1:], no_skip[1:], atol=1e-3)  # the skip path is in both
