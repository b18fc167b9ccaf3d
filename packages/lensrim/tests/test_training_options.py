"""The RIM's training options (issue: the RIM's last step is its best): time weights of the
loss, the data-fit term, per-tensor clipping, the second moment's decay; each checked against an
independent computation, saved with the run and refused in one line when it makes no sense."""

import json
import math
from dataclasses import asdict, replace

import pytest
import torch
from conftest import sie_lenses

import lenssim
from lenscore.runs import clip_each_tensor
from lensrim import PRESETS, RIM, RIMConfig
from lensrim.model import preprocess_gradients, rim_loss_terms
from lensrim.training import LensingOf, _batch_terms


@pytest.mark.parametrize(
    ("scheme", "raw"),
    [("uniform", [1, 1, 1, 1]), ("linear", [1, 2, 3, 4]), ("quadratic", [1, 4, 9, 16]), ("final", [0, 0, 0, 1])],
)
def test_time_weights_are_powers_of_t_summing_to_one(scheme, raw):
    weights = replace(PRESETS["tiny"], steps=4, time_weights=scheme).loss_time_weights()
    assert weights == pytest.approx([w / sum(raw) for w in raw], rel=1e-12)


@pytest.mark.parametrize("scheme", ["uniform", "quadratic", "final"])
@pytest.mark.parametrize("fit", [0.0, 0.3])
def test_training_loss_is_weighted_eq7_plus_the_fit_term(scheme, fit):
    data = sie_lenses(3)
    cfg = replace(PRESETS["tiny"], steps=3, time_weights=scheme, fit_weight=fit)
    torch.manual_seed(0)
    model = RIM(cfg)
    physics = LensingOf.of(cfg)
    loss, terms = _batch_terms(model, data, physics)
    # independently: the estimates again, eq. 7's terms per step, the weights t^p / sum, chi2 from the residual
    est = model(data["observation"], physics(data)).detach()
    ls, lk = rim_loss_terms(est, data["source"], data["kappa"])
    w = torch.tensor({"uniform": [1, 1, 1], "quadratic": [1, 4, 9], "final": [0, 0, 1]}[scheme], dtype=torch.float32)
    expected = ((w / w.sum())[:, None] * (ls + lk)).sum(0).mean()
    model_image = lenssim.lens_image(est[-1, :, :1], 10 ** est[-1, :, 1:], psf=data["psf"])
    chi2 = ((data["observation"] - model_image) / 0.02).pow(2).mean(dim=(1, 2, 3))
    assert terms["chi2_nu"] == pytest.approx(chi2.tolist(), rel=1e-4)
    expected = expected + fit * torch.log(chi2).clamp_min(0).mean()
    assert float(loss.detach()) == pytest.approx(float(expected), rel=1e-5)
    assert loss.requires_grad
    if fit:  # the fit term reaches the weights: its gradient differs from eq. 7's alone
        loss.backward()
        with_fit = [q.grad.clone() for q in model.parameters()]
        model.zero_grad()
        model.config = replace(cfg, fit_weight=0.0)
        _batch_terms(model, data, physics)[0].backward()
        assert any(not torch.allclose(a, q.grad) for a, q in zip(with_fit, model.parameters(), strict=True))


class _Fixed(torch.nn.Module):
    """A "RIM" whose T estimates are one leaf tensor: the loss's gradient with respect to every
    estimate's maps is that tensor's ``grad``."""

    def __init__(self, config, estimates):
        super().__init__()
        self.config = config
        self.estimates = torch.nn.Parameter(estimates)

    def forward(self, y, physics):
        return self.estimates


@pytest.mark.parametrize("share", [1.0, 0.25, 0.0])
def test_fit_term_reaches_kappa_with_its_share_of_the_gradient(share):
    data = sie_lenses(2)
    cfg = replace(PRESETS["tiny"], steps=2, time_weights="final", fit_weight=0.5, fit_kappa=share)
    physics = LensingOf.of(cfg)
    torch.manual_seed(1)
    truth = torch.cat([data["source"], torch.log10(data["kappa"])], dim=1)
    start = (truth + 0.1 * torch.randn_like(truth))[None].repeat(2, 1, 1, 1, 1)  # near the truth, chi2_nu > 1
    grads, values = {}, {}
    for fit, kappa_share in ((0.0, 1.0), (0.5, 1.0), (0.5, share)):
        model = _Fixed(replace(cfg, fit_weight=fit, fit_kappa=kappa_share), start.clone())
        loss, terms = _batch_terms(model, data, physics)
        assert (terms["chi2_nu"] > 1).all()  # the term is active on both lenses
        loss.backward()
        grads[fit, kappa_share], values[fit, kappa_share] = model.estimates.grad[-1], float(loss.detach())
    eq7, full, shared = grads[0.0, 1.0], grads[0.5, 1.0], grads[0.5, share]
    assert values[0.5, share] == values[0.5, 1.0]  # the term's value does not depend on the share
    torch.testing.assert_close(shared[:, 0], full[:, 0], rtol=0, atol=0)  # the source gets all of it
    assert not torch.allclose(full[:, 1], eq7[:, 1])  # the whole term moves kappa
    # kappa: eq. 7's gradient plus the share of the term's (independently: the two runs above)
    torch.testing.assert_close(shared[:, 1], eq7[:, 1] + share * (full[:, 1] - eq7[:, 1]), rtol=1e-5, atol=1e-7)
    if share == 0:
        assert torch.equal(shared[:, 1], eq7[:, 1])


def test_fit_term_gives_no_reward_below_the_noise():
    data = sie_lenses(2)
    cfg = replace(PRESETS["tiny"], steps=2, fit_weight=1.0, time_weights="uniform")
    model = RIM(cfg)

    class Perfect(LensingOf):  # a forward model whose chi2_nu is below 1 for every estimate
        def __call__(self, batch):
            physics = super().__call__(batch)
            physics.chi2_nu = lambda y, s, xi: 0.5 + 0 * s.mean(dim=(1, 2, 3))
            return physics

    loss, _ = _batch_terms(model, data, Perfect.of(cfg))
    ls, lk = rim_loss_terms(model(data["observation"], Perfect.of(cfg)(data)), data["source"], data["kappa"])
    assert float(loss.detach()) == pytest.approx(float((ls + lk).mean().detach()), rel=1e-5)


def test_clip_each_tensor_bounds_every_tensor_and_returns_the_global_norm():
    a = torch.nn.Parameter(torch.zeros(3))
    b = torch.nn.Parameter(torch.zeros(2, 2))
    c = torch.nn.Parameter(torch.zeros(1))  # no gradient
    a.grad = torch.tensor([6.0, 8.0, 0.0])  # norm 10
    b.grad = torch.tensor([[0.6, 0.8], [0.0, 0.0]])  # norm 1
    norm = clip_each_tensor([a, b, c], 5.0)
    assert float(norm) == pytest.approx(math.sqrt(101))
    assert a.grad.tolist() == pytest.approx([3.0, 4.0, 0.0], rel=1e-6)  # scaled to norm 5, direction kept
    assert torch.equal(b.grad, torch.tensor([[0.6, 0.8], [0.0, 0.0]]))  # under the bound: untouched
    # global clipping would have scaled both by the same factor instead
    a.grad, b.grad = torch.tensor([6.0, 8.0, 0.0]), torch.tensor([[0.6, 0.8], [0.0, 0.0]])
    torch.nn.utils.clip_grad_norm_([a, b], 5.0)
    assert b.grad[0, 0] < 0.6 * 0.51


def test_rmsprop_decay_is_what_the_rim_sees():
    g = [torch.randn(1, 2, 4, 4) for _ in range(3)]
    for beta2 in (0.9, 0.99):
        v = torch.zeros_like(g[0])
        for gt in g:
            v = beta2 * v + (1 - beta2) * gt**2
        expected = g[-1] / (torch.sqrt(v / (1 - beta2**3)) + 1e-8)
        assert torch.allclose(preprocess_gradients(g, "rmsprop", beta2=beta2), expected, rtol=1e-5)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("beta2", 1.0, r"beta2 .* must lie in \(0, 1\), got 1.0"),
        ("beta2", 0.0, r"beta2 .* must lie in \(0, 1\)"),
        ("beta1", 1.0, r"beta1 .* must lie in \[0, 1\)"),
        ("epsilon", 0.0, "epsilon must be positive"),
        ("clip_norm", -1.0, "clip_norm must be positive"),
        ("fit_weight", -0.1, "fit_weight must be non-negative"),
        ("time_weights", "cubic", "time_weights must be one of uniform, linear, quadratic, final"),
        ("clipping", "layer", "clipping must be global or per_tensor"),
        ("fit_kappa", 1.5, r"fit_kappa must lie in \[0, 1\], got 1.5"),
        ("gradient_skip", -0.01, r"gradient_skip must lie in \[0, 1\], got -0.01"),
        ("gradient_skip", 2.0, r"gradient_skip must lie in \[0, 1\]"),
        ("fit_weight", math.nan, "fit_weight must be finite"),
        ("skip_normalisation", "layer", "skip_normalisation must be pixel or map, got 'layer'"),
        ("residual_input", "yes", "residual_input must be true or false, got 'yes'"),
    ],
)
def test_senseless_training_options_are_refused_in_one_line(field, value, message):
    with pytest.raises(ValueError, match=message) as info:
        replace(PRESETS["tiny"], **{field: value})
    assert "\n" not in str(info.value)
    text = json.dumps({"model": "RIM", **{**asdict(PRESETS["tiny"]), field: value}})
    with pytest.raises(ValueError, match=message):
        RIMConfig.from_json(text)


def test_a_run_saved_before_the_options_existed_reads_as_it_trained():
    saved = json.loads(PRESETS["tiny"].to_json())
    names = ("time_weights", "clipping", "fit_weight", "fit_kappa", "gradient_skip", "skip_normalisation")
    for name in (*names, "residual_input"):
        del saved[name]
    old = RIMConfig.from_json(json.dumps(saved))
    assert (old.time_weights, old.clipping, old.fit_weight, old.fit_kappa) == ("uniform", "global", 0.0, 1.0)
    assert (old.gradient_skip, old.skip_normalisation, old.residual_input) == (0.0, "pixel", False)
    new = replace(
        PRESETS["tiny"],
        time_weights="quadratic",
        clipping="per_tensor",
        fit_weight=0.2,
        fit_kappa=0.3,
        residual_input=True,
    )
    assert RIMConfig.from_json(new.to_json()) == new  # a file that has them keeps them


def test_step_gains_scale_each_update_and_start_as_the_plain_rim():
    data = sie_lenses(2)
    cfg = replace(PRESETS["tiny"], steps=4, gradient_skip=0.0)  # the gains scale the network's part alone
    torch.manual_seed(0)
    plain = RIM(cfg)
    gained = RIM(replace(cfg, step_gains=True))
    gained.unet.load_state_dict(plain.unet.state_dict())
    physics = LensingOf.of(cfg)(data)
    with torch.no_grad():
        a = plain(data["observation"], physics)
        b = gained(data["observation"], physics)
        assert torch.equal(a, b)  # gains of 1: the same RIM
        gained.gains[1] = torch.tensor([0.5, 2.0])  # the second update, source halved and log10 kappa doubled
        c = gained(data["observation"], physics)
    assert torch.equal(c[:2], a[:2])  # the estimates before it are untouched
    step, plain_step = c[2] - c[1], a[2] - a[1]
    assert torch.allclose(step[:, 0], 0.5 * plain_step[:, 0]) and torch.allclose(step[:, 1], 2.0 * plain_step[:, 1])
    assert (
        gained.gains.shape == (3, 2)
        and sum(p.numel() for p in gained.parameters()) == sum(p.numel() for p in plain.parameters()) + 6
    )
    loss, _ = _batch_terms(gained, data, LensingOf.of(cfg))
    loss.backward()
    assert gained.gains.grad is not None and gained.gains.grad.abs().sum() > 0  # trained with the network


def _untrained_skip_rim(**options):
    """An untrained tiny RIM with a gradient skip of 0.03 from log10 kappa -0.3, its config, lenses,
    physics and observations, and its 4 estimates of them."""
    data = sie_lenses(2)
    cfg = replace(PRESETS["tiny"], steps=4, gradient_skip=0.03, initial_log10_kappa=-0.3, **options)
    torch.manual_seed(0)
    rim = RIM(cfg)
    physics = LensingOf.of(cfg)(data)
    y = data["observation"]
    with torch.no_grad():
        est = rim(y, physics)
    return rim, cfg, data, physics, y, est


@pytest.mark.parametrize("method", ["rmsprop", "adam"])
def test_an_untrained_rim_with_a_gradient_skip_is_likelihood_ascent(method):
    rim, cfg, data, physics, y, est = _untrained_skip_rim(gradient_preprocessing=method)
    # independently: start at (0, c), then x_t = x_{t-1} + 0.03 * the preprocessed gradient of log p
    x = torch.cat([torch.zeros_like(y), torch.full_like(y, -0.3)], dim=1)
    history = []
    assert torch.equal(est[0], x)
    for t in range(1, 4):
        history.append(torch.cat(physics.gradient(y, x[:, :1], x[:, 1:]), dim=1))
        x = x + 0.03 * preprocess_gradients(history, method, beta1=cfg.beta1, beta2=cfg.beta2, eps=cfg.epsilon)
        assert torch.allclose(est[t], x, atol=1e-6)
    chi2 = [physics.chi2_nu(y, e[:, :1], e[:, 1:]) for e in est]
    assert (chi2[-1] < chi2[0]).all()  # ascent on log p: the fit improves
    # the gains and the network learn together from the start
    loss, _ = _batch_terms(rim, data, LensingOf.of(cfg))
    loss.backward()
    assert rim.skip.grad.abs().sum() > 0 and rim.unet.out.weight.grad.abs().sum() > 0


def test_a_skip_normalised_by_map_is_steepest_ascent_with_the_map_rms():
    _, cfg, _, physics, y, est = _untrained_skip_rim(skip_normalisation="map")
    # independently, per lens and map: v_t = sum_k (1 - b2) b2^(t-k) mean(g_k^2), step g_t / sqrt(v_t / (1 - b2^t))
    x = torch.cat([torch.zeros_like(y), torch.full_like(y, -0.3)], dim=1)
    history = []
    for t in range(1, 4):
        g = torch.cat(physics.gradient(y, x[:, :1], x[:, 1:]), dim=1)
        history.append(g)
        step = torch.empty_like(g)
        for b in range(g.shape[0]):
            for c in range(2):
                v = sum(
                    (1 - cfg.beta2) * cfg.beta2 ** (t - k) * float(h[b, c].double().pow(2).mean())
                    for k, h in enumerate(history, 1)
                )
                step[b, c] = g[b, c] / (math.sqrt(v / (1 - cfg.beta2**t)) + cfg.epsilon)
        x = x + 0.03 * step
        assert torch.allclose(est[t], x, atol=1e-5), t
    # a steepest-ascent step keeps the pixels' relative sizes: the largest source move is far above the
    # typical one (the per-pixel normalised skip moves every pixel of these lenses by the same 0.03)
    move = (est[1] - est[0])[:, 0].abs().flatten(1)
    assert (move.amax(1) > 5 * move.mean(1)).all()
    assert (physics.chi2_nu(y, est[-1, :, :1], est[-1, :, 1:]) < physics.chi2_nu(y, est[0, :, :1], est[0, :, 1:])).all()


def test_a_gradient_skip_needs_a_normalised_gradient():
    with pytest.raises(ValueError, match="gradient_skip needs a normalised gradient") as info:
        replace(PRESETS["tiny"], gradient_preprocessing="raw", gradient_skip=0.03)
    assert "\n" not in str(info.value)
    assert replace(PRESETS["tiny"], gradient_preprocessing="raw", gradient_skip=0.0).gradient_skip == 0.0
    with pytest.raises(ValueError, match="skip_normalisation map .* gradient_skip is 0") as info:
        replace(PRESETS["tiny"], gradient_skip=0.0, skip_normalisation="map")
    assert "\n" not in str(info.value)


def test_the_residual_input_is_the_whitened_residual_of_each_estimate():
    data = sie_lenses(2)
    cfg = replace(PRESETS["tiny"], steps=4, residual_input=True, initial_log10_kappa=-0.3)
    torch.manual_seed(0)
    rim = RIM(cfg)
    assert rim.unet.inp.in_channels == 6 and RIM(replace(cfg, residual_input=False)).unet.inp.in_channels == 5
    seen = []
    rim.unet.inp.register_forward_pre_hook(lambda module, args: seen.append(args[0][:, 5].float()))
    y = data["observation"]
    with torch.no_grad():
        est = rim(y, LensingOf.of(cfg)(data))
    # independently: the first call sees y / sigma; call t the residual of estimate t - 1 through the ray tracer
    sigma = data["noise_sigma"].view(-1, 1, 1)
    assert len(seen) == 4
    assert torch.allclose(seen[0], torch.asinh(y[:, 0] / sigma), rtol=1e-4, atol=1e-4)
    for t in range(1, 4):
        s, xi = est[t - 1, :, :1], est[t - 1, :, 1:]
        model = lenssim.lens_image(s, 10.0**xi, psf=data["psf"], image_fov=cfg.image_fov, source_fov=cfg.source_fov)
        expected = torch.asinh((y - model)[:, 0] / sigma)
        assert torch.allclose(seen[t], expected, rtol=1e-4, atol=1e-4), t
    assert seen[0].abs().max() > 3  # the noise's units: bright pixels sit many sigma above it
    # fine-tuning's per-lens weights (vmap) see the channel too: each lens given the shared weights
    # gives the shared estimates
    params = {k: v.detach().expand(2, *v.shape).clone() for k, v in rim.unet.named_parameters()}
    with torch.no_grad():
        per_lens = rim(y, LensingOf.of(cfg)(data), params=params)
    assert torch.allclose(per_lens, est, atol=1e-6)
    # the channel is learned from (without the skip, whose zero output layer stops every gradient at init)
    plain = RIM(replace(cfg, gradient_skip=0.0))
    loss, _ = _batch_terms(plain, data, LensingOf.of(cfg))
    loss.backward()
    assert plain.unet.inp.weight.grad[:, 5].abs().sum() > 0
