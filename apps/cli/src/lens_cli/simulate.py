"""`lens simulate kappa | sources | lenses`: datasets for training and testing."""

from __future__ import annotations

import os
import re
from pathlib import Path

import click

from lens_cli.common import (
    BarOnFirstUse,
    FiniteFloat,
    device_option,
    one_line_errors,
    refuse_overwriting_inputs,
    resolve_device,
    say,
    seed_option,
)


def parse_shard(ctx, param, value: str | None) -> tuple[int, int]:
    """``I/N`` (1-based, as job arrays number tasks) -> (I - 1, N)."""
    if value is None:
        return (0, 1)
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", value)
    if not m or not (1 <= int(m.group(1)) <= int(m.group(2))):
        raise click.BadParameter(f"{value!r}: expected I/N with 1 <= I <= N, e.g. 3/10", param=param)
    return int(m.group(1)) - 1, int(m.group(2))


def shard_option(f):
    return click.option(
        "--shard",
        callback=parse_shard,
        metavar="I/N",
        help="Write only shard I of N (1-based; for job arrays). OUTPUT is then a directory that "
        "receives part-IIIII-of-NNNNN.h5; the shards together equal the unsharded dataset.",
    )(f)


def _output_path(ctx, param, value: str | None) -> Path | None:
    """A trailing slash means a directory: remembered, as Path drops it."""
    if value is not None and value.endswith(("/", os.sep)):
        ctx.meta["output_is_directory"] = True
    return None if value is None else Path(value)


def output_option(f):
    return click.option(
        "-o",
        "--output",
        required=True,
        type=click.Path(),
        callback=_output_path,
        help="Output HDF5 file (or directory with --shard).",
    )(f)


def _target(output: Path, shard: tuple[int, int]) -> Path:
    import lenssim

    directory = click.get_current_context().meta.get("output_is_directory", False)
    return lenssim.shard_path(output, shard, directory=directory)


def _warn_empty_split(path: Path, unit: str, hint: str) -> None:
    """Say so when a split came out empty: `simulate lenses --split` on it would fail later."""
    import lenssim

    counts = lenssim.split_counts(path)
    for name, count in zip(("train", "test"), counts or (), strict=False):
        if count == 0:
            why = f"`lens simulate lenses --split {name}` cannot draw from it"
            say(f"warning: the {name} split of {path} is empty ({sum(counts)} {unit} in all): {why}; {hint}")


def _bar(total: int, what: str) -> BarOnFirstUse:
    return BarOnFirstUse(total=total, desc=what, unit=what.split()[-1])


@click.group(short_help="Simulate kappa maps, source images and lenses.")
def simulate() -> None:
    """Simulate kappa maps, source images and lensed observations (HDF5 datasets)."""


@simulate.command("kappa")
@click.option(
    "--tng", "cutouts", multiple=True, type=click.Path(path_type=Path), help="TNG web-API cutout file(s) (repeatable)."
)
@click.option(
    "--tng-base", type=click.Path(path_type=Path), help="TNG output directory holding snapdir_NNN and groups_NNN."
)
@click.option("--snapshot", default=99, type=click.IntRange(0), help="Snapshot number (with --tng-base).")
@click.option(
    "--halo", "halo_ids", multiple=True, type=click.IntRange(0), help="FoF halo index (repeatable; with --tng-base)."
)
@click.option(
    "--subhalo",
    "subhalo_ids",
    multiple=True,
    type=click.IntRange(0),
    help="Subhalo index (repeatable; with --tng-base).",
)
@click.option(
    "--synthetic",
    type=click.IntRange(1, 100_000),
    help="Use N built-in synthetic halos (no download; at most 100,000).",
)
@click.option(
    "--maps-per-halo",
    default=12,
    type=click.IntRange(1, 1000),
    help="Augmented maps per halo (cycling xy, xz, yz; one halo's maps are held in memory).",
)
@click.option(
    "--test-fraction",
    default=0.1,
    type=FiniteFloat(0, 1, max_open=True),
    help="Fraction of halos held out (split by halo).",
)
@click.option(
    "--theta-e-min",
    default=0.5,
    type=FiniteFloat(0, min_open=True),
    help="Lower end of the uniform Einstein radius range of the rescaled maps, arcsec.",
)
@click.option(
    "--theta-e-max",
    default=2.5,
    type=FiniteFloat(0, min_open=True),
    help="Upper end of the Einstein radius range, arcsec.",
)
@click.option("--max-shift", default=0.3, type=FiniteFloat(0), help="Largest random shift of a map, arcsec.")
@click.option(
    "--render-kpc",
    type=FiniteFloat(1, 10_000),
    help="Physical side of the 188-pixel render, kpc, 1-10,000 (default: from 7.69\" at z_l). The paper's "
    "maps: 105 / h.",
)
@click.option(
    "--pixels",
    default=128,
    type=click.IntRange(8, 4096),
    help='Pixels across each map (the field of view stays 7.69"; the render grid scales with it).',
)
@output_option
@shard_option
@seed_option
@device_option
@one_line_errors
def simulate_kappa(
    cutouts, tng_base, snapshot, halo_ids, subhalo_ids, synthetic, maps_per_halo, test_fraction,
    theta_e_min, theta_e_max, max_shift, render_kpc, pixels, output, shard, seed, device,
) -> None:  # fmt: skip
    """Convergence maps from particle halos: adaptive KDE (Numba), three projections, augmentation.

    Exactly one input: --tng cutout files, --tng-base with --halo/--subhalo ids, or --synthetic N.
    The KDE runs on the CPU (Numba, all cores); --device is accepted for uniformity.
    """
    import lenssim

    resolve_device(device)
    if sum([bool(cutouts), tng_base is not None, synthetic is not None]) != 1:
        raise click.UsageError("give exactly one of --tng, --tng-base (with --halo/--subhalo) or --synthetic")
    if (halo_ids or subhalo_ids) and tng_base is None:
        raise click.UsageError("--halo and --subhalo need --tng-base")
    if tng_base is not None and not (halo_ids or subhalo_ids):
        raise click.UsageError("--tng-base needs at least one --halo or --subhalo")
    if theta_e_min > theta_e_max:
        raise click.BadParameter(f"--theta-e-min {theta_e_min} exceeds --theta-e-max {theta_e_max}")
    halos = lenssim.halo_sources(
        cutouts=cutouts,
        tng_base=tng_base,
        snapshot=snapshot,
        halos=halo_ids,
        subhalos=subhalo_ids,
        synthetic=synthetic,
        seed=seed,
    )
    config = lenssim.KappaMapConfig.at_resolution(pixels, render_fov_kpc=render_kpc)
    target = _target(output, shard)
    mine = len(lenssim.io.shard_range(len(halos), *shard))
    with _bar(mine * maps_per_halo, "kappa maps") as bar:
        path = lenssim.simulate_kappa_dataset(
            target,
            halos,
            maps_per_halo=maps_per_halo,
            config=config,
            theta_e_range=(theta_e_min, theta_e_max),
            max_shift=max_shift,
            test_fraction=test_fraction,
            seed=seed,
            shard=shard,
            progress=bar.update,
        )
    click.echo(f"wrote {path} ({mine * maps_per_halo} maps from {mine} halos)")
    if shard == (0, 1):
        _warn_empty_split(path, "maps", "use more halos or change --test-fraction (the split is by halo)")


@simulate.command("sources")
@click.option(
    "--cosmos-dir",
    type=click.Path(path_type=Path),
    help="GalSim COSMOS catalogue directory (galsim_download_cosmos -s 23.5).",
)
@click.option("--sample", default="23.5", type=click.Choice(["23.5", "25.2"]), help="COSMOS sample.")
@click.option(
    "--catalog-file", "file_name", help="Catalogue file name in --cosmos-dir (default real_galaxy_catalog_SAMPLE.fits)."
)
@click.option(
    "--exclusion-level",
    default="marginal",
    type=click.Choice(["none", "bad_stamp", "bad_fits", "marginal"]),
    help="GalSim's COSMOS selection: drop galaxies flagged up to this level (the paper's: marginal).",
)
@click.option("--min-flux", default=50.0, type=FiniteFloat(0), help="Minimum Sersic-fit flux.")
@click.option("--parametric", is_flag=True, help="Draw the COSMOS parametric fits instead of the real images.")
@click.option(
    "--synthetic", type=click.IntRange(1, 10_000_000), help="Draw N GalSim synthetic galaxies instead (no download)."
)
@click.option(
    "-n", "--n-sources", type=click.IntRange(1), help="Stamps to draw from COSMOS (default: one per catalogue galaxy)."
)
@click.option(
    "--pixel-scale",
    type=FiniteFloat(0, 1, min_open=True),
    help="Arcsec per stamp pixel, at most 1 (default: the paper's 0.03 at 128 pixels, 0.03 x 128 / --pixels "
    "otherwise; 3.0/128 keeps angular sizes).",
)
@click.option(
    "--test-fraction",
    default=0.1,
    type=FiniteFloat(0, 1, max_open=True),
    help="Fraction of galaxies held out for the test split (split by catalogue galaxy).",
)
@click.option(
    "--denoiser",
    type=click.Path(file_okay=False, path_type=Path),
    help="A `lens train denoiser` run to clean every stamp.",
)
@click.option(
    "--pixels",
    default=128,
    type=click.IntRange(8, 4096),
    help="Pixels across each stamp (the angle covered stays the same: stamp, border and shift scale with it).",
)
@output_option
@shard_option
@seed_option
@device_option
@one_line_errors
def simulate_sources(
    cosmos_dir, parametric, synthetic, n_sources, pixel_scale, pixels, denoiser, output, shard, device, **options
) -> None:
    """Source images: COSMOS galaxies through GalSim, or GalSim synthetic galaxies.

    Stamps of 158^2 at --pixel-scale, background subtracted, rotated, shifted, cropped to 128^2
    and normalised to [0, 1]. GalSim draws on the CPU; --device is accepted for uniformity.
    """
    import lensprior
    import lenssim
    from lenssim.data.sources import CosmosSources, SourceStampConfig

    dev = resolve_device(device)
    if (cosmos_dir is None) == (synthetic is None):
        raise click.UsageError("give exactly one of --cosmos-dir or --synthetic")
    if synthetic is not None and n_sources is not None:
        raise click.UsageError("-n applies to --cosmos-dir; --synthetic N already gives the number")
    stamp = SourceStampConfig.at_resolution(pixels, **({} if pixel_scale is None else {"pixel_scale": pixel_scale}))
    catalogue = {k: options.pop(k) for k in ("sample", "file_name", "exclusion_level", "min_flux")}
    cosmos = (
        None if cosmos_dir is None else CosmosSources(cosmos_dir, use_real=not parametric, config=stamp, **catalogue)
    )
    n = synthetic or n_sources or len(cosmos)
    denoise = None if denoiser is None else lensprior.load_denoiser(denoiser, device=dev).denoise_stamp
    provenance = {} if denoiser is None else {"denoiser": str(denoiser)}
    with _bar(n, "source stamps") as bar:
        path = lenssim.simulate_source_dataset(
            _target(output, shard),
            n,
            cosmos=cosmos,
            stamp=stamp,
            shard=shard,
            denoise=denoise,
            provenance=provenance,
            progress=bar.update,
            **options,
        )
    click.echo(f"wrote {path}" + (f" (denoised with {denoiser})" if denoiser else ""))
    if shard == (0, 1):
        _warn_empty_split(path, "stamps", "draw more galaxies or change --test-fraction")


@simulate.command("lenses")
@click.option("--kappa", required=True, help="Kappa dataset (file or shard directory), or 'sie' for Table 2 SIE maps.")
@click.option(
    "--sources",
    required=True,
    help="Source dataset (file or shard directory), or 'sersic' for analytic Sersic sources.",
)
@click.option(
    "-n", "--n-lenses", required=True, type=click.IntRange(1), help="Accepted lenses to simulate (all shards together)."
)
@click.option(
    "--split",
    default="train",
    type=click.Choice(["train", "test", "all"]),
    help="Which split of the kappa and source datasets to draw from.",
)
@click.option(
    "--block-size",
    default=256,
    type=click.IntRange(1, 4096),
    help="Lenses per resumable block (held in memory: about 0.2 MB per 128^2 lens).",
)
@click.option(
    "--pixels",
    default=128,
    type=click.IntRange(8, 4096),
    help='Pixels across the image and source grids (the fields of view stay 7.69" and 3").',
)
@output_option
@shard_option
@seed_option
@device_option
@one_line_errors
def simulate_lenses(kappa, sources, n_lenses, split, block_size, pixels, output, shard, seed, device) -> None:
    """Lensed observations: random kappa-source pairs, Table 1 PSF and noise, acceptance checks.

    Rejection counts per check are printed and stored in the file's `stats` attribute. Killed
    runs resume from their last finished block when run again with the same options.
    """
    import json

    import lenssim

    dev = resolve_device(device)
    files = {"--kappa": kappa, "--sources": sources}
    refuse_overwriting_inputs({"--output": output}, {k: v for k, v in files.items() if v not in ("sie", "sersic")})
    cfg = lenssim.ObservationConfig.at_resolution(pixels)
    kappa_draws = lenssim.sampler_from_spec(kappa, "kappa", config=cfg, split=split, device=dev, param="kappa")
    source_draws = lenssim.sampler_from_spec(sources, "source", config=cfg, split=split, device=dev, param="sources")
    target, n_mine = _target(output, shard), lenssim.shard_lenses(n_lenses, block_size, shard)
    with _bar(n_mine, "lenses") as bar:
        try:
            path = lenssim.simulate_lens_dataset(
                target,
                n_lenses,
                kappa_draws,
                source_draws,
                config=cfg,
                seed=seed,
                device=dev,
                provenance={"kappa": kappa, "sources": sources, "split": split},
                block_size=block_size,
                shard=shard,
                progress=bar.update,
                inputs=tuple(p for p in (kappa, sources) if p not in ("sie", "sersic")),
            )
        except lenssim.SimulationError as e:  # name the maps that made no lenses
            raise lenssim.SimulationError(f"{e} (kappa: {kappa}, sources: {sources})") from None
    stats = json.loads(lenssim.io.dataset_info(path)["attrs"].get("stats", "{}"))
    tried, rejected, surplus = (stats.pop(k, 0) for k in ("tried", "rejected", "surplus"))
    checks = ", ".join(f"{k.removeprefix('rejected_')} {v}" for k, v in stats.items() if v)
    click.echo(
        f"wrote {path}: {n_mine} lenses kept of {tried} drawn ({rejected} rejected, {surplus} accepted beyond the "
        f"count asked for); failed checks (a lens can fail several): {checks or 'none'}"
    )
