"""`lens train vae` and `lens sample`: the source and kappa priors."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import click

from lens_cli.common import (
    BarOnFirstUse,
    FiniteFloat,
    config_option,
    device_option,
    leaves_nothing_on_failure,
    one_line_errors,
    progress_bar,
    refuse_distributed,
    refuse_overwriting_inputs,
    resolve_device,
    run_dir_option,
    say,
    seed_option,
)
from lensprior.config import VAE_PRESETS, DenoiserConfig, VAEConfig, vae_config  # torch-free


@click.group()
@click.pass_context
def train(ctx: click.Context) -> None:
    """Train the priors (VAEs) and the RIM."""
    refuse_distributed(ctx, allowed=("rim",))


def _by_kind(field: str) -> dict:
    """An option whose default is the preset's, naming the paper's value for each kind (read from
    the configurations, not written here)."""
    source, kappa = (vae_config(kind, "paper") for kind in ("source", "kappa"))
    values = {getattr(source, field), getattr(kappa, field)}
    paper = (
        f"{getattr(source, field):g}"
        if len(values) == 1
        else (f"{getattr(source, field):g} for sources, {getattr(kappa, field):g} for kappa")
    )
    return {"default": None, "note": f"default: the preset's, or a resumed run's; paper: {paper}"}


def _kept(config: type, field: str) -> dict:
    """An option whose default is the configuration's, or the value a resumed run has trained with."""
    default = next(f.default for f in fields(config) if f.name == field)
    return {"default": None, "note": f"default: {default:g}, or a resumed run's"}


@train.command("vae")
@click.option("--kind", required=True, type=click.Choice(["source", "kappa"]), help="Which prior.")
@click.option("--data", required=True, type=click.Path(path_type=Path), help="Source or kappa HDF5 dataset.")
@run_dir_option
@click.option(
    "--preset",
    type=click.Choice(sorted(VAE_PRESETS)),
    help="paper: Tables 5/6; small: a quick CPU model (default: paper; a resumed run keeps its own preset and "
    "settings, those given again aside).",
)
@config_option(VAEConfig, "steps", type=click.IntRange(1), **_by_kind("steps"))
@config_option(VAEConfig, "batch_size", type=click.IntRange(1), **_by_kind("batch_size"))
@config_option(VAEConfig, "latent_dim", type=click.IntRange(1), **_by_kind("latent_dim"))
@config_option(VAEConfig, "filters", type=click.IntRange(1), **_by_kind("filters"))
@config_option(VAEConfig, "learning_rate", type=FiniteFloat(0, min_open=True), **_by_kind("learning_rate"))
@click.option(
    "--split",
    default="train",
    type=click.Choice(["train", "all"]),
    help="Examples to train on; the test split (if any) is the validation set.",
)
@click.option("--checkpoint-every", default=500, type=click.IntRange(1), help="Steps between checkpoints.")
@click.option("--log-every", default=50, type=click.IntRange(1), help="Steps between metrics.jsonl lines.")
@seed_option
@device_option
@one_line_errors
@leaves_nothing_on_failure()
def train_vae(kind, data, output, preset, split, checkpoint_every, log_every, seed, device, **sizes) -> None:
    """Train a source or kappa VAE (section 4.1); writes RUN_DIR/{config.json, checkpoint.pt,
    metrics.jsonl, samples.png}. Stop it at any time; the same command resumes it."""
    import torch

    import lensprior
    import lenssim
    from lens_cli.figures import samples_beside_data
    from lenscore.runs import read_metrics, resumed_config, run_metadata

    dev = resolve_device(device)
    config, ran = None, run_metadata(output).get("preset")
    if preset in (None, ran):  # a resume keeps the run's settings but those given (another preset: refused)
        config = resumed_config(output, lensprior.VAEConfig, {"kind": kind, **sizes})
    preset = (ran if config is not None else preset) or "paper"
    config = config or lensprior.vae_config(kind, preset, **sizes)
    start = lensprior.training.check_resumable(config, output, seed=seed)  # before the data are read
    train_maps = lensprior.load_field(data, kind, split=split, pixels=config.pixels)
    attrs = lenssim.io.map_attrs(data)  # fields of view and redshifts: finite, positive, in arcsec
    validation = None
    if lensprior.training.has_test_split(data, kind):  # a bad test split is an error, not a reason to skip
        # the file's maps were all checked above: read the first 64 of the test split alone
        validation = lensprior.load_field(data, kind, split="test", pixels=config.pixels, limit=64, check=False)
    else:
        say(f"note: {data} has no test split: no validation loss will be logged")
    meta = {"kind": kind, "data": str(data), "data_attrs": attrs, "n_train": int(train_maps.shape[0]), "preset": preset}
    run = {"checkpoint_every": checkpoint_every, "log_every": log_every, "validation": validation, "metadata": meta}
    with progress_bar(total=config.steps, initial=start, desc=f"training {kind} VAE", unit="step") as bar:

        def progress(done, terms):
            bar.set_postfix(loss=f"{terms['loss']:.3g}", refresh=False)
            bar.update(done - bar.n)

        model = lensprior.train_vae(config, train_maps, output, seed=seed, device=dev, progress=progress, **run)
    with torch.no_grad():
        samples = model.sample(6, generator=torch.Generator().manual_seed(seed)).cpu()
    fig = samples_beside_data(output / "samples.png", train_maps[:6], samples, log10=(kind == "kappa"))
    last = read_metrics(output / "metrics.jsonl")[-1]
    terms = f"loss {last['loss']:.4g} (reconstruction {last['reconstruction']:.4g}, KL {last['kl']:.3g})"
    if "val_loss" in last:
        terms += f", validation loss {last['val_loss']:.4g}"
    click.echo(f"trained {output} to step {config.steps}; last logged (step {last['step']}): {terms}; draws: {fig}")


@train.command("denoiser")
@click.option(
    "--data",
    "data_path",
    required=True,
    type=click.Path(path_type=Path),
    help="Clean sources (e.g. lens simulate sources --synthetic).",
)
@run_dir_option
@config_option(DenoiserConfig, "steps", type=click.IntRange(1), **_kept(DenoiserConfig, "steps"))
@config_option(DenoiserConfig, "noise_min", type=FiniteFloat(0, min_open=True), **_kept(DenoiserConfig, "noise_min"))
@config_option(DenoiserConfig, "noise_max", type=FiniteFloat(0, min_open=True), **_kept(DenoiserConfig, "noise_max"))
@config_option(DenoiserConfig, "highpass", type=FiniteFloat(0), **_kept(DenoiserConfig, "highpass"))
@click.option("--checkpoint-every", default=500, type=click.IntRange(1), help="Steps between checkpoints.")
@seed_option
@device_option
@one_line_errors
@leaves_nothing_on_failure()
def train_denoiser(data_path, output, steps, noise_min, noise_max, highpass, checkpoint_every, seed, device) -> None:
    """Train the COSMOS stamp denoiser on clean sources plus COSMOS-like correlated noise."""
    import lensprior
    from lenscore.runs import resumed_config

    dev = resolve_device(device)
    given = {"steps": steps, "noise_min": noise_min, "noise_max": noise_max, "highpass": highpass}
    config = resumed_config(output, lensprior.DenoiserConfig, given)  # a resume keeps the run's settings
    config = config or lensprior.DenoiserConfig(**{k: v for k, v in given.items() if v is not None})
    steps = config.steps
    start = lensprior.training.check_resumable(config, output, seed=seed)  # before the data are read
    clean = lensprior.load_field(data_path, "source", split="train")
    with progress_bar(total=steps, initial=start, desc="training denoiser", unit="step") as bar:

        def progress(done, terms):
            bar.set_postfix(error=f"{terms['error']:.3g}", refresh=False)
            bar.update(done - bar.n)

        lensprior.train_denoiser(
            config,
            clean,
            output,
            seed=seed,
            device=dev,
            checkpoint_every=checkpoint_every,
            metadata={"data": str(data_path)},
            progress=progress,
        )
    click.echo(f"trained {output} to step {steps}; use it with lens simulate sources --denoiser {output}")


@click.command("sample", short_help="Draw sources or kappa maps from a trained VAE.")
@click.option(
    "--vae", "run_dir", required=True, type=click.Path(file_okay=False, path_type=Path), help="A VAE run directory."
)
@click.option(
    "-n", "--n-samples", required=True, type=click.IntRange(1), help="Number of draws (written in blocks: resumable)."
)
@click.option(
    "-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path), help="Output HDF5 dataset."
)
@click.option(
    "--batch-size",
    default=64,
    type=click.IntRange(1, 65536),
    help="Draws decoded at a time, and per resumable block on disk.",
)
@seed_option
@device_option
@one_line_errors
@leaves_nothing_on_failure()
def sample(run_dir, n_samples, output, batch_size, seed, device) -> None:
    """Draw sources or kappa maps from a trained VAE into a dataset that `lens simulate lenses`
    accepts (--sources FILE or --kappa FILE; all draws are in the train split)."""
    import lensrim

    refuse_overwriting_inputs({"--output": output}, {"--vae": run_dir})
    dev = resolve_device(device)
    with BarOnFirstUse(total=n_samples, desc="sampling the VAE", unit="draw") as bar:
        options = {"batch_size": batch_size, "seed": seed, "device": dev, "progress": bar.update}
        _, meta = lensrim.training.write_vae_draws(run_dir, n_samples, output, **options)
    click.echo(f"wrote {output} ({n_samples} {meta['kind']} draws from {run_dir} at step {meta.get('step')})")
