"""The demo's RIM retrained with other training options on the demo's own data, to measure how
each trades the fit (median chi2_nu) against the truth (log10 loss) on held-out lenses (issue:
reconstructions that fit the data, §3).

Each arm reruns stage 4 of ``lens demo`` (the RIM: same training lenses, VAE-drawn lenses, seed
and schedule) in its own directory beside links to a finished standard demo's data (its VAEs are read, never resumed),
then scores the final estimate on the demo's 8 test lenses and on 64 more drawn from the same
held-out halos and galaxies (seed 101), beside the constant predictor and plain Adam with the
RIM's 7 gradients on the same lenses (from the RIM's first estimate and from the constant
predictor, 5 learning rates each, the best median chi2_nu kept: no labels). Arms differ from the
demo's settings only by the RIMConfig fields and demo fields they name, and a few by a training
loss that is not an option of lensrim (``study_loss``, see STUDY_LOSSES).

    lens demo -o demo-out                                   # once: the data, VAEs and reference
    python docs/rim_fit_frontier.py --demo demo-out --work /tmp/frontier --arm "gradient skip 0.03"
    python docs/rim_fit_frontier.py --demo demo-out --work /tmp/frontier --arm "gradient skip 0.03" --seed 1
    python docs/rim_fit_frontier.py --demo demo-out --work /tmp/frontier --arm "gradient skip 0.03" --label "AMD EPYC"
    python docs/rim_fit_frontier.py --table                 # the table of docs/rim_fit_frontier.json

``--label`` names a rerun of a recorded arm (e.g. on another machine) as its own entry; an arm run
on the data of a demo made with ``--seed S`` is recorded with ", demo seed S".

The study began on the demo's data from 10 halos (16 maps each); the standard demo draws them from
40 halos since its fourth study, and arms run on such a demo are recorded with ", on 40 halos (4
maps each)" in their name (the arms without it ran on 10-halo data, e.g. ``run_demo`` with
``replace(PRESETS["standard"], halos=10, maps_per_halo=16)``).

Arms start from the demo's settings when the study began (BEFORE), not from today's demo, so that an
arm means the same whenever it is run; "bf16, batch 8" arms (sixth study) need a CPU with native
bfloat16 to mean what they say (elsewhere they run in float32).

Results are appended to ``docs/rim_fit_frontier.json`` (one entry per arm, data and seed; an entry
already there is not run again; ``--seed`` changes the RIM's initial weights and its VAE-drawn
training lenses, never the data files or the lenses scored). The recorded arms ran two or three
at a time with one thread each on the 2-core development machine (about 13 minutes an arm of
600 steps, 47 of 1,800; on the 40-halo data with four at a time, 15 and 66).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "rim_fit_frontier.json"
SHARED = ("kappa.h5", "sources.h5", "lenses-train.h5", "lenses-test.h5")
"""The demo's data files an arm reads through links (its VAEs are read from their run directories)."""

BEFORE = {
    "rim_fit_weight": 0.01,
    "gradient_skip": 0.0,
    "fit_kappa": 1.0,
    "skip_normalisation": "pixel",
    "rim_batch": 4,
    "rim_steps": 600,
    "bf16": False,
    "rim_float32_batch": None,
}
"""The demo's settings when this study began; every arm starts from them, not from today's
defaults, so that an arm means the same whenever it is run (on any CPU: an arm's batch is the
one it names, in float32 too)."""
DEMO_FIELDS = {"fit_kappa": "rim_fit_kappa", "bf16": "rim_bf16"}
"""RIMConfig fields that an arm names and the demo sets from its own fields."""
ARMS: dict[str, dict] = {
    "the demo before (fit 0.01)": {},
    "fit 0.05 on the source alone": {"rim_fit_weight": 0.05, "fit_kappa": 0.0},
    "gradient skip 0.03": {"gradient_skip": 0.03},
    "gradient skip 0.03, fit 0.01": {"gradient_skip": 0.03, "rim_fit_weight": 0.01},
    "gradient skip 0.03, fit 0.02": {"gradient_skip": 0.03, "rim_fit_weight": 0.02},
    "gradient skip 0.03, fit 0.03": {"gradient_skip": 0.03, "rim_fit_weight": 0.03},
    "gradient skip 0.03, fit 0.1 on the source alone": {"gradient_skip": 0.03, "rim_fit_weight": 0.1, "fit_kappa": 0.0},
    "gradient skip 0.03, fit 0.3 on the source alone": {"gradient_skip": 0.03, "rim_fit_weight": 0.3, "fit_kappa": 0.0},
    "gradient skip 0.03, fit 1.0 on the source alone": {"gradient_skip": 0.03, "rim_fit_weight": 1.0, "fit_kappa": 0.0},
    "gradient skip 0.03, fit 0.1, a fifth of it on kappa": {
        "gradient_skip": 0.03,
        "rim_fit_weight": 0.1,
        "fit_kappa": 0.2,
    },
    "gradient skip 0.03, fit 0.3, 3 % of it on kappa": {
        "gradient_skip": 0.03,
        "rim_fit_weight": 0.3,
        "fit_kappa": 0.03,
    },
    "gradient skip 0.03, fit 0.3, 1/30 of it on kappa": {
        "gradient_skip": 0.03,
        "rim_fit_weight": 0.3,
        "fit_kappa": 0.033,
    },
    "gradient skip 0.03 by map, fit 0.3 on the source alone": {
        "gradient_skip": 0.03,
        "skip_normalisation": "map",
        "rim_fit_weight": 0.3,
        "fit_kappa": 0.0,
    },
    "gradient skip 0.03 by map, fit 1.0 on the source alone": {
        "gradient_skip": 0.03,
        "skip_normalisation": "map",
        "rim_fit_weight": 1.0,
        "fit_kappa": 0.0,
    },
    "gradient skip 0.03 by map, fit 0.3 on the source alone, learning rate 2e-3": {
        "gradient_skip": 0.03,
        "skip_normalisation": "map",
        "rim_fit_weight": 0.3,
        "fit_kappa": 0.0,
        "rim_learning_rate": 2e-3,
    },
    "gradient skip 0.03, fit 0.3 on the source alone, 1800 steps": {
        "gradient_skip": 0.03,
        "rim_fit_weight": 0.3,
        "fit_kappa": 0.0,
        "rim_steps": 1800,
    },
    "gradient skip 0.03 by map, fit 0.3 on the source alone, 1800 steps": {
        "gradient_skip": 0.03,
        "skip_normalisation": "map",
        "rim_fit_weight": 0.3,
        "fit_kappa": 0.0,
        "rim_steps": 1800,
    },
    "gradient skip 0.03, fit 0.02, 1800 steps": {"gradient_skip": 0.03, "rim_fit_weight": 0.02, "rim_steps": 1800},
    # bfloat16 on a CPU with native bf16 (AMX): twice the lenses per second at batch 8
    "gradient skip 0.03, fit 0.3 on the source alone, bf16, batch 8": {
        "gradient_skip": 0.03,
        "rim_fit_weight": 0.3,
        "fit_kappa": 0.0,
        "bf16": True,
        "rim_batch": 8,
    },
    "gradient skip 0.03, fit 0.02, bf16, batch 8": {
        "gradient_skip": 0.03,
        "rim_fit_weight": 0.02,
        "bf16": True,
        "rim_batch": 8,
    },
    "gradient skip 0.03, fit 0.02, bf16, batch 8, 800 steps": {
        "gradient_skip": 0.03,
        "rim_fit_weight": 0.02,
        "bf16": True,
        "rim_batch": 8,
        "rim_steps": 800,
    },
    "gradient skip 0.03, fit 0.03, bf16, batch 8, 800 steps": {
        "gradient_skip": 0.03,
        "rim_fit_weight": 0.03,
        "bf16": True,
        "rim_batch": 8,
        "rim_steps": 800,
    },
    # A narrower U-net (seventh study): at most 64 channels instead of 128, a training step 15 % shorter
    "gradient skip 0.03, fit 0.02, bf16, batch 8, 800 steps, at most 64 channels": {
        "gradient_skip": 0.03,
        "rim_fit_weight": 0.02,
        "bf16": True,
        "rim_batch": 8,
        "rim_steps": 800,
        "max_filters": 64,
    },
    "gradient skip 0.03, fit 0.02, bf16, batch 8, 1000 steps, at most 64 channels": {
        "gradient_skip": 0.03,
        "rim_fit_weight": 0.02,
        "bf16": True,
        "rim_batch": 8,
        "rim_steps": 1000,
        "max_filters": 64,
    },
    # The network told its whitened residual (eighth study of docs/rim_ab.md)
    "gradient skip 0.03, fit 0.02, bf16, batch 8, 800 steps, residual input": {
        "gradient_skip": 0.03,
        "rim_fit_weight": 0.02,
        "bf16": True,
        "rim_batch": 8,
        "rim_steps": 800,
        "residual_input": True,
    },
    # Losses that are not training options (STUDY_LOSSES): each tried once, none kept.
    "gradient skip 0.03, fit 0.3 on the source alone, source term x10": {
        "gradient_skip": 0.03,
        "rim_fit_weight": 0.3,
        "fit_kappa": 0.0,
        "study_loss": {"source_weight": 10.0},
    },
    "gradient skip 0.03, fit 0.3 on the source alone, kappa fit through the true source 0.03": {
        "gradient_skip": 0.03,
        "rim_fit_weight": 0.3,
        "fit_kappa": 0.0,
        "study_loss": {"true_source_fit": 0.03},
    },
    "gradient skip 0.03, fit 0.3 on the source alone, kappa fit through the true source 0.1": {
        "gradient_skip": 0.03,
        "rim_fit_weight": 0.3,
        "fit_kappa": 0.0,
        "study_loss": {"true_source_fit": 0.1},
    },
    "gradient skip 0.03, fit 0 -> 0.03 over training": {
        "gradient_skip": 0.03,
        "rim_fit_weight": 0.0,
        "study_loss": {"fit_ramp": 0.03},
    },
    "gradient skip 0.03, fit 0 -> 0.04 over training": {
        "gradient_skip": 0.03,
        "rim_fit_weight": 0.0,
        "study_loss": {"fit_ramp": 0.04},
    },
}

STUDY_LOSSES = ("source_weight", "true_source_fit", "fit_ramp")
"""Training losses this script adds for an arm (``"study_loss": {kind: value}``), not options of
``lensrim`` (fifth study of docs/rim_ab.md):

- ``source_weight`` W: eq. 7 with its source term times W (in the logged validation loss too, and so
  in the arm's ``validation_loss_per_step``; the scores use eq. 7 itself).
- ``true_source_fit`` w: plus w max(0, ln chi2_nu) of the true source through the RIM's final
  kappa, a kappa term in the image plane that vanishes at the truth (the true source's
  chi2_nu through the true kappa is the noise's, about 1).
- ``fit_ramp`` w: plus w_t max(0, ln chi2_nu) of the RIM's final estimate, both maps, with w_t
  rising linearly from 0 at the first training step to w at the last (the arm's ``rim_steps``).
"""


@contextmanager
def study_loss(spec: dict | None, steps: int):
    """``lensrim.training`` with the arm's study loss for the ``with`` block (restored after)."""
    import torch

    from lensrim import training

    if not spec:
        yield
        return
    ((kind, value),) = spec.items()
    if kind not in STUDY_LOSSES:
        raise SystemExit(f"unknown study loss {kind!r}: one of {', '.join(STUDY_LOSSES)}")
    batch_terms, loss_terms = training._batch_terms, training.rim_loss_terms
    taken = [0]  # training steps so far (the calls that build a graph; validation runs without one)

    def weighted_terms(est, source, kappa, **options):
        ls, lk = loss_terms(est, source, kappa, **options)
        return value * ls, lk

    def with_term(model, batch, physics_of):
        seen = {}
        hook = model.register_forward_hook(lambda module, args, out: seen.setdefault("est", out))
        try:
            loss, terms = batch_terms(model, batch, physics_of)
        finally:
            hook.remove()
        if torch.is_grad_enabled():
            final = seen["est"][-1]
            physics = physics_of(batch)
            if kind == "true_source_fit":
                chi2, weight = physics.chi2_nu(batch["observation"], batch["source"], final[:, 1:]), value
            else:
                chi2, weight = (
                    physics.chi2_nu(batch["observation"], final[:, :1], final[:, 1:]),
                    value * min(taken[0], steps) / steps,
                )
            taken[0] += 1
            loss = loss + weight * torch.log(chi2).clamp_min(0).mean()
        return loss, terms

    try:
        if kind == "source_weight":
            training.rim_loss_terms = weighted_terms
        else:
            training._batch_terms = with_term
        yield
    finally:
        training._batch_terms, training.rim_loss_terms = batch_terms, loss_terms


def arm_settings(name: str) -> tuple[dict, dict, dict | None]:
    """The arm's settings split three ways: DemoConfig fields, the other RIMConfig fields (set
    through the demo's preset) and its study loss (or None); every arm starts from BEFORE."""
    from lensrim import demo

    overrides = {**BEFORE, **ARMS[name]}
    for field, demo_field in DEMO_FIELDS.items():  # the demo sets these RIMConfig fields itself
        overrides[demo_field] = overrides.pop(field)
    spec = overrides.pop("study_loss", None)
    standard = demo.PRESETS["standard"]
    demo_fields = {k: overrides.pop(k) for k in list(overrides) if hasattr(standard, k)}
    return demo_fields, overrides, spec


def run_arm(name: str, demo_dir: Path, work: Path, threads: int, seed: int = 0, label: str = "") -> dict:
    import torch

    import lensrim
    from lensrim import demo

    torch.set_num_threads(threads)
    demo_fields, overrides, spec = arm_settings(name)
    standard = demo.PRESETS["standard"]
    preset = lensrim.PRESETS[standard.rim_preset]
    try:  # RIMConfig fields: through the preset the demo's RIM starts from, for this arm only
        lensrim.PRESETS[standard.rim_preset] = replace(preset, **overrides)
        with study_loss(spec, demo_fields.get("rim_steps", standard.rim_steps)):
            return _run_arm(name, demo_dir, work, demo_fields, seed, label)
    finally:
        lensrim.PRESETS[standard.rim_preset] = preset


def _run_arm(name: str, demo_dir: Path, work: Path, demo_fields: dict, seed: int, label: str) -> dict:
    import numpy as np
    import torch

    import lensprior
    import lensrim
    import lenssim
    from lensrim import demo
    from lensrim.baseline import optimise_likelihood
    from lensrim.metrics import constant_reference

    standard = demo.PRESETS["standard"]
    if work.resolve() == demo_dir.resolve() or demo_dir.resolve() in work.resolve().parents:
        raise SystemExit(f"--work {work} must lie outside the demo directory {demo_dir}: arms never write there")
    key = entry(name, seed, data_of(demo_dir), label)
    out = work / key.replace(" ", "_").replace(",", "").replace(".", "").replace("(", "").replace(")", "")
    if "fit_ramp" in ARMS[name].get("study_loss", {}) and (out / "rim").exists():
        raise SystemExit(
            f"{out / 'rim'}: a fit_ramp arm counts its steps from its start, so it cannot resume; remove it"
        )
    out.mkdir(parents=True, exist_ok=True)
    for f in SHARED:
        if not (out / f).exists():
            os.symlink((demo_dir / f).resolve(), out / f)
    cfg = replace(standard, **demo_fields)
    obs = lenssim.ObservationConfig.at_resolution(cfg.pixels)
    state = demo.DemoState(
        output=out,
        config=cfg,
        seed=seed,  # the RIM's weights and its VAE-drawn training lenses; the data files stay the demo's
        device=torch.device("cpu"),
        say=print,
        progress_bar=demo._no_bar,
        observation=obs,
        timings={},
    )
    for kind in ("source", "kappa"):  # the demo's finished VAEs, read (never resumed: nothing written there)
        state.vaes[kind] = lensprior.load_vae(demo_dir / f"vae-{kind}")[0].eval()
    t0 = time.perf_counter()
    demo.stage_rim(state)
    seconds = time.perf_counter() - t0
    more = out / "more-test-lenses.h5"
    if not more.exists():

        def draws(file: str, kind: str):
            return lenssim.sampler_from_spec(out / file, kind, config=obs, split="test")

        lenssim.simulate_lens_dataset(
            more, 64, draws("kappa.h5", "kappa"), draws("sources.h5", "source"), config=obs, seed=101, block_size=128
        )
    rim = state.rim.eval()
    result: dict = {"settings": ARMS[name], "seed": seed, "rim_seconds": round(seconds)}
    for key, path in (("demo test lenses (8)", out / "lenses-test.h5"), ("more test lenses (64)", more)):
        test = lenssim.LensBatch.from_hdf5(path)
        y = test.observation
        physics = lensrim.LensingPhysics(test.psf, test.noise_sigma, obs.image_fov, obs.source_fov)
        with torch.no_grad():
            est = rim(y, physics)

        def score(s, xi, test=test, y=y, physics=physics):
            chi2 = physics.chi2_nu(y, s, xi)
            loss = lensrim.rim_loss(torch.cat([s, xi], 1)[None], test.source, test.kappa.clamp_min(1e-6))
            return {"chi2_nu": float(np.median(chi2.numpy())), "log10_loss": float(torch.log10(loss).mean())}

        ref = constant_reference(test.source, test.kappa)
        constant = (torch.zeros_like(est[0, :, :1]), torch.full_like(est[0, :, 1:], ref.log10_kappa))
        best = None
        for start in ((est[0, :, :1], est[0, :, 1:]), constant):
            for lr in demo.LR_GRID:
                got = score(*optimise_likelihood(y, physics, *start, steps=7, learning_rate=lr))
                if best is None or got["chi2_nu"] < best["chi2_nu"]:
                    best = got
        result[key] = {
            "rim": score(est[-1, :, :1], est[-1, :, 1:]),
            "rim_per_step": [score(e[:, :1], e[:, 1:]) for e in est],
            "constant": score(*constant),
            "adam_7": best,
        }
    last = [json.loads(line) for line in (out / "rim" / "metrics.jsonl").read_text().splitlines()][-1]
    result["validation_loss_per_step"] = last["val_loss_t"]
    return result


def table(results: dict) -> str:
    rows = [
        "| arm | 8 demo test lenses: chi2_nu / gain | 64 more: chi2_nu / gain | Adam-7 chi2_nu (8 / 64) |",
        "|---|---|---|---|",
    ]
    for name, r in results.items():
        cells = []
        for key in ("demo test lenses (8)", "more test lenses (64)"):
            s = r[key]
            gain = s["constant"]["log10_loss"] - s["rim"]["log10_loss"]
            cells.append(f"{s['rim']['chi2_nu']:.2f} / {gain:+.2f} dex")
        adam = " / ".join(f"{r[k]['adam_7']['chi2_nu']:.2f}" for k in ("demo test lenses (8)", "more test lenses (64)"))
        rows.append(f"| {name} | {cells[0]} | {cells[1]} | {adam} |")
    return "\n".join(rows)


STUDY_HALOS = (10, 16)
"""The demo's (halos, maps_per_halo) when this study began: arms on another demo's data say so."""


def data_of(demo_dir: Path) -> str:
    """'' for the study's demo data, else ', on H halos (M maps each)' from the demo's demo.json,
    then ', demo seed S' for a demo run with ``--seed S`` other than 0 (other halos, galaxies and
    test lenses)."""
    stored = demo_dir / "demo.json"
    try:
        meta = json.loads(stored.read_text())
        config = meta["config"]
        halos = (int(config["halos"]), int(config["maps_per_halo"]))
        seed = int(meta.get("seed", 0))
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise SystemExit(f"--demo {demo_dir}: no readable demo.json with halos and maps_per_halo ({e})") from None
    data = "" if halos == STUDY_HALOS else f", on {halos[0]} halos ({halos[1]} maps each)"
    return data + ("" if seed == 0 else f", demo seed {seed}")


def entry(name: str, seed: int, data: str = "", label: str = "") -> str:
    """The arm's key in the results: its name, then the demo data it ran on (nothing for the
    study's), its seed (nothing for the demo's seed 0) and the run's label (e.g. the machine,
    to repeat a recorded arm elsewhere)."""
    return name + data + ("" if seed == 0 else f", seed {seed}") + (f", {label}" if label else "")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--demo",
        type=Path,
        help="a finished `lens demo` directory (seed 0); its halos, when not the study's, name the results",
    )
    ap.add_argument("--work", type=Path, default=Path("frontier-work"))
    ap.add_argument("--arm", action="append", choices=list(ARMS), help="default: every arm not yet recorded")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument(
        "--seed", type=int, default=0, help="the RIM's training seed (0: the demo's); recorded as its own entry"
    )
    ap.add_argument(
        "--label",
        default="",
        help="appended to the recorded entry, e.g. the machine, to rerun an arm recorded elsewhere",
    )
    ap.add_argument("--table", action="store_true")
    args = ap.parse_args()
    results = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    if args.table:
        print(table(results))
        return
    if args.demo is None:
        ap.error("give --demo (a finished standard demo directory) or --table")
    from lenscore.files import written

    data = data_of(args.demo)
    for name in args.arm or [a for a in ARMS if entry(a, args.seed, data, args.label) not in results]:
        key = entry(name, args.seed, data, args.label)
        results[key] = run_arm(name, args.demo, args.work, args.threads, args.seed, args.label)
        fresh = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}  # arms run beside this one
        fresh[key] = results[key]
        with written(RESULTS) as tmp:
            tmp.write_text(json.dumps(fresh, indent=1) + "\n")
        print(table({key: results[key]}), flush=True)


if __name__ == "__main__":
    main()
