"""Fine-tuning the RIM on each observation with an EWC prior (section 2.5, appendix A, Table 3).

For one observation y (with its PSF and noise sigma), and the trained weights phi*:

1. the baseline x_hat = RIM(y); its source and kappa are encoded by the two VAEs, z_s and z_k;
2. the Fisher diagonal at phi*: ``fisher_samples`` draws z ~ N(z_hat, latent_sigma^2 I) of each
   VAE are decoded (each source draw rescaled to peak 1, ``relu(s) / max s``, as the original code
   did) and lensed into noisy observations with the same PSF and sigma; the RIM is run on each;
   F_j is the mean over draws of the squared derivative of the per-draw loss (eq. 7 plus the mean
   over steps of chi2_nu, eq. A5 with l2 = 0) with respect to weight j;
3. the weights are optimised on
   L(phi) = (1/T) sum_t chi2_nu(y, F(x_t)) + (lambda / 2) sum_j F_j (phi_j - phi*_j)^2
   with RMSProp, for at most ``max_steps`` steps, stopping early once chi2_nu <= ``target_chi2_nu``;
   the iterate with the best chi2_nu of the final RIM estimate is kept (the baseline included, so
   fine-tuning never returns a worse fit than it started from).

Units. The data term is the *reduced* chi-square, chi2_nu = chi^2 / N^2 (N^2 image pixels), in
both the Fisher's per-draw loss and the objective, as in the original code (its RIM records
``2 log L / N^2`` and both its Fisher and its fine-tuning cost take the mean of that). So Table 3's
lambda = 2e5 means here what it meant for Table 3 and Fig. 8. With chi^2 / 2 instead (the
likelihood's natural unit), the Fisher grows by (N^2 / 2)^2 and the data term by N^2 / 2: at
128^2 the penalty would be ~8,000 times stiffer relative to the data. The penalty keeps eq. 10's
lambda / 2 (the original code multiplied its penalty sum by lambda; if that sum lacked the 1/2, its
lambda was twice ours).

RMSProp as the original ran it (Keras, no momentum): v = rho v + (1 - rho) g^2,
phi -= lr g / (sqrt(v) + eps), rho 0.9, eps 1e-7, the learning rate constant.

Labels are never used. Many lenses are fine-tuned at once: each has its own copy of the weights,
stacked along a leading dimension and run through one :func:`torch.func.vmap` call per RIM step
(:meth:`lensrim.model.RIM.forward` with ``params``); the likelihood gradients and chi^2 are
batched across lenses as usual. The per-draw gradients of the Fisher diagonal come from the same
mechanism: the weights are expanded over a chunk of draws and differentiated per copy. Finished
lenses leave the batch, so the remaining ones run faster. A lens's random draws come from its own
generator alone, never from the lenses it shares a batch with; its numbers can differ at rounding
level when the batch size changes (a batch of one may take other convolution kernels: on the
2-core CPU a lens alone and in a batch of 4 differed by 1.3e-6 of a map in float32 after 3 steps,
and agreed bit for bit in bfloat16, which fine-tuning follows when the RIM computes in it).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

import lenssim
from lenscore.config import SettingError
from lensrim.config import FineTuneConfig
from lensrim.model import RIM, ForwardModel, rim_loss

__all__ = [
    "FineTuneConfig",
    "FineTuneResult",
    "check_prior",
    "check_vaes",
    "encode_prediction",
    "ewc_penalty",
    "finetune",
    "finetune_objective",
    "fisher_diagonal",
    "mean_chi2_nu",
    "peak_normalised",
    "rmsprop_step",
    "stacked_params",
]


@dataclass
class FineTuneResult:
    """Per-lens outcome of :func:`finetune`; maps are ``(B, 1, N, N)``, the rest ``(B,)``."""

    source_baseline: torch.Tensor
    kappa_baseline: torch.Tensor
    chi2_nu_baseline: torch.Tensor
    source: torch.Tensor
    kappa: torch.Tensor
    chi2_nu: torch.Tensor
    best_step: torch.Tensor
    """The update count of the kept iterate (0: the baseline was not improved)."""
    steps: torch.Tensor
    """Updates made before the lens stopped (early stop or ``max_steps``)."""
    chi2_nu_trace: torch.Tensor | None = None
    """``(max_steps + 1, B)``: chi2_nu of the final RIM estimate after each update count (row 0:
    the baseline), NaN once a lens has stopped (Fig. 8's goodness of fit, step by step)."""


def stacked_params(model: RIM, copies: int) -> dict[str, torch.Tensor]:
    """Independent copies of the U-net's weights, ``(copies, *shape)`` each, as leaf tensors."""
    return {
        k: v.detach().unsqueeze(0).repeat(copies, *([1] * v.dim())).requires_grad_(True)
        for k, v in model.unet.named_parameters()
    }


def mean_chi2_nu(estimates: torch.Tensor, y: torch.Tensor, physics: ForwardModel) -> torch.Tensor:
    """The data term: (1/T) sum_t chi2_nu(y, F(x_t)) per example over the RIM's ``(T, B, 2, N, N)``
    estimates, differentiable, ``(B,)`` (chi2_nu = chi^2 / N^2: the original code's unit)."""
    return torch.stack([physics.chi2_nu(y, est[:, :1], est[:, 1:]) for est in estimates]).mean(dim=0)


def peak_normalised(source: torch.Tensor) -> torch.Tensor:
    """``relu(s) / max(relu(s))`` per map: VAE source draws rescaled to peak 1, as the original
    code did before lensing them for the Fisher (an all-zero draw stays zero)."""
    s = source.clamp_min(0.0)
    return s / s.amax(dim=(-2, -1), keepdim=True).clamp_min(torch.finfo(s.dtype).tiny)


def check_vaes(model: RIM, source_vae: torch.nn.Module, kappa_vae: torch.nn.Module) -> None:
    """Refuse VAEs that cannot be ``model``'s priors: of the other kind (the two swapped) or on
    maps of another size than the RIM's; a :class:`~lenscore.config.SettingError` naming
    ``source_vae`` or ``kappa_vae``."""
    for kind, vae in (("source", source_vae), ("kappa", kappa_vae)):
        check_prior(vae, kind, pixels=model.config.pixels, param=f"{kind}_vae")


def check_prior(
    vae: torch.nn.Module, kind: str, *, pixels: int, fov: float | None = None, meta: dict | None = None, param: str
) -> None:
    """Refuse a VAE that cannot give ``kind`` ("source" or "kappa") maps of ``pixels``^2 on a field
    of ``fov`` arcsec: of the other kind, on maps of another size, or trained on maps of another
    field (its run metadata ``meta``'s ``data_attrs``, when given); a
    :class:`~lenscore.config.SettingError` naming ``param``."""
    if vae.config.kind != kind:
        raise SettingError(f"expected a {kind} VAE, got a {vae.config.kind} VAE", param=param)
    if vae.config.pixels != pixels:
        raise SettingError(f"the {kind} VAE works on {vae.config.pixels}^2 maps, the RIM on {pixels}^2", param=param)
    key = "image_fov" if kind == "kappa" else "source_fov"
    trained_on = (meta or {}).get("data_attrs", {}).get(key)
    if fov is not None and trained_on is not None and not lenssim.geometry.same_fov(trained_on, fov):
        raise SettingError(
            f"the VAE was trained on maps of {key} {float(trained_on):g}, the RIM on {fov:g} arcsec", param=param
        )


@torch.no_grad()
def encode_prediction(
    source_vae: torch.nn.Module, kappa_vae: torch.nn.Module, source: torch.Tensor, kappa: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Latent means of a predicted source (clipped to the VAE's [0, 1]) and kappa (floored at 1e-6)."""
    z_s, _ = source_vae.encode(source.clamp(0.0, 1.0))
    z_k, _ = kappa_vae.encode(kappa.clamp_min(1e-6))
    return z_s, z_k


def fisher_diagonal(
    model: RIM,
    source_vae: torch.nn.Module,
    kappa_vae: torch.nn.Module,
    z_source: torch.Tensor,
    z_kappa: torch.Tensor,
    physics: ForwardModel,
    *,
    samples: int = 200,
    latent_sigma: float = 0.3,
    generators: Sequence[torch.Generator],
    chunk: int = 8,
    progress: Callable[[int, int], None] | None = None,
    with_chi2: bool = True,
) -> dict[str, torch.Tensor]:
    """Diagonal of the empirical Fisher information of the RIM's weights, per lens.

    For each of the B lenses (latent codes ``z_source (B, Ds)``, ``z_kappa (B, Dk)``, and its
    forward model, example i of ``physics``: PSF and noise), ``samples`` simulated tasks near its
    baseline are drawn with its own generator (on the CPU; ``progress(done, total)`` counts draws); returns,
    for every U-net weight, the mean over draws
    of the squared gradient of the per-draw loss, ``(B, *shape)``: eq. 7 plus, ``with_chi2``, the
    mean over steps of chi2_nu (eq. A5).
    """
    b = z_source.shape[0]
    if len(generators) != b or z_kappa.shape[0] != b:
        raise ValueError(
            f"need one latent code pair and one generator per lens, got {b}, {z_kappa.shape[0]}, {len(generators)}"
        )
    device = z_source.device
    n = model.config.pixels
    # every random number of lens i comes from generators[i] alone, drawn up front
    eps_s, eps_k, noise = [], [], []
    for g in generators:
        eps_s.append(torch.randn(samples, z_source.shape[1], generator=g))
        eps_k.append(torch.randn(samples, z_kappa.shape[1], generator=g))
        noise.append(torch.randn(samples, 1, n, n, generator=g))
    eps_s, eps_k, noise = (torch.cat(t).to(device) for t in (eps_s, eps_k, noise))
    lens_of = torch.arange(b, device=device).repeat_interleave(samples)
    anchor = {k: v.detach() for k, v in model.unet.named_parameters()}
    fisher = {k: torch.zeros(b, *v.shape, device=device, dtype=v.dtype) for k, v in anchor.items()}
    for start in range(0, b * samples, chunk):
        idx = torch.arange(start, min(start + chunk, b * samples), device=device)
        lens = lens_of[idx]
        with torch.no_grad():
            src = peak_normalised(source_vae.decode(z_source[lens] + latent_sigma * eps_s[idx]))
            kap = kappa_vae.decode(z_kappa[lens] + latent_sigma * eps_k[idx])
            draws = physics.subset(lens)
            y = draws.add_noise(draws.simulate(src, torch.log10(kap)), noise[idx])
        # one (expanded, not copied) view of the weights per draw: its gradient is the per-draw one
        copies = {k: v.unsqueeze(0).expand(len(idx), *v.shape).requires_grad_(True) for k, v in anchor.items()}
        est = model(y, draws, params=copies)
        loss = rim_loss(est, src, kap, check=False)  # 10**xi: positive, and no wait for the device
        if with_chi2:
            loss = loss + mean_chi2_nu(est, y, draws)
        grads = torch.autograd.grad(loss.sum(), list(copies.values()))
        for f, g in zip(fisher.values(), grads, strict=True):
            f.index_add_(0, lens, g.detach().pow(2))
        if progress is not None:
            progress(min(start + chunk, b * samples), b * samples)  # counted on the host: no wait
    return {k: f / samples for k, f in fisher.items()}


def ewc_penalty(
    params: dict[str, torch.Tensor], anchor: dict[str, torch.Tensor], fisher: dict[str, torch.Tensor], lam: float
) -> torch.Tensor:
    """(lambda / 2) sum_j F_j (phi_j - phi*_j)^2 per copy, ``(B,)``; ``params`` and ``fisher`` are
    stacked ``(B, *shape)``, ``anchor`` holds phi* unstacked."""
    total = 0.0
    for k, p in params.items():
        total = total + (fisher[k] * (p - anchor[k].unsqueeze(0)).pow(2)).flatten(1).sum(dim=1)
    return 0.5 * lam * total


@torch.no_grad()
def rmsprop_step(
    params: Sequence[torch.Tensor], grads: Sequence[torch.Tensor], square_avg: Sequence[torch.Tensor], config
) -> None:
    """One in-place RMSProp update as Keras ran it without momentum: v = rho v + (1 - rho) g^2,
    phi -= lr g / (sqrt(v) + eps), with rho, lr and eps from ``config`` (a :class:`FineTuneConfig`)."""
    rho, lr, eps = config.rmsprop_alpha, config.learning_rate, config.rmsprop_eps
    for p, g, v in zip(params, grads, square_avg, strict=True):
        v.mul_(rho).addcmul_(g, g, value=1 - rho)
        p.addcdiv_(g, v.sqrt().add_(eps), value=-lr)


def finetune_objective(
    model: RIM,
    params: dict[str, torch.Tensor],
    y: torch.Tensor,
    physics: ForwardModel,
    anchor: dict[str, torch.Tensor],
    fisher: dict[str, torch.Tensor],
    lam: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """L(phi) = (1/T) sum_t chi2_nu(y, F(x_t)) + (lambda / 2) sum_j F_j (phi_j - phi*_j)^2 per lens,
    ``(B,)``, with the stacked weights ``params``; returns it and the RIM's estimates
    ``(T, B, 2, N, N)``."""
    est = model(y, physics, params=params)
    return mean_chi2_nu(est, y, physics) + ewc_penalty(params, anchor, fisher, lam), est


def finetune(
    model: RIM,
    source_vae: torch.nn.Module,
    kappa_vae: torch.nn.Module,
    observation: torch.Tensor,
    physics: ForwardModel,
    config: FineTuneConfig = FineTuneConfig(),
    *,
    generators: Sequence[torch.Generator],
    progress: Callable[[str, int, int], None] | None = None,
    monitor: Callable[[int, torch.Tensor, torch.Tensor], None] | None = None,
) -> FineTuneResult:
    """Fine-tune the RIM on B observations at once (each with its own weight copy); see the module.

    ``observation (B, 1, N, N)`` with its forward model ``physics`` (e.g.
    ``rim.config.physics(psf, sigma)``; any :class:`~lensrim.model.ForwardModel`), one CPU
    ``torch.Generator`` per lens for the Fisher draws. ``progress``
    is called as ``progress(stage, done, total)`` with stage ``"fisher"`` or ``"optimise"``;
    ``monitor(k, lenses, estimate)``, if given, sees after k updates the final RIM estimate
    ``(len(lenses), 2, N, N)`` of the lenses still running (indices into the batch), e.g. to track
    an oracle loss against the truth without the optimisation ever seeing it.
    """
    check_vaes(model, source_vae, kappa_vae)
    b = observation.shape[0]
    if len(generators) != b:
        raise ValueError(f"need one generator per lens, got {len(generators)} for {b} lenses")
    if not torch.isfinite(observation).all():
        raise ValueError("the observation holds NaN or infinite pixels")
    model.eval()
    with torch.no_grad():
        base = model(observation, physics)[-1]
        chi2_base = physics.chi2_nu(observation, base[:, :1], base[:, 1:])
    if not torch.isfinite(chi2_base).all():
        raise ValueError("the baseline's chi2_nu is not finite: check the noise (sigma must be positive)")
    z_s, z_k = encode_prediction(source_vae, kappa_vae, base[:, :1], torch.pow(10.0, base[:, 1:]))

    result = FineTuneResult(
        source_baseline=base[:, :1].clone(),
        kappa_baseline=torch.pow(10.0, base[:, 1:]),
        chi2_nu_baseline=chi2_base.clone(),
        source=base[:, :1].clone(),
        kappa=torch.pow(10.0, base[:, 1:]),
        chi2_nu=chi2_base.clone(),
        best_step=torch.zeros(b, dtype=torch.long),
        steps=torch.zeros(b, dtype=torch.long),
        chi2_nu_trace=torch.full((config.max_steps + 1, b), float("nan")),
    )
    result.chi2_nu_trace[0] = chi2_base.cpu()
    if monitor is not None:
        monitor(0, torch.arange(b), base)
    active = (chi2_base > config.target_chi2_nu).nonzero().flatten()
    if config.max_steps == 0 or len(active) == 0:
        return result

    fisher = fisher_diagonal(
        model,
        source_vae,
        kappa_vae,
        z_s[active],
        z_k[active],
        physics.subset(active),
        samples=config.fisher_samples,
        latent_sigma=config.latent_sigma,
        generators=[generators[j] for j in active.tolist()],
        chunk=config.fisher_chunk,
        with_chi2=config.fisher_chi2,
        progress=None if progress is None else functools.partial(progress, "fisher"),
    )
    anchor = {k: v.detach() for k, v in model.unet.named_parameters()}
    params = stacked_params(model, len(active))
    square_avg = {k: torch.zeros_like(v) for k, v in params.items()}

    if progress is not None:
        progress("optimise", 0, config.max_steps)
    for k in range(config.max_steps + 1):
        sub = physics.subset(active)
        y = observation[active]
        objective, est = finetune_objective(model, params, y, sub, anchor, fisher, config.ewc_lambda)
        with torch.no_grad():
            chi2 = sub.chi2_nu(y, est[-1, :, :1], est[-1, :, 1:])
            result.chi2_nu_trace[k, active.cpu()] = chi2.cpu()
            if monitor is not None and k > 0:
                monitor(k, active, est[-1])
            better = chi2 < result.chi2_nu[active]
            if better.any():
                ids = active[better]
                result.chi2_nu[ids] = chi2[better]
                result.source[ids] = est[-1, better, :1]
                result.kappa[ids] = torch.pow(10.0, est[-1, better, 1:])
                result.best_step[ids.cpu()] = k
            result.steps[active.cpu()] = k
            keep = (chi2 > config.target_chi2_nu).nonzero().flatten()
        if k == config.max_steps or len(keep) == 0:
            break
        loss = objective[keep].sum()
        grads = torch.autograd.grad(loss, list(params.values()))
        rmsprop_step(list(params.values()), grads, list(square_avg.values()), config)
        if len(keep) < len(active):  # finished lenses leave the batch
            active = active[keep]
            params = {n: p.detach()[keep].requires_grad_(True) for n, p in params.items()}
            square_avg = {n: s[keep] for n, s in square_avg.items()}
            fisher = {n: f[keep] for n, f in fisher.items()}
        if progress is not None:
            progress("optimise", k + 1, config.max_steps)
    return result
