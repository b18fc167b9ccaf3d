"""Real observations in and reconstructions out as FITS.

An observation is a 2-D image HDU (the primary HDU, or the first image extension, preferring one
named ``SCI``; square or not), centred on the lens unless its centre is given (``center``, 1-based
FITS pixel coordinates ``(x, y)`` as DS9 shows them), its sky and the lens galaxy's light
subtracted (the model image is the lensed source alone). Its pixel scale comes from the header's
WCS (the ``CD`` matrix, or ``CDELT`` with ``PC``, in ``CUNIT`` or degrees; axes rotated or flipped,
as drizzled HST and JWST images have them, but square pixels) or ``PIXSCALE`` in arcsec, unless
given. The PSF is an image HDU named ``PSF`` or a FITS file of its own (odd, square, on the image's
pixel scale and axes), or a Gaussian FWHM; the noise is a sigma (in the image's units) or a
noise-map HDU named ``NOISE``, ``SIGMA`` or ``ERR``. Where that noise is the background's alone
(as a sky RMS or a drizzled weight map give it), an exposure time adds the source's Poisson noise:
a variance of the image over the exposure time, for an image whose values times the exposure time
are detected electrons (electrons per second, as HST's drizzled images are; 1 for an image in
electrons). The image stands in for the noiseless model there, clipped at 0, as lens-modelling codes
commonly do (in pure sky the clip makes the variance slightly too large: the true model's chi2_nu
there is about 1 - 0.8 / sigma_e, sigma_e the sky noise in electrons: 0.90 at 6, 0.96 at 20); a
calibrated image (in Jy or erg) is refused, its ``ERR`` map already holds that noise.
The noise may also be measured (``noise_sigma="auto"``) on the model's grid, from the scatter of the
sky there (:func:`measure_sky`): a noise map, where the file has one, scaled to it, else the
white-noise sigma per input pixel that, taken through the resampling, matches it. Measured where it
is used, it takes in what a noise per input pixel leaves out: the correlations of a drizzled image's
noise, which make the sky on the coarser grid noisier than independent pixels would.
Pixels without data (cosmic rays, chip gaps, a
drizzled frame's edge) are NaN or infinite in the image or the noise map, or non-zero in an
optional image HDU named ``MASK`` (0 where the data are good) or in a FITS mask file of their own,
which replaces that HDU.

The image is cut and resampled onto the model's grid (``pixels`` across ``image_fov``) by exact
pixel-area overlap, which conserves surface brightness; the noise map goes through the same
weights (the standard deviation of each resampled pixel for independent input noise; the
correlations that resampling introduces between neighbours are not modelled). The PSF is
resampled the same way and renormalised. Finally image and noise are divided by a flux scale
(by default the image's peak) so that, like the training data, the lensed arcs peak near 1.

Pixels without data are left out of the resampling: a model pixel is the mean of the good data
it overlaps (and its noise that mean's), as long as they cover at least ``MIN_COVER`` of it; the
others are masked, with an observation of 0 and an infinite noise sigma, so that they weigh
nothing in the likelihood (:mod:`lenssim.physics.likelihood`).
"""

from __future__ import annotations

import numbers
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from lenscore.files import written
from lenssim.geometry import FOV_TOLERANCE
from lenssim.io.datasets import MAX_ABS, MIN_NOISE
from lenssim.physics.psf import gaussian_psf

__all__ = [
    "FitsError",
    "FitsObservation",
    "AUTO",
    "OBSERVATION_CARDS",
    "check_noise_correlation",
    "check_observation_cards",
    "check_sky_wcs",
    "fits_onto_grid",
    "load_fits",
    "read_fits_observation",
    "read_observation_cards",
    "read_sky_wcs",
    "resample_matrix",
    "Sky",
    "half_sample_mode",
    "measure_sky",
    "neighbour_correlation",
    "sky_correlation",
    "sky_pixels",
    "wcs_on_grid",
    "wcs_pixel_scale",
    "write_fits_reconstruction",
]

NOISE_HDUS = ("NOISE", "SIGMA", "ERR")
MASK_HDU = "MASK"
MIN_COVER = 0.5
"""The least fraction of a model pixel's area that good data must cover for it to be fitted."""


AUTO = "auto"
"""The noise sigma that is measured from the sky on the model's grid (:func:`measure_sky`)."""
SKY_CLIP = 4.0
"""Sky pixels: those within this many sigma of the sky's median, alone and as 3x3 means."""
SKY_GROW = 2
"""Pixels around a detection left out of the sky as well (the faint wings of an arc)."""
SKY_LEVEL = 0.25
"""A measured sky further than this many sigma from 0 is warned of (it adds over 0.06 to chi2_nu)."""
MIN_SKY_PIXELS = 200
"""The fewest sky pixels a sigma is measured from (its error is then about 8 %)."""
SKY_LAGS = 3
"""The farthest offset, in pixels each way, at which :func:`sky_correlation` measures the noise's
correlation: a drizzled frame's neighbours, and those a resampling onto a grid up to twice as fine
spreads one input pixel over."""


class FitsError(ValueError):
    """A FITS input that cannot be used, with a one-line reason."""


@dataclass
class FitsObservation:
    """An observation on the model's grid: ``observation (1, 1, N, N)``, ``psf (1, 1, k, k)``,
    ``noise`` either ``(1,)`` (one sigma) or ``(1, 1, N, N)`` (a noise map), all divided by
    ``flux_scale``; ``pixel_scale`` is the input's (arcsec)."""

    observation: torch.Tensor
    psf: torch.Tensor
    noise: torch.Tensor
    flux_scale: float
    pixel_scale: float
    resampled: bool
    sky_sigma: float | None = None
    """The sigma measured with ``noise_sigma="auto"`` (the input's units, per input pixel)."""
    noise_scale: float | None = None
    """With ``noise_sigma="auto"`` and a noise map: the factor the map was scaled by."""
    noise_correlation: np.ndarray | None = None
    """The noise's correlation between pixels measured from the sky on this grid
    (:func:`sky_correlation`), when there was enough sky."""


class Sky(NamedTuple):
    """What :func:`measure_sky` finds: the sky's ``sigma`` and ``level`` (its median) and how many
    ``pixels`` they were measured from."""

    sigma: float
    level: float
    pixels: int


def half_sample_mode(x: np.ndarray) -> float:
    """The densest point of the values ``x``: the half of them that spans the shortest interval,
    halved again and again (Bickel's half-sample mode). It finds the sky's level under arcs that
    cover most of a field, as long as no level of the arcs is as crowded as the sky's."""
    x = np.sort(np.asarray(x, dtype=np.float64).ravel())
    if not x.size:
        return float("nan")
    while x.size > 3:
        h = (x.size + 1) // 2
        i = int(np.argmin(x[h - 1 :] - x[: x.size - h + 1]))
        x = x[i : i + h]
    return float(np.median(x))


def measure_sky(whitened: np.ndarray, good: np.ndarray) -> Sky:
    """The scatter and level of the sky in ``whitened`` (an image over its noise for a unit sigma),
    measured on the pixels of ``good`` that are sky (:func:`sky_pixels`)."""
    return sky_pixels(whitened, good)[0]


def sky_pixels(whitened: np.ndarray, good: np.ndarray) -> tuple[Sky, np.ndarray]:
    """What :func:`measure_sky` finds, and the mask of the pixels of ``good`` it found to be sky.

    The sky is found by iteration: around the median of the current sky, a pixel leaves it when it,
    or the mean of the 3x3 pixels around it, lies more than :data:`SKY_CLIP` of their own sigmas
    out, and so do the :data:`SKY_GROW` pixels around it; each sigma is 1.4826 times the median
    absolute deviation of what is left (the means' own, not sigma / 3: neighbours whose noise is
    correlated average less of it away). It starts from the densest level of the pixels
    (:func:`half_sample_mode`) and the spread of the pixels below it (arcs are brighter than the
    sky), so that arcs over most of the field cannot mislead it. The cut is two-sided, so pure noise
    loses almost nothing and sigma stays unbiased (to 1 % for white noise, 2 % for noise correlated
    over 3x3 pixels; tested), and the 3x3 means find an arc's faint wings, whose pixels alone are
    within the noise."""
    from scipy import ndimage

    good = np.asarray(good, dtype=bool) & np.isfinite(whitened)
    if not good.any():
        return Sky(float("nan"), float("nan"), 0), good
    z = np.where(good, whitened, 0.0)
    level = half_sample_mode(z[good])
    below = level - z[good & (z < level)]  # the sky's lower half: arcs are brighter than the sky
    sigma = 1.4826 * float(np.median(below)) if below.size else 0.0
    if not sigma > 0:  # no scatter at all: nothing to measure
        return Sky(0.0, level, int(good.sum())), good
    count = np.maximum(np.round(ndimage.uniform_filter(good.astype(np.float64), 3, mode="constant") * 9), 1.0)
    grow = np.ones((2 * SKY_GROW + 1,) * 2, dtype=bool)
    sigma_mean = sigma  # the scatter of the 3x3 means times the root of their pixels: sigma for white noise
    for _ in range(50):
        d = np.where(good, z - level, 0.0)
        mean = ndimage.uniform_filter(d, 3, mode="constant") * 9 / np.sqrt(count)
        out = good & ((np.abs(d) > SKY_CLIP * sigma) | (np.abs(mean) > SKY_CLIP * sigma_mean))
        sky = good & ~ndimage.binary_dilation(out, grow)
        if not sky.any():
            return Sky(float("nan"), level, 0), sky
        previous = (level, sigma, sigma_mean)
        level = float(np.median(z[sky]))
        sigma = 1.4826 * float(np.median(np.abs(z[sky] - level)))
        sigma_mean = 1.4826 * float(np.median(np.abs(mean[sky] - np.median(mean[sky]))))
        if np.allclose((level, sigma, sigma_mean), previous, rtol=0, atol=1e-6 * sigma):
            break
    return Sky(sigma, level, int(sky.sum())), sky


def sky_correlation(whitened: np.ndarray, good: np.ndarray, lags: int | None = None) -> np.ndarray | None:
    """The correlation coefficient of the noise in ``whitened`` (an image over its noise) between
    pixels ``(dy, dx)`` apart, for offsets up to ``lags`` (:data:`SKY_LAGS` by default) each way,
    ``(2 lags + 1, 2 lags + 1)`` with offset 0 at the centre; measured on its sky pixels
    (:func:`sky_pixels`), over every pair of them at each offset; 0 at an offset with fewer than
    :data:`MIN_SKY_PIXELS` pairs. White noise gives 1 at the centre and about 0 elsewhere (to
    1 / sqrt(pairs)); a drizzled or resampled frame's noise is correlated between neighbours,
    which :func:`lenssim.binned_chi2_nu` needs to know. ``None`` where the sky has fewer than
    :data:`MIN_SKY_PIXELS` pixels or no scatter."""
    lags = SKY_LAGS if lags is None else lags
    sky, mask = sky_pixels(whitened, good)
    if sky.pixels < MIN_SKY_PIXELS or not sky.sigma > 0:
        return None
    m = mask.astype(np.float64)
    z = np.where(mask, whitened - sky.level, 0.0)
    height, width = z.shape
    k = 2 * lags + 1
    moments = np.zeros((k, k))
    for dy in range(-lags, lags + 1):
        for dx in range(-lags, lags + 1):
            rows = slice(max(0, -dy), height - max(0, dy)), slice(max(0, dy), height - max(0, -dy))
            cols = slice(max(0, -dx), width - max(0, dx)), slice(max(0, dx), width - max(0, -dx))
            pairs = float((m[rows[0], cols[0]] * m[rows[1], cols[1]]).sum())
            if pairs >= MIN_SKY_PIXELS:
                moments[lags + dy, lags + dx] = float((z[rows[0], cols[0]] * z[rows[1], cols[1]]).sum()) / pairs
    return np.clip(moments / moments[lags, lags], -1.0, 1.0)


MAX_LAGS = 7
"""The farthest offset a noise correlation read from a file may reach (15 x 15 coefficients)."""


def check_noise_correlation(value: object, where: str) -> np.ndarray:
    """``value`` checked as a noise correlation (see :func:`lenssim.binned_chi2_nu`): a square table
    of odd side up to ``2 MAX_LAGS + 1`` holding coefficients in [-1, 1], 1 at its centre."""
    try:
        a = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise FitsError(f"{where}: the noise correlation is not a table of numbers") from None
    k = a.shape[0] if a.ndim == 2 else 0
    if a.shape != (k, k) or k % 2 == 0 or k > 2 * MAX_LAGS + 1:
        raise FitsError(
            f"{where}: the noise correlation is {a.shape}, not an odd square up to {2 * MAX_LAGS + 1} a side"
        )
    if not (np.isfinite(a).all() and (np.abs(a) <= 1).all() and a[k // 2, k // 2] == 1):
        raise FitsError(f"{where}: the noise correlation must hold coefficients in [-1, 1], 1 at its centre")
    return a


def neighbour_correlation(correlation: object) -> tuple[float, float]:
    """The correlation between neighbouring pixels along x (columns) and y (rows) in a noise
    correlation table (:func:`sky_correlation`)."""
    rho = np.asarray(correlation, dtype=np.float64)
    lags = rho.shape[0] // 2
    return float(rho[lags, lags + 1]), float(rho[lags + 1, lags])


def resample_matrix(n_in: int, scale_in: float, n_out: int, scale_out: float, shift: float = 0.0) -> np.ndarray:
    """``(n_out, n_in)`` weights of 1-D area-overlap resampling between two grids, the output's
    centre ``shift`` input pixels from the input's: row j holds the fraction of output pixel j
    covered by each input pixel."""
    a = (np.arange(n_in + 1) - n_in / 2) * scale_in  # input pixel edges
    b = (np.arange(n_out + 1) - n_out / 2) * scale_out + shift * scale_in
    lo = np.maximum(b[:-1, None], a[None, :-1])
    hi = np.minimum(b[1:, None], a[None, 1:])
    return np.clip(hi - lo, 0.0, None) / scale_out


def _image_center(shape: tuple[int, ...], center: tuple[float, float] | None) -> tuple[float, float]:
    """The model field's centre on an image of ``shape`` (rows, columns): ``center``, 1-based
    FITS pixel coordinates ``(x, y)``, or the image's middle."""
    if center is None:
        return (shape[1] + 1) / 2, (shape[0] + 1) / 2
    return float(center[0]), float(center[1])


def _field_room(path: Path, shape: tuple[int, ...], center: tuple[float, float] | None) -> float:
    """The side, in input pixels, of the widest square centred at ``center`` (see
    :func:`_image_center`) that the image of ``shape`` holds; a centre that is not a pair of
    finite numbers inside the image is refused."""
    if center is not None:
        if len(center) != 2 or not all(isinstance(v, numbers.Real) and np.isfinite(v) for v in center):
            raise FitsError(f"{path}: the lens centre must be two finite pixel coordinates (x, y), got {center!r}")
    x, y = _image_center(shape, center)
    ny, nx = shape
    room = 2 * min(x - 0.5, nx + 0.5 - x, y - 0.5, ny + 0.5 - y)
    if room <= 0:
        raise FitsError(f"{path}: the lens centre ({x:g}, {y:g}) is outside the image's {nx} by {ny} pixels")
    return room


MAX_SIDE = 8192
"""Largest FITS image side read (a cutout of the lens, not a survey tile)."""


def _image_hdu(hdul, path: Path):
    candidates = [
        h for h in hdul if h.is_image and h.header.get("NAXIS", 0) >= 2 and h.name not in ("PSF", MASK_HDU, *NOISE_HDUS)
    ]
    named = [h for h in candidates if h.name == "SCI"]
    if not (named or candidates):
        raise FitsError(f"{path}: no image HDU with data")
    return (named or candidates)[0]


def _header_number(header, key: str, path: Path) -> float:
    try:
        value = float(header[key])
    except (TypeError, ValueError):
        raise FitsError(f"{path}: header keyword {key} is {header[key]!r}, not a number") from None
    if not np.isfinite(value):
        raise FitsError(f"{path}: header keyword {key} is {value}, not a finite number")
    return value


ARCSEC_PER = {"deg": 3600.0, "arcmin": 60.0, "arcsec": 1.0, "mas": 1e-3}
"""Arcseconds per angular unit a WCS axis may be in (``CUNITi``; degrees when absent)."""

SQUARE_PIXELS = 1e-3
"""Largest relative difference between a pixel's two sides, and largest cosine of the angle
between them, read as a square pixel: the model's grid has square pixels."""


def _wcs_matrix(header, path: Path) -> np.ndarray | None:
    """The WCS's linear transformation from pixel offsets to intermediate world coordinates (row i:
    world axis i, in its own unit): ``CDi_j``, or ``CDELTi`` times ``PCi_j`` (identity by default;
    a single ``CDELT`` serves both axes). None when the header has neither ``CD`` nor ``CDELT``."""
    cd = [k for k in header if k in ("CD1_1", "CD1_2", "CD2_1", "CD2_2")]
    pc = [k for k in header if k in ("PC1_1", "PC1_2", "PC2_1", "PC2_2")]
    if cd and pc:
        raise FitsError(f"{path}: the header has both {cd[0]} and {pc[0]}, two WCS matrices; pass a pixel scale")

    def entry(prefix: str, i: int, j: int) -> float:  # absent entries: 0 for CD, the identity's for PC
        key = f"{prefix}{i}_{j}"
        return _header_number(header, key, path) if key in header else float(prefix == "PC" and i == j)

    if cd:
        return np.array([[entry("CD", i, j) for j in (1, 2)] for i in (1, 2)])
    given = [k for k in ("CDELT1", "CDELT2") if k in header]
    if not given:
        return None
    cdelt = [_header_number(header, k if k in header else given[0], path) for k in ("CDELT1", "CDELT2")]
    return np.array([[cdelt[i - 1] * entry("PC", i, j) for j in (1, 2)] for i in (1, 2)])


def _arcsec_per_unit(header, axis: int, path: Path) -> float:
    unit = str(header.get(f"CUNIT{axis}", "deg")).strip().lower() or "deg"
    if unit not in ARCSEC_PER:
        raise FitsError(f"{path}: header keyword CUNIT{axis} is {unit!r}, not an angle; pass a pixel scale")
    return ARCSEC_PER[unit]


def _pixel_scale(header, path: Path) -> float:
    """The side of a pixel in arcsec: from the WCS (``CD``, or ``CDELT`` with ``PC``; rotated or
    flipped, as drizzled HST and JWST images are), else ``PIXSCALE``. Pixels that are not square
    (distorted, unresampled frames) are refused."""
    m = _wcs_matrix(header, path)
    if m is None:
        if "PIXSCALE" in header:
            return _header_number(header, "PIXSCALE", path)
        raise FitsError(f"{path}: the header gives no pixel scale (CD, CDELT or PIXSCALE); pass one")
    m = m * np.array([_arcsec_per_unit(header, i, path) for i in (1, 2)])[:, None]
    sides = np.hypot(m[0], m[1])  # the sky length of one pixel step along x and along y
    if not sides.min() > 0:
        raise FitsError(
            f"{path}: the header's WCS matrix {m.ravel().tolist()} gives pixels of zero size; pass a pixel scale"
        )
    cosine = float(m[:, 0] @ m[:, 1]) / (sides[0] * sides[1])
    if abs(sides[0] - sides[1]) > SQUARE_PIXELS * sides.max() or abs(cosine) > SQUARE_PIXELS:
        raise FitsError(
            f"{path}: the header's WCS gives pixels of {sides[0]:.6g} by {sides[1]:.6g} arcsec at "
            f"{np.degrees(np.arccos(np.clip(cosine, -1, 1))):.4g} degrees, not square: resample the "
            "image onto square pixels (e.g. drizzle it) or pass a pixel scale"
        )
    return float(np.sqrt(sides[0] * sides[1]))


SKY_AXES = ("RA", "DEC", "GLON", "GLAT", "ELON", "ELAT")
"""The celestial axis types whose WCS a reconstruction's image-plane maps carry over."""


def read_sky_wcs(path: str | os.PathLike) -> dict[str, float | str] | None:
    """The celestial WCS of a FITS observation's image HDU as linear FITS cards (``CTYPEi``,
    ``CRVALi``, ``CRPIXi``, the ``CD`` matrix in degrees, the frame's ``RADESYS``, ``EQUINOX``,
    ``LONPOLE``, ``LATPOLE``), or None when the header has none. Distortion terms (SIP, TPV) are
    left out: the model's grid is linear. A WCS that cannot be read is warned about, not fatal:
    the reconstruction does not need it."""
    from astropy.io import fits

    path = Path(path)
    try:
        with fits.open(path, memmap=False) as hdul:
            header = _image_hdu(hdul, path).header.copy()
    except OSError as e:
        raise FitsError(f"{path}: not a readable FITS file ({e})") from None
    ctypes = [str(header.get(f"CTYPE{i}", "")).strip().upper() for i in (1, 2)]
    if not all(c.split("-")[0] in SKY_AXES for c in ctypes):
        return None
    try:
        m = _wcs_matrix(header, path)
        if m is None:
            return None
        try:
            _pixel_scale(header, path)  # square pixels, as the model's grid has
        except FitsError:  # its own message advises a pixel scale, which the caller may have given
            raise FitsError(f"{path}: the header's WCS has no square pixels of a size in arcsec") from None
        m = m * np.array([_arcsec_per_unit(header, i, path) for i in (1, 2)])[:, None] / 3600.0
        cards: dict[str, float | str] = {}
        for i, c in zip((1, 2), ctypes, strict=True):
            projection = c[5:8] if len(c) >= 8 else ""
            cards[f"CTYPE{i}"] = c[:5] + ("TAN" if projection in ("TPV", "TPD") else projection)
            for key in ("CRVAL", "CRPIX"):  # 0 when absent (FITS WCS paper I)
                cards[f"{key}{i}"] = _header_number(header, f"{key}{i}", path) if f"{key}{i}" in header else 0.0
            cards[f"CUNIT{i}"] = "deg"
        cards.update({f"CD{i}_{j}": float(m[i - 1, j - 1]) for i in (1, 2) for j in (1, 2)})
        for key in ("LONPOLE", "LATPOLE", "EQUINOX"):
            if key in header:
                cards[key] = _header_number(header, key, path)
        if "RADESYS" in header:
            cards["RADESYS"] = str(header["RADESYS"]).strip()
        check_sky_wcs(cards, str(path))
    except FitsError as e:
        warnings.warn(f"{e}: the outputs carry no sky coordinates", stacklevel=2)
        return None
    return cards


WCS_CARDS = {
    **{f"{k}{i}": float for k in ("CRVAL", "CRPIX") for i in (1, 2)},
    **{f"CD{i}_{j}": float for i in (1, 2) for j in (1, 2)},
    **{f"{k}{i}": str for k in ("CTYPE", "CUNIT") for i in (1, 2)},
    "LONPOLE": float,
    "LATPOLE": float,
    "EQUINOX": float,
    "RADESYS": str,
}
"""The cards of :func:`read_sky_wcs` and their types."""


def check_sky_wcs(cards: object, where: str) -> dict[str, float | str]:
    """``cards`` if they are :func:`read_sky_wcs`'s (as a file hands them back: every required
    card, known names, finite numbers, short printable strings), else a one-line FitsError."""
    required = [k for k in WCS_CARDS if k[-1] in "12"]
    if not isinstance(cards, dict) or not all(k in cards for k in required):
        raise FitsError(f"{where}: the sky WCS is not a dict of the cards {', '.join(required)}")
    for k, v in cards.items():
        if not _card_ok(WCS_CARDS.get(k), v):
            raise FitsError(f"{where}: the sky WCS card {str(k)[:20]!r} is {str(v)[:20]!r}, not a valid value")
    return cards


OBSERVATION_CARDS = {
    "BUNIT": str,
    "TELESCOP": str,
    "INSTRUME": str,
    "DETECTOR": str,
    "FILTER": str,
    "OBJECT": str,
    "DATE-OBS": str,
    "EXPTIME": float,
}
"""What an observation's header says of it that its reconstruction keeps: the image's unit, the
telescope, instrument, detector and filter, the target, date and exposure time (s)."""


def _card_ok(kind: type | None, v: object) -> bool:
    if kind is float:
        return isinstance(v, int | float) and not isinstance(v, bool) and bool(np.isfinite(v))
    return kind is str and isinstance(v, str) and len(v) <= 68 and v.isprintable() and v.isascii()


def read_observation_cards(path: str | os.PathLike) -> dict[str, float | str]:
    """The :data:`OBSERVATION_CARDS` a FITS observation's headers hold (the primary's, then the
    image HDU's, which wins), for its reconstruction's files; a card whose value is not of its
    kind (a number, a short printable string) is left out."""
    from astropy.io import fits

    path = Path(path)
    try:
        with fits.open(path, memmap=False) as hdul:
            return _observation_cards(hdul, path)
    except OSError as e:
        raise FitsError(f"{path}: not a readable FITS file ({e})") from None


def _observation_cards(hdul, path: Path) -> dict[str, float | str]:
    """:func:`read_observation_cards` of an open file."""
    cards: dict[str, float | str] = {}
    for header in (hdul[0].header, _image_hdu(hdul, path).header):
        for key, kind in OBSERVATION_CARDS.items():
            v = header.get(key)
            v = v.strip() if isinstance(v, str) else v
            v = float(v) if kind is float and isinstance(v, int) and not isinstance(v, bool) else v
            if v != "" and _card_ok(kind, v):
                cards[key] = v
    return cards


def check_observation_cards(cards: object, where: str) -> dict[str, float | str]:
    """``cards`` if they are :func:`read_observation_cards`'s (as a file hands them back), else
    a one-line FitsError."""
    if not isinstance(cards, dict):
        raise FitsError(f"{where}: the observation's header cards are not a dict")
    for k, v in cards.items():
        if not _card_ok(OBSERVATION_CARDS.get(k), v):
            raise FitsError(f"{where}: the observation's card {str(k)[:20]!r} is {str(v)[:20]!r}, not a valid value")
    return cards


def wcs_pixel_scale(wcs: dict[str, float | str]) -> float:
    """The pixel side (arcsec) of :func:`read_sky_wcs`'s cards."""
    m = np.array([[float(wcs[f"CD{i}_{j}"]) for j in (1, 2)] for i in (1, 2)])
    return float(np.sqrt(abs(np.linalg.det(m)))) * 3600.0


def wcs_on_grid(
    wcs: dict[str, float | str],
    shape: tuple[int, int],
    scale_in: float,
    pixels: int,
    image_fov: float,
    center: tuple[float, float] | None = None,
) -> dict[str, float | str]:
    """``wcs`` (:func:`read_sky_wcs`'s cards for an image of ``shape`` (rows, columns) at
    ``scale_in`` arcsec) for the grid the image is resampled onto: ``pixels`` across ``image_fov``
    arcsec around ``center`` (the image's 1-based ``(x, y)``; its centre by default). The
    reference point keeps its sky position; the matrix scales with the pixel."""
    ratio = image_fov / pixels / scale_in
    middle = _image_center(shape, center)
    out = dict(wcs)
    for i, c in zip((1, 2), middle, strict=True):  # FITS axis 1: x, the columns
        out[f"CRPIX{i}"] = (pixels + 1) / 2 + (float(wcs[f"CRPIX{i}"]) - c) / ratio
        for j in (1, 2):
            out[f"CD{i}_{j}"] = float(wcs[f"CD{i}_{j}"]) * ratio
    return out


def _array(hdu, path: Path, what: str, *, blanks: bool = False) -> np.ndarray:
    """A 2-D image HDU's data as float64, validated; NaN or infinite pixels are refused unless
    ``blanks`` (pixels without data)."""
    sides = [int(hdu.header.get(f"NAXIS{i}", 0)) for i in range(1, int(hdu.header.get("NAXIS", 0)) + 1)]
    if any(side > MAX_SIDE for side in sides):
        raise FitsError(
            f"{path}: the {what} HDU {hdu.name!r} is {sides} pixels, beyond {MAX_SIDE}: cut out the lens first"
        )
    data = np.asarray(hdu.data)
    if data.ndim != 2:
        raise FitsError(f"{path}: the {what} HDU {hdu.name!r} is {data.ndim}-D, expected a 2-D image")
    if data.dtype.kind not in "fiu":
        raise FitsError(f"{path}: the {what} HDU {hdu.name!r} holds {data.dtype}, expected numbers")
    data = data.astype(np.float64)
    if not blanks and not np.isfinite(data).all():
        raise FitsError(f"{path}: the {what} HDU {hdu.name!r} contains NaN or infinite pixels")
    return data


def _read_psf_file(psf_file: str | os.PathLike, scale_in: float) -> np.ndarray:
    """The PSF of a FITS file of its own (its ``PSF`` HDU, else its first image), validated, on
    the image's pixel scale (a pixel scale its header gives must be the image's)."""
    from astropy.io import fits

    path = Path(psf_file)
    if not path.is_file():
        raise FitsError(f"{path}: no such PSF file")
    try:
        with fits.open(path, memmap=False) as hdul:
            named = [h for h in hdul if h.name == "PSF" and h.is_image and h.header.get("NAXIS", 0) >= 2]
            candidates = named or [h for h in hdul if h.is_image and h.header.get("NAXIS", 0) >= 2]
            if not candidates:
                raise FitsError(f"{path}: no image HDU with data for the PSF")
            psf = _array(candidates[0], path, "PSF")
            header = candidates[0].header
            if _wcs_matrix(header, path) is not None or "PIXSCALE" in header:
                scale = _pixel_scale(header, path)
                if not np.isclose(scale, scale_in, rtol=1e-3):
                    raise FitsError(
                        f"{path}: the PSF's pixels are {scale:.4g} arcsec, the image's {scale_in:.4g}: "
                        "give the PSF on the image's pixel scale"
                    )
    except (OSError, ValueError, TypeError, IndexError) as e:
        if isinstance(e, FitsError):
            raise
        raise FitsError(f"{path}: not a readable FITS PSF ({type(e).__name__}: {e})") from None
    if psf.shape[0] != psf.shape[1] or psf.shape[0] % 2 == 0:
        raise FitsError(f"{path}: the PSF is {psf.shape}, expected an odd square")
    if (psf < 0).any():
        raise FitsError(f"{path}: the PSF has negative pixels")
    return psf


def _read_mask_file(mask_file: str | os.PathLike, shape: tuple[int, ...]) -> np.ndarray:
    """The mask of a FITS file of its own (its ``MASK`` HDU, else its first image): the image's
    shape, finite numbers, non-zero where a pixel has no data."""
    from astropy.io import fits

    path = Path(mask_file)
    if not path.is_file():
        raise FitsError(f"{path}: no such mask file")
    try:
        with fits.open(path, memmap=False) as hdul:
            named = [h for h in hdul if h.name == MASK_HDU and h.is_image and h.header.get("NAXIS", 0) >= 2]
            candidates = named or [h for h in hdul if h.is_image and h.header.get("NAXIS", 0) >= 2]
            if not candidates:
                raise FitsError(f"{path}: no image HDU with data for the mask")
            mask = _array(candidates[0], path, "mask")
    except (OSError, ValueError, TypeError, IndexError) as e:
        if isinstance(e, FitsError):
            raise
        raise FitsError(f"{path}: not a readable FITS mask ({type(e).__name__}: {e})") from None
    if mask.shape != shape:
        raise FitsError(f"{path}: the mask is {mask.shape}, the image {shape}")
    return mask


def _read_hdus(hdul, path: Path, pixel_scale, psf_fwhm, noise_sigma, psf_file=None, mask_file=None):
    """The image, its pixel scale, the PSF (a file's, the PSF HDU, or None) and the noise map
    (or None), validated; pixels without data are NaN in both."""
    sci = _image_hdu(hdul, path)
    image = _array(sci, path, "image", blanks=True)
    scale_in = float(pixel_scale) if pixel_scale is not None else _pixel_scale(sci.header, path)
    if not (np.isfinite(scale_in) and scale_in > 0):
        raise FitsError(f"{path}: pixel scale must be a positive finite number, got {scale_in}")
    names = {h.name for h in hdul}
    if psf_file is not None:
        psf_in = _read_psf_file(psf_file, scale_in)
    else:
        psf_in = _array(hdul["PSF"], path, "PSF") if psf_fwhm is None and "PSF" in names else None
    noise_map = None
    if isinstance(noise_sigma, str) and noise_sigma != AUTO:
        raise FitsError(f"noise sigma must be a positive number or {AUTO!r}, got {noise_sigma[:20]!r}")
    found = [n for n in NOISE_HDUS if n in names]
    if noise_sigma is None or (noise_sigma == AUTO and found):  # auto scales a map where there is one
        if not found:
            raise FitsError(
                f"{path}: no noise given: pass a sigma (or auto, to measure it from the sky) or add a "
                "NOISE/SIGMA/ERR HDU"
            )
        noise_map = _array(hdul[found[0]], path, "noise", blanks=True)
        if noise_map.shape != image.shape:
            raise FitsError(f"{path}: the noise map is {noise_map.shape}, the image {image.shape}")
        if (noise_map <= 0).any():
            raise FitsError(
                f"{path}: the noise map has non-positive pixels (mark pixels without data NaN, or in a MASK HDU)"
            )
    elif noise_sigma != AUTO and not noise_sigma > 0:
        raise FitsError(f"noise sigma must be positive, got {noise_sigma}")
    good = np.isfinite(image) if noise_map is None else np.isfinite(image) & np.isfinite(noise_map)
    if mask_file is not None:
        good &= _read_mask_file(mask_file, image.shape) == 0
    elif MASK_HDU in names:
        mask = _array(hdul[MASK_HDU], path, "mask")
        if mask.shape != image.shape:
            raise FitsError(f"{path}: the mask is {mask.shape}, the image {image.shape}")
        good &= mask == 0
    if not good.any():
        raise FitsError(f"{path}: no pixel has data (all NaN, infinite or masked)")
    if not good.all():  # one convention from here on: NaN where there are no data
        image = np.where(good, image, np.nan)
        noise_map = None if noise_map is None else np.where(good, noise_map, np.nan)
    return image, scale_in, psf_in, noise_map


def read_fits_observation(
    path: str | os.PathLike,
    *,
    pixels: int,
    image_fov: float,
    pixel_scale: float | None = None,
    psf_fwhm: float | None = None,
    noise_sigma: float | str | None = None,
    flux_scale: float | None = None,
    psf_size: int = 21,
    psf_file: str | os.PathLike | None = None,
    mask_file: str | os.PathLike | None = None,
    center: tuple[float, float] | None = None,
    exposure_time: float | None = None,
) -> FitsObservation:
    """Read a lens observation from FITS onto the model's ``pixels`` x ``pixels`` grid of side
    ``image_fov`` arcsec (see the module). Explicit ``pixel_scale``, ``psf_fwhm`` (arcsec) or
    ``psf_file`` (a FITS PSF on the image's pixel scale), ``noise_sigma`` (image units, or
    ``"auto"``: measured from the sky on the model's grid, :func:`measure_sky`) and ``mask_file`` (a
    FITS mask of the image's shape, non-zero where there are no data) override the file; ``center``:
    the lens's 1-based FITS pixel ``(x, y)``, else the image's centre; ``exposure_time`` (s): add
    the source's Poisson noise to a background noise."""
    image, scale_in, psf_in, noise_map = load_fits(
        path,
        pixel_scale=pixel_scale,
        psf_fwhm=psf_fwhm,
        noise_sigma=noise_sigma,
        psf_file=psf_file,
        mask_file=mask_file,
        exposure_time=exposure_time,
    )
    return fits_onto_grid(
        Path(path),
        image,
        scale_in,
        psf_in,
        noise_map,
        pixels=pixels,
        image_fov=image_fov,
        psf_fwhm=psf_fwhm,
        noise_sigma=noise_sigma,
        flux_scale=flux_scale,
        psf_size=psf_size,
        center=center,
        exposure_time=exposure_time,
    )


def load_fits(
    path: str | os.PathLike,
    *,
    pixel_scale: float | None = None,
    psf_fwhm: float | None = None,
    noise_sigma: float | str | None = None,
    psf_file: str | os.PathLike | None = None,
    mask_file: str | os.PathLike | None = None,
    exposure_time: float | None = None,
) -> tuple[np.ndarray, float, np.ndarray | None, np.ndarray | None]:
    """The validated pieces of a FITS observation at its own resolution: the image (float64),
    its pixel scale (arcsec), the PSF (``psf_file``'s, else the PSF HDU; None when ``psf_fwhm``
    is given) and the noise map (None when ``noise_sigma`` is given without ``exposure_time``;
    with it, the background noise and the source's Poisson noise added in quadrature, see the
    module; the Poisson noise alone when ``noise_sigma`` is ``"auto"``: the background is measured
    on the model's grid by :func:`fits_onto_grid`). Pixels without data (NaN or infinite in the
    image or noise map, non-zero in ``mask_file``'s mask, else in a ``MASK`` HDU) are NaN in both."""
    from astropy.io import fits

    path = Path(path)
    if not path.is_file():
        raise FitsError(f"{path}: no such file")
    if psf_file is not None and psf_fwhm is not None:
        raise FitsError(f"{path}: give a PSF FWHM or a PSF file, not both")
    try:
        hdul = fits.open(path, memmap=False)
    except OSError as e:
        raise FitsError(f"{path}: not a readable FITS file ({e})") from None
    try:
        with hdul:
            image, scale_in, psf_in, noise_map = _read_hdus(
                hdul, path, pixel_scale, psf_fwhm, noise_sigma, psf_file, mask_file
            )
            unit = str(_observation_cards(hdul, path).get("BUNIT", ""))
    except (OSError, ValueError, TypeError, IndexError) as e:  # astropy on truncated or corrupt data
        if isinstance(e, FitsError):
            raise
        raise FitsError(f"{path}: truncated or corrupt FITS data ({type(e).__name__}: {e})") from None
    if psf_in is None and psf_fwhm is None:
        raise FitsError(f"{path}: no PSF given: pass a FWHM or a PSF file, or add a PSF HDU")
    if exposure_time is not None:
        poisson = _with_poisson_noise(path, image, unit, noise_map, noise_sigma, exposure_time)
        if noise_map is not None or noise_sigma != AUTO:  # else added on the grid, to the sky measured there
            noise_map = poisson
    return image, scale_in, psf_in, noise_map


CALIBRATED_UNITS = ("JY", "ERG", "W/", "MAG", "/SR")
"""Pieces of a ``BUNIT`` that mark a calibrated image, not counts: no Poisson noise from it."""


def _with_poisson_noise(path: Path, image, unit: str, noise_map, noise_sigma, exposure_time) -> np.ndarray:
    """The background noise (``noise_map``, else ``noise_sigma``) with the source's Poisson noise,
    ``image / exposure_time`` in variance where the image (in ``unit``, its ``BUNIT``) is positive
    (see the module)."""
    t = exposure_time
    if isinstance(t, bool) or not isinstance(t, numbers.Real) or not (np.isfinite(t) and t > 0):
        raise FitsError(f"exposure time must be a positive number of seconds, got {t!r}")
    if any(u in unit.upper().replace(" ", "") for u in CALIBRATED_UNITS):
        raise FitsError(
            f"{path}: the image is in {unit}, not electrons: its Poisson noise cannot come from an exposure time "
            "(a calibrated image's ERR map holds it already)"
        )
    if noise_map is not None:
        background = noise_map**2
    elif noise_sigma == AUTO:  # the source's part alone: the sky's is measured on the model's grid
        background = np.where(np.isfinite(image), 0.0, np.nan)
    else:
        background = float(noise_sigma) ** 2
    return np.sqrt(background + np.clip(image, 0.0, None) / float(t))  # NaN where there are no data


def fits_onto_grid(
    path: Path,
    image: np.ndarray,
    scale_in: float,
    psf_in: np.ndarray | None,
    noise_map: np.ndarray | None,
    *,
    pixels: int,
    image_fov: float,
    psf_fwhm: float | None,
    noise_sigma: float | str | None,
    flux_scale: float | None,
    psf_size: int = 21,
    center: tuple[float, float] | None = None,
    exposure_time: float | None = None,
    sky_warning: bool = True,
    correlation: bool = True,
) -> FitsObservation:
    """The pieces from :func:`load_fits` resampled onto ``pixels`` across ``image_fov`` around
    ``center`` (1-based FITS ``(x, y)``; the image's centre by default) and divided by the flux
    scale (see the module). With ``noise_sigma="auto"`` the noise is scaled to the sky's scatter
    there (:func:`measure_sky`): ``noise_map`` (the file's, with the source's Poisson noise when
    :func:`load_fits` had an exposure time) by a factor, else a uniform sigma per input pixel, to
    which the Poisson noise of ``exposure_time`` is added; a sky level off 0 is warned of unless
    ``sky_warning`` is False. The noise's correlation between neighbouring pixels there is measured
    from the sky (:func:`sky_correlation`) unless ``correlation`` is False."""

    scale_out = image_fov / pixels
    room = _field_room(path, image.shape, center)
    if room * scale_in < image_fov * (1 - FOV_TOLERANCE):
        if center is None:
            sides = " by ".join(f"{n * scale_in:.3g}" for n in image.shape[::-1])
            raise FitsError(
                f"{path}: the image covers {sides} arcsec, less than the model's field of {image_fov} arcsec"
            )
        raise FitsError(
            f"{path}: around the lens centre ({center[0]:g}, {center[1]:g}) the image holds a field of "
            f"{room * scale_in:.3g} arcsec, less than the model's {image_fov} arcsec"
        )
    x, y = _image_center(image.shape, center)
    shifts = (y - (image.shape[0] + 1) / 2, x - (image.shape[1] + 1) / 2)  # input pixels: rows, columns
    same_scale = np.isclose(scale_in, scale_out, rtol=1e-6)
    edges = [(n - pixels) / 2 + d for n, d in zip(image.shape, shifts, strict=True)]  # first output edge
    resampled = not (same_scale and all(np.isclose(e, round(e), rtol=0, atol=1e-9) for e in edges))
    wy, wx = (
        resample_matrix(n, scale_in, pixels, scale_out, d) for n, d in zip(image.shape, shifts, strict=True)
    )  # rows, columns
    auto = isinstance(noise_sigma, str) and noise_sigma == AUTO
    uniform = auto and noise_map is None  # a sigma per input pixel, else the file's map scaled
    if uniform:  # the noise for a unit sigma, scaled to the sky's below
        noise_sigma = 1.0
    good = np.isfinite(image)
    if noise_map is not None:
        good &= np.isfinite(noise_map)
    obs, noise = _resample(path, image, noise_map, noise_sigma, good, wy, wx, resampled)
    measured = scale_factor = None
    if auto:
        sky = measure_sky(obs / noise, np.broadcast_to(np.isfinite(noise), obs.shape))
        if sky.pixels < MIN_SKY_PIXELS:
            raise FitsError(
                f"{path}: {sky.pixels} pixels of sky on the model's grid, too few to measure the noise from (at "
                f"least {MIN_SKY_PIXELS}): give the noise instead of auto"
            )
        if not sky.sigma > 0:
            raise FitsError(f"{path}: the sky has no scatter to measure the noise from: give the noise instead of auto")
        if sky_warning and abs(sky.level) > SKY_LEVEL * sky.sigma:
            level = sky.level * float(np.median(noise[np.isfinite(noise)]))  # in the input's units
            warnings.warn(
                f"{path}: the sky is at {level:.3g} ({sky.level / sky.sigma:+.2f} sigma), not 0: subtract it first "
                "(the model has no background, and chi2_nu counts it)",
                stacklevel=3,
            )
        noise = noise * sky.sigma
        if not uniform:
            scale_factor = sky.sigma
        else:
            measured = sky.sigma
            if exposure_time is not None:  # the source's Poisson noise, on top of the sky's
                poisson = _with_poisson_noise(path, image, "", None, AUTO, exposure_time)
                noise = np.sqrt(noise**2 + _resample(path, image, poisson, None, good, wy, wx, True)[1] ** 2)

    if psf_in is not None:
        k = psf_in.shape[0]
        if psf_in.shape[0] != psf_in.shape[1] or k % 2 == 0:
            raise FitsError(f"{path}: the PSF HDU is {psf_in.shape}, expected an odd square")
        if (psf_in < 0).any():
            raise FitsError(f"{path}: the PSF HDU has negative pixels")
        if k * scale_in > image_fov:
            raise FitsError(
                f"{path}: the PSF HDU spans {k * scale_in:.3g} arcsec, more than the model's field of "
                f"{image_fov} arcsec"
            )
        if abs(psf_in.sum() - 1) > 1e-3 and psf_in.sum() > 0:
            warnings.warn(f"{path}: the PSF HDU sums to {psf_in.sum():.6g}; renormalised to 1", stacklevel=3)
        if np.isclose(scale_in, scale_out, rtol=1e-6):
            psf = psf_in
        else:
            k_out = int(np.ceil(k * scale_in / scale_out)) | 1
            wp = resample_matrix(k, scale_in, k_out, scale_out)
            psf = wp @ psf_in @ wp.T
        if psf.sum() <= 0:
            raise FitsError(f"{path}: the PSF has no positive flux")
        psf_t = torch.from_numpy(psf / psf.sum()).float()[None, None]
    else:
        if not psf_fwhm > 0:
            raise FitsError(f"PSF FWHM must be positive, got {psf_fwhm}")
        if psf_fwhm > image_fov:
            raise FitsError(
                f"{path}: a PSF FWHM of {psf_fwhm:g} arcsec is wider than the model's field of {image_fov:g} arcsec "
                "(is it in arcsec?)"
            )
        psf_t = gaussian_psf(torch.tensor([float(psf_fwhm)]), scale_out, psf_size)

    scale = float(flux_scale) if flux_scale is not None else float(obs.max())
    if not scale > 0:
        raise FitsError(f"{path}: the image has no positive flux to normalise by; pass a flux scale")
    peak = float(np.abs(obs).max()) / scale
    if not peak <= MAX_ABS:
        raise FitsError(
            f"{path}: divided by the flux scale {scale:.3g} the image reaches {peak:.3g}, beyond {MAX_ABS:g}: "
            "pass a flux scale near the arcs' peak"
        )
    smallest = float(np.min(noise)) / scale
    if not smallest >= MIN_NOISE:
        raise FitsError(
            f"{path}: divided by the flux scale {scale:.3g} the noise sigma goes down to {smallest:.3g}, below "
            f"{MIN_NOISE:g} (chi2 would overflow float32): is the noise in the image's units?"
        )
    noise_t = torch.from_numpy(noise / scale).float()
    if noise_t.dim() == 2:
        noise_t = noise_t[None, None]
    rho = sky_correlation(obs / noise, np.broadcast_to(np.isfinite(noise), obs.shape)) if correlation else None
    return FitsObservation(
        observation=torch.from_numpy(obs / scale).float()[None, None],
        psf=psf_t,
        noise=noise_t,
        flux_scale=scale,
        pixel_scale=scale_in,
        resampled=bool(resampled),
        sky_sigma=measured,
        noise_scale=scale_factor,
        noise_correlation=rho,
    )


def _resample(path, image, noise_map, noise_sigma, good, wy, wx, resampled) -> tuple[np.ndarray, np.ndarray]:
    """Image and noise (a map, or one sigma where the image is only cut) on the output grid."""
    if not good.all():
        return _resample_masked(path, image, noise_map, noise_sigma, good, wy, wx)
    obs = wy @ image @ wx.T
    if noise_map is not None:
        return obs, np.sqrt((wy**2) @ noise_map**2 @ (wx**2).T)
    if not resampled:
        return obs, np.array([noise_sigma])
    return obs, np.sqrt((wy**2).sum(axis=1)[:, None] * (wx**2).sum(axis=1)[None, :]) * noise_sigma


def _resample_masked(path, image, noise_map, noise_sigma, good, wy, wx) -> tuple[np.ndarray, np.ndarray]:
    """Image and noise map on the output grid from the good input pixels alone: each output
    pixel the weighted mean of the good data it overlaps (its variance that mean's), scaled as if
    fully covered; masked (0, +inf noise) where they cover less than ``MIN_COVER`` of it."""
    g = good.astype(np.float64)
    full = wy.sum(axis=1)[:, None] * wx.sum(axis=1)[None, :]  # an output pixel's overlap with the image
    cover = wy @ g @ wx.T
    fitted = cover >= MIN_COVER * full
    if not fitted.any():
        raise FitsError(
            f"{path}: no pixel of the model's field is at least {MIN_COVER:.0%} covered by data (NaN or masked)"
        )
    gain = np.where(fitted, full / np.where(fitted, cover, 1.0), 0.0)
    obs = (wy @ np.where(good, image, 0.0) @ wx.T) * gain
    var_in = np.where(good, noise_map, 0.0) ** 2 if noise_map is not None else g * float(noise_sigma) ** 2
    var = ((wy**2) @ var_in @ (wx**2).T) * gain**2
    return obs, np.where(fitted, np.sqrt(var), np.inf)


def write_fits_reconstruction(
    path: str | os.PathLike,
    maps: dict[str, np.ndarray],
    header: dict[str, float | int | str],
    *,
    wcs: dict[str, float | str] | None = None,
    on_sky: tuple[str, ...] = (),
    bunit: str | None = None,
    in_units: tuple[str, ...] = (),
) -> Path:
    """Write named 2-D maps as image extensions (after an empty primary HDU holding ``header``),
    atomically; the maps named in ``on_sky`` (those on the image's grid) carry ``wcs``'s cards,
    those named in ``in_units`` (in the observation's units) ``BUNIT = bunit``."""
    from astropy.io import fits

    path = Path(path)
    primary = fits.PrimaryHDU()
    for k, v in header.items():
        primary.header[k[:8].upper()] = v
    hdus = [primary]
    for k, v in maps.items():
        hdu = fits.ImageHDU(np.asarray(v, dtype=np.float32), name=k.upper())
        if wcs is not None and k in on_sky:
            hdu.header.update(wcs)
        if bunit is not None and k in in_units:
            hdu.header["BUNIT"] = bunit
        hdus.append(hdu)
    with written(path) as tmp:
        fits.HDUList(hdus).writeto(tmp, overwrite=True)
    return path
