"""The noise measured from the sky (``--noise-sigma auto``, README "Real observations") against the
sigma a demo's held-out lenses were simulated with.

    python docs/noise_auto.py DEMO_DIR [--work DIR]   # a `lens demo -o DEMO_DIR` run

Each lens is written as a FITS cutout on the RIM's grid, in counts (100 per unit of the dataset),
and read back twice: with its simulated sigma and with ``noise_sigma="auto"``. Printed per lens: the
two sigmas and their ratio, and the RIM's chi2_nu with each; then the medians.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch

import lensrim
import lenssim

COUNTS = 100.0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("demo", type=Path, help="a `lens demo` output directory")
    parser.add_argument(
        "--work", type=Path, help="where the FITS cutouts' temporary folder goes (default: the system's)"
    )
    args = parser.parse_args(argv)
    from astropy.io import fits

    rim = lensrim.load(args.demo / "rim")
    path = args.demo / "lenses-test.h5"
    data = lenssim.read_lens_dataset(path)
    fov = float(lenssim.io.dataset_info(path)["attrs"]["image_fov"])
    if args.work is not None:
        args.work.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=args.work) as tmp:  # a folder of its own: nothing there overwritten
        work = Path(tmp)
        rows = []
        for i in range(data["observation"].shape[0]):
            image = data["observation"][i, 0].double().numpy() * COUNTS
            n = image.shape[-1]
            fits.PrimaryHDU(image, header=fits.Header({"PIXSCALE": fov / n})).writeto(work / f"lens{i}.fits")
            fits.PrimaryHDU(data["psf"][i, 0].double().numpy()).writeto(work / f"psf{i}.fits")
            sigma = float(data["noise_sigma"][i]) * COUNTS
            chi2 = {}
            for how, noise in (("given", sigma), ("auto", "auto")):
                obs = lenssim.Observation.from_fits(
                    work / f"lens{i}.fits", psf_file=work / f"psf{i}.fits", noise_sigma=noise
                )
                obs = obs.on_grid(n, fov)
                chi2[how] = float(lensrim.reconstruct(rim, obs).chi2_nu[0])
                if how == "auto":
                    measured = obs.origin["sky_sigma"]
            rows.append((sigma, measured, chi2["given"], chi2["auto"]))
            print(
                f"lens {i}: sigma {sigma:.4g}, measured {measured:.4g} (x{measured / sigma:.3f}); "
                f"RIM chi2_nu {chi2['given']:.3f} with the sigma, {chi2['auto']:.3f} measured"
            )
    r = np.array(rows)
    ratio = r[:, 1] / r[:, 0]
    print(
        f"measured / simulated sigma: {ratio.min():.3f} to {ratio.max():.3f}, mean {ratio.mean():.3f}; "
        f"RIM median chi2_nu {np.median(r[:, 2]):.3f} with the sigmas, {np.median(r[:, 3]):.3f} measured "
        f"({len(r)} lenses, torch {torch.__version__})"
    )


if __name__ == "__main__":
    main()
