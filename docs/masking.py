"""Cosmic rays on a demo's held-out lenses, and what masking them buys (the FITS reader's
masks, README "Real observations"): the RIM's final estimate of each lens clean, with the hits
left in, and with the hit pixels masked (an infinite sigma in the noise map, as a FITS input's NaN
or ``MASK`` pixels become). Every case is scored on the same lenses, by chi2_nu over the pixels
without a hit against the clean data, and by the mean log10 loss against the truth.

    python docs/masking.py DEMO_DIR [--hits 6] [--seed 1]      # a `lens demo -o DEMO_DIR` run

Each hit is two adjacent pixels, 30 to 100 sigma above the data, at random places.
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

    def estimate(data: torch.Tensor, noise: torch.Tensor) -> tuple[float, float]:
        physics = rim.config.physics(obs.psf, noise)
        with torch.no_grad():
            est = rim(data, physics)[-1]
        chi2 = lenssim.chi2_nu(y, physics.simulate(est[:, :1], est[:, 1:]), scored)
        loss = lensrim.rim_loss(est[None], obs.truth["source"], obs.truth["kappa"])
        return float(chi2.median()), float(torch.log10(loss).mean())

    rows = {
        "clean": estimate(y, sigma),
        "hits left in": estimate(hit_y, sigma),
        "hits masked": estimate(hit_y.masked_fill(hits, 0.0), scored),
    }
    print(f"{b} lenses, {args.hits} hits ({2 * args.hits} pixels of {n * n}) each, seed {args.seed}")
    print(f"{'':14s} {'median chi2_nu':>15s} {'mean log10 loss':>16s}")
    for name, (chi2, loss) in rows.items():
        print(f"{name:14s} {chi2:15.3f} {loss:16.3f}")


if __name__ == "__main__":
    main()
