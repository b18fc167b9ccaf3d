"""RIM throughput: training steps per second and inference lenses per second, with peak memory.

The small preset runs on the CPU (and the GPU when present); the paper preset (348.5M
parameters) only on a GPU. Inputs are simulated SIE lenses with Sersic sources (128^2, T = 8).
Never fails for being slow.

    python benchmarks/bench_rim.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import resource
import time
from dataclasses import replace

import torch

import lensrim
import lenssim
from lensrim.training import batch_loss


def _batch(n: int, device: torch.device) -> dict[str, torch.Tensor]:
    b = lenssim.simulate_sie_lenses(n, generator=torch.Generator().manual_seed(0), batch_size=max(8, 2 * n))
    return {k: getattr(b, k).to(device) for k in lenssim.LENS_FIELDS}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def bench(preset: str, device: torch.device, train_batch: int, infer_batch: int, repeats: int, **flags) -> str:
    config = replace(lensrim.PRESETS[preset], batch_size=train_batch, **flags)
    torch.manual_seed(0)
    model = lensrim.RIM(config).to(device)
    opt = torch.optim.Adamax(model.parameters(), lr=1e-4)
    train = _batch(train_batch, device)
    infer = _batch(infer_batch, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()

    def step():
        loss, _ = batch_loss(model, train)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def predict():
        with torch.no_grad():
            model(infer["observation"], lensrim.LensingPhysics(infer["psf"], infer["noise_sigma"]))

    times = {}
    for name, fn in (("train", step), ("infer", predict)):
        fn()
        _sync(device)
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            _sync(device)
            best = min(best, time.perf_counter() - t0)
        times[name] = best
    if device.type == "cuda":
        peak = f"peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB"
    else:
        peak = f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB"
    n_params = sum(p.numel() for p in model.parameters())
    extra = "".join(f" {k}={v}" for k, v in flags.items())
    return (
        f"{preset:5s} ({n_params / 1e6:.1f}M){extra} on {device.type}: training {1 / times['train']:.2f} steps/s "
        f"(batch {train_batch}), inference {infer_batch / times['infer']:.1f} lenses/s (batch {infer_batch}), {peak}"
    )


def bench_finetune(preset: str, device: torch.device, lenses: int, steps: int, pixels: int | None = None) -> str:
    """Fine-tuning throughput: ``lenses`` lenses together (one weight copy each, vmap) against
    the same lenses one at a time; Fisher (16 draws) and ``steps`` RMSProp steps per lens, no
    early stop. Lenses per hour extrapolate to Table 3's 200 draws and 2000 steps."""
    from lensprior import kappa_vae, source_vae
    from lensrim.finetune import FineTuneConfig, finetune

    config = lensrim.PRESETS[preset] if pixels is None else replace(lensrim.PRESETS[preset], pixels=pixels)
    n = config.pixels
    torch.manual_seed(0)
    model = lensrim.RIM(config).to(device).eval()
    vae_kw = dict(pixels=n, levels=3, filters=8, latent_dim=16)
    svae, kvae = source_vae(**vae_kw).to(device).eval(), kappa_vae(**vae_kw).to(device).eval()
    obs = lenssim.ObservationConfig(image_pixels=n, source_pixels=n)
    b = lenssim.simulate_sie_lenses(lenses, config=obs, generator=torch.Generator().manual_seed(0))
    y, psf, sigma = b.observation.to(device), b.psf.to(device), b.noise_sigma.to(device)
    draws = 16

    def run(sl, count_steps):
        cfg = FineTuneConfig(fisher_samples=draws, max_steps=count_steps, target_chi2_nu=0.0, fisher_chunk=8)
        gens = [torch.Generator().manual_seed(i) for i in range(sl.start, sl.stop)]
        t0 = time.perf_counter()
        finetune(model, svae, kvae, y[sl], model.config.physics(psf[sl], sigma[sl]), cfg, generators=gens)
        _sync(device)
        return time.perf_counter() - t0

    run(slice(0, 1), 1)  # warm-up
    # time = Fisher + steps * step: two step counts separate the two
    t_batch = {k: run(slice(0, lenses), k) for k in (1, steps + 1)}
    t_one = {k: sum(run(slice(i, i + 1), k) for i in range(lenses)) for k in (1, steps + 1)}

    def per_hour(t):
        step = (t[steps + 1] - t[1]) / steps
        fisher = t[1] - step
        full = fisher * 200 / draws + 2000 * step
        return lenses * 3600 / full, step / lenses, fisher / lenses / draws

    ph_b, st_b, fi_b = per_hour(t_batch)
    ph_1, st_1, fi_1 = per_hour(t_one)
    return (
        f"fine-tuning {preset} {n}^2 on {device.type}: {lenses} lenses together {ph_b:.2f} lenses/h vs one at a time "
        f"{ph_1:.2f} lenses/h (x{ph_b / ph_1:.2f}); per lens: step {1e3 * st_b:.0f} vs {1e3 * st_1:.0f} ms, "
        f"Fisher draw {1e3 * fi_b:.0f} vs {1e3 * fi_1:.0f} ms (Table 3 budget: 200 draws, 2000 steps)"
    )


def bench_on_the_fly(preset: str, device: torch.device, batch: int, steps: int, pixels: int = 128) -> str:
    """:func:`on_the_fly_rates` as a line of text."""
    rates = on_the_fly_rates(preset, device, batch, steps, pixels)
    ratio = rates["on the fly"] / rates["fixed"]
    return (
        f"training {preset} {pixels}^2 batch {batch} on {device.type}: on the fly {rates['on the fly']:.2f} steps/s, "
        f"fixed batch {rates['fixed']:.2f} steps/s ({100 * ratio:.0f} %)"
    )


def on_the_fly_rates(preset: str, device: torch.device, batch: int, steps: int, pixels: int = 128) -> dict:
    """Steps per second of training through :func:`lensrim.train_rim` (logging and TensorBoard
    included) on lenses simulated on the fly (``"on the fly"``), against the same loop on one
    fixed batch (``"fixed"``), same model, same run. Rates are taken between the first and the
    last step (warm-up excluded)."""
    import tempfile

    from lensrim.training import SimulatedBatches

    obs = lenssim.ObservationConfig.at_resolution(pixels)
    cfg = replace(lensrim.PRESETS[preset], pixels=pixels, batch_size=batch)
    sim = SimulatedBatches(
        lenssim.sie_kappa_sampler(config=obs, device=device),
        lenssim.sersic_source_sampler(obs, device=device),
        obs,
        device=device,
    )
    fixed = sim(0, batch, 0)
    rates = {}
    for name, source in (("fixed", lambda step, size, seed: fixed), ("on the fly", sim)):
        stamps = []

        def progress(done, terms, stamps=stamps):
            _sync(device)
            stamps.append(time.perf_counter())

        with tempfile.TemporaryDirectory() as tmp:
            lensrim.train_rim(
                cfg,
                source,
                tmp,
                steps=steps + 1,
                device=device,
                log_every=10**9,
                checkpoint_every=10**9,
                validation_size=0,
                progress=progress,
            )
        rates[name] = steps / (stamps[-1] - stamps[0])
    return rates


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    print(
        f"lensrim {lensrim.__version__}, torch {torch.__version__}, {torch.get_num_threads()} CPU threads; T = 8, 128^2"
    )
    print(bench("small", torch.device("cpu"), 4, 8, args.repeats), flush=True)
    print(bench_on_the_fly("small", torch.device("cpu"), 4, 20, pixels=64), flush=True)
    print(bench_finetune("small", torch.device("cpu"), 4, 3, pixels=64), flush=True)
    if torch.cuda.is_available():
        gpu = torch.device("cuda")
        print(bench("small", gpu, 16, 64, args.repeats), flush=True)
        print(bench_on_the_fly("small", gpu, 16, 50), flush=True)
        print(bench("paper", gpu, 1, 8, args.repeats), flush=True)
        print(bench("paper", gpu, 1, 8, args.repeats, activation_checkpointing=True, bf16=True), flush=True)
        print(bench_finetune("small", gpu, 16, 5), flush=True)
    else:
        print("paper preset: GPU only (no CUDA device here)")


if __name__ == "__main__":
    main()
