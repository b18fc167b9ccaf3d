"""`lens`: the command-line entry point. Commands parse options and hand off to the libraries."""

from __future__ import annotations

import time
from pathlib import Path

import click

from lens_cli import __version__
from lens_cli.common import (
    device_option,
    one_line_errors,
    progress_bar,
    refuse_distributed,
    resolve_device,
    seed_option,
    warnings_as_lines,
)
from lenscore.cpu import choose_threads, idle_cores  # noqa: F401  (idle_cores: the CLI's name for it)
from lensrim.demo import PRESETS  # torch-free: the demo imports torch when it runs


@click.group(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.version_option(__version__, prog_name="lens")
@click.pass_context
def cli(ctx: click.Context) -> None:
    """lens: pixelated reconstruction of strong gravitational lenses with a Recurrent Inference Machine.

    Simulate lenses, train priors and the RIM, reconstruct and fine-tune. Every command that
    computes takes --seed and --device (evaluate only reads a reconstruction); `lens COMMAND --help`
    documents its options.
    """
    refuse_distributed(ctx, allowed=("train",))  # `train` refuses all but `rim` itself
    ctx.with_resource(warnings_as_lines())  # for the whole command, restored when it ends


@cli.command(short_help="The whole pipeline, small, on built-in data (a CPU is enough).")
@click.option(
    "-o", "--output", required=True, type=click.Path(file_okay=False, path_type=Path), help="Output directory."
)
@click.option(
    "--preset",
    type=click.Choice(sorted(PRESETS)),
    default="standard",
    help="standard: about 15 minutes on 2 CPU cores with native bfloat16, 20-29 without (64^2 maps); "
    "quick: a smoke run of under a minute (32^2).",
)
@click.option(
    "--threads",
    type=click.IntRange(1),
    help="CPU threads for torch (default: one per core that other jobs leave idle, measured at the first "
    "call and kept on re-runs; at most twice the usable cores). Two threads competing with another job ran 10-20 "
    "times slower than one.",
)
@seed_option
@device_option
@one_line_errors
def demo(output: Path, preset: str, threads: int | None, seed: int, device: str) -> None:
    """The whole pipeline at small scale on built-in data: no download, a CPU is enough.

    Synthetic halos -> KDE kappa maps (plus SIE maps), GalSim synthetic sources, the two VAEs,
    simulated lenses, a RIM trained on them, held-out lenses reconstructed, fine-tuned with EWC
    and evaluated against plain Adam on the same likelihood. Writes OUTPUT/report/index.html
    (figures, metrics.json, the verdict). Running it again resumes where it stopped.
    """
    dev = resolve_device(device)
    import torch

    if output.exists() and not output.is_dir():
        raise click.BadParameter(f"{output} exists and is not a directory", param_hint="--output")
    threads, measured = choose_threads(threads, output / "threads.txt")  # a re-run keeps its first count
    if measured and threads < torch.get_num_threads():
        click.echo(f"other jobs keep cores busy: {threads} torch thread(s) (--threads sets them)")
    torch.set_num_threads(threads)  # changes the rounding, which training's normalised steps grow (RIMConfig.bf16)
    from lensrim.demo import DemoError, run_demo

    t0 = time.perf_counter()
    try:
        result = run_demo(output, PRESETS[preset], seed=seed, device=dev, say=click.echo, progress_bar=progress_bar)
    except DemoError as e:
        raise click.BadParameter(str(e), param_hint="--output") from None
    for line in result["verdict"].values():
        click.echo(f"- {line}")
    click.echo(f"report: {output / 'report' / 'index.html'} ({time.perf_counter() - t0:.0f} s)")


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
