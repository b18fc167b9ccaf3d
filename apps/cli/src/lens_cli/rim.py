"""`lens train rim` and `lens reconstruct`: the RIM on datasets, one GPU or many (torchrun)."""

from __future__ import annotations

import functools
from pathlib import Path

import click

from lens_cli.common import (
    BarOnFirstUse,
    CostEstimate,
    FiniteFloat,
    config_option,
    device_option,
    fits_copy,
    fits_options,
    leaves_nothing_on_failure,
    observation_files,
    observations_option,
    one_line_errors,
    progress_bar,
    refuse_overwriting_inputs,
    resolve_device,
    run_dir_option,
    seed_option,
)
from lens_cli.priors import train
from lensrim.config import PRESETS as RIM_PRESETS, TIME_WEIGHTS, RIMConfig  # torch-free

PRESET = {"default": None, "note": "default: the preset's"}
"""An option whose default is the preset's value."""

KEPT = {"default": None, "note": "default: the preset's, or a resumed run's"}
"""An option whose default is the preset's value, or the value a resumed run has trained with."""


@train.command("rim")
@click.option("--data", type=click.Path(path_type=Path), help="Lens dataset (file or shard directory).")
@click.option("--kappa", help="On the fly: kappa dataset, or 'sie' (instead of --data).")
@click.option("--sources", help="On the fly: source dataset, or 'sersic' (with --kappa).")
@click.option(
    "--kappa-vae", type=click.Path(file_okay=False, path_type=Path), help="Draw kappa maps from this VAE run."
)
@click.option("--source-vae", type=click.Path(file_okay=False, path_type=Path), help="Draw sources from this VAE run.")
@click.option(
    "--vae-fraction",
    default=0.5,
    type=FiniteFloat(0, 1),
    help="With --data and VAEs: the share of each batch simulated from VAE draws.",
)
@run_dir_option
@click.option(
    "--preset",
    type=click.Choice(sorted(RIM_PRESETS)),
    help="paper: Table 7 (348.5M parameters, a large GPU); small: 3.5M, CPU (default: small, or a resumed run's).",
)
@click.option(
    "--steps",
    type=click.IntRange(1),
    help="Training steps (default: the preset's: paper 610,000 as in Table 7; small 2,000, about 1.5 h at "
    "128^2 on 2 CPU cores; tiny 500). The cost at this machine's speed is printed after the first steps.",
)
@config_option(RIMConfig, "batch_size", type=click.IntRange(1), **KEPT)
@config_option(RIMConfig, "learning_rate", type=FiniteFloat(0, min_open=True), **KEPT)
@click.option(
    "--validation",
    type=click.Path(path_type=Path),
    help="Validation lenses from the training distribution (default: held out from --data, or simulated).",
)
@click.option(
    "--external",
    type=click.Path(path_type=Path),
    help="A second, external validation set (e.g. another simulator's lenses), logged as ext_*.",
)
@click.option(
    "--validation-size",
    default=32,
    type=click.IntRange(1, 10_000),
    help="Lenses in each validation set (held out from --data: at most 10 % of it).",
)
@click.option(
    "--workers",
    default=0,
    type=click.IntRange(0, 256),
    help="DataLoader worker processes reading --data ahead of the training step.",
)
@click.option(
    "--initial-log10-kappa",
    default="auto",
    help="Constant added to the first estimate's log10 kappa; 'auto': the constant predictor's on 64 "
    "training lenses (an untrained RIM then starts at the trivial guess, not at kappa = 1).",
)
@config_option(RIMConfig, "init", type=click.Choice(["torch", "glorot"]), **PRESET)
@config_option(RIMConfig, "gradient_preprocessing", type=click.Choice(["adam", "rmsprop", "raw"]), **KEPT)
@config_option(RIMConfig, "beta2", type=FiniteFloat(0, 1, min_open=True, max_open=True), **KEPT)
@config_option(RIMConfig, "time_weights", type=click.Choice(list(TIME_WEIGHTS)), **KEPT)
@config_option(RIMConfig, "clipping", type=click.Choice(["global", "per_tensor"]), **KEPT)
@config_option(RIMConfig, "step_gains", "--step-gains/--no-step-gains", **KEPT)
@config_option(RIMConfig, "gradient_skip", type=FiniteFloat(0, 1), **KEPT)
@config_option(RIMConfig, "skip_normalisation", type=click.Choice(["pixel", "map"]), **KEPT)
@config_option(RIMConfig, "fit_weight", type=FiniteFloat(0), **KEPT)
@config_option(RIMConfig, "fit_kappa", type=FiniteFloat(0, 1), **KEPT)
@config_option(RIMConfig, "residual_input", "--residual-input/--no-residual-input", **KEPT)
@click.option(
    "--checkpointing/--no-checkpointing",
    "activation_checkpointing",
    default=None,
    help="Activation checkpointing per time step (less memory, more compute). Default: off, or a resumed run's.",
)
@click.option(
    "--bf16/--no-bf16",
    default=None,
    help="bfloat16 autocast of the network: on a GPU, or a CPU with native bfloat16 (AMX, AVX-512 BF16). "
    "Default: off, or a resumed run's.",
)
@config_option(RIMConfig, "staircase", is_flag=True)
@click.option(
    "--second-stage",
    is_flag=True,
    help="Continue a run with Table 7's second stage (Adamax from 6e-5, x0.9 per 100k steps; "
    "--steps steps from the stage's start, default 870k). Run again, it resumes the stage it began.",
)
@click.option("--checkpoint-every", default=200, type=click.IntRange(1), help="Steps between checkpoints.")
@click.option(
    "--log-every",
    default=20,
    type=click.IntRange(1),
    help="Steps between log lines (metrics.jsonl, TensorBoard, validation against the constant predictor).",
)
@seed_option
@device_option
@one_line_errors
@leaves_nothing_on_failure()
def train_rim(output, device, **options) -> None:
    """Train the RIM from a lens dataset, on the fly, or both.

    The loss is eq. 7, the optimiser Adamax with the schedules of Table 7.

    On the fly, each batch is simulated from --kappa (a dataset or 'sie') or --kappa-vae, and
    --sources (a dataset or 'sersic') or --source-vae; with --data and VAEs, --vae-fraction of
    each batch comes from VAE draws (the paper's VAE-enlarged training set).

    Every --log-every steps, metrics.jsonl and TensorBoard event files in the run directory
    (`tensorboard --logdir runs/`) get the loss (and its source and kappa terms, and its value
    at each RIM step), the median chi2_nu and, on the validation lenses, the same beside the
    constant predictor's (source 0, best constant log10 kappa).

    Multi-GPU and multi-node: launch with torchrun, e.g. `torchrun --standalone --nproc-per-node 4
    $(which lens) train rim --data train/ --preset paper --device cuda -o run` (several nodes:
    --nnodes and a c10d --rdzv-endpoint; the README has a SLURM script); the global batch is split
    across the processes, rank 0 writes the run. Stop at any time; the same command resumes.
    """
    import lensrim

    given = {k for k in ("data", "kappa", "sources", "kappa_vae", "source_vae") if options[k] is not None}
    if not given & {"data", "kappa", "kappa_vae", "source_vae"}:
        raise click.UsageError(
            "give --data, or --kappa/--kappa-vae with --sources/--source-vae for on-the-fly training"
        )
    if {"data", "kappa"} <= given:
        raise click.UsageError("give --data or --kappa/--sources, not both")
    if {"kappa", "kappa_vae"} <= given or {"sources", "source_vae"} <= given:
        raise click.UsageError("--kappa and --kappa-vae (or --sources and --source-vae) exclude each other")
    dev, rank, world = lensrim.launch.init_distributed(resolve_device(device))
    try:
        _train(output, options, dev, rank, world)
    finally:
        lensrim.launch.close_distributed()
    if lensrim.launch.launched_distributed():
        lensrim.launch.leave_distributed(0)  # done and written: no interpreter teardown to abort in


def _train(output: Path, options: dict, dev, rank: int, world: int) -> None:
    import torch.distributed as dist

    import lensrim

    run = {k: options.pop(k) for k in ("checkpoint_every", "log_every")}
    plan = lensrim.prepare_training(output, device=dev, world_size=world, **options)
    run.update(seed=options["seed"], validation_size=options["validation_size"], metadata=plan.metadata)
    total = plan.config.train_steps
    if rank == 0 and dist.is_initialized():
        click.echo(
            f"distributed: {world} process(es), {dist.get_backend()} backend, global batch "
            f"{plan.config.batch_size} ({plan.config.batch_size // world} per process)",
            err=True,
        )
    if rank == 0 and plan.start < total:
        default = (
            " (the preset's; --steps sets fewer)" if options["steps"] is None and not options["second_stage"] else ""
        )
        click.echo(f"training to step {total:,}{default}, from step {plan.start:,}", err=True)
    estimate = CostEstimate(total, "step", "--steps sets fewer; on a GPU: --device cuda")
    with progress_bar(total=total, initial=plan.start, desc="training RIM", unit="step", enabled=rank == 0) as bar:
        show = functools.partial(_show, bar, estimate)
        lensrim.train_rim(
            plan.config,
            plan.batches,
            output,
            device=dev,
            validation=plan.validation,
            external=plan.external,
            progress=show,
            **run,
        )
    if rank == 0:
        click.echo(lensrim.launch.summary(output, total))


def _show(bar, estimate: CostEstimate, done: int, terms: dict) -> None:
    """A training step on the bar: the loss and, on log steps, chi2_nu and the validation loss."""
    estimate(done)
    if "loss" in terms:  # a log step: the median chi2_nu over the steps since the last one
        post = {"loss": f"{terms['loss']:.3g}", "chi2_nu(median)": f"{terms['chi2_nu_window']:.3g}"}
        if "val_log10_loss" in terms:
            post["val log10"] = f"{terms['val_log10_loss']:.2f} (const {terms['val_constant_log10_loss']:.2f})"
        bar.set_postfix(post, refresh=False)
    bar.update(done - bar.n)


@click.command("reconstruct", short_help="Baseline RIM predictions for every lens of a dataset (HDF5 or FITS).")
@click.option(
    "--rim", "run_dir", required=True, type=click.Path(file_okay=False, path_type=Path), help="A RIM run directory."
)
@observations_option
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Output HDF5 (the inputs plus source_pred, kappa_pred, chi2_nu).",
)
@click.option(
    "--batch-size",
    default=8,
    type=click.IntRange(1),
    help="Lenses reconstructed at a time: the block_size of the resumable blocks on disk.",
)
@fits_options
@seed_option
@device_option
@one_line_errors
@leaves_nothing_on_failure()
def reconstruct(run_dir, data, output, batch_size, image_fov, seed, device, **fits_input) -> None:
    """Baseline RIM predictions (no fine-tuning) for every lens of --data: a lens dataset, read a
    block at a time, one FITS observation or a CSV catalogue of them (resampled onto the RIM's grid;
    a FITS copy of each lens's reconstruction is written beside the output, as `lens finetune`
    writes them)."""
    import numpy as np

    import lensrim
    import lenssim
    from lenscore.runs import check_memory

    fits = lensrim.api.is_fits(data) or lenssim.io.is_catalogue(data)  # a missing file: refused by the reader
    outputs, observed = observation_files(data, output, fits_input)
    refuse_overwriting_inputs(outputs, {**observed, "--rim": run_dir})
    model = lensrim.load(run_dir, device=resolve_device(device))
    check_memory(model.config, lensrim.RIM, f"--batch-size {batch_size}", batch=batch_size)
    source, attrs = lensrim.api.load_observations(data, model, image_fov=image_fov, stream=True, **fits_input)
    provenance = {"rim": str(run_dir), "step": model.meta.get("step")}
    provenance.update({k.lstrip("-"): str(v) for k, v in observed.items()})
    total = len(source) if fits else lenssim.io.dataset_info(data)["fields"]["observation"][0]
    with BarOnFirstUse(total=total, desc="reconstructing", unit="lens") as bar:
        out_attrs = lensrim.api.output_attrs(attrs, provenance)
        inputs = (*observed.values(), Path(run_dir) / "checkpoint.pt")
        lensrim.api.reconstruct_to_file(
            model, source, output, attrs=out_attrs, batch_size=batch_size, seed=seed, progress=bar.update, inputs=inputs
        )
    c = lenssim.read_dataset(output, ["chi2_nu"])["chi2_nu"].numpy()
    click.echo(f"wrote {output}: {total} lenses, chi2_nu median {np.median(c):.3g} (baseline RIM)")
    if fits:
        fits_copy(output)
