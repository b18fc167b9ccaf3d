"""How far a reconstruction moves when its observation moves by a rounding error (issue 23, the
second study's question of the gradient skip's numerical fragility).

Each trained RIM (a ``lens train rim`` or ``lens demo`` run directory) and plain Adam on the
likelihood reconstruct the same held-out lenses twice: from the observation y and from
y + 1e-6 max|y| n (n standard normal, about ten float32 roundings of the brightest pixel). The
table gives, per method, the largest change of the final maps (source, peak 1, and log10 kappa)
over the lenses, its median, and how many lenses moved by more than 1e-3.

    python docs/rim_sensitivity.py --lenses demo-out/lenses-test.h5 --run demo-out/rim --run other/rim
    python docs/rim_sensitivity.py ... --vaes demo-out     # also the Fisher diagonal, chunked two ways

With ``--vaes`` (a directory holding ``vae-source`` and ``vae-kappa`` runs) each RIM's Fisher
diagonal of fine-tuning (2 lenses, 4 draws each) is computed with its draws batched 4 at a time
and one at a time: the same numbers up to rounding unless the RIM amplifies rounding errors.

Bilinear ray tracing makes the likelihood's kappa gradient jump when a ray crosses a source
pixel's edge, and a normalised gradient (Adam's, or the RIM's RMSProp input) turns a small jump
into a full step: every method here can amplify a rounding error; the table says how much.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from _study import load_lenses, load_runs


def changes(a, b):
    """The largest absolute difference of each lens's maps, ``(B,)``."""
    return (a - b).abs().flatten(1).amax(dim=1)


def row(name: str, moved) -> str:
    over = int((moved > 1e-3).sum())
    return f"| {name} | {moved.max().item():.2g} | {moved.median().item():.2g} | {over}/{len(moved)} |"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lenses", type=Path, required=True, help="an HDF5 lens dataset (lens simulate's layout)")
    ap.add_argument("--run", type=Path, action="append", default=[], help="a trained RIM's run directory")
    ap.add_argument("--count", type=int, default=24, help="lenses, the file's first")
    ap.add_argument("--relative", type=float, default=1e-6, help="the perturbation, times each lens's max|y|")
    ap.add_argument("--learning-rate", type=float, default=0.03, help="plain Adam's")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--vaes", type=Path, help="a directory with vae-source and vae-kappa: also the Fisher check")
    args = ap.parse_args()

    import torch

    from lensrim.baseline import optimise_likelihood
    from lensrim.metrics import constant_reference

    torch.set_num_threads(args.threads)
    test, physics = load_lenses(args.lenses)
    n = min(args.count, test.observation.shape[0])
    y = test.observation[:n]
    scale = y.abs().amax(dim=(1, 2, 3), keepdim=True)
    noise = torch.randn(y.shape, generator=torch.Generator().manual_seed(0))
    moved_y = y + args.relative * scale * noise
    rows = [
        f"Perturbation {args.relative:g} max|y|, {n} lenses of {args.lenses.name}.",
        "",
        "| method | largest change | median change | lenses moved > 1e-3 |",
        "|---|---|---|---|",
    ]
    runs = load_runs(args.lenses, args.run)
    physics = physics.subset(torch.arange(n))
    ref = constant_reference(test.source, test.kappa)
    start = (torch.zeros_like(y), torch.full_like(y, ref.log10_kappa))
    for steps in (7, 50):
        a = torch.cat(optimise_likelihood(y, physics, *start, steps=steps, learning_rate=args.learning_rate), 1)
        b = torch.cat(optimise_likelihood(moved_y, physics, *start, steps=steps, learning_rate=args.learning_rate), 1)
        rows.append(row(f"Adam, {steps} gradients (lr {args.learning_rate:g})", changes(a, b)))
    for run, rim in runs:
        c = rim.config
        with torch.no_grad():
            moved = changes(rim(y, physics)[-1], rim(moved_y, physics)[-1])
        what = f"skip {c.gradient_skip:g}, " if c.gradient_skip else ""
        rows.append(row(f"RIM {run} ({what}fit {c.fit_weight:g}, kappa share {c.fit_kappa:g})", moved))
    print("\n".join(rows))
    if args.vaes:
        print(
            "\n| RIM | Fisher diagonal, batched 4 vs 1 draw: largest change per tensor | of the total |\n|---|---|---|"
        )
        for run, rim in runs:
            print(f"| {run} | {fisher_batching(rim, args.vaes, test, physics)} |")


def fisher_batching(rim, vaes: Path, test, physics) -> str:
    """How much fine-tuning's Fisher diagonal of 2 lenses (4 draws each) changes when its draws are
    computed 4 at a time instead of one at a time, relative: the largest change of a weight tensor
    (over its largest entry) and the change of the total."""
    import torch

    import lensprior
    from lensrim.finetune import encode_prediction, fisher_diagonal

    svae, kvae = (lensprior.load_vae(vaes / f"vae-{kind}")[0].eval() for kind in ("source", "kappa"))
    two = physics.subset(torch.arange(2))
    with torch.no_grad():
        est = rim(test.observation[:2], two)[-1]
        z_s, z_k = encode_prediction(svae, kvae, est[:, :1], torch.pow(10.0, est[:, 1:]))
    fisher = {}
    for chunk in (1, 4):
        generators = [torch.Generator().manual_seed(i) for i in range(2)]
        fisher[chunk] = fisher_diagonal(rim, svae, kvae, z_s, z_k, two, samples=4, generators=generators, chunk=chunk)
    one, four = fisher[1], fisher[4]
    worst = max(float((one[k] - four[k]).abs().max() / one[k].abs().max()) for k in one if one[k].abs().max() > 0)
    total = abs(sum(float(f.sum()) for f in four.values()) / sum(float(f.sum()) for f in one.values()) - 1)
    return f"{worst:.2g} | {total:.2g}"


if __name__ == "__main__":
    main()
