"""The RIM on CUDA: the same numbers as the CPU, batched fine-tuning, bf16, on-the-fly simulation
(skipped without a GPU; run by `nox -s gpu`)."""

from dataclasses import replace

import pytest
import torch
from conftest import ConvolutionDtypes

import lenssim
from lensprior import kappa_vae, source_vae
from lensrim import PRESETS, RIM, LensingPhysics, rim_loss
from lensrim.finetune import FineTuneConfig, finetune
from lensrim.training import SimulatedBatches

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

OBS = lenssim.ObservationConfig(image_pixels=32, source_pixels=32, psf_size=5)


@pytest.fixture(autouse=True)
def ieee_float32():
    """The network's own convolutions in full float32 for comparisons with the CPU."""
    old = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old


def _lenses(n=3):
    b = lenssim.simulate_sie_lenses(n, config=OBS, generator=torch.Generator().manual_seed(1))
    return {k: getattr(b, k) for k in lenssim.LENS_FIELDS}


def test_rim_forward_and_backward_equal_the_cpu():
    torch.manual_seed(0)
    cpu = RIM(replace(PRESETS["tiny"], steps=4))
    gpu = RIM(replace(PRESETS["tiny"], steps=4)).cuda()
    gpu.load_state_dict(cpu.state_dict())
    lenses = _lenses()
    results = []
    for model, dev in ((cpu, "cpu"), (gpu, "cuda")):
        d = {k: v.to(dev) for k, v in lenses.items()}
        est = model(d["observation"], LensingPhysics(d["psf"], d["noise_sigma"]))
        loss = rim_loss(est, d["source"], d["kappa"]).mean()
        grads = torch.autograd.grad(loss, list(model.parameters()))
        results.append((est.detach().cpu(), [g.cpu() for g in grads]))
    (e_cpu, g_cpu), (e_gpu, g_gpu) = results
    torch.testing.assert_close(e_gpu, e_cpu, rtol=1e-4, atol=1e-4)
    for a, b in zip(g_cpu, g_gpu, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-3, atol=1e-5)


def test_bf16_autocast_stays_close_to_float32():
    torch.manual_seed(0)
    full = RIM(replace(PRESETS["tiny"], steps=3)).cuda()
    half = RIM(replace(PRESETS["tiny"], steps=3, bf16=True)).cuda()
    half.load_state_dict(full.state_dict())
    d = {k: v.cuda() for k, v in _lenses().items()}
    physics = LensingPhysics(d["psf"], d["noise_sigma"])
    a, b = full(d["observation"], physics), half(d["observation"], physics)
    assert b.dtype == torch.float32 and torch.isfinite(b).all()
    assert float((a - b).abs().max()) < 0.05 * float(a.abs().max())
    rim_loss(b, d["source"], d["kappa"]).mean().backward()  # differentiable under autocast
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in half.parameters())
    # fine-tuning's per-lens weights (vmap) compute in bfloat16 too
    params = {k: v.detach().unsqueeze(0).expand(3, *v.shape) for k, v in full.unet.named_parameters()}
    with torch.no_grad(), ConvolutionDtypes() as seen:
        per_lens = half(d["observation"], physics, params=params)
    assert seen.dtypes == {torch.bfloat16}
    assert float((per_lens - a).abs().max()) < 0.05 * float(a.abs().max())


def test_batched_finetuning_equals_one_lens_at_a_time_on_cuda():
    torch.manual_seed(0)
    rim = RIM(replace(PRESETS["tiny"], steps=3)).cuda().eval()
    vae = dict(pixels=32, levels=2, filters=4, latent_dim=4)
    svae, kvae = source_vae(**vae).cuda().eval(), kappa_vae(**vae).cuda().eval()
    d = {k: v.cuda() for k, v in _lenses().items()}
    cfg = FineTuneConfig(fisher_samples=2, learning_rate=1e-4, max_steps=6, target_chi2_nu=0.0, ewc_lambda=10.0)

    def gens(n, seed=0):
        return [torch.Generator().manual_seed(seed + i) for i in range(n)]

    together = finetune(
        rim, svae, kvae, d["observation"], LensingPhysics(d["psf"], d["noise_sigma"]), cfg, generators=gens(3)
    )
    for i in range(3):
        sl = slice(i, i + 1)
        alone = finetune(
            rim,
            svae,
            kvae,
            d["observation"][sl],
            LensingPhysics(d["psf"][sl], d["noise_sigma"][sl]),
            cfg,
            generators=gens(1, i),
        )
        torch.testing.assert_close(alone.chi2_nu, together.chi2_nu[sl], rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(alone.source, together.source[sl], rtol=0, atol=2e-4)


def test_on_the_fly_batches_live_on_the_gpu_and_repeat_with_the_seed():
    sim = SimulatedBatches(
        lenssim.sie_kappa_sampler(config=OBS, device="cuda"),
        lenssim.sersic_source_sampler(OBS, device="cuda"),
        OBS,
        device="cuda",
    )
    a, b = sim(3, 4, 0), sim(3, 4, 0)
    assert all(v.is_cuda for v in a.values())
    assert all(torch.equal(a[k], b[k]) for k in a)
    cpu = SimulatedBatches(lenssim.sie_kappa_sampler(config=OBS), lenssim.sersic_source_sampler(OBS), OBS)(3, 4, 0)
    # the same draws: the maps agree with the CPU's to float32 rounding (the noise differs: each
    # device has its own generator)
    for key in ("kappa", "source", "psf", "noise_sigma"):
        torch.testing.assert_close(a[key].cpu(), cpu[key], rtol=1e-5, atol=1e-6)


def test_a_training_step_never_synchronises_with_the_host():
    """CUDA's own detector (issue 24 §1): after a first step (cuDNN's and the FFT plans' set-up,
    the cached time weights), a training step raises on any synchronising call."""
    from lensrim.training import LensingOf, _batch_terms

    config = replace(PRESETS["tiny"], batch_size=3, fit_weight=0.02, initial_log10_kappa=-0.3, time_weights="linear")
    torch.manual_seed(0)
    model = RIM(config).cuda()
    opt = torch.optim.Adamax(model.parameters(), lr=1e-3)
    obs = lenssim.ObservationConfig.at_resolution(config.pixels)
    lenses = lenssim.simulate_sie_lenses(3, config=obs, generator=torch.Generator().manual_seed(0))
    batch = {k: getattr(lenses, k).cuda() for k in lenssim.LENS_FIELDS}
    physics = LensingOf.of(config)

    def step():
        loss, _ = _batch_terms(model, batch, physics)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    step()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()
