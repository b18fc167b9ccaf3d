"""`lens`: the command-line entry point. Commands parse options and hand off to the libraries."""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path

import click
import torch
from tqdm.auto import tqdm

import lenssim
from lens_cli import __version__
from lens_cli.common import atomic_path, device_option, one_line_errors, resolve_device, seed_option


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="lens")
def cli() -> None:
    """lens: pixelated reconstruction of strong gravitational lenses with a Recurrent Inference Machine.

    Simulate lenses, train priors and the RIM, reconstruct and fine-tune. Every command takes
    --seed and --device; `lens COMMAND --help` documents its options.
    """


def _demo_config(n_lenses: int) -> dict:
    return {
        "pipeline": "demo/sie-sersic",
        "n_lenses": n_lenses,
        "observation": asdict(lenssim.ObservationConfig()),
        "sie_prior": asdict(lenssim.SIEPrior()),
        "acceptance": asdict(lenssim.AcceptanceCriteria()),
    }


def _matches(path: Path, config: dict, seed: int) -> bool:
    """Whether ``path`` holds a finished dataset made with this configuration and seed."""
    try:
        data = lenssim.read_lens_dataset(path, fields=())
    except lenssim.DatasetError:
        return False
    attrs = data["attrs"]
    return attrs.get("seed") == seed and json.loads(attrs.get("config", "{}")) == json.loads(
        json.dumps(config, sort_keys=True)
    )


@cli.command()
@click.option(
    "-o", "--output", required=True, type=click.Path(file_okay=False, path_type=Path), help="Output directory."
)
@click.option("--n-lenses", default=16, show_default=True, type=click.IntRange(1, 100_000), help="Lenses to simulate.")
@seed_option
@device_option
@one_line_errors
def demo(output: Path, n_lenses: int, seed: int, device: str) -> None:
    """Run the main job on built-in data (no download, CPU is enough).

    For now: simulate N lenses from analytic SIE convergence maps (Table 2) and Sersic sources,
    with PSFs and noise drawn from Table 1 and the acceptance checks applied; write
    OUTPUT/lenses.h5, OUTPUT/lenses.png and OUTPUT/summary.json. Running it again with the same
    options reuses the finished dataset.
    """
    dev = resolve_device(device)
    if output.exists() and not output.is_dir():
        raise click.BadParameter(f"{output} exists and is not a directory", param_hint="--output")
    output.mkdir(parents=True, exist_ok=True)
    cfg = lenssim.ObservationConfig()
    config = _demo_config(n_lenses)
    lenses_path = output / "lenses.h5"
    if _matches(lenses_path, config, seed):
        click.echo(f"{lenses_path} is up to date; reusing it")
        stats = json.loads((output / "summary.json").read_text()) if (output / "summary.json").exists() else None
    else:
        generator = torch.Generator().manual_seed(seed)
        with tqdm(total=n_lenses, desc="simulating lenses", unit="lens", disable=None) as bar:
            batch = lenssim.simulate_sie_lenses(
                n_lenses, config=cfg, generator=generator, device=dev, batch_size=min(64, n_lenses), progress=bar.update
            )
        lenssim.write_lens_dataset(
            lenses_path,
            {k: getattr(batch, k) for k in lenssim.LENS_FIELDS},
            image_fov=cfg.image_fov,
            source_fov=cfg.source_fov,
            z_lens=cfg.z_lens,
            z_source=cfg.z_source,
            config=config,
            seed=seed,
        )
        stats = {"accepted": len(batch), "tried": batch.tried, "rejected_by": batch.rejected}
        stats["snr"] = {
            "min": float((1 / batch.noise_sigma).min()),
            "median": float((1 / batch.noise_sigma).median()),
            "max": float((1 / batch.noise_sigma).max()),
        }
        tmp = atomic_path(output / "summary.json")
        tmp.write_text(json.dumps(stats, indent=2) + "\n")
        os.replace(tmp, output / "summary.json")
    data = lenssim.read_lens_dataset(lenses_path)
    from lens_cli.figures import lens_panels

    figure = lens_panels(
        output / "lenses.png",
        {k: v.numpy() for k, v in data.items() if k != "attrs"},
        image_fov=cfg.image_fov,
        source_fov=cfg.source_fov,
    )
    click.echo(f"wrote {lenses_path} ({data['observation'].shape[0]} lenses) and {figure}")
    if stats:
        click.echo(f"acceptance: {stats['accepted']} of {stats['tried']} candidates; rejections {stats['rejected_by']}")


from lens_cli.finetune import evaluate, finetune  # noqa: E402
from lens_cli.priors import sample, train  # noqa: E402
from lens_cli.rim import reconstruct  # noqa: E402,F401  (registers `train rim`)
from lens_cli.simulate import simulate  # noqa: E402

cli.add_command(simulate)
cli.add_command(train)
cli.add_command(sample)
cli.add_command(reconstruct)
cli.add_command(finetune)
cli.add_command(evaluate)


if __name__ == "__main__":  # pragma: no cover
    cli()
