"""Learning curves of the RIM against the constant predictor (issue: does 128^2 learn early?).

Each run trains a RIM on the fly (pixel-averaged SIE kappa maps, Sersic sources, Table 1 PSF
and noise) and logs, every ``--log-every`` steps, its loss on 32 held-out lenses of the same
distribution beside the constant predictor's (source 0, the best constant log10 kappa) on the
same lenses. The comparisons: PyTorch's default initialisation against the original code's
Glorot-uniform weights with zero biases; learning rates 1e-4, 3e-4, 1e-3; batch sizes; 32^2,
64^2 and 128^2. Run directories go to ``--work``; the curves to ``docs/learning_curves.json``
and the figure to ``docs/learning_curves.png``. Finished runs are not run again.

    python docs/learning_curves.py --group cpu            # 32^2 and 64^2 on the CPU
    python docs/learning_curves.py --group gpu --device cuda
    python docs/learning_curves.py --plot-only
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import lensrim
import lenssim
from lensrim.training import SimulatedBatches, constant_log10_kappa

HERE = Path(__file__).resolve().parent

# name: (pixels, preset, batch, learning rate, init, steps)
RUNS = {
    "cpu": {
        "32 torch lr1e-4 b8": (32, "tiny", 8, 1e-4, "torch", 400),
        "32 torch lr3e-4 b8": (32, "tiny", 8, 3e-4, "torch", 400),
        "32 torch lr1e-3 b8": (32, "tiny", 8, 1e-3, "torch", 400),
        "32 glorot lr1e-4 b8": (32, "tiny", 8, 1e-4, "glorot", 400),
        "32 glorot lr3e-4 b8": (32, "tiny", 8, 3e-4, "glorot", 400),
        "32 glorot lr1e-3 b8": (32, "tiny", 8, 1e-3, "glorot", 400),
        "32 torch lr1e-3 b2": (32, "tiny", 2, 1e-3, "torch", 400),
        "64 torch lr3e-4 b4": (64, "small", 4, 3e-4, "torch", 300),
        "64 torch lr1e-3 b4": (64, "small", 4, 1e-3, "torch", 300),
        "64 glorot lr3e-4 b4": (64, "small", 4, 3e-4, "glorot", 300),
        "64 glorot lr1e-3 b4": (64, "small", 4, 1e-3, "glorot", 300),
        "64 torch lr1e-3 b4 offset": (64, "small", 4, 1e-3, "torch", 300, True),
        "64 glorot lr1e-3 b4 offset": (64, "small", 4, 1e-3, "glorot", 300, True),
        "64 glorot lr3e-4 b4 offset": (64, "small", 4, 3e-4, "glorot", 300, True),
        "64 tiny-arch torch lr1e-3 b4": (64, "tiny", 4, 1e-3, "torch", 300),
        "32 torch lr1e-3 b32": (32, "tiny", 32, 1e-3, "torch", 400),
    },
    "gpu": {
        "128 torch lr1e-4 b16": (128, "small", 16, 1e-4, "torch", 2000),
        "128 torch lr3e-4 b16": (128, "small", 16, 3e-4, "torch", 2000),
        "128 torch lr1e-3 b16": (128, "small", 16, 1e-3, "torch", 2000),
        "128 glorot lr3e-4 b16": (128, "small", 16, 3e-4, "glorot", 2000),
        "128 glorot lr1e-3 b16": (128, "small", 16, 1e-3, "glorot", 2000),
    },
}


def run(name: str, spec: tuple, work: Path, device: str, log_every: int, seed: int) -> dict:
    pixels, preset, batch, lr, init, steps, *rest = spec
    offset = bool(rest and rest[0])
    obs = lenssim.ObservationConfig.at_resolution(pixels)
    cfg = replace(
        lensrim.PRESETS[preset], pixels=pixels, batch_size=batch, learning_rate=lr, init=init, train_steps=steps
    )
    batches = SimulatedBatches(
        lenssim.sie_kappa_sampler(config=obs, device=device),
        lenssim.sersic_source_sampler(obs, device=device),
        obs,
        device=device,
    )
    if offset:  # start at the constant predictor's log10 kappa
        cfg = replace(cfg, initial_log10_kappa=constant_log10_kappa(batches, seed))
    run_dir = work / name.replace(" ", "_")
    t0 = time.perf_counter()
    lensrim.train_rim(cfg, batches, run_dir, seed=seed, device=device, log_every=log_every, checkpoint_every=steps)
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    keys = (
        "step",
        "loss",
        "val_loss",
        "val_log10_loss",
        "val_constant_loss",
        "val_constant_log10_loss",
        "val_chi2_nu",
        "val_loss_t",
        "val_loss_source",
        "val_loss_kappa",
    )
    return {
        "pixels": pixels,
        "preset": preset,
        "batch": batch,
        "learning_rate": lr,
        "init": init,
        "offset": offset,
        "initial_log10_kappa": cfg.initial_log10_kappa,
        "seconds": round(time.perf_counter() - t0, 1),
        "device": str(device),
        "curve": [{k: m[k] for k in keys if k in m} for m in lines],
    }


def signal(preset: str = "small", pixels: int = 64, seed: int = 0) -> dict[str, list[float]]:
    """Standard deviation of each encoder/decoder layer's tanh output at initialisation, for
    unit-variance random inputs, under each initialisation (the signal a deep tanh U-net passes)."""
    import torch

    out = {}
    for init in ("torch", "glorot"):
        torch.manual_seed(seed)
        model = lensrim.RIM(replace(lensrim.PRESETS[preset], pixels=pixels, init=init))
        stds: list[float] = []
        hooks = [
            m.register_forward_hook(lambda mod, i, o, stds=stds: stds.append(float(torch.tanh(o).std())))
            for name, m in model.unet.named_modules()
            if isinstance(m, torch.nn.Conv2d | torch.nn.ConvTranspose2d) and "gru" not in name and name != "out"
        ]
        with torch.no_grad():
            model.unet(torch.randn(2, 5, pixels, pixels), [None] * (model.config.levels + 1))
        for h in hooks:
            h.remove()
        out[init] = [round(v, 3) for v in stds]
    return out


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [
        ("32^2, tiny, batch 8: initialisation x learning rate", lambda r: r["pixels"] == 32 and r["batch"] == 8),
        (
            "32^2, tiny, lr 1e-3: batch size",
            lambda r: r["pixels"] == 32 and r["init"] == "torch" and r["learning_rate"] == 1e-3,
        ),
        ("64^2, small, batch 4", lambda r: r["pixels"] == 64),
        ("128^2, small", lambda r: r["pixels"] == 128),
    ]
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.2))
    for ax, (title, keep) in zip(axes, panels, strict=True):
        refs = []
        for i, (_, r) in enumerate(sorted((k, v) for k, v in results.items() if keep(v))):
            steps = [m["step"] for m in r["curve"]]
            style = "-" if r["init"] == "torch" else "--"
            arch = f" {r['preset']}" if r["preset"] != {32: "tiny"}.get(r["pixels"], "small") else ""
            start = " start at constant" if r.get("offset") else ""
            ax.plot(
                steps,
                [m["val_log10_loss"] for m in r["curve"]],
                style,
                color=f"C{i % 10}",
                label=f"{r['init']} lr {r['learning_rate']:g} b{r['batch']}{arch}{start}",
            )
            refs.append(r["curve"][-1]["val_constant_log10_loss"])
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("training step")
        ax.set_ylabel("held-out mean log10 loss (final estimate)")
        if not refs:
            ax.text(0.5, 0.5, "not run yet\n(a GPU run: --group gpu)", ha="center", va="center", transform=ax.transAxes)
            continue
        ax.axhline(sum(refs) / len(refs), color="k", lw=1.2, ls=":", label="constant predictor")
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--group", choices=sorted(RUNS), default="cpu")
    ap.add_argument("--only", nargs="*", help="run only these names")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--work", type=Path, default=Path("curves-work"))
    ap.add_argument("--log-every", type=int, default=25)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--plot-only", action="store_true")
    ap.add_argument("--signal", action="store_true", help="print the activation scale per layer at init")
    args = ap.parse_args()
    if args.signal:
        for init, stds in signal().items():
            print(f"{init:6s} " + " ".join(f"{v:.3f}" for v in stds))
        return
    out = HERE / "learning_curves.json"
    results = json.loads(out.read_text()) if out.is_file() else {}
    if not args.plot_only:
        for name, spec in RUNS[args.group].items():
            if (args.only and name not in args.only) or name in results:
                continue
            print(f"{name} ...", flush=True)
            results[name] = run(name, spec, args.work, args.device, args.log_every, args.seed)
            last = results[name]["curve"][-1]
            print(
                f"  {results[name]['seconds']} s: held-out log10 loss {last['val_log10_loss']:.3f} "
                f"vs constant {last['val_constant_log10_loss']:.3f}",
                flush=True,
            )
            tmp = out.with_suffix(".tmp")
            tmp.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
            tmp.replace(out)
    plot(results, HERE / "learning_curves.png")


if __name__ == "__main__":
    main()
