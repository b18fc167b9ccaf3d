"""`lens train rim` and `lens reconstruct`: the RIM on datasets, one GPU or many (torchrun)."""

from __future__ import annotations

import math
import os
from pathlib import Path

import click

from lens_cli.common import (
    CostEstimate,
    FiniteFloat,
    check_geometry,
    device_option,
    leaves_nothing_on_failure,
    one_line_errors,
    other_resolution,
    progress_bar,
    refuse_overwriting_inputs,
    resolve_device,
    run_dir_option,
    seed_option,
)
from lens_cli.priors import train
from lensrim.config import (
    PRESETS as RIM_PRESETS,  # torch-free
    TIME_WEIGHTS,
)


def _distributed(device: str):
    """Initialise torch.distributed when launched by torchrun; return (device, rank, world)."""
    import torch
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return resolve_device(device), 0, 1
    local = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device)
    if dev.type == "cuda":
        dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return dev, dist.get_rank(), world


@train.command("rim")
@click.option("--data", "data_path", type=click.Path(path_type=Path), help="Lens dataset (file or shard directory).")
@click.option("--kappa", "kappa_in", help="On the fly: kappa dataset, or 'sie' (instead of --data).")
@click.option("--sources", "sources_in", help="On the fly: source dataset, or 'sersic' (with --kappa).")
@click.option(
    "--kappa-vae", type=click.Path(file_okay=False, path_type=Path), help="Draw kappa maps from this VAE run."
)
@click.option("--source-vae", type=click.Path(file_okay=False, path_type=Path), help="Draw sources from this VAE run.")
@click.option(
    "--vae-fraction",
    default=0.5,
    show_default=True,
    type=FiniteFloat(0, 1),
    help="With --data and VAEs: the share of each batch simulated from VAE draws.",
)
@run_dir_option
@click.option(
    "--preset",
    default="small",
    show_default=True,
    type=click.Choice(sorted(RIM_PRESETS)),
    help="paper: Table 7 (348.5M parameters, a large GPU); small: 3.5M, CPU.",
)
@click.option(
    "--steps",
    type=click.IntRange(1),
    help="Training steps (default: the preset's: paper 610,000 as in Table 7; small 2,000, about 1.5 h at "
    "128^2 on 2 CPU cores; tiny 500). The cost at this machine's speed is printed after the first steps.",
)
@click.option("--batch-size", type=click.IntRange(1), help="Global minibatch (all processes together).")
@click.option("--learning-rate", type=FiniteFloat(0, min_open=True), help="Initial Adamax learning rate.")
@click.option(
    "--validation",
    "val_path",
    type=click.Path(path_type=Path),
    help="Validation lenses from the training distribution (default: held out from --data, or simulated).",
)
@click.option(
    "--external",
    "ext_path",
    type=click.Path(path_type=Path),
    help="A second, external validation set (e.g. another simulator's lenses), logged as ext_*.",
)
@click.option(
    "--validation-size",
    default=32,
    show_default=True,
    type=click.IntRange(1, 10_000),
    help="Lenses in each validation set (held out from --data: at most 10 % of it).",
)
@click.option(
    "--workers",
    default=0,
    show_default=True,
    type=click.IntRange(0, 256),
    help="DataLoader worker processes reading --data ahead of the training step.",
)
@click.option(
    "--initial-log10-kappa",
    default="auto",
    show_default=True,
    help="Constant added to the first estimate's log10 kappa; 'auto': the constant predictor's on 64 "
    "training lenses (an untrained RIM then starts at the trivial guess, not at kappa = 1).",
)
@click.option(
    "--init",
    type=click.Choice(["torch", "glorot"]),
    help="Initial weights: PyTorch's defaults or Glorot-uniform with zero biases (default: the preset's).",
)
@click.option(
    "--gradient-preprocessing",
    type=click.Choice(["adam", "rmsprop", "raw"]),
    help="What the network sees of the likelihood gradient: adam (the paper's text), rmsprop (the authors' "
    "published model, with --beta2 0.9) or raw (default: the preset's).",
)
@click.option(
    "--beta2",
    type=FiniteFloat(0, 1, min_open=True, max_open=True),
    help="Decay of the gradient's second moment (default: the preset's).",
)
@click.option(
    "--time-weights",
    type=click.Choice(list(TIME_WEIGHTS)),
    help="Weights of the T estimates in the loss: proportional to 1, t or t^2, or the final estimate alone "
    "(default: the preset's).",
)
@click.option(
    "--clipping",
    type=click.Choice(["global", "per_tensor"]),
    help="Clip the gradient's global norm, or each weight tensor's (the original code's) (default: the preset's).",
)
@click.option(
    "--step-gains/--no-step-gains",
    default=None,
    help="Learn a gain per RIM update and channel (not in the paper; default: the preset's).",
)
@click.option(
    "--fit-weight",
    type=FiniteFloat(0),
    help="Weight of the data-fit term max(0, ln chi2_nu) in the loss (not in the paper; default: the preset's).",
)
@click.option(
    "--checkpointing", is_flag=True, help="Activation checkpointing per time step (less memory, more compute)."
)
@click.option("--bf16", is_flag=True, help="bfloat16 autocast on GPU.")
@click.option(
    "--staircase",
    is_flag=True,
    help="Decay the learning rate in whole steps (x rate every decay period, as the original code did) "
    "instead of continuously.",
)
@click.option(
    "--second-stage",
    is_flag=True,
    help="Continue a run with Table 7's second stage (Adamax from 6e-5, x0.9 per 100k steps; "
    "--steps more steps, default 870k).",
)
@click.option(
    "--checkpoint-every", default=200, show_default=True, type=click.IntRange(1), help="Steps between checkpoints."
)
@click.option(
    "--log-every",
    default=20,
    show_default=True,
    type=click.IntRange(1),
    help="Steps between log lines (metrics.jsonl, TensorBoard, validation against the constant predictor).",
)
@seed_option
@device_option
@one_line_errors
@leaves_nothing_on_failure()
def train_rim(
    data_path, kappa_in, sources_in, kappa_vae, source_vae, vae_fraction, output, preset, steps, batch_size,
    learning_rate, val_path, ext_path, validation_size, workers, initial_log10_kappa, init, gradient_preprocessing,
    beta2, time_weights, clipping, step_gains, fit_weight, checkpointing, bf16,
    staircase, second_stage,
    checkpoint_every, log_every, seed, device,
) -> None:  # fmt: skip
    """Train the RIM from a lens dataset, on the fly, or both.

    The loss is eq. 7, the optimiser Adamax with the schedules of Table 7.

    On the fly, each batch is simulated from --kappa (a dataset or 'sie') or --kappa-vae, and
    --sources (a dataset or 'sersic') or --source-vae; with --data and VAEs, --vae-fraction of
    each batch comes from VAE draws (the paper's VAE-enlarged training set).

    Every --log-every steps, metrics.jsonl and TensorBoard event files in the run directory
    (`tensorboard --logdir runs/`) get the loss (and its source and kappa terms, and its value
    at each RIM step), the median chi2_nu and, on the validation lenses, the same beside the
    constant predictor's (source 0, best constant log10 kappa).

    Multi-GPU and multi-node: launch with torchrun, e.g. `torchrun --nproc-per-node 4 $(which
    lens) train rim --data train/ --preset paper --device cuda -o run`; the global batch is split
    across the processes. Stop at any time; the same command resumes.
    """
    from dataclasses import replace

    import lensprior
    import lensrim
    import lenssim
    from lenscore.runs import read_metrics
    from lensrim.training import DatasetBatches, SimulatedBatches

    dev, rank, world = _distributed(device)
    use_vae = kappa_vae is not None or source_vae is not None
    if data_path is None and kappa_in is None and not use_vae:
        raise click.UsageError(
            "give --data, or --kappa/--kappa-vae with --sources/--source-vae for on-the-fly training"
        )
    if data_path is not None and kappa_in is not None:
        raise click.UsageError("give --data or --kappa/--sources, not both")
    if kappa_in is not None and kappa_vae is not None or sources_in is not None and source_vae is not None:
        raise click.UsageError("--kappa and --kappa-vae (or --sources and --source-vae) exclude each other")
    config = lensrim.PRESETS[preset]
    overrides = {"activation_checkpointing": checkpointing, "bf16": bf16}
    if steps is not None and not second_stage:
        overrides["train_steps"] = steps
    if batch_size is not None:
        overrides["batch_size"] = batch_size
    if learning_rate is not None:
        overrides["learning_rate"] = learning_rate
    if init is not None:
        overrides["init"] = init
    chosen = {
        "gradient_preprocessing": gradient_preprocessing,
        "beta2": beta2,
        "time_weights": time_weights,
        "clipping": clipping,
        "step_gains": step_gains,
        "fit_weight": fit_weight,
    }
    overrides.update({k: v for k, v in chosen.items() if v is not None})
    if staircase:
        overrides["staircase"] = True
    config = replace(config, **overrides)
    stored = output / "config.json"
    if stored.is_file() and not second_stage:
        # resuming: keep the run's own schedule (a second stage stays a second stage)
        try:
            existing = lensrim.RIMConfig.from_json(stored.read_text())
        except (ValueError, TypeError) as e:
            why = str(e) if "RIM configuration" in str(e) else f"not a RIM configuration ({e})"
            raise click.BadParameter(f"{stored}: {why}", param_hint="--output") from None
        # resuming: the run's own schedule and training options, unless given again
        kept = (*lensrim.RIMConfig.OPTIMISATION_FIELDS, *chosen)
        keep = {k: getattr(existing, k) for k in kept if k not in overrides}
        config = replace(config, **keep)
    if second_stage:
        done = lensrim.training.checkpoint_step(output)
        if done is None:
            raise click.BadParameter(f"{output} has no checkpoint to continue", param_hint="--second-stage")
        config = config.second_stage(done, steps or 870_000)
    obs = lenssim.ObservationConfig(image_pixels=config.pixels, source_pixels=config.pixels)

    def kappa_sampler():
        if kappa_vae is not None:
            return lensrim.vae_sampler(lensprior.load_vae(kappa_vae, device=dev)[0], dev)
        if kappa_in in (None, "sie"):
            return lenssim.sie_kappa_sampler(config=obs, device=dev)
        return lenssim.h5_pool_sampler(
            Path(kappa_in), "kappa", expected_pixels=config.pixels, device=dev, in_memory=None
        )[0]

    def source_sampler():
        if source_vae is not None:
            return lensrim.vae_sampler(lensprior.load_vae(source_vae, device=dev)[0], dev)
        if sources_in in (None, "sersic"):
            return lenssim.sersic_source_sampler(config=obs, device=dev)
        return lenssim.h5_pool_sampler(
            Path(sources_in), "source", expected_pixels=config.pixels, device=dev, in_memory=None
        )[0]

    source = {"kappa": kappa_in, "sources": sources_in, "kappa_vae": kappa_vae, "source_vae": source_vae}
    source = {k: str(v) for k, v in source.items() if v is not None}
    n = config.pixels
    if data_path is not None:
        holdout = 0 if val_path is not None else None  # held out only when no validation set is given
        batches = DatasetBatches(data_path, holdout=holdout, max_holdout=validation_size, workers=workers)
        n = batches.dataset[0]["observation"].shape[-1]
        source["data"] = str(data_path)
        if use_vae:
            simulated = SimulatedBatches(kappa_sampler(), source_sampler(), obs, device=dev)
            batches = lensrim.MixedBatches(batches, simulated, vae_fraction)
            source["vae_fraction"] = vae_fraction
    else:
        batches = SimulatedBatches(kappa_sampler(), source_sampler(), obs, device=dev)
    if n != config.pixels:
        raise click.BadParameter(f"the data's maps are {n} pixels wide, the {preset} preset needs {config.pixels}")
    train_attrs = getattr(batches, "attrs", {}) or {}

    def lenses(path, option):
        d = lenssim.LensBatch.from_hdf5(path, rows=slice(0, validation_size))
        if d.observation.shape[-1] != config.pixels:
            raise click.BadParameter(
                f"{path}: maps are {d.observation.shape[-1]} pixels wide, the RIM needs {n}", param_hint=option
            )
        for key in ("image_fov", "source_fov"):
            if key in train_attrs and abs(float(d.attrs[key]) - float(train_attrs[key])) > 1e-6:
                raise click.BadParameter(
                    f"{path}: {key} {d.attrs[key]} differs from the training lenses' {train_attrs[key]}",
                    param_hint=option,
                )
        return d

    validation = None if val_path is None else lenses(val_path, "--validation")
    external = None if ext_path is None else lenses(ext_path, "--external")
    if stored.is_file() and initial_log10_kappa == "auto":
        offset = lensrim.RIMConfig.from_json(stored.read_text()).initial_log10_kappa  # a resumed run keeps its own
    elif initial_log10_kappa == "auto":
        offset = lensrim.training.constant_log10_kappa(batches, seed)
    else:
        try:
            offset = float(initial_log10_kappa)
        except ValueError:
            raise click.BadParameter(
                f"{initial_log10_kappa!r} is neither a number nor 'auto'", param_hint="--initial-log10-kappa"
            ) from None
        if not math.isfinite(offset):
            raise click.BadParameter("must be finite", param_hint="--initial-log10-kappa")
    fovs = {k: float(train_attrs[k]) for k in ("image_fov", "source_fov") if k in train_attrs}
    config = replace(config, initial_log10_kappa=offset, **fovs)  # the RIM keeps its data's geometry
    meta = {**source, **fovs, "preset": preset, "world_size": world}
    start = lensrim.training.checkpoint_step(output) or 0
    if rank == 0 and start < config.train_steps:
        default = " (the preset's; --steps sets fewer)" if steps is None and not second_stage else ""
        click.echo(f"training to step {config.train_steps:,}{default}, from step {start:,}", err=True)
    estimate = CostEstimate(config.train_steps, "step", "--steps sets fewer; on a GPU: --device cuda")
    bar = progress_bar(total=config.train_steps, initial=start, desc="training RIM", unit="step", enabled=rank == 0)
    with bar:

        def progress(done, terms):
            estimate(done)
            if "loss" in terms:  # a log step: the median chi2_nu over the steps since the last one
                post = {"loss": f"{terms['loss']:.3g}", "chi2_nu(median)": f"{terms['chi2_nu_window']:.3g}"}
                if "val_log10_loss" in terms:
                    post["val log10"] = f"{terms['val_log10_loss']:.2f} (const {terms['val_constant_log10_loss']:.2f})"
                bar.set_postfix(post, refresh=False)
            bar.update(done - bar.n)

        lensrim.train_rim(
            config,
            batches,
            output,
            seed=seed,
            device=dev,
            checkpoint_every=checkpoint_every,
            log_every=log_every,
            validation=validation,
            validation_size=validation_size,
            external=external,
            metadata=meta,
            progress=progress,
        )
    if rank == 0:
        last = read_metrics(output / "metrics.jsonl")[-1]
        line = f"trained {output} to step {config.train_steps}: loss {last['loss']:.4g}"
        for prefix, name in (("val_", "validation"), ("ext_", "external")):
            if prefix + "log10_loss" in last:
                gap = last[prefix + "constant_log10_loss"] - last[prefix + "log10_loss"]
                side = "better" if gap > 0 else "worse"
                line += (
                    f"; {name} mean log10 loss {last[prefix + 'log10_loss']:.3f} against the constant predictor's "
                    f"{last[prefix + 'constant_log10_loss']:.3f} ({abs(gap):.3f} dex {side})"
                )
        click.echo(line)


@click.command("reconstruct", short_help="Baseline RIM predictions for every lens of a dataset.")
@click.option(
    "--rim", "run_dir", required=True, type=click.Path(file_okay=False, path_type=Path), help="A RIM run directory."
)
@click.option(
    "--data", "data_path", required=True, type=click.Path(path_type=Path), help="Lens dataset to reconstruct."
)
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Output HDF5 (the inputs plus source_pred, kappa_pred, chi2_nu).",
)
@click.option(
    "--batch-size", default=8, show_default=True, type=click.IntRange(1), help="Lenses reconstructed at a time."
)
@seed_option
@device_option
@one_line_errors
def reconstruct(run_dir, data_path, output, batch_size, seed, device) -> None:
    """Baseline RIM predictions (no fine-tuning) for every lens of a dataset."""
    import numpy as np

    import lensrim
    import lenssim

    refuse_overwriting_inputs({"--output": output}, {"--data": data_path, "--rim": run_dir})
    dev = resolve_device(device)
    from lenscore.runs import check_memory

    model = lensrim.load(run_dir, device=dev)
    check_memory(model.config, lensrim.RIM, f"--batch-size {batch_size}", batch=batch_size)
    info = lenssim.io.dataset_info(data_path)
    lenssim.read_dataset(data_path, [], required_attrs=lenssim.io.datasets.LENS_ATTRS)  # what the output keeps
    first = lenssim.Observation.from_dataset(data_path, rows=slice(0, 1))  # validates the file's layout
    if first.pixels != model.config.pixels:
        raise click.BadParameter(
            other_resolution(str(data_path), first.pixels, model.config.pixels), param_hint="--data"
        )
    check_geometry(str(data_path), info["attrs"], vars(model.config))
    total = info["fields"]["observation"][0]
    for name in lenssim.LENS_FIELDS:  # every value, in chunks, before the first block
        if name in info["fields"]:
            lenssim.io.check_dataset_values(data_path, name)

    def make_block(k: int, count: int, _seedseq) -> dict:  # blocks on disk: memory stays flat
        rows = slice(k * batch_size, k * batch_size + count)
        obs = lenssim.Observation.from_dataset(data_path, rows=rows)
        return lensrim.reconstruct(model, obs, batch_size=batch_size).arrays()

    out_attrs = {k: info["attrs"][k] for k in ("image_fov", "source_fov", "z_lens", "z_source")}
    out_attrs.update(
        kind="reconstruction", config={"rim": str(run_dir), "step": model.meta.get("step"), "data": str(data_path)}
    )
    with progress_bar(total=total, desc="reconstructing", unit="lens") as bar:
        lenssim.write_in_blocks(
            output,
            total,
            make_block,
            attrs=out_attrs,
            seed=seed,
            block_size=batch_size,
            progress=bar.update,
            inputs=(data_path, Path(run_dir) / "checkpoint.pt"),
        )
    c = lenssim.read_dataset(output, ["chi2_nu"])["chi2_nu"].numpy()
    click.echo(f"wrote {output}: {total} lenses, chi2_nu median {np.median(c):.3g} (baseline RIM)")
