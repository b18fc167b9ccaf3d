"""Option parsing shared by the commands: devices, seeds, atomic outputs, one-line errors."""

from __future__ import annotations

import contextlib
import functools
import math
import os
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from lenscore.config import SettingError, field_docs
from lenscore.files import refuse_overwriting, removed_on_failure
from lensrim.demo import duration  # torch-free, like everything the CLI imports at start-up

if TYPE_CHECKING:
    import torch
    from tqdm import tqdm

LOG_INTERVAL = 20.0
"""Seconds between progress lines when stderr is not a terminal (a log file, a batch job)."""


@functools.cache
def _bar_class() -> type:
    from tqdm.auto import tqdm

    class Bar(tqdm):
        """A postfix change shows once the bar's interval has passed, even while the count stands
        still (a library reports its phases through the postfix)."""

        def set_postfix(self, *args, refresh: bool = True, **kwargs) -> None:
            super().set_postfix(*args, refresh=False, **kwargs)
            refresh_when_due(self)

        def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
            super().set_postfix_str(s, refresh=False)
            refresh_when_due(self)

    return Bar


def progress_bar(*, enabled: bool = True, **kwargs) -> tqdm:
    """A tqdm bar that shows on a terminal and, every LOG_INTERVAL seconds, in logs too."""
    tty = sys.stderr.isatty()
    return _bar_class()(**kwargs, disable=not enabled, mininterval=0.1 if tty else LOG_INTERVAL)


class BarOnFirstUse:
    """A :func:`progress_bar` that opens at its first ``update`` or postfix, not when made.

    Libraries that write resumable files (``lenssim.write_in_blocks``) check the output first and
    report 0 once those checks pass, so a refused command prints its one-line error alone, with no
    empty bar above it."""

    def __init__(self, **kwargs) -> None:
        self._kwargs, self._bar = kwargs, None

    def _open(self) -> tqdm:
        if self._bar is None:
            self._bar = progress_bar(**self._kwargs)
        return self._bar

    def update(self, n: int = 1) -> None:
        self._open().update(n)

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        self._open().set_postfix_str(s, refresh=refresh)

    def __enter__(self) -> BarOnFirstUse:
        return self

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.close()


def refresh_when_due(bar: tqdm) -> None:
    """Redraw ``bar`` (after a postfix change without an update) once its interval has passed."""
    if not bar.disable and time.time() - bar.last_print_t >= bar.mininterval:
        bar.refresh()


def say(line: str) -> None:
    """A line on stderr that does not run into a progress bar's line (in logs, bars end without
    a newline)."""
    from tqdm.auto import tqdm

    tqdm.write(line, file=sys.stderr)


@contextlib.contextmanager
def warnings_as_lines() -> Iterator[None]:
    """Within it, each Python warning the libraries raise prints as one ``warning: ...`` line on
    stderr (above any progress bar; the category named unless it is a plain UserWarning), not as
    the file, line and source line of the code that raised it. The warning filters and display
    are restored on exit."""
    with warnings.catch_warnings():

        def show(message, category, filename, lineno, file=None, line=None) -> None:
            kind = "" if category is UserWarning else f" ({category.__name__})"
            say(f"warning{kind}: {message}")

        warnings.showwarning = show
        yield


class CostEstimate:
    """Print, once, what ``total`` units will take at the speed of the first few (the very
    first, which warms caches up, is left out): ``estimate(done)`` after each unit."""

    def __init__(self, total: int, what: str, hint: str = "", *, after: int = 3) -> None:
        self.total, self.what, self.hint, self.after = total, what, hint, after
        self.start: tuple[int, float] | None = None
        self.done = False

    def __call__(self, done: int) -> None:
        if self.done:
            return
        now = time.perf_counter()
        if self.start is None:
            self.start = (done, now)
            return
        first, t0 = self.start
        if done - first >= self.after or done >= self.total:
            self.done = True
            per = (now - t0) / max(done - first, 1)
            left = max(self.total - done, 0)
            if left:  # a job shorter than the sample has nothing left to estimate
                line = f"{per:.3g} s per {self.what} here: the {left} left take about {duration(per * left)}"
                say(line + (f" ({self.hint})" if self.hint else ""))


class FiniteFloat(click.FloatRange):
    """``click.FloatRange`` that also refuses NaN and infinity (which pass its bounds checks)."""

    name = "finite float"

    def convert(self, value, param, ctx):
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return number


class NoiseSigma(FiniteFloat):
    """A positive noise sigma, or ``auto``: measured from the sky on the model's grid (a noise-map
    HDU, where there is one, scaled to it)."""

    name = "sigma|auto"

    def __init__(self) -> None:
        super().__init__(0, min_open=True)

    def convert(self, value, param, ctx):
        if value == "auto":
            return value
        try:
            float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is neither a positive number nor 'auto'", param, ctx)
        return super().convert(value, param, ctx)


class PixelPair(click.ParamType):
    """``X,Y``: two finite numbers (1-based FITS pixel coordinates, as DS9 shows them)."""

    name = "x,y"

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        parts = str(value).split(",")
        try:
            pair = tuple(float(v) for v in parts)
        except ValueError:
            pair = ()
        if len(pair) != 2 or not all(math.isfinite(v) for v in pair):
            self.fail(f"{value!r} is not two finite numbers X,Y", param, ctx)
        return pair


def config_option(config: type, field: str, *decls: str, note: str = "", **kwargs) -> Callable:
    """A click option for ``field`` of the config dataclass ``config``: its help is the field's
    documentation (its unit and meaning, written once, in the config), its default the field's
    unless ``default`` is given (None: the preset's, which ``note`` says)."""
    doc = " ".join(field_docs(config)[field].replace("``", "").split())
    kwargs.setdefault("default", next(f.default for f in fields(config) if f.name == field))
    help_text = f"{doc} ({note})" if note else doc
    return click.option(*(decls or (f"--{field.replace('_', '-')}",)), help=help_text, **kwargs)


def resolve_device(name: str) -> torch.device:
    """A torch device from a user string, refused in one line when it cannot be used."""
    import torch  # here, not at the top: `lens --help` should not wait for torch

    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise click.BadParameter(f"{name!r} is not a device (try 'cpu' or 'cuda')", param_hint="--device") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise click.BadParameter("CUDA was asked for but no GPU is available", param_hint="--device")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise click.BadParameter(
                f"{name!r}: only {torch.cuda.device_count()} GPU(s) present", param_hint="--device"
            )
    elif device.type != "cpu":
        raise click.BadParameter(f"{name!r}: only 'cpu' and 'cuda' devices are supported", param_hint="--device")
    return device


def device_option(f: Callable) -> Callable:
    return click.option("--device", default="cpu", help="Torch device: cpu, cuda or cuda:N.")(f)


def run_dir_option(f: Callable) -> Callable:
    """``-o/--output``: a training run directory, resumed when it exists."""
    return click.option(
        "-o",
        "--output",
        required=True,
        type=click.Path(file_okay=False, path_type=Path),
        help="Run directory (resumed if it exists).",
    )(f)


FITS_OPTIONS = (
    "pixel_scale",
    "psf_fwhm",
    "psf_file",
    "mask_file",
    "noise_sigma",
    "exposure_time",
    "flux_scale",
    "center",
)
"""The parameters of :func:`fits_options` that go to ``lensrim.api.load_observations``."""


def fits_options(f: Callable) -> Callable:
    """The options of a FITS observation given as ``--data`` (``--image-fov`` and
    :data:`FITS_OPTIONS`); given with a lens dataset, they are refused."""
    positive = FiniteFloat(0, min_open=True)
    options = [
        click.option("--image-fov", type=positive, help="FITS: model field (default: the RIM's)."),
        click.option("--pixel-scale", type=positive, help="FITS: arcsec per pixel (else header)."),
        click.option("--psf-fwhm", type=positive, help="FITS: Gaussian PSF FWHM, arcsec."),
        click.option(
            "--psf",
            "psf_file",
            type=click.Path(dir_okay=False, path_type=Path),
            help="FITS: the PSF as a FITS image on the image's pixel scale (else a PSF HDU in --data).",
        ),
        click.option(
            "--mask",
            "mask_file",
            type=click.Path(dir_okay=False, path_type=Path),
            help="FITS: a FITS image of the image's shape, non-zero where pixels have no data (else a MASK HDU).",
        ),
        click.option(
            "--noise-sigma",
            type=NoiseSigma(),
            help="FITS: noise sigma, image units; 'auto': measured on the RIM's grid (a noise map scaled to the sky).",
        ),
        click.option(
            "--exposure-time",
            type=positive,
            help="FITS: seconds; adds the source's Poisson noise to a background noise (image in electrons/s).",
        ),
        click.option("--flux-scale", type=positive, help="FITS: divide by this (default: peak)."),
        click.option(
            "--center",
            type=PixelPair(),
            help="FITS: the lens's pixel X,Y (1-based, as DS9 shows it; default: the cutout's centre).",
        ),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def observations_option(f: Callable) -> Callable:
    """``--data``: the observations a reconstruction reads (a lens dataset, one FITS cutout or a
    catalogue of them)."""
    return click.option(
        "--data",
        required=True,
        type=click.Path(path_type=Path),
        help="Lens dataset (HDF5); a FITS cutout with its sky and lens light subtracted; or a CSV catalogue of them.",
    )(f)


def observation_files(data: Path, output: Path, fits_input: dict[str, Any]) -> tuple[dict[str, Path], dict[str, Path]]:
    """A reconstruction's outputs (``--output``, and the FITS copy of each lens for a FITS
    ``--data`` or a catalogue) and the observation's input files (``--data``, ``--psf`` and
    ``--mask`` when given in ``fits_input``, and the files a catalogue's rows name), keyed by
    option, for :func:`refuse_overwriting_inputs`, the provenance and a resume's input check."""
    import lensrim
    import lenssim

    outputs = {"--output": output}
    if lensrim.api.is_fits(data):
        outputs["--output (its FITS copy)"] = output.with_suffix(".fits")
    files = {"--psf": fits_input.get("psf_file"), "--mask": fits_input.get("mask_file")}
    inputs = {"--data": data, **{k: v for k, v in files.items() if v is not None}}
    if lenssim.io.is_catalogue(data):
        for lens in lenssim.io.read_lens_catalogue(data):
            outputs[f"--output (the FITS copy of {lens['name']})"] = lens_copy(output, lens["name"])
            for key in ("fits", "psf_file", "mask_file"):
                if key in lens:
                    inputs[f"--data row {lens['row']} ({key.removesuffix('_file')})"] = lens[key]
    return outputs, inputs


def lens_copy(output: Path, name: str) -> Path:
    """The FITS copy of a catalogue's lens ``name`` reconstructed into ``output``."""
    return output.with_name(f"{output.stem}.{name}.fits")


def fits_copy(output: Path) -> list[Path]:
    """Write the reconstruction ``output`` of a FITS observation (or of a catalogue of them: one
    file per lens) again as FITS beside it."""
    import lensrim
    import lenssim
    from lensrim.metrics import residual_block

    rec = lensrim.Reconstruction.from_hdf5(output)
    obs, n = rec.observation, rec.observation.pixels
    lenses = obs.origin.get("lenses")
    maps = "(observation, model, residual, noise, chi, source, kappa; the input's units)"
    binned, block = rec.binned_chi2_nu(), residual_block(n)  # every lens's at once
    paths = []
    for i in range(len(obs)):
        name = None if lenses is None else lenses[i]["name"]
        paths.append(rec.to_fits(output.with_suffix(".fits") if name is None else lens_copy(output, name), index=i))
        masked = int((~obs.noise[i].isfinite()).sum()) if obs.noise.dim() == 4 else 0
        which = "" if name is None else f"{name}: "
        origin = obs.lens_origin(i)
        if "sky_sigma" in origin:
            click.echo(
                f"{which}noise sigma measured from the sky: {origin['sky_sigma']:.4g} per input pixel, in the "
                "input's units"
            )
        if "noise_scale" in origin:
            click.echo(f"{which}noise map scaled by {origin['noise_scale']:.4g} to the sky's scatter")
        if "noise_correlation" in origin:
            along_x, along_y = lenssim.io.fits.neighbour_correlation(origin["noise_correlation"])
            click.echo(
                f"{which}noise correlation between neighbouring pixels, measured from the sky: "
                f"{along_x:.2f} along x, {along_y:.2f} along y (the blocks allow for it)"
            )
        if masked:
            click.echo(
                f"{which}{masked} of the {n}x{n} model pixels had no data (NaN or masked in the input): "
                "left out of the fit"
            )
        click.echo(
            f"{which}chi2_nu {float(rec.chi2_nu[i]):.3g}; in {block}x{block}-pixel blocks {float(binned[i]):.3g} "
            "(noise: about 1; above chi2_nu: structure left)"
        )
    if lenses is None:
        click.echo(f"wrote {paths[0]} {maps}")
    else:
        click.echo(f"wrote {len(paths)} FITS copies, {lens_copy(output, '<name>')} {maps}")
    return paths


def seed_option(f: Callable) -> Callable:
    return click.option("--seed", default=0, type=click.IntRange(0, 2**63 - 1), help="Random seed.")(f)


def first_line(e: BaseException) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def _is_user_facing(e: RuntimeError) -> bool:
    """A simulation that the options make impossible (lenssim.SimulationError), or a GPU out of
    memory: errors of the run's settings, not of the code."""
    lenssim, torch = sys.modules.get("lenssim"), sys.modules.get("torch")  # loaded if they could raise it
    kinds = (getattr(lenssim, "SimulationError", ()), getattr(getattr(torch, "cuda", None), "OutOfMemoryError", ()))
    return any(k and isinstance(e, k) for k in kinds)


def option_name(param: str) -> str:
    """The command-line option of the current command whose parameter is ``param`` (its long
    form), or ``--param`` spelt as options are (``param`` itself when it names an option)."""
    if param.startswith("-"):
        return param
    ctx = click.get_current_context(silent=True)
    for p in ctx.command.params if ctx is not None else ():
        if p.name == param and p.opts:
            return max(p.opts, key=len)
    return "--" + param.replace("_", "-")


def one_line_errors(f: Callable) -> Callable:
    """Turn the libraries' input errors into click's one-line message: a setting that cannot work
    (``lenscore.config.SettingError``) as a usage error of its option, exit status 2; any other
    input error, exit status 1."""

    @functools.wraps(f)
    def wrapper(*args, **kwargs):
        try:
            return f(*args, **kwargs)
        except click.ClickException:
            raise
        except SettingError as e:  # the library names the keyword: the option of that name
            raise click.BadParameter(first_line(e), param_hint=option_name(e.param)) from None
        except (ValueError, OSError) as e:
            raise click.ClickException(first_line(e)) from None
        except RuntimeError as e:  # the libraries' own; any other RuntimeError is a bug to show in full
            if not _is_user_facing(e):
                raise
            raise click.ClickException(first_line(e)) from None

    return wrapper


def leaves_nothing_on_failure(param: str = "output") -> Callable:
    """Decorator: when the command fails, remove what it created at its ``param`` path
    (:func:`lenscore.files.removed_on_failure`)."""

    def decorate(f: Callable) -> Callable:
        @functools.wraps(f)
        def wrapper(*args, **kwargs):
            with removed_on_failure(kwargs.get(param)):
                return f(*args, **kwargs)

        return wrapper

    return decorate


def refuse_overwriting_inputs(outputs: dict[str, Path], inputs: dict[str, str | Path | None]) -> None:
    """:func:`lenscore.files.refuse_overwriting` with the command's option names as keys."""
    refuse_overwriting(outputs, inputs)


def refuse_distributed(ctx: click.Context, allowed: tuple[str, ...]) -> None:
    """Refuse, in a group's callback, a subcommand launched as several processes (torchrun or
    srun set ``WORLD_SIZE`` > 1) unless it is one of ``allowed``: each process would repeat the
    whole job and write the same files."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    command = ctx.invoked_subcommand
    if world > 1 and command is not None and command not in allowed:
        raise click.UsageError(
            f"`{ctx.command_path} {command}` runs in one process, but {world} were launched (torchrun or srun): "
            "each would repeat the job and write the same files. Only `lens train rim` trains distributed; "
            "`lens simulate` splits its work with --shard, one job per shard"
        )
