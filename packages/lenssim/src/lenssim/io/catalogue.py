"""A catalogue of FITS observations: several lenses reconstructed in one run.

A CSV file with a header row, one lens per row. The column ``fits`` (the cutout) is required; the
others are optional and give that lens's options of :meth:`lenssim.Observation.from_fits`:
``name`` (the lens's outputs are named after it; default the FITS file's stem), ``psf`` and ``mask``
(FITS files), ``pixel_scale``, ``psf_fwhm``, ``noise_sigma`` (or ``auto``: measured from the sky),
``exposure_time``, ``flux_scale`` (numbers) and ``center_x``, ``center_y`` (the lens's 1-based FITS
pixel, both or neither). Paths are relative to the catalogue's folder; an empty cell gives nothing
(the command's option, or the file's own, applies). Lines starting with ``#`` are comments::

    name,fits,psf,exposure_time,center_x,center_y
    j0946,cutouts/j0946.fits,psf/f814w.fits,2184,,
    j1148,cutouts/j1148.fits,psf/f160w.fits,,101.5,99.0
"""

from __future__ import annotations

import csv
import math
import os
import re
from pathlib import Path
from typing import Any

from lenssim.io.fits import AUTO, FitsError

__all__ = ["CATALOGUE_COLUMNS", "MAX_CATALOGUE_ROWS", "is_catalogue", "read_lens_catalogue"]

CATALOGUE_COLUMNS = {
    "name": "name",
    "fits": "fits",
    "psf": "psf_file",
    "mask": "mask_file",
    "pixel_scale": "pixel_scale",
    "psf_fwhm": "psf_fwhm",
    "noise_sigma": "noise_sigma",
    "exposure_time": "exposure_time",
    "flux_scale": "flux_scale",
    "center_x": "center",
    "center_y": "center",
}
"""The columns a catalogue may have, and the keyword of :meth:`lenssim.Observation.from_fits` each
gives (``center_x`` and ``center_y`` together give ``center``)."""
MAX_CATALOGUE_ROWS = 100_000
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,63}")
"""A lens's name: a file-name part (letters, digits, ``. _ + -``; 64 characters at most)."""


def is_catalogue(path: str | os.PathLike) -> bool:
    """Whether ``path`` names a catalogue (a ``.csv`` file)."""
    return Path(path).suffix.lower() == ".csv"


def read_lens_catalogue(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The rows of the catalogue ``path`` (see the module), each a dict with ``row`` (its line in
    the file), ``name``, ``fits`` (a path) and the options it gives, under
    :meth:`lenssim.Observation.from_fits`'s keywords; a catalogue that cannot be used is a
    :class:`FitsError` naming the file and the row."""
    path = Path(path)
    if not path.is_file():
        raise FitsError(f"{path}: no such file")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise FitsError(f"{path}: not a readable text catalogue ({type(e).__name__})") from None
    lines = [
        (i + 1, line) for i, line in enumerate(text.splitlines()) if line.strip() and not line.lstrip().startswith("#")
    ]
    if not lines:
        raise FitsError(f"{path}: an empty catalogue (a header row with a 'fits' column, then one row per lens)")
    try:
        rows = list(csv.reader([line for _, line in lines], strict=True))
    except csv.Error as e:
        raise FitsError(f"{path}: not a CSV catalogue ({e})") from None
    header = [h.strip().lower() for h in rows[0]]
    unknown = [h for h in header if h not in CATALOGUE_COLUMNS]
    if unknown:
        raise FitsError(f"{path}: unknown column {unknown[0]!r} (known: {', '.join(CATALOGUE_COLUMNS)})")
    if "fits" not in header:
        raise FitsError(f"{path}: no 'fits' column (the first row names the columns)")
    twice = sorted({h for h in header if header.count(h) > 1})
    if twice:
        raise FitsError(f"{path}: the column {twice[0]!r} is there twice")
    if ("center_x" in header) != ("center_y" in header):
        raise FitsError(f"{path}: give both center_x and center_y, or neither")
    if len(rows) - 1 > MAX_CATALOGUE_ROWS:
        raise FitsError(f"{path}: {len(rows) - 1} lenses, more than {MAX_CATALOGUE_ROWS:,}")
    if len(rows) == 1:
        raise FitsError(f"{path}: the catalogue lists no lens")
    lenses = []
    for (line, _), cells in zip(lines[1:], rows[1:], strict=True):
        lenses.append(_lens(path, line, dict(zip(header, cells, strict=False)), len(cells), len(header)))
    seen: dict[str, int] = {}
    for lens in lenses:
        if lens["name"] in seen:
            raise FitsError(
                f"{path}: rows {seen[lens['name']]} and {lens['row']} are both named {lens['name']!r} "
                "(their outputs would collide): give a name column"
            )
        seen[lens["name"]] = lens["row"]
    return lenses


def _lens(path: Path, row: int, cells: dict[str, str], n_cells: int, n_columns: int) -> dict[str, Any]:
    """One row of a catalogue, checked."""
    where = f"{path} row {row}"
    if n_cells != n_columns:
        raise FitsError(f"{where}: {n_cells} cells for {n_columns} columns")
    cells = {k: v.strip() for k, v in cells.items() if v.strip()}
    if "fits" not in cells:
        raise FitsError(f"{where}: no FITS file given")
    lens: dict[str, Any] = {"row": row, "fits": path.parent / cells["fits"]}
    lens["name"] = cells.get("name", Path(cells["fits"]).name.split(".")[0])
    if not NAME.fullmatch(lens["name"]):
        raise FitsError(
            f"{where}: the name {lens['name'][:70]!r} is not a file-name part (letters, digits, . _ + -; 64 at most)"
        )
    for column in ("psf", "mask"):
        if column in cells:
            lens[CATALOGUE_COLUMNS[column]] = path.parent / cells[column]
    numbers = {}
    if cells.get("noise_sigma") == AUTO:  # measured from the sky
        lens["noise_sigma"] = cells.pop("noise_sigma")
    for column in ("pixel_scale", "psf_fwhm", "noise_sigma", "exposure_time", "flux_scale", "center_x", "center_y"):
        if column in cells:
            try:
                numbers[column] = float(cells[column])
            except ValueError:
                kind = f"a number or {AUTO!r}" if column == "noise_sigma" else "a number"
                raise FitsError(f"{where}: {column} {cells[column][:20]!r} is not {kind}") from None
            if not math.isfinite(numbers[column]) or (not column.startswith("center") and numbers[column] <= 0):
                kind = "a finite number" if column.startswith("center") else "a positive number"
                raise FitsError(f"{where}: {column} {cells[column][:20]!r} is not {kind}")
            if not column.startswith("center"):
                lens[column] = numbers[column]
    if ("center_x" in numbers) != ("center_y" in numbers):
        raise FitsError(f"{where}: give both center_x and center_y, or neither")
    if "center_x" in numbers:
        lens["center"] = (numbers["center_x"], numbers["center_y"])
    return lens
