"""RIM throughput: training steps per second and inference lenses per second, with peak memory.

The small preset runs on the CPU (and the GPU when present); the paper preset (348.5M
parameters) only on a GPU. Inputs are simulated SIE lenses with Sersic sources (128^2, T = 8).
Never fails for being slow.

    python benchmarks/bench_rim.py [--repeats 3] [--compile]
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time
from dataclasses import replace

import torch

import lensrim
import lenssim
from lenscore.runs import on_device
from lensrim.training import batch_loss


def _batch(n: int, device: torch.device, pixels: int = 128) -> dict[str, torch.Tensor]:
    obs = lenssim.ObservationConfig.at_resolution(pixels)
    b = lenssim.simulate_sie_lenses(n, config=obs, generator=torch.Generator().manual_seed(0), batch_size=max(8, 2 * n))
    return {k: getattr(b, k).to(device) for k in lenssim.LENS_FIELDS}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _model_and_steps(preset: str, device: torch.device, train_batch: int, infer_batch: int, **flags):
    """A seeded RIM (``flags``: RIMConfig fields) with its training step and its inference call,
    in the layout training and loading give it on ``device`` (:func:`lenscore.runs.on_device`)."""
    config = replace(lensrim.PRESETS[preset], batch_size=train_batch, **flags)
    torch.manual_seed(0)
    model = on_device(lensrim.RIM(config), device)
    opt = torch.optim.Adamax(model.parameters(), lr=1e-4)
    train = _batch(train_batch, device, config.pixels)
    infer = _batch(infer_batch, device, config.pixels)

    def step():
        loss, _ = batch_loss(model, train)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def predict():
        with torch.no_grad():
            model(infer["observation"], lensrim.LensingPhysics(infer["psf"], infer["noise_sigma"]))

    return model, step, predict


def _rounds(fn, device: torch.device, repeats: int) -> tuple[float, list[float]]:
    """The first call's seconds (warm-up: allocation, autotuning, compilation), then ``repeats``
    calls each timed directly."""
    t0 = time.perf_counter()
    fn()
    _sync(device)
    first = time.perf_counter() - t0
    rounds = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        rounds.append(time.perf_counter() - t0)
    return first, rounds


def bench(preset: str, device: torch.device, train_batch: int, infer_batch: int, repeats: int, **flags) -> str:
    model, step, predict = _model_and_steps(preset, device, train_batch, infer_batch, **flags)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times, spread = {}, {}
    for name, fn in (("train", step), ("infer", predict)):
        _, rounds = _rounds(fn, device, repeats)
        times[name] = statistics.median(rounds)  # each round timed directly; the median of them
        spread[name] = _spread(rounds)
    if device.type == "cuda":
        peak = f"peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB"
    else:
        peak = f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB"
    n_params = sum(p.numel() for p in model.parameters())
    extra = "".join(f" {k}={v}" for k, v in flags.items())
    return (
        f"{preset:5s} ({n_params / 1e6:.1f}M){extra} on {_device_name(device)}, median of {repeats}: training "
        f"{1 / times['train']:.2f} steps/s (batch {train_batch}; a step {spread['train']}), inference "
        f"{infer_batch / times['infer']:.1f} lenses/s (batch {infer_batch}; a batch {spread['infer']}), {peak}"
    )


def bench_compiled(preset: str, device: torch.device, train_batch: int, infer_batch: int, repeats: int, **flags) -> str:
    """The U-net through ``torch.compile`` (inductor, default mode) against eager, same run, same
    seed: training steps per second and inference lenses per second, each a median of ``repeats``
    directly timed calls, and the first call's seconds (compilation included). Not a lensrim
    option yet: this row is the measurement that would decide it (issue 24 §1)."""
    rates, first = {}, {}
    for way in ("eager", "compiled"):
        model, step, predict = _model_and_steps(preset, device, train_batch, infer_batch, **flags)
        if way == "compiled":
            model.unet.compile()  # in place: the same parameters and state_dict keys
        for name, fn in (("train", step), ("infer", predict)):
            first[way, name], rounds = _rounds(fn, device, repeats)
            rates[way, name] = (1 if name == "train" else infer_batch) / statistics.median(rounds)
    extra = "".join(f" {k}={v}" for k, v in flags.items())
    return (
        f"{preset}{extra} on {_device_name(device)}, torch.compile'd U-net against eager, median of {repeats}: "
        f"training {rates['compiled', 'train']:.2f} against {rates['eager', 'train']:.2f} steps/s "
        f"(batch {train_batch}, x{rates['compiled', 'train'] / rates['eager', 'train']:.2f}; first step "
        f"{first['compiled', 'train']:.0f} s against {first['eager', 'train']:.1f} s), inference "
        f"{rates['compiled', 'infer']:.1f} against {rates['eager', 'infer']:.1f} lenses/s (batch {infer_batch}, "
        f"x{rates['compiled', 'infer'] / rates['eager', 'infer']:.2f}; first call {first['compiled', 'infer']:.0f} s)"
    )


def bench_cpu_training(pixels: int = 64, repeats: int = 5) -> str:
    """The demo's RIM training step on the CPU (``small`` at ``pixels``), against the previous
    default in the same run: float32 on NCHW weights (before), float32 on channels-last weights
    (what :func:`lensrim.train_rim` now does on a CPU), and bfloat16 autocast on channels-last at
    batch 4 and 8 (``bf16``; float32 where the CPU has no native bfloat16), and the same U-net
    capped at 64 channels (docs/rim_ab.md, seventh study). Lenses per second, each a median over
    ``repeats`` directly timed steps, with the ratio to the first row."""
    from lensrim.model import native_bf16_cpu

    small = lensrim.PRESETS["small"].max_filters
    arms = (
        ("float32, NCHW (before)", 4, False, torch.contiguous_format, small),
        ("float32, channels-last", 4, False, torch.channels_last, small),
        ("bf16, channels-last", 4, True, torch.channels_last, small),
        ("bf16, channels-last", 8, True, torch.channels_last, small),
        ("bf16, channels-last, at most 64 channels", 8, True, torch.channels_last, 64),
    )
    rows, reference = [], None
    for name, batch, bf16, layout, channels in arms:
        config = replace(lensrim.PRESETS["small"], pixels=pixels, batch_size=batch, bf16=bf16, max_filters=channels)
        torch.manual_seed(0)
        model = lensrim.RIM(config).to(memory_format=layout)
        opt = torch.optim.Adamax(model.parameters(), lr=1e-4)
        obs = lenssim.ObservationConfig.at_resolution(pixels)
        b = lenssim.simulate_sie_lenses(batch, config=obs, generator=torch.Generator().manual_seed(0))
        train = {k: getattr(b, k) for k in lenssim.LENS_FIELDS}

        def step(model=model, opt=opt, train=train):
            loss, _ = batch_loss(model, train)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        step()
        rounds = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            step()
            rounds.append(time.perf_counter() - t0)
        rate = batch / statistics.median(rounds)
        reference = reference or rate
        rows.append(f"{name} batch {batch}: {rate:.2f} lenses/s (a step {_spread(rounds)}; x{rate / reference:.2f})")
    native = "native bfloat16" if native_bf16_cpu() else "no native bfloat16: bf16 rows are float32"
    return (
        f"training small {pixels}^2 on {_device_name(torch.device('cpu'))} ({native}), median of {repeats}: "
        + "; ".join(rows)
    )


TABLE_3_DRAWS, TABLE_3_STEPS = 200, 2000
"""Table 3's fine-tuning budget per lens, to which the measured times are extrapolated."""


def _spread(values: list[float]) -> str:
    return f"{1e3 * min(values):.0f}-{1e3 * max(values):.0f} ms"


def finetune_times(
    preset: str,
    device: torch.device,
    lenses: int,
    steps: int,
    rounds: int = 3,
    pixels: int | None = None,
    bf16: bool = False,
) -> dict[str, dict[str, list[float]]]:
    """Fine-tuning times measured directly, each phase on its own clock: for ``lenses`` lenses
    together (one weight copy each, vmap) and for the same lenses one at a time, in each of
    ``rounds`` rounds, the seconds of the Fisher phase (16 draws per lens, from the call to the
    first RMSProp step) and of every RMSProp step (between successive step ends; no early stop).
    Returns ``{"together"|"one at a time": {"fisher": [...], "step": [...]}}``, one value per
    round (the median over that round's steps, and per lens one at a time). ``bf16``: the RIM's
    U-net in bfloat16 (``RIMConfig.bf16``), which fine-tuning follows."""
    from lensprior import kappa_vae, source_vae
    from lensrim.finetune import FineTuneConfig, finetune

    if steps < 1 or rounds < 1 or lenses < 1:
        raise ValueError(f"need at least one lens, step and round, got {lenses}, {steps}, {rounds}")
    config = replace(lensrim.PRESETS[preset], bf16=bf16)
    config = config if pixels is None else replace(config, pixels=pixels)
    n = config.pixels
    torch.manual_seed(0)
    model = lensrim.RIM(config).to(device).eval()
    vae_kw = dict(pixels=n, levels=3, filters=8, latent_dim=16)
    svae, kvae = source_vae(**vae_kw).to(device).eval(), kappa_vae(**vae_kw).to(device).eval()
    obs = lenssim.ObservationConfig(image_pixels=n, source_pixels=n)
    b = lenssim.simulate_sie_lenses(lenses, config=obs, generator=torch.Generator().manual_seed(0))
    y, psf, sigma = b.observation.to(device), b.psf.to(device), b.noise_sigma.to(device)
    cfg = FineTuneConfig(fisher_samples=16, max_steps=steps, target_chi2_nu=0.0, fisher_chunk=8)

    def run(sl: slice) -> tuple[float, list[float]]:
        ends: list[float] = []

        def progress(stage: str, done: int, total: int) -> None:
            if stage == "optimise":  # done 0: the Fisher phase is over; done k: step k is
                _sync(device)
                ends.append(time.perf_counter())

        gens = [torch.Generator().manual_seed(i) for i in range(sl.start, sl.stop)]
        _sync(device)
        t0 = time.perf_counter()
        finetune(
            model, svae, kvae, y[sl], model.config.physics(psf[sl], sigma[sl]), cfg, generators=gens, progress=progress
        )
        return ends[0] - t0, [b - a for a, b in zip(ends, ends[1:], strict=False)]

    run(slice(0, 1))  # warm-up
    out = {"together": {"fisher": [], "step": []}, "one at a time": {"fisher": [], "step": []}}
    for _ in range(rounds):
        fisher, step_times = run(slice(0, lenses))
        out["together"]["fisher"].append(fisher)
        out["together"]["step"].append(statistics.median(step_times))
        alone = [run(slice(i, i + 1)) for i in range(lenses)]
        out["one at a time"]["fisher"].append(sum(f for f, _ in alone))
        out["one at a time"]["step"].append(sum(statistics.median(t) for _, t in alone))
    for way, times in out.items():
        for phase, values in times.items():
            if not all(v > 0 for v in values):
                raise RuntimeError(f"fine-tuning {way}: a {phase} time of {min(values)} s is not positive: no rate")
    return out


def bench_finetune(
    preset: str,
    device: torch.device,
    lenses: int,
    steps: int,
    pixels: int | None = None,
    rounds: int = 3,
    bf16: bool = False,
) -> str:
    """Fine-tuning throughput, :func:`finetune_times` extrapolated to Table 3's budget (200 Fisher
    draws and 2000 steps per lens): lenses per hour together and one at a time, with the medians
    over rounds of the time per Fisher draw and per step, per lens, and their spread."""
    times = finetune_times(preset, device, lenses, steps, rounds=rounds, pixels=pixels, bf16=bf16)
    rows, rates = [], {}
    for way, t in times.items():
        draw = statistics.median(t["fisher"]) / lenses / 16  # per lens and draw
        step = statistics.median(t["step"]) / lenses  # per lens
        rates[way] = 3600 / (TABLE_3_DRAWS * draw + TABLE_3_STEPS * step)
        per_draw = [f / lenses / 16 for f in t["fisher"]]
        per_step = [s / lenses for s in t["step"]]
        rows.append(
            f"{way}: {rates[way]:.2f} lenses/h; per lens, Fisher draw {1e3 * draw:.1f} ms ({_spread(per_draw)}), "
            f"step {1e3 * step:.1f} ms ({_spread(per_step)})"
        )
    n = pixels or lensrim.PRESETS[preset].pixels
    ratio = rates["together"] / rates["one at a time"]
    return (
        f"fine-tuning {preset} {n}^2{_precision(bf16, device)} on {_device_name(device)}, {lenses} lenses, "
        f"{steps} steps, median of {rounds} rounds (spread min-max), extrapolated to Table 3's "
        f"{TABLE_3_DRAWS} draws and {TABLE_3_STEPS} steps: " + "; ".join(rows) + f"; together x{ratio:.2f}"
    )


def _precision(bf16: bool, device: torch.device) -> str:
    from lensrim.model import bf16_enabled

    if not bf16:
        return ""
    computes = bf16_enabled(replace(lensrim.PRESETS["tiny"], bf16=True), torch.empty(0, device=device))
    return " bf16" if computes else " bf16 (float32 here: no native bfloat16)"


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({torch.get_num_threads()} threads)"


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
    ap.add_argument("--compile", action="store_true", help="also time a torch.compile'd U-net (minutes to compile)")
    args = ap.parse_args()
    cuda = f", CUDA {torch.version.cuda} on {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    print(
        f"lensrim {lensrim.__version__}, torch {torch.__version__}{cuda}, {torch.get_num_threads()} CPU threads; "
        "T = 8, 128^2"
    )
    print(bench("small", torch.device("cpu"), 4, 8, args.repeats), flush=True)
    print(bench_cpu_training(64, max(args.repeats, 5)), flush=True)
    print(bench_on_the_fly("small", torch.device("cpu"), 4, 20, pixels=64), flush=True)
    print(bench_finetune("small", torch.device("cpu"), 4, 3, pixels=64), flush=True)
    print(bench_finetune("small", torch.device("cpu"), 4, 3, pixels=64, bf16=True), flush=True)
    if args.compile:
        print(bench_compiled("small", torch.device("cpu"), 8, 8, args.repeats, pixels=64, bf16=True), flush=True)
    if torch.cuda.is_available():
        gpu = torch.device("cuda")
        print(bench("small", gpu, 16, 64, args.repeats), flush=True)
        print(bench_on_the_fly("small", gpu, 16, 50), flush=True)
        print(bench("paper", gpu, 1, 8, args.repeats), flush=True)
        print(bench("paper", gpu, 1, 8, args.repeats, activation_checkpointing=True, bf16=True), flush=True)
        if args.compile:
            print(bench_compiled("small", gpu, 16, 64, args.repeats), flush=True)
            print(bench_compiled("paper", gpu, 1, 8, args.repeats), flush=True)
        print(bench_finetune("small", gpu, 16, 5), flush=True)
        print(bench_finetune("small", gpu, 16, 5, bf16=True), flush=True)
        print(bench_finetune("paper", gpu, 2, 3, rounds=2), flush=True)
        print(bench_finetune("paper", gpu, 2, 3, rounds=2, bf16=True), flush=True)
    else:
        print("paper preset: GPU only (no CUDA device here)")


if __name__ == "__main__":
    main()
