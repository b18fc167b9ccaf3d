"""Cosmic rays on a demo's held-out lenses, and what masking them buys (the FITS reader's
masks, README "Real observations"): the RIM's final estimate of each lens clean, with the hits
left in, and with the hit pixels masked (an infinite sigma in the noise map, as a FITS input's NaN
or ``MASK`` pixels become). Every case is scored on the same lenses, by chi2_nu over the pixels
without a hit against the clean data, and by the mean log10 loss against the truth.

    python docs/masking.py DEMO_DIR [--hits 6] [--seed 1] [--finetune]   # a `lens demo -o DEMO_DIR` run

Each hit is two adjacent pixels, 30 to 100 sigma above the data, at random places. With
``--finetune`` each case is also fine-tuned as the demo fine-tunes (its EWC settings, its VAEs).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

import lensrim
import lenssim


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("demo", type=Path, help="a `lens demo` output directory")
    parser.add_argument("--hits", type=int, default=6, help="cosmic rays per lens (2 pixels each)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--finetune", action="store_true", help="also fine-tune each case as the demo does")
    args = parser.parse_args(argv)

    rim = lensrim.load(args.demo / "rim")
    obs = lenssim.Observation.from_dataset(args.demo / "lenses-test.h5")
    y, n, b = obs.observation, obs.pixels, len(obs)
    g = torch.Generator().manual_seed(args.seed)
    hits = torch.zeros(b, 1, n, n, dtype=torch.bool)
    for i in range(b):
        for _ in range(args.hits):
            r, c = (int(v) for v in torch.randint(1, n - 1, (2,), generator=g))
            hits[i, 0, r, c] = hits[i, 0, r, c + 1] = True
    sigma = obs.noise.reshape(-1, 1, 1, 1).expand_as(y)
    hit_y = torch.where(hits, y + (30 + 70 * torch.rand(y.shape, generator=g)) * sigma, y)
    scored = torch.where(hits, torch.inf, sigma)  # every case on the pixels without a hit

    task = None
    if args.finetune:
        import json

        import lensprior

        c = json.loads((args.demo / "demo.json").read_text())["config"]
        config = lensrim.FineTuneConfig(
            ewc_lambda=c["ewc_lambda"],
            fisher_samples=c["fisher_samples"],
            learning_rate=c["finetune_learning_rate"],
            max_steps=c["finetune_steps"],
            fisher_chunk=8,
        )
        vaes = [lensprior.load_vae(args.demo / f"vae-{kind}")[0] for kind in ("source", "kappa")]
        task = lensrim.FineTune(*vaes, config, 0)

    def score(source: torch.Tensor, xi: torch.Tensor) -> tuple[float, float]:
        physics = rim.config.physics(obs.psf, sigma)
        chi2 = lenssim.chi2_nu(y, physics.simulate(source, xi), scored)
        loss = lensrim.rim_loss(torch.cat([source, xi], dim=1)[None], obs.truth["source"], obs.truth["kappa"])
        return float(chi2.median()), float(torch.log10(loss).mean())

    def estimate(data: torch.Tensor, noise: torch.Tensor) -> list[tuple[float, float]]:
        physics = rim.config.physics(obs.psf, noise)
        with torch.no_grad():
            est = rim(data, physics)[-1]
        out = [score(est[:, :1], est[:, 1:])]
        if task is not None:
            case = lenssim.Observation(data, obs.psf, noise, obs.image_fov, obs.source_fov)
            rec = lensrim.reconstruct(rim, case, finetune=task)
            out.append(score(rec.source, torch.log10(rec.kappa)))
        return out

    rows = {
        "clean": estimate(y, sigma),
        "hits left in": estimate(hit_y, sigma),
        "hits masked": estimate(hit_y.masked_fill(hits, 0.0), scored),
    }
    print(f"{b} lenses, {args.hits} hits ({2 * args.hits} pixels of {n * n}) each, seed {args.seed}")
    head = f"{'':14s} {'median chi2_nu':>15s} {'mean log10 loss':>16s}"
    print(head + (f" {'fine-tuned: chi2_nu':>20s} {'log10 loss':>11s}" if task else ""))
    for name, results in rows.items():
        (chi2, loss), tuned = results[0], results[1:]
        cells = [f"{chi2:15.3f} {loss:16.3f}"] + [f"{c:20.3f} {v:11.3f}" for c, v in tuned]
        print(f"{name:14s} " + " ".join(cells))


if __name__ == "__main__":
    main()
