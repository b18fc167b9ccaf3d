"""Throughput of the lenssim forward model and its likelihood gradient.

Prints images per second for the forward model F(source, kappa, psf) and for forward +
gradient of the log-likelihood with respect to the source and kappa pixels, at 128^2 with an
11 x 11 PSF, batch 1 and 16, on the CPU (and CUDA when present). When caustics is installed it
runs the same workload (PixelatedConvergence + Pixelated + LensSource, vmapped over the batch)
in the same process and prints lenssim's speed-up over it. Then, with the 11 x 11 PSF and Table 1's
21 x 21 (the simulations' default), forward + gradient through the direct convolution and through
the FFT product, interleaved, on each device, and which one the default takes there
(``lenssim.physics.psf.FFT_FROM_SIDE``: on a CPU, by whether it has AVX-512). Never fails for
being slow.

    python benchmarks/bench_lenssim.py [--repeats 20] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch

import lenssim

N = 128
PSF_SIZE = 11


def _time(fn, repeats: int, device: torch.device) -> float:
    """Median seconds per call after two warm-up calls (the median resists a noisy machine)."""

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    for _ in range(2):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    times.sort()
    return times[len(times) // 2]


def _inputs(batch: int, device: torch.device):
    g = torch.Generator().manual_seed(0)
    params = lenssim.sample_sie_parameters(batch, generator=g)
    kappa = lenssim.sie_convergence(params).to(device)
    source = torch.rand(batch, 1, N, N, generator=g).to(device)
    fwhm = lenssim.sample_psf_fwhm(batch, generator=g)
    pixel = lenssim.IMAGE_FOV / N
    psf = lenssim.gaussian_psf(fwhm, pixel, PSF_SIZE).to(device)
    sep = lenssim.SeparablePSF.gaussian(fwhm, pixel, PSF_SIZE).to(device)
    sigma = torch.full((batch,), 0.03, device=device)
    obs = lenssim.add_noise(lenssim.lens_image(source, kappa, psf=psf), sigma, generator=None)
    return source, kappa, psf, sep, sigma, obs


def bench_lenssim(batch: int, device: torch.device, repeats: int) -> dict[str, float]:
    source, kappa, psf, sep, sigma, obs = _inputs(batch, device)
    out = {}
    for name, p in (("psf2d", psf), ("separable", sep)):

        def fwd(p=p):
            with torch.no_grad():
                lenssim.lens_image(source, kappa, psf=p)

        def grad(p=p):
            lenssim.likelihood_gradient(obs, source, kappa, sigma, psf=p)

        out[f"forward_{name}"] = batch / _time(fwd, repeats, device)
        out[f"grad_{name}"] = batch / _time(grad, repeats, device)
    return out


def bench_caustics(batch: int, device: torch.device, repeats: int) -> dict[str, float] | None:
    try:
        import caustics
    except ImportError:
        return None
    source, kappa, psf, _, sigma, obs = _inputs(batch, device)
    cosmo = caustics.FlatLambdaCDM(name="cosmo")
    lens = caustics.PixelatedConvergence(
        pixelscale=lenssim.IMAGE_FOV / N, cosmology=cosmo, z_l=0.5, z_s=1.5, shape=(N, N), name="lens"
    )
    src = caustics.Pixelated(x0=0.0, y0=0.0, pixelscale=lenssim.SOURCE_FOV / N, shape=(N, N), name="src")
    sim = caustics.LensSource(
        lens, src, pixelscale=lenssim.IMAGE_FOV / N, pixels_x=N, psf_mode="conv2d", psf_shape=(PSF_SIZE, PSF_SIZE)
    )
    sim.psf.to_dynamic()
    lens.convergence_map.to_dynamic()
    src.image.to_dynamic()
    sim.to(device)
    vsim = torch.vmap(sim)
    p, k, s, y = psf[:, 0], kappa[:, 0], source[:, 0], obs[:, 0]

    def fwd():
        with torch.no_grad():
            vsim([p, k, s])

    def grad():
        kk = k.detach().requires_grad_(True)
        ss = s.detach().requires_grad_(True)
        model = vsim([p, kk, ss])
        logp = -0.5 * (((y - model) / sigma[:, None, None]) ** 2).sum()
        torch.autograd.grad(logp, (ss, kk))

    return {"forward": batch / _time(fwd, repeats, device), "grad": batch / _time(grad, repeats, device)}


TABLE_1_PSF = 21


def bench_psf_paths(batch: int, device: torch.device, repeats: int, side: int = TABLE_1_PSF) -> dict[str, float]:
    """Forward + likelihood gradient, images per second, with a ``side`` x ``side`` PSF (Table 1's
    21 by default) convolved directly and as a product of FFTs (each forced through
    ``FFT_FROM_SIDE`` for the call, then restored)."""
    from lenssim.physics import psf as psf_module

    source, kappa, _, _, sigma, _ = _inputs(batch, device)
    g = torch.Generator().manual_seed(1)
    psf = lenssim.gaussian_psf(lenssim.sample_psf_fwhm(batch, generator=g), lenssim.IMAGE_FOV / N, side)
    psf = psf.to(device)
    obs = lenssim.lens_image(source, kappa, psf=psf)
    saved = dict(psf_module.FFT_FROM_SIDE)
    out = {}
    try:
        for name, side in (("direct", None), ("fft", 1)):
            psf_module.FFT_FROM_SIDE.pop(device.type, None)
            if side is not None:
                psf_module.FFT_FROM_SIDE[device.type] = side

            def grad():
                lenssim.likelihood_gradient(obs, source, kappa, sigma, psf=psf)

            out[name] = batch / _time(grad, repeats, device)
    finally:
        psf_module.FFT_FROM_SIDE.clear()
        psf_module.FFT_FROM_SIDE.update(saved)
    return out


def _median(xs: list[float]) -> float:
    xs = sorted(xs)
    return xs[len(xs) // 2]


def ray_tracer_row(device: torch.device, batch: int, rounds: int, repeats: int) -> tuple[dict, str]:
    """lenssim's forward model and likelihood gradient against caustics' (when installed) at one
    batch size: ``rounds`` interleaved rounds (both see the same machine state), each rate a median
    of ``repeats`` directly timed calls; the row gives the medians over the rounds, the range of
    lenssim's forward + gradient rate, and every round's speed-up. Returns the figures and the line."""
    measured = [(bench_lenssim(batch, device, repeats), bench_caustics(batch, device, repeats)) for _ in range(rounds)]
    ours = {k: _median([r[0][k] for r in measured]) for k in measured[0][0]}
    grads = [r[0]["grad_psf2d"] for r in measured]
    row = {"device": device.type, "batch": batch, "lenssim": ours, "caustics": None, "rounds": rounds}
    line = (
        f"{device.type:4s} B={batch:<3d} forward {ours['forward_psf2d']:8.1f} (separable "
        f"{ours['forward_separable']:8.1f})  fwd+grad {ours['grad_psf2d']:8.1f} [{min(grads):.1f}-{max(grads):.1f}] "
        f"(separable {ours['grad_separable']:8.1f})"
    )
    if measured[0][1] is None:
        return row, line + " | caustics not installed: no reference"
    theirs = {k: _median([r[1][k] for r in measured]) for k in measured[0][1]}
    per_round = [r[0]["grad_psf2d"] / r[1]["grad"] for r in measured]
    row["caustics"] = theirs
    row["speedup"] = {
        "forward": _median([r[0]["forward_psf2d"] / r[1]["forward"] for r in measured]),
        "grad": _median(per_round),
        "grad_separable": _median([r[0]["grad_separable"] / r[1]["grad"] for r in measured]),
        "grad_rounds": per_round,
    }
    ratios = row["speedup"]
    line += (
        f" | caustics forward {theirs['forward']:7.1f} fwd+grad {theirs['grad']:7.1f}"
        f" | speed-up forward x{ratios['forward']:.1f} fwd+grad x{ratios['grad']:.1f}"
        f" (rounds {', '.join(f'x{v:.2f}' for v in per_round)}; separable x{ratios['grad_separable']:.1f})"
    )
    return row, line


def psf_paths_row(
    device: torch.device, batch: int, rounds: int, repeats: int, side: int = TABLE_1_PSF
) -> tuple[dict, str]:
    """:func:`bench_psf_paths` in ``rounds`` rounds: the medians, every round's ratio, and the path
    that ``FFT_FROM_SIDE`` gives that PSF on this device. Returns the figures and the line."""
    from lenssim.physics.psf import FFT_FROM_SIDE

    default = "fft" if side >= FFT_FROM_SIDE.get(device.type, side + 1) else "direct"
    measured = [bench_psf_paths(batch, device, repeats, side) for _ in range(rounds)]
    direct, fft = _median([r["direct"] for r in measured]), _median([r["fft"] for r in measured])
    spread = ", ".join(f"{r['fft'] / r['direct']:.2f}" for r in measured)
    row = {"device": device.type, "batch": batch, "psf": side, "direct": direct, "fft": fft, "default": default}
    line = (
        f"{device.type:4s} B={batch:<3d} {side}x{side} PSF fwd+grad: direct {direct:8.1f} | FFT "
        f"{fft:8.1f} | FFT x{fft / direct:.2f} (rounds {spread}); the default here: {default}"
    )
    return row, line


def header(rounds: int) -> str:
    """The versions, the machine and what the rows' figures are."""
    cuda = f", CUDA {torch.version.cuda} on {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return (
        f"lenssim {lenssim.__version__}, torch {torch.__version__}{cuda}, {platform.machine()}, "
        f"{torch.get_num_threads()} CPU threads; {N}^2 pixels, {PSF_SIZE}x{PSF_SIZE} PSF; images per second, "
        f"median of {rounds} interleaved rounds [range]"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=10, help="timed calls per round")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds of lenssim and caustics")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--json", help="also write the figures to this file")
    args = ap.parse_args()

    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    results = []
    print(header(args.rounds))
    rows = [(ray_tracer_row, ())] + [(psf_paths_row, (side,)) for side in (PSF_SIZE, TABLE_1_PSF)]
    for make, extra in rows:
        for device in devices:
            for batch in args.batches:
                row, line = make(device, batch, args.rounds, args.repeats, *extra)
                results.append(row)
                print(line, flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
