"""Does EWC fine-tuning reach the noise? Table 3 and Fig. 8 on a CPU-sized case.

    python benchmarks/bench_finetune.py                  # about 35 minutes on 2 CPU cores
    python benchmarks/bench_finetune.py --quick          # a smoke run of every stage
    python benchmarks/bench_finetune.py --rim-only --train-device cuda --rim-batch 64 --rim-steps N
                                                         # the RIM on a GPU; the same command
                                                         # without the first two flags scans it

The case (built once in ``--work``, then reused; every stage resumes):

1. a 32^2 ``tiny`` RIM trained on the fly (pixel-averaged SIE kappa, Sersic sources, Table 1's
   PSFs and noise) until it beats the constant predictor on held-out lenses;
2. a source and a kappa VAE (32^2) trained on draws of the same samplers, for the Fisher;
3. ``--lenses`` test lenses from another random stream, kept only at SNR < ``--max-snr``.

On those lenses, beside the two references (the constant predictor: source 0 and the best
constant log10 kappa; plain Adam on the likelihood from the RIM's first estimate with the RIM's
T - 1 gradients and with as many gradients as fine-tuning's longest run), each fine-tuning setting
reports the median chi2_nu of the final estimate before and after, the fraction of lenses at or
below 1.2, and the mean log10 eq.-7 loss against the truth before and after (Table 4's statistic:
final RIM estimate only). Settings: Table 3 as published (RMSProp 1e-6, 2000 steps, lambda 2e5,
200 draws), then a scan of lambda (2e5, 2e3, 20, 0) at a learning rate of 1e-5 for 500 steps: the
tiny RIM has ~3,400 times fewer weights than the paper's, and 1e-6 barely moves it. Writes
``finetune.json`` and ``finetune.png`` (median chi2_nu step by step, and each setting's fit
against its cost in loss) into ``--work``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch

import lensprior
import lensrim
import lenssim
from lenscore.files import write_text, written
from lensrim.baseline import optimise_likelihood
from lensrim.finetune import FineTuneConfig, finetune
from lensrim.metrics import RESIDUAL_BLOCK, constant_reference, median
from lensrim.training import SimulatedBatches, constant_log10_kappa

PIXELS = 32
"""The CPU case's resolution (``--pixels``); the GPU case (``--gpu``) runs at 128^2."""


def observation(pixels: int) -> lenssim.ObservationConfig:
    """Table 1's observations at ``pixels``^2, with the demo's PSF stamp (15 pixels at 32^2, 21 above)."""
    return lenssim.ObservationConfig.at_resolution(pixels)


def log(msg: str) -> None:
    print(msg, flush=True)


def settings(quick: bool, scan: str = "lambda") -> dict[str, FineTuneConfig]:
    """The fine-tuning runs compared. ``lambda``: Table 3 as published, then a lambda scan at a
    learning rate scaled to a model ~3,400 times smaller than the paper's (1e-6 barely moves it).
    ``frontier``: how far chi2_nu goes while the loss stays within 0.05 dex (lambda 2e5 at 1e-5 and
    3e-5) and what the weaker priors 2e4, 6e3 and 2e3 cost. ``fisher``: two of them with Table 3's 200
    Fisher draws instead of 64. ``fisher-chi2``: lambda 2e5 with the Fisher of eq. A5 (eq. 7 plus
    chi2_nu) and of eq. 7 alone, and 2e4 and 2e6 with eq. A5's, sized for a 10-minute GPU run (150
    steps, 32 draws). (Eq. 7's Fisher alone is ~1e-5 of eq. A5's or less on the demo's RIMs, too
    small for lambda to matter between 2e5 and 2e6 there: one run of it says what a second would.)"""
    if quick:
        return {
            "Table 3": FineTuneConfig(fisher_samples=4, max_steps=5),
            "lr 1e-5, lambda 0": FineTuneConfig(fisher_samples=4, max_steps=5, learning_rate=1e-5, ewc_lambda=0.0),
        }
    if scan == "frontier":
        return {
            "lr 1e-5, lambda 2e5, 500 steps": FineTuneConfig(learning_rate=1e-5, max_steps=500, fisher_samples=64),
            "lr 3e-5, lambda 2e5, 1000 steps": FineTuneConfig(learning_rate=3e-5, max_steps=1000, fisher_samples=64),
            "lr 1e-5, lambda 2e4, 500 steps": FineTuneConfig(
                learning_rate=1e-5, max_steps=500, ewc_lambda=2e4, fisher_samples=64
            ),
            "lr 1e-5, lambda 6e3, 500 steps": FineTuneConfig(
                learning_rate=1e-5, max_steps=500, ewc_lambda=6e3, fisher_samples=64
            ),
            "lr 1e-5, lambda 2e3, 500 steps": FineTuneConfig(
                learning_rate=1e-5, max_steps=500, ewc_lambda=2e3, fisher_samples=64
            ),
        }
    if scan == "fisher-chi2":  # does the chi2 term drown the prior's information?
        runs = {}
        for lam, chi2 in ((2e5, True), (2e5, False), (2e4, True), (2e6, True)):
            name = f"lr 1e-5, lambda {lam:g}, Fisher {'eq. A5' if chi2 else 'eq. 7 alone'}, 150 steps"
            runs[name] = FineTuneConfig(
                learning_rate=1e-5, max_steps=150, ewc_lambda=lam, fisher_samples=32, fisher_chi2=chi2
            )
        return runs
    if scan == "fisher":  # Table 3's 200 draws: is the Fisher's noise what costs the loss?
        return {
            f"lr 1e-5, lambda {lam:g}, 500 steps, 200 draws": FineTuneConfig(
                learning_rate=1e-5, max_steps=500, ewc_lambda=lam, fisher_samples=200
            )
            for lam in (6e4, 2e4)
        }
    runs = {"Table 3 (lr 1e-6, lambda 2e5, 2000 steps)": FineTuneConfig()}
    for lam in (2e5, 2e3, 2e1, 0.0):
        runs[f"lr 1e-5, lambda {lam:g}, 500 steps"] = FineTuneConfig(
            learning_rate=1e-5, max_steps=500, ewc_lambda=lam, fisher_samples=64
        )
    return runs


def train_case_rim(work: Path, args) -> tuple:
    """The case's RIM, trained (or resumed) in ``work / "rim"`` on ``--train-device``, returned on the CPU."""
    dev = torch.device(args.train_device)
    obs = observation(args.pixels)
    batches = SimulatedBatches(
        lenssim.sie_kappa_sampler(config=obs, device=dev),
        lenssim.sersic_source_sampler(config=obs, device=dev),
        obs,
        device=dev,
    )
    steps = 20 if args.quick else args.rim_steps
    offset = constant_log10_kappa(batches, args.seed)
    cfg = replace(
        lensrim.PRESETS[args.preset],
        pixels=args.pixels,
        batch_size=args.rim_batch,
        learning_rate=1e-3,
        train_steps=steps,
        decay_steps=steps,
        decay_rate=0.25,
        initial_log10_kappa=offset,
    )
    t0 = time.perf_counter()
    log(
        f"RIM: {steps} steps of the {args.preset} preset at {args.pixels}^2, batch {args.rim_batch} on {dev} "
        f"({work / 'rim'})"
    )
    rim = lensrim.train_rim(
        cfg,
        batches,
        work / "rim",
        seed=args.seed,
        device=dev,
        checkpoint_every=100,
        log_every=max(1, min(100, steps)),
        validation_size=32,
        tensorboard=False,
        metadata={"image_fov": obs.image_fov, "source_fov": obs.source_fov},
    )
    last = json.loads((work / "rim" / "metrics.jsonl").read_text().splitlines()[-1])
    log(
        f"  held-out log10 loss {last['val_log10_loss']:.2f} vs constant {last['val_constant_log10_loss']:.2f} "
        f"({time.perf_counter() - t0:.0f} s)"
    )
    return rim.cpu().eval(), cfg


def build_case(work: Path, args) -> tuple:
    """The trained RIM, the two VAEs and the test lenses (cached in ``work``), on ``--device``
    (the RIM trains on ``--train-device``); the lenses are drawn on the CPU."""
    rim, cfg = train_case_rim(work, args)
    obs, dev = observation(args.pixels), torch.device(args.device)
    batches = SimulatedBatches(lenssim.sie_kappa_sampler(config=obs), lenssim.sersic_source_sampler(config=obs), obs)
    vaes = {}
    g = torch.Generator().manual_seed(args.seed + 7)
    for kind, make, sampler in (
        ("source", lensprior.source_vae_config, lenssim.sersic_source_sampler(config=obs)),
        ("kappa", lensprior.kappa_vae_config, lenssim.sie_kappa_sampler(config=obs)),
    ):
        vsteps = 10 if args.quick else args.vae_steps
        vcfg = make(pixels=args.pixels, latent_dim=16, filters=8, batch_size=16, steps=vsteps)
        vcfg = replace(vcfg, levels=min(vcfg.levels, int(np.log2(args.pixels)) - 2), learning_rate=1e-3)
        data = sampler(256 if args.quick else 2048, g).float()
        t0 = time.perf_counter()
        vaes[kind] = lensprior.train_vae(
            vcfg, data, work / f"vae-{kind}", seed=args.seed, log_every=100, device=dev
        ).eval()
        log(f"{kind} VAE: {vsteps} steps ({time.perf_counter() - t0:.0f} s)")
    pool = batches(0, 4 * args.lenses, args.seed + 1000)  # a stream no training step draws
    keep = (1.0 / pool["noise_sigma"] < args.max_snr).nonzero().flatten()[: args.lenses]
    test = {k: v[keep].float() for k, v in pool.items()}
    log(f"test lenses: {len(keep)} at SNR < {args.max_snr:g} (of {4 * args.lenses} drawn)")
    return rim.to(dev), vaes["source"], vaes["kappa"], {k: v.to(dev) for k, v in test.items()}, cfg


def log10_loss(source, xi, test) -> torch.Tensor:
    est = torch.cat([source, xi], dim=1)[None]
    return torch.log10(lensrim.rim_loss(est, test["source"], test["kappa"].clamp_min(1e-6))).cpu()


def binned(physics, y: torch.Tensor, source: torch.Tensor, xi: torch.Tensor) -> torch.Tensor:
    """chi2_nu of the residual in 4x4-pixel blocks: about 1 when it is noise, above chi2_nu when structure."""
    with torch.no_grad():
        return lenssim.binned_chi2_nu(y, physics.simulate(source, xi), physics.sigma, block=RESIDUAL_BLOCK)


def summary(chi2: torch.Tensor, loss: torch.Tensor, blocks: torch.Tensor) -> dict:
    chi2, loss, blocks = chi2.detach().cpu(), loss.detach().cpu(), blocks.detach().cpu()
    return {
        "median_chi2_nu": float(np.median(chi2.numpy())),  # the mean of the middle two for an even count
        "median_chi2_nu_binned": float(np.median(blocks.numpy())),
        "fraction_chi2_nu_at_or_below_1.2": float((chi2 <= 1.2).float().mean()),
        "mean_log10_loss": float(loss.mean()),
        "std_log10_loss": float(loss.std()) if loss.numel() > 1 else 0.0,
    }


def references(rim, test, longest: int) -> dict:
    """The constant predictor and Adam on the likelihood from the RIM's first estimate."""
    y = test["observation"]
    physics = rim.config.physics(test["psf"], test["noise_sigma"])
    ref = constant_reference(test["source"], test["kappa"])
    zero = torch.zeros_like(y)
    const_xi = torch.full_like(y, ref.log10_kappa)
    out = {
        "constant predictor": summary(
            physics.chi2_nu(y, zero, const_xi), torch.log10(ref.loss), binned(physics, y, zero, const_xi)
        )
    }
    out["constant predictor"]["log10_kappa"] = ref.log10_kappa
    with torch.no_grad():
        est = rim(y, physics)
    s, xi = est[-1, :, :1], est[-1, :, 1:]
    out["RIM (baseline)"] = summary(physics.chi2_nu(y, s, xi), log10_loss(s, xi, test), binned(physics, y, s, xi))
    for steps in (rim.config.steps - 1, longest):
        best = None
        for lr in (1e-3, 3e-3, 1e-2, 3e-2, 1e-1):  # chosen on chi2 alone: no labels
            s, xi = optimise_likelihood(y, physics, est[0, :, :1], est[0, :, 1:], steps=steps, learning_rate=lr)
            chi2 = physics.chi2_nu(y, s, xi)
            if best is None or median(chi2) < median(best[0]):
                best = (chi2, s, xi, lr)
        chi2, s, xi, lr = best
        out[f"Adam, {steps} gradients"] = {
            **summary(chi2, log10_loss(s, xi, test), binned(physics, y, s, xi)),
            "lr": lr,
        }
    return out


def run_setting(name: str, cfg: FineTuneConfig, rim, svae, kvae, test, seed: int) -> dict:
    t0 = time.perf_counter()
    losses: dict[int, list] = {}

    def monitor(k, lenses, est):  # the oracle loss, never seen by the optimisation
        losses.setdefault(k, []).append(log10_loss(est[:, :1], est[:, 1:], {f: v[lenses] for f, v in test.items()}))

    def progress(stage, done, total):
        if done == total or done % max(1, total // 10) == 0:
            log(f"  {name}: {stage} {done}/{total} ({time.perf_counter() - t0:.0f} s)")

    physics = rim.config.physics(test["psf"], test["noise_sigma"])
    res = finetune(
        rim,
        svae,
        kvae,
        test["observation"],
        physics,
        cfg,
        generators=[torch.Generator().manual_seed(seed * 1000 + i) for i in range(len(test["observation"]))],
        progress=progress,
        monitor=monitor,
    )
    xi_before, xi_after = torch.log10(res.kappa_baseline), torch.log10(res.kappa)
    before = log10_loss(res.source_baseline, xi_before, test)
    after = log10_loss(res.source, xi_after, test)
    y = test["observation"]
    median_trace = np.median(_carried(res.chi2_nu_trace.numpy()), axis=1).tolist()
    return {
        "config": asdict(cfg),
        "seconds": round(time.perf_counter() - t0, 1),
        "baseline": summary(res.chi2_nu_baseline, before, binned(physics, y, res.source_baseline, xi_before)),
        "fine-tuned": summary(res.chi2_nu, after, binned(physics, y, res.source, xi_after)),
        "log10_loss_change_per_lens": (after - before).tolist(),
        "steps_used_median": float(median(res.steps)),
        "best_step_median": float(median(res.best_step)),
        "median_best_chi2_nu_by_step": median_trace,
    }


def _carried(trace: np.ndarray) -> np.ndarray:
    """Each lens's best chi2_nu so far at every step (a stopped lens keeps its kept iterate)."""
    out = trace.copy()
    for j in range(out.shape[1]):
        col = out[:, j]
        last = np.where(np.isnan(col), np.inf, col)
        col[:] = np.minimum.accumulate(last)
    return out


def figure(path: Path, results: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    for name, r in results["fine-tuning"].items():
        a.plot(r["median_best_chi2_nu_by_step"], label=name)
    a.axhline(1.2, color="k", lw=0.8, ls="--", label=r"$\chi^2_\nu$ = 1.2")
    a.axhline(
        results["references"]["constant predictor"]["median_chi2_nu"],
        color="grey",
        lw=0.8,
        ls=":",
        label="constant predictor",
    )
    a.set_yscale("log")
    a.set_xlabel("fine-tuning step")
    a.set_ylabel(r"median best $\chi^2_\nu$ so far")
    a.legend(fontsize=7)
    # the trade-off: how far each setting brings the fit, and what it costs against the truth
    for i, (name, r) in enumerate(results["fine-tuning"].items()):
        b.scatter(
            np.mean(r["log10_loss_change_per_lens"]), r["fine-tuned"]["median_chi2_nu"], color=f"C{i}", s=40, label=name
        )
    base = next(iter(results["fine-tuning"].values()))["baseline"]["median_chi2_nu"]
    b.scatter(0.0, base, marker="x", color="k", s=50, label="RIM baseline")
    b.axhline(1.2, color="k", lw=0.8, ls="--")
    b.axvspan(-1, 0.05, color="C2", alpha=0.08, label="loss worse by < 0.05 dex")
    b.set_xlim(min(-0.1, b.get_xlim()[0]), max(0.2, b.get_xlim()[1]))
    b.set_yscale("log")
    b.set_xlabel(r"mean $\Delta \log_{10}$ loss against the truth (fine-tuned - baseline)")
    b.set_ylabel(r"median $\chi^2_\nu$ after fine-tuning")
    b.legend(fontsize=6)
    fig.tight_layout()
    with written(path) as tmp:
        fig.savefig(tmp, dpi=90, format="png")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", type=Path, default=Path(".bench/finetune"))
    p.add_argument("--quick", action="store_true", help="a few steps of every stage (a smoke test)")
    p.add_argument("--rim-steps", type=int, default=1500, help="a run resumes and trains on to a larger count")
    p.add_argument("--vae-steps", type=int, default=400, help="the Fisher's VAEs (resume and train on to more)")
    p.add_argument("--lenses", type=int, default=8)
    p.add_argument("--pixels", type=int, default=PIXELS, help="the case's resolution (a new --work for another)")
    p.add_argument("--preset", default="tiny", choices=sorted(lensrim.PRESETS), help="the RIM's preset")
    p.add_argument("--device", default="cpu", help="where the VAEs, references and fine-tuning run")
    p.add_argument(
        "--gpu",
        action="store_true",
        help="issue 23's GPU case in one command: 128^2 small RIM (batch 16), VAEs, 32 lenses, --scan fisher-chi2, "
        "all on cuda (steps from --rim-steps)",
    )
    p.add_argument("--max-snr", type=float, default=100.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--rim-batch", type=int, default=8, help="the RIM's training batch (a new --work for another)")
    p.add_argument(
        "--train-device",
        default="cpu",
        help="where the RIM trains (cuda: simulated there too); the VAEs, references and fine-tuning run on the CPU",
    )
    p.add_argument("--rim-only", action="store_true", help="train the RIM and stop (train on a GPU, scan elsewhere)")
    p.add_argument(
        "--scan",
        choices=("lambda", "frontier", "fisher", "fisher-chi2"),
        default="lambda",
        help="lambda: Table 3 and a lambda scan at lr 1e-5; frontier: the settings that keep the loss (README); "
        "fisher: lambda 6e4 and 2e4 with 200 Fisher draws",
    )
    args = p.parse_args()
    if args.gpu:
        args.__dict__.update(
            pixels=128,
            preset="small",
            train_device="cuda",
            device="cuda",
            rim_batch=16,
            lenses=max(32, args.lenses),
            scan="fisher-chi2",
        )
    for option, name in (("--train-device", args.train_device), ("--device", args.device)):
        if torch.device(name).type == "cuda" and not torch.cuda.is_available():
            sys.exit(f"bench_finetune: {option} {name}, but torch sees no CUDA device")
    if args.pixels % 16 or not 32 <= args.pixels <= 512:
        sys.exit(f"bench_finetune: --pixels {args.pixels} must be a multiple of 16 in [32, 512]")
    if args.threads:
        torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    if args.rim_only:
        train_case_rim(args.work, args)
        return
    rim, svae, kvae, test, rim_cfg = build_case(args.work, args)
    runs = settings(args.quick, args.scan)
    longest = max(c.max_steps for c in runs.values())
    case = {"pixels": args.pixels, "preset": args.preset, "lenses": len(test["observation"]), "max_snr": args.max_snr}
    case.update(snr=(1 / test["noise_sigma"]).tolist(), rim=asdict(rim_cfg), threads=torch.get_num_threads())
    case["rim_trained_on"] = args.train_device
    results = {"case": case}
    t0 = time.perf_counter()
    results["references"] = references(rim, test, longest)
    log(f"references ({time.perf_counter() - t0:.0f} s):")
    for name, r in results["references"].items():
        log(
            f"  {name:28s} median chi2_nu {r['median_chi2_nu']:8.3g} (4x4 blocks {r['median_chi2_nu_binned']:8.3g})  "
            f"mean log10 loss {r['mean_log10_loss']:6.2f}"
        )
    results["fine-tuning"] = {}
    for name, cfg in runs.items():
        r = run_setting(name, cfg, rim, svae, kvae, test, args.seed)
        results["fine-tuning"][name] = r
        b, f = r["baseline"], r["fine-tuned"]
        log(
            f"{name}: median chi2_nu {b['median_chi2_nu']:.3g} -> {f['median_chi2_nu']:.3g} "
            f"(4x4 blocks {b['median_chi2_nu_binned']:.3g} -> {f['median_chi2_nu_binned']:.3g}) "
            f"({100 * f['fraction_chi2_nu_at_or_below_1.2']:.0f} % <= 1.2), mean log10 loss "
            f"{b['mean_log10_loss']:.3f} -> {f['mean_log10_loss']:.3f} "
            f"({f['mean_log10_loss'] - b['mean_log10_loss']:+.3f} dex), {r['seconds']:.0f} s"
        )
    out = args.work / "finetune.json"
    write_text(out, json.dumps(results, indent=1) + "\n")
    figure(args.work / "finetune.png", results)
    log(f"wrote {out} and {args.work / 'finetune.png'}")


if __name__ == "__main__":
    sys.exit(main())
