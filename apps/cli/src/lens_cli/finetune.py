"""`lens finetune` (EWC fine-tuning of the RIM on each observation) and `lens evaluate`."""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import click
import numpy as np

from lens_cli.common import (
    FiniteFloat,
    check_geometry,
    device_option,
    duration,
    first_line,
    leaves_nothing_on_failure,
    one_line_errors,
    other_resolution,
    progress_bar,
    refuse_overwriting_inputs,
    resolve_device,
    say,
    seed_option,
)
from lensrim.config import FineTuneConfig  # torch-free

if TYPE_CHECKING:
    import lenssim

FITS_SUFFIXES = (".fits", ".fit", ".fts", ".fits.gz")
TABLE_3 = FineTuneConfig()
"""The options' defaults: the library's (Table 3)."""


def _is_fits(path: Path) -> bool:
    return path.name.lower().endswith(FITS_SUFFIXES)


def load_observations(
    path: Path, *, pixels: int, image_fov: float, source_fov: float, fits_options: dict
) -> tuple[lenssim.Observation, dict]:
    """The observations to fine-tune, on the model's grid, and the attributes of the output: a
    lens dataset (truth kept when present; it must be on the grid already) or one FITS
    observation (resampled onto it)."""
    import lenssim

    if _is_fits(path):
        obs = lenssim.Observation.from_fits(path, **fits_options).on_grid(pixels, image_fov)
        attrs = {
            "image_fov": image_fov,
            "source_fov": source_fov,
            "z_lens": lenssim.Z_LENS,
            "z_source": lenssim.Z_SOURCE,
            "fits": {
                "path": str(path),
                "flux_scale": obs.flux_scale,
                "pixel_scale": obs.origin["pixel_scale"],
                "resampled": obs.origin["resampled"],
            },
        }
        return obs, attrs
    if any(v is not None for v in fits_options.values()):
        raise click.UsageError("--pixel-scale, --psf-fwhm, --noise-sigma and --flux-scale apply to FITS input only")
    info = lenssim.io.dataset_info(path)
    n = info["fields"].get("observation", (0, 0, 0, pixels))[-1]
    if n != pixels:
        raise click.BadParameter(other_resolution(str(path), n, pixels), param_hint="--data")
    attrs = lenssim.read_dataset(path, [], required_attrs=lenssim.io.datasets.LENS_ATTRS)["attrs"]
    attrs.pop("manifest", None)
    return lenssim.Observation.from_dataset(path), attrs


def finetune_to_file(
    model,
    svae,
    kvae,
    obs: lenssim.Observation,
    output: Path,
    cfg,
    *,
    attrs: dict,
    batch_size: int,
    seed: int,
    device,
    inputs: tuple = (),
) -> Path:
    """``lensrim.api.finetune_to_file`` with a progress bar (in logs too, with the fine-tuning
    phases) and a one-time cost estimate."""
    import lensrim

    n = len(obs)
    batches = -(-n // batch_size)
    clock: dict = {}  # the first batch's phase times, for the cost estimate
    with progress_bar(total=n, desc="fine-tuning", unit="lens") as bar:

        def phase(first, last, name, done, total):
            # shown in logs too, while the lens count stands still (common.progress_bar's bars)
            bar.set_postfix_str(f"lenses {first}-{last}: {name} {done}/{total}", refresh=False)
            now = time.perf_counter()
            clock.setdefault(name, now)
            if name == "optimise" and done == min(3, total) and "said" not in clock:
                clock["said"] = True
                fisher = clock["optimise"] - clock["fisher"]
                per_step = (now - clock["optimise"]) / done
                per_batch = fisher + per_step * total
                say(
                    f"fine-tuning cost here: Fisher {duration(fisher)} ({cfg.fisher_samples} draws per lens), "
                    f"{per_step:.3g} s per step; up to {cfg.max_steps} steps make about {duration(per_batch)} per "
                    f"batch of {min(batch_size, n)}, {duration(per_batch * batches)} for all {batches} batches (an "
                    f"early stop at chi2_nu <= {cfg.target_chi2_nu:g} ends a batch sooner; --max-steps and "
                    "--fisher-samples set fewer)"
                )

        return lensrim.api.finetune_to_file(
            model.to(device),
            lensrim.FineTune(svae.to(device), kvae.to(device), cfg, seed),
            obs,
            output,
            attrs=attrs,
            batch_size=batch_size,
            inputs=inputs,
            progress=bar.update,
            phase=phase,
        )


@click.command("finetune", short_help="EWC fine-tuning of the RIM on each observation (HDF5 or FITS).")
@click.option("--rim", "rim_dir", required=True, type=click.Path(file_okay=False, path_type=Path), help="RIM run.")
@click.option("--source-vae", required=True, type=click.Path(file_okay=False, path_type=Path), help="Source VAE run.")
@click.option("--kappa-vae", required=True, type=click.Path(file_okay=False, path_type=Path), help="Kappa VAE run.")
@click.option(
    "--data", "data_path", required=True, type=click.Path(path_type=Path), help="Lens dataset (HDF5) or obs.fits."
)
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Output reconstruction (HDF5).",
)
@click.option(
    "--lambda",
    "ewc_lambda",
    default=TABLE_3.ewc_lambda,
    show_default=True,
    type=FiniteFloat(0),
    help="EWC strength: penalty (lambda/2) sum F (phi - phi*)^2 beside the mean chi2_nu (Table 3's units).",
)
@click.option(
    "--fisher-samples",
    default=TABLE_3.fisher_samples,
    show_default=True,
    type=click.IntRange(1),
    help="VAE draws per lens.",
)
@click.option(
    "--latent-sigma", default=TABLE_3.latent_sigma, show_default=True, type=FiniteFloat(0), help="Latent draw width."
)
@click.option(
    "--learning-rate",
    default=TABLE_3.learning_rate,
    show_default=True,
    type=FiniteFloat(0, min_open=True),
    help="RMSProp learning rate (Keras' rho 0.9, epsilon 1e-7).",
)
@click.option(
    "--max-steps", default=TABLE_3.max_steps, show_default=True, type=click.IntRange(0), help="RMSProp steps at most."
)
@click.option(
    "--target-chi2", default=TABLE_3.target_chi2_nu, show_default=True, type=FiniteFloat(0), help="Early stop chi2_nu."
)
@click.option("--batch-size", default=8, show_default=True, type=click.IntRange(1), help="Lenses fine-tuned together.")
@click.option(
    "--fisher-chunk",
    default=TABLE_3.fisher_chunk,
    show_default=True,
    type=click.IntRange(1),
    help="Draws per Fisher pass.",
)
@click.option(
    "--fisher-chi2/--no-fisher-chi2",
    default=TABLE_3.fisher_chi2,
    show_default=True,
    help="Include the mean chi2_nu in the Fisher's per-draw loss (eq. A5) or eq. 7 alone.",
)
@click.option("--limit", type=click.IntRange(1), help="Only the first N lenses of the dataset.")
@click.option("--image-fov", type=FiniteFloat(0, min_open=True), help="FITS: model field (default: the RIM's).")
@click.option("--pixel-scale", type=FiniteFloat(0, min_open=True), help="FITS: arcsec per pixel (else header).")
@click.option("--psf-fwhm", type=FiniteFloat(0, min_open=True), help="FITS: Gaussian PSF FWHM, arcsec.")
@click.option("--noise-sigma", type=FiniteFloat(0, min_open=True), help="FITS: noise sigma, image units.")
@click.option("--flux-scale", type=FiniteFloat(0, min_open=True), help="FITS: divide by this (default: peak).")
@seed_option
@device_option
@one_line_errors
@leaves_nothing_on_failure()
def finetune(
    rim_dir, source_vae, kappa_vae, data_path, output, ewc_lambda, fisher_samples, latent_sigma, learning_rate,
    max_steps, target_chi2, batch_size, fisher_chunk, fisher_chi2, limit, image_fov, pixel_scale, psf_fwhm,
    noise_sigma, flux_scale, seed, device,
) -> None:  # fmt: skip
    """Fine-tune the RIM on each observation with an EWC prior (paper section 2.5, Table 3).

    Writes the baseline and fine-tuned source and kappa, chi2_nu before and after, and the steps
    taken, for every lens of --data (a lens dataset or one FITS observation; for FITS also a
    FITS file beside the output). Lenses are fine-tuned --batch-size at a time, each with its
    own weights; a run that is stopped resumes from its last finished batch.
    """

    import lensprior
    import lensrim
    import lenssim

    dev = resolve_device(device)
    if not data_path.exists():
        raise click.BadParameter(f"{data_path}: no such file", param_hint="--data")
    outputs = {"--output": output}
    if _is_fits(data_path):
        outputs["--output (its FITS copy)"] = output.with_suffix(".fits")
    inputs = {"--data": data_path, "--rim": rim_dir, "--source-vae": source_vae, "--kappa-vae": kappa_vae}
    refuse_overwriting_inputs(outputs, inputs)
    model = lensrim.load(rim_dir, device=dev)
    meta, geometry = model.meta, {"image_fov": model.config.image_fov, "source_fov": model.config.source_fov}
    svae, smeta = lensprior.load_vae(source_vae, device=dev)
    kvae, kmeta = lensprior.load_vae(kappa_vae, device=dev)
    if image_fov is not None and abs(image_fov - geometry["image_fov"]) > 1e-6:
        raise click.BadParameter(
            f"{image_fov:g} differs from the field the RIM was trained at, {geometry['image_fov']:g} arcsec",
            param_hint="--image-fov",
        )
    ifov, sfov = geometry["image_fov"], geometry["source_fov"]
    fits_options = {
        "pixel_scale": pixel_scale,
        "psf_fwhm": psf_fwhm,
        "noise_sigma": noise_sigma,
        "flux_scale": flux_scale,
    }
    obs, attrs = load_observations(
        data_path, pixels=model.config.pixels, image_fov=ifov, source_fov=sfov, fits_options=fits_options
    )
    if not _is_fits(data_path):  # FITS input is put onto the RIM's grid; a dataset must already be on it
        check_geometry(str(data_path), attrs, geometry)
    for vae_meta, option, key in ((smeta, "--source-vae", "source_fov"), (kmeta, "--kappa-vae", "image_fov")):
        trained_on = vae_meta.get("data_attrs", {})
        if key in trained_on and abs(float(trained_on[key]) - geometry[key]) > 1e-6:
            raise click.BadParameter(
                f"the VAE was trained on maps of {key} {trained_on[key]:g}, the RIM on {geometry[key]:g} arcsec",
                param_hint=option,
            )
    n = len(obs) if limit is None else min(limit, len(obs))
    from lenscore.runs import check_memory

    # each lens of a batch has its own weights (with gradients, RMSProp state, anchor and Fisher)
    # and runs fisher_chunk draws at a time
    check_memory(
        model.config,
        lensrim.RIM,
        f"--batch-size {batch_size} with --fisher-chunk {fisher_chunk}",
        batch=min(batch_size, n) * min(fisher_chunk, fisher_samples),
        factor=5 * min(batch_size, n),
    )
    cfg = lensrim.FineTuneConfig(
        ewc_lambda=ewc_lambda,
        fisher_samples=fisher_samples,
        latent_sigma=latent_sigma,
        learning_rate=learning_rate,
        max_steps=max_steps,
        target_chi2_nu=target_chi2,
        fisher_chunk=fisher_chunk,
        fisher_chi2=fisher_chi2,
    )
    ifov, sfov = float(attrs["image_fov"]), float(attrs["source_fov"])
    provenance = {
        "rim": str(rim_dir),
        "rim_step": meta.get("step"),
        "source_vae": str(source_vae),
        "source_vae_step": smeta.get("step"),
        "kappa_vae": str(kappa_vae),
        "kappa_vae_step": kmeta.get("step"),
        "data": str(data_path),
        "limit": limit,
        "finetune": asdict(cfg),
    }
    out_attrs = {k: attrs[k] for k in ("image_fov", "source_fov", "z_lens", "z_source")}
    out_attrs.update(kind="reconstruction", config=provenance)
    if "fits" in attrs:
        out_attrs["fits"] = attrs["fits"]

    runs = (rim_dir, source_vae, kappa_vae)
    finetune_to_file(
        model,
        svae,
        kvae,
        obs[:n],
        output,
        cfg,
        attrs=out_attrs,
        batch_size=batch_size,
        seed=seed,
        device=dev,
        inputs=(data_path, *(Path(r) / "checkpoint.pt" for r in runs)),
    )
    rec = lenssim.read_dataset(output, ["chi2_nu", "chi2_nu_baseline", "finetune_steps"])
    click.echo(
        f"wrote {output}: {n} lenses, chi2_nu median {np.median(rec['chi2_nu_baseline'].numpy()):.3g} (baseline) -> "
        f"{np.median(rec['chi2_nu'].numpy()):.3g} (fine-tuned), median steps {int(rec['finetune_steps'].median())}"
    )
    if "fits" in attrs:
        _write_fits(output)


def _write_fits(output: Path) -> None:
    import lensrim

    path = lensrim.Reconstruction.from_hdf5(output).to_fits(output.with_suffix(".fits"))
    click.echo(f"wrote {path} (observation, model, residual, source, kappa; image units as the input)")


@click.command("evaluate", short_help="Metrics, figures and a summary page of a reconstruction.")
@click.argument("recon", type=click.Path(dir_okay=False, path_type=Path))
@click.option("-o", "--output", required=True, type=click.Path(file_okay=False, path_type=Path), help="Report dir.")
@one_line_errors
@leaves_nothing_on_failure()
def evaluate(recon: Path, output: Path) -> None:
    """Metrics and figures of a reconstruction (from `lens reconstruct` or `lens finetune`).

    Writes OUTPUT/metrics.json (chi2_nu before and after fine-tuning; with the truth, the log10
    loss moments of Table 4 and the phase-aware coherence of source and kappa), the figures
    (lenses.png, chi2_histogram.png, chi2_vs_snr.png, coherence.png) and OUTPUT/index.html.
    """
    from lensrim.report import read_reconstruction, write_report

    if output.exists() and not output.is_dir():
        raise click.BadParameter(f"{output} exists and is not a directory", param_hint="--output")
    data = read_reconstruction(recon)
    try:
        metrics = write_report(data, output, title=f"Evaluation of {recon.name}")
    except OSError as e:
        why = e.strerror or first_line(e)
        raise OSError(f"{output}: the report could not be written ({why})") from None
    c = metrics["chi2_nu"]
    line = f"wrote {output}: {metrics['lenses']} lenses, chi2_nu median {c['final']['median']:.3g}"
    if "baseline" in c:
        line += f" (baseline {c['baseline']['median']:.3g})"
    if "log10_loss" in metrics:
        line += (
            f", log10 loss {metrics['log10_loss']['final']['mu']:.2f} +- {metrics['log10_loss']['final']['sigma']:.2f}"
        )
    click.echo(line)
