"""A sample of FITS lenses fine-tuned by one command per file against one catalogue command.

    python benchmarks/bench_catalogue.py DEMO_DIR [--rounds 2] [--work DIR]   # a `lens demo -o DEMO_DIR` run

The demo's held-out lenses are written as FITS cutouts on the RIM's grid (in counts, each with its
PSF as a FITS file) and listed in a CSV catalogue with their noise sigmas. Both ways fine-tune them
as the demo does (its EWC settings, its VAEs): ``lens finetune`` once per file, and once on the
catalogue at ``--batch-size`` the number of lenses (and, once, at ``--batch-size 1``: the models
loaded once without the batching). The rounds alternate the two ways; each whole command is timed
from outside, and the medians, their ratio and each way's spread are printed, with the machine.
Each round also checks that the catalogue's baselines are each file's.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import lenssim

LENS = str(Path(sys.executable).with_name("lens"))


def write_sample(demo: Path, work: Path) -> list[dict]:
    """The demo's held-out lenses as FITS files (image, PSF) and a catalogue ``lenses.csv``."""
    d = lenssim.read_lens_dataset(demo / "lenses-test.h5")
    fov = float(lenssim.io.dataset_info(demo / "lenses-test.h5")["attrs"]["image_fov"])
    from astropy.io import fits

    lenses, rows = [], ["name,fits,psf,noise_sigma"]
    for i in range(d["observation"].shape[0]):
        image = d["observation"][i, 0].double().numpy() * 100.0  # in "counts"
        n = image.shape[-1]
        fits.PrimaryHDU(image, header=fits.Header({"PIXSCALE": fov / n})).writeto(work / f"lens{i}.fits")
        fits.PrimaryHDU(d["psf"][i, 0].double().numpy()).writeto(work / f"psf{i}.fits")
        sigma = float(d["noise_sigma"][i]) * 100.0
        lenses.append({"name": f"l{i}", "fits": work / f"lens{i}.fits", "psf": work / f"psf{i}.fits", "sigma": sigma})
        rows.append(f"l{i},lens{i}.fits,psf{i}.fits,{sigma!r}")
    (work / "lenses.csv").write_text("\n".join(rows) + "\n")
    return lenses


def timed(commands: list[list[str]]) -> float:
    """Wall seconds of ``commands`` run one after the other (each must succeed)."""
    start = time.perf_counter()
    for command in commands:
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"{' '.join(command[:2])} failed: {done.stderr.strip().splitlines()[-1]}")
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("demo", type=Path, help="a `lens demo` output directory")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one)")
    args = parser.parse_args(argv)
    c = json.loads((args.demo / "demo.json").read_text())["config"]
    work = Path(tempfile.mkdtemp(dir=args.work))
    try:
        lenses = write_sample(args.demo, work)
        common = [LENS, "finetune", "--rim", str(args.demo / "rim")]
        common += ["--source-vae", str(args.demo / "vae-source"), "--kappa-vae", str(args.demo / "vae-kappa")]
        common += ["--lambda", str(c["ewc_lambda"]), "--fisher-samples", str(c["fisher_samples"])]
        common += ["--learning-rate", str(c["finetune_learning_rate"]), "--max-steps", str(c["finetune_steps"])]

        def per_file(tag: str) -> list[list[str]]:
            commands = []
            for x in lenses:
                given = ["--data", str(x["fits"]), "--psf", str(x["psf"]), "--noise-sigma", repr(x["sigma"])]
                commands.append([*common, *given, "-o", str(work / f"{tag}-{x['name']}.h5")])
            return commands

        def catalogue(tag: str, batch: int) -> list[list[str]]:
            out = work / f"{tag}.h5"
            return [[*common, "--data", str(work / "lenses.csv"), "--batch-size", str(batch), "-o", str(out)]]

        files, batched = [], []
        for r in range(args.rounds):
            files.append(timed(per_file(f"files{r}")))
            batched.append(timed(catalogue(f"catalogue{r}", len(lenses))))
            base = lenssim.read_dataset(work / f"catalogue{r}.h5", ["chi2_nu_baseline"])["chi2_nu_baseline"]
            alone = [lenssim.read_dataset(work / f"files{r}-{x['name']}.h5", ["chi2_nu_baseline"]) for x in lenses]
            alone = torch.cat([a["chi2_nu_baseline"] for a in alone])
            torch.testing.assert_close(base, alone, rtol=1e-4, atol=0)
            print(
                f"round {r + 1}: one command per file {files[-1]:.1f} s, one catalogue {batched[-1]:.1f} s", flush=True
            )
        single = timed(catalogue("batch1", 1))
        print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}")
        print(
            f"{len(lenses)} lenses, fine-tuned as the demo ({c['fisher_samples']} draws, {c['finetune_steps']} steps):"
        )
        for what, t in (("one command per file", files), ("one catalogue command", batched)):
            print(f"  {what:24s} median {statistics.median(t):6.1f} s (min {min(t):.1f}, max {max(t):.1f})")
        ratio = statistics.median(np.divide(files, batched))
        print(f"  per file / catalogue: x{ratio:.2f} (median of the rounds' pairs)")
        print(f"  the catalogue at --batch-size 1 (models loaded once, no batching): {single:.1f} s, one run")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
