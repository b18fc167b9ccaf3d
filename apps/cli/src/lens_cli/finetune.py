"""`lens finetune` (EWC fine-tuning of the RIM on each observation) and `lens evaluate`."""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path

import click
import numpy as np

from lens_cli.common import (
    FITS_OPTIONS,
    BarOnFirstUse,
    FiniteFloat,
    config_option,
    device_option,
    duration,
    first_line,
    fits_copy,
    fits_options,
    leaves_nothing_on_failure,
    observation_files,
    observations_option,
    one_line_errors,
    refuse_overwriting_inputs,
    resolve_device,
    say,
    seed_option,
)
from lensrim.config import FineTuneConfig  # torch-free


def _with_progress(rim, finetune, obs, output: Path, *, batch_size: int, **options) -> Path:
    """``lensrim.api.finetune_to_file`` with a progress bar (in logs too, with the fine-tuning
    phases) and a one-time cost estimate from the first batch's phases."""
    import lensrim

    n, cfg = len(obs), finetune.config
    batches = -(-n // batch_size)
    clock: dict = {}
    with BarOnFirstUse(total=n, desc="fine-tuning", unit="lens") as bar:

        def phase(first, last, name, done, total):
            bar.set_postfix_str(f"lenses {first}-{last}: {name} {done}/{total}", refresh=False)
            now = time.perf_counter()
            clock.setdefault(name, now)
            if name == "optimise" and done == min(3, total) and "said" not in clock:
                clock["said"] = True
                fisher, per_step = clock["optimise"] - clock["fisher"], (now - clock["optimise"]) / done
                per_batch = fisher + per_step * total
                say(
                    f"fine-tuning cost here: Fisher {duration(fisher)} ({cfg.fisher_samples} draws per lens), "
                    f"{per_step:.3g} s per step; up to {cfg.max_steps} steps make about {duration(per_batch)} per "
                    f"batch of {min(batch_size, n)}, {duration(per_batch * batches)} for all {batches} batches (an "
                    f"early stop at chi2_nu <= {cfg.target_chi2_nu:g} ends a batch sooner; --max-steps and "
                    "--fisher-samples set fewer)"
                )

        return lensrim.api.finetune_to_file(
            rim, finetune, obs, output, batch_size=batch_size, progress=bar.update, phase=phase, **options
        )


@click.command("finetune", short_help="EWC fine-tuning of the RIM on each observation (HDF5 or FITS).")
@click.option("--rim", "rim_dir", required=True, type=click.Path(file_okay=False, path_type=Path), help="RIM run.")
@click.option("--source-vae", required=True, type=click.Path(file_okay=False, path_type=Path), help="Source VAE run.")
@click.option("--kappa-vae", required=True, type=click.Path(file_okay=False, path_type=Path), help="Kappa VAE run.")
@observations_option
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Output reconstruction (HDF5).",
)
@config_option(FineTuneConfig, "ewc_lambda", "--lambda", "ewc_lambda", type=FiniteFloat(0))
@config_option(FineTuneConfig, "fisher_samples", type=click.IntRange(1))
@config_option(FineTuneConfig, "latent_sigma", type=FiniteFloat(0))
@config_option(FineTuneConfig, "learning_rate", type=FiniteFloat(0, min_open=True))
@config_option(FineTuneConfig, "max_steps", type=click.IntRange(0))
@config_option(FineTuneConfig, "target_chi2_nu", "--target-chi2", "target_chi2", type=FiniteFloat(0))
@click.option(
    "--batch-size",
    default=8,
    type=click.IntRange(1),
    help="Lenses fine-tuned together: the block_size of the resumable blocks on disk.",
)
@config_option(FineTuneConfig, "fisher_chunk", type=click.IntRange(1))
@config_option(FineTuneConfig, "fisher_chi2", "--fisher-chi2/--no-fisher-chi2")
@click.option("--limit", type=click.IntRange(1), help="Only the first N lenses of the dataset.")
@fits_options
@seed_option
@device_option
@one_line_errors
@leaves_nothing_on_failure()
def finetune(
    rim_dir, source_vae, kappa_vae, data, output, batch_size, limit, image_fov, seed, device, **settings
) -> None:
    """Fine-tune the RIM on each observation with an EWC prior (paper section 2.5, Table 3).

    Writes the baseline and fine-tuned source and kappa, chi2_nu before and after, and the steps
    taken, for every lens of --data (a lens dataset, one FITS observation or a CSV catalogue of
    them; for FITS also a FITS file per lens beside the output). Lenses are fine-tuned
    --batch-size at a time, each with its own weights; a run that is stopped resumes from its last
    finished batch.
    """
    import lensprior
    import lensrim
    import lenssim
    from lenscore.runs import check_memory

    dev = resolve_device(device)
    if not data.exists():
        raise click.BadParameter(f"{data}: no such file", param_hint="--data")
    runs = {"--rim": rim_dir, "--source-vae": source_vae, "--kappa-vae": kappa_vae}
    fits_input = {k: settings.pop(k) for k in FITS_OPTIONS}
    outputs, observed = observation_files(data, output, fits_input)
    refuse_overwriting_inputs(outputs, {**observed, **runs})
    model = lensrim.load(rim_dir, device=dev)
    (svae, smeta), (kvae, kmeta) = (lensprior.load_vae(run, device=dev) for run in (source_vae, kappa_vae))
    lensrim.api.check_priors(model, svae, kvae, smeta, kmeta)
    obs, attrs = lensrim.api.load_observations(data, model, image_fov=image_fov, **fits_input)
    n = len(obs) if limit is None else min(limit, len(obs))
    cfg = lensrim.FineTuneConfig(target_chi2_nu=settings.pop("target_chi2"), **settings)
    # each lens of a batch has its own weights (with gradients, RMSProp state, anchor and Fisher)
    # and runs fisher_chunk draws at a time
    draws = min(batch_size, n) * min(cfg.fisher_chunk, cfg.fisher_samples)
    what = f"--batch-size {batch_size} with --fisher-chunk {cfg.fisher_chunk}"
    check_memory(model.config, lensrim.RIM, what, batch=draws, factor=5 * min(batch_size, n))
    steps = {"rim_step": model.meta, "source_vae_step": smeta, "kappa_vae_step": kmeta}
    provenance = {"rim": str(rim_dir), "source_vae": str(source_vae), "kappa_vae": str(kappa_vae)}
    provenance.update({k.lstrip("-"): str(v) for k, v in observed.items()})
    provenance.update({k: m.get("step") for k, m in steps.items()}, limit=limit, finetune=asdict(cfg))
    inputs = (*observed.values(), *(Path(r) / "checkpoint.pt" for r in runs.values()))
    out_attrs = lensrim.api.output_attrs(attrs, provenance)
    task = lensrim.FineTune(svae, kvae, cfg, seed)
    _with_progress(model, task, obs[:n], output, batch_size=batch_size, attrs=out_attrs, inputs=inputs)
    rec = lenssim.read_dataset(output, ["chi2_nu", "chi2_nu_baseline", "finetune_steps"])
    click.echo(
        f"wrote {output}: {n} lenses, chi2_nu median {np.median(rec['chi2_nu_baseline'].numpy()):.3g} (baseline) -> "
        f"{np.median(rec['chi2_nu'].numpy()):.3g} (fine-tuned), median steps {int(rec['finetune_steps'].median())}"
    )
    if lensrim.api.is_fits(data) or lenssim.io.is_catalogue(data):
        fits_copy(output)


@click.command("evaluate", short_help="Metrics, figures and a summary page of a reconstruction.")
@click.argument("recon", type=click.Path(dir_okay=False, path_type=Path))
@click.option("-o", "--output", required=True, type=click.Path(file_okay=False, path_type=Path), help="Report dir.")
@one_line_errors
@leaves_nothing_on_failure()
def evaluate(recon: Path, output: Path) -> None:
    """Metrics and figures of a reconstruction (from `lens reconstruct` or `lens finetune`).

    Writes OUTPUT/metrics.json (chi2_nu before and after fine-tuning, and of the residual summed in
    4x4-pixel blocks: about 1 when it is noise, above chi2_nu when it is structure; with the truth, the log10
    loss moments of Table 4 and the phase-aware coherence of source and kappa), the figures
    (lenses.png, chi2_histogram.png, chi2_vs_snr.png, chi2_by_block.png, coherence.png) and OUTPUT/index.html.
    """
    from lensrim.report import read_reconstruction, write_report

    if output.exists() and not output.is_dir():
        raise click.BadParameter(f"{output} exists and is not a directory", param_hint="--output")
    rec = read_reconstruction(recon)
    try:
        metrics = write_report(rec, output, title=f"Evaluation of {recon.name}")
    except OSError as e:
        why = e.strerror or first_line(e)
        raise OSError(f"{output}: the report could not be written ({why})") from None
    c = metrics["chi2_nu"]
    line = f"wrote {output}: {metrics['lenses']} lenses, chi2_nu median {c['final']['median']:.3g}"
    if "baseline" in c:
        line += f" (baseline {c['baseline']['median']:.3g})"
    blocks = metrics["chi2_nu_binned"]
    line += f", in {blocks['block_pixels']}x{blocks['block_pixels']} blocks {blocks['final']['median']:.3g} (1: noise)"
    if "log10_loss" in metrics:
        line += (
            f", log10 loss {metrics['log10_loss']['final']['mu']:.2f} +- {metrics['log10_loss']['final']['sigma']:.2f}"
        )
    click.echo(line)
