"""How well a source alone explains lensed data through a kappa that is wrong (issue 23 §3: is a
median chi2_nu below plain Adam's a sign of a good reconstruction?).

On held-out lenses, with the same number of likelihood gradients as the RIM (T - 1 = 7), the
table compares the fit (median chi2_nu, 1 = the noise) and the truth (mean log10 loss of eq. 7,
and of its source and kappa terms) of:

- the constant predictor (source 0, the best constant log10 kappa);
- plain Adam on both maps, from the constant predictor, at its best learning rate;
- steepest ascent in the source alone (:func:`lensrim.baseline.ascend_source`) with kappa held
  at the constant predictor's, and with kappa held at the truth, each at its best step size;
- each trained RIM given with ``--run``, and the same with its kappa held and its source moved
  by steepest ascent for as many gradients again (a fit the RIM could reach with twice the budget).

"Best" is the lowest median chi2_nu of a small grid: no labels are used to choose.

    python docs/fit_degeneracy.py --lenses demo-out/lenses-test.h5 --run demo-out/rim
"""

from __future__ import annotations

import argparse
from pathlib import Path

from _study import load_lenses, load_runs

LEARNING_RATES = (0.01, 0.03, 0.1)
STEP_SIZES = (0.01, 0.02, 0.03, 0.05)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lenses", type=Path, required=True, help="an HDF5 lens dataset (lens simulate's layout)")
    ap.add_argument("--run", type=Path, action="append", default=[], help="a trained RIM's run directory")
    ap.add_argument("--gradients", type=int, default=7, help="likelihood gradients per method (the RIM's T - 1)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    if args.gradients < 1:
        raise SystemExit(f"--gradients must be at least 1, got {args.gradients}")

    import numpy as np
    import torch

    from lensrim.baseline import ascend_source, optimise_likelihood
    from lensrim.metrics import constant_reference
    from lensrim.model import rim_loss_terms

    torch.set_num_threads(args.threads)
    test, physics = load_lenses(args.lenses)
    runs = load_runs(args.lenses, args.run)
    y = test.observation
    kappa = test.kappa.clamp_min(1e-6)
    k = args.gradients

    def score(s, xi) -> tuple[float, ...]:
        ls, lk = rim_loss_terms(torch.cat([s, xi], dim=1)[None], test.source, kappa)
        chi2 = physics.chi2_nu(y, s, xi).numpy()
        logs = [float(torch.log10(x[0]).mean()) for x in (ls + lk, ls, lk)]
        return (float(np.median(chi2)), *logs)

    def best(candidates) -> tuple[str, tuple[float, ...]]:
        scored = [(label, score(*maps)) for label, maps in candidates]
        return min(scored, key=lambda item: item[1][0])

    ref = constant_reference(test.source, test.kappa)
    s0 = torch.zeros_like(y)
    xi0 = torch.full_like(y, ref.log10_kappa)
    true_xi = torch.log10(kappa)
    rows = [("constant predictor", score(s0, xi0))]
    with torch.no_grad():
        label, got = best(
            (f"lr {lr}", optimise_likelihood(y, physics, s0, xi0, steps=k, learning_rate=lr)) for lr in LEARNING_RATES
        )
        rows.append((f"Adam on both maps, {k} gradients ({label})", got))
        for name, xi in (("the constant predictor's", xi0), ("the truth", true_xi)):
            label, got = best(
                (f"step {b}", (ascend_source(y, physics, s0, xi, steps=k, step_size=b), xi)) for b in STEP_SIZES
            )
            rows.append((f"the source alone, kappa held at {name}, {k} gradients ({label})", got))
        for run, rim in runs:
            est = rim.eval()(y, physics)[-1]
            s, xi = est[:, :1], est[:, 1:]
            rows.append((f"RIM {run}", score(s, xi)))
            label, got = best(
                (f"step {b}", (ascend_source(y, physics, s, xi, steps=k, step_size=b), xi)) for b in STEP_SIZES
            )
            rows.append((f"RIM {run}, then its source alone, {k} more gradients ({label})", got))
    print(f"{y.shape[0]} lenses of {args.lenses.name}; median chi2_nu (1 = the noise) and mean log10 losses.")
    print()
    print("| method | median chi2_nu | log10 loss | source term | kappa term |")
    print("|---|---|---|---|---|")
    for name, (chi2, total, source, kap) in rows:
        print(f"| {name} | {chi2:.2f} | {total:.3f} | {source:.3f} | {kap:.3f} |")


if __name__ == "__main__":
    main()
