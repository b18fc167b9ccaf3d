"""Background sources: COSMOS galaxies through GalSim, and GalSim-drawn synthetic galaxies (SPEC 3).

Every source goes through the same preparation (section 3.1): a ``stamp x stamp`` image at
``pixel_scale`` arcsec per pixel, background subtracted (median of the stamp's border), rotated
by k * 90 degrees, shifted, cropped to ``pixels x pixels`` and normalised to [0, 1].

Pixel scale: the paper draws 0.03" pixels and uses the 128-pixel crop (3.84") as the 3.0"
source field, which shrinks every galaxy by 3.0 / 3.84 = 0.78 (equivalently, moves it further
away). That is the default, for fidelity; ``pixel_scale=3.0 / 128`` keeps angular sizes.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["CosmosSources", "SourceDataError", "SourceStampConfig", "prepare_source", "synthetic_galaxy_stamp"]

DOWNLOAD_HINT = "get the catalogue with `galsim_download_cosmos -s 23.5` and pass its directory"


class SourceDataError(ValueError):
    """The COSMOS catalogue is missing, incomplete or unreadable."""


@dataclass(frozen=True)
class SourceStampConfig:
    """Drawing and preparation of source stamps (defaults: the paper's)."""

    stamp: int = 158
    """Pixels across the drawn stamp before the crop (SPEC 2.2: 158)."""
    pixels: int = 128
    """Pixels across the prepared source (Table 1: 128)."""
    pixel_scale: float = 0.03
    """Arcsec per stamp pixel (SPEC 2.2: 0.03, COSMOS's HST scale)."""
    border: int = 8
    """Width of the stamp's border whose median is the background subtracted, pixels."""
    max_shift: int = 8
    """Largest random shift of the crop in each direction, pixels."""
    hst_psf_fwhm: float = 0.09
    """FWHM of the Gaussian PSF the parametric and synthetic galaxies are drawn with, arcsec."""

    @classmethod
    def at_resolution(cls, pixels: int, **overrides) -> SourceStampConfig:
        """The paper's stamps on ``pixels`` pixels covering the same angle: the stamp, the
        border and the largest shift scale with ``pixels / 128``, the pixel scale inversely."""
        factor = 128 / pixels
        scaled = {
            "stamp": round(158 / factor),
            "pixels": pixels,
            "pixel_scale": 0.03 * factor,
            "border": max(2, round(8 / factor)),
            "max_shift": max(1, round(8 / factor)),
        }
        return cls(**{**scaled, **overrides})

    def __post_init__(self) -> None:
        if self.stamp < self.pixels:
            raise ValueError(f"stamp ({self.stamp}) must be at least pixels ({self.pixels})")
        if 2 * self.max_shift > self.stamp - self.pixels:
            raise ValueError(
                f"max_shift {self.max_shift} does not fit in a {self.stamp} stamp cropped to {self.pixels}"
            )


def prepare_source(
    stamp: np.ndarray,
    rng: np.random.Generator,
    config: SourceStampConfig = SourceStampConfig(),
    *,
    denoise: Callable[[np.ndarray], np.ndarray] | None = None,
):
    """Background-subtract, rotate, shift, crop and normalise one stamp to ``(pixels, pixels)`` in [0, 1].

    ``denoise`` (e.g. a trained lensprior denoiser) maps the cropped stamp, divided by its peak and
    not yet clipped, to a denoised one; the result is then renormalised and clipped to [0, 1].
    Returns ``None`` for a stamp with no positive signal after background subtraction.
    """
    img = np.asarray(stamp, dtype=np.float64)
    if img.shape != (config.stamp, config.stamp):
        raise ValueError(f"stamp must be {config.stamp} x {config.stamp}, got {img.shape}")
    if not np.isfinite(img).all():
        raise ValueError("stamp contains NaN or infinite values")
    b = config.border
    edge = np.concatenate([img[:b].ravel(), img[-b:].ravel(), img[b:-b, :b].ravel(), img[b:-b, -b:].ravel()])
    img = img - np.median(edge)
    img = np.rot90(img, int(rng.integers(0, 4)))
    di, dj = (int(v) for v in rng.integers(-config.max_shift, config.max_shift + 1, 2))
    o = (config.stamp - config.pixels) // 2
    crop = img[o + di : o + di + config.pixels, o + dj : o + dj + config.pixels]
    peak = crop.max()
    if not peak > 0:
        return None
    img = crop / peak
    if denoise is not None:
        img = np.asarray(denoise(img), dtype=np.float64)
        if img.shape != crop.shape or not np.isfinite(img).all():
            raise ValueError(f"the denoiser returned {img.shape} (or non-finite values) for a {crop.shape} stamp")
        peak = img.max()
        if not peak > 0:
            return None
        img = img / peak
    return np.clip(img, 0.0, 1.0)


def synthetic_galaxy_stamp(rng: np.random.Generator, config: SourceStampConfig = SourceStampConfig()) -> np.ndarray:
    """A GalSim-drawn galaxy: a Sersic bulge, an exponential disc and star-forming knots.

    Bulge n ~ U(1.5, 4), half-light radius 0.08-0.3"; disc 0.2-0.7"; bulge fraction
    U(0.05, 0.5); 0-60 random knots (``galsim.RandomKnots``) carrying 0-40 % of the disc's flux;
    both sheared to axis ratios 0.4-1 at random angles; convolved with a Gaussian of the
    HST F814W FWHM (0.09") and drawn without noise on the stamp grid. Fully determined by
    ``rng``.
    """
    import galsim

    seed = int(rng.integers(1, 2**31 - 1))
    bulge_frac = rng.uniform(0.05, 0.5)
    bulge = galsim.Sersic(n=rng.uniform(1.5, 4.0), half_light_radius=rng.uniform(0.08, 0.3), flux=bulge_frac)
    disc_r = rng.uniform(0.2, 0.7)
    knot_frac = rng.uniform(0.0, 0.4)
    disc_shear = _shear(rng)
    parts = [
        bulge.shear(_shear(rng)),
        galsim.Exponential(half_light_radius=disc_r, flux=(1 - bulge_frac) * (1 - knot_frac)).shear(disc_shear),
    ]
    n_knots = int(rng.integers(0, 61))
    if n_knots and knot_frac > 0:
        knots = galsim.RandomKnots(
            n_knots, half_light_radius=disc_r, flux=(1 - bulge_frac) * knot_frac, rng=galsim.BaseDeviate(seed)
        )
        parts.append(knots.shear(disc_shear))
    galaxy = galsim.Add(parts).shift(*rng.uniform(-0.1, 0.1, 2))
    psf = galsim.Gaussian(fwhm=config.hst_psf_fwhm)
    img = galsim.Convolve(galaxy, psf).drawImage(
        nx=config.stamp, ny=config.stamp, scale=config.pixel_scale, method="no_pixel"
    )
    return img.array.astype(np.float64)


def _shear(rng: np.random.Generator):
    import galsim

    return galsim.Shear(q=rng.uniform(0.4, 1.0), beta=rng.uniform(0, np.pi) * galsim.radians)


class CosmosSources:
    """COSMOS galaxies from a user's copy of GalSim's catalogue (``galsim.COSMOSCatalog``).

    Parameters
    ----------
    directory
        Where ``galsim_download_cosmos`` put the catalogue.
    sample
        "23.5" or "25.2"; names the default file ``real_galaxy_catalog_{sample}.fits``.
    file_name
        Another catalogue file in ``directory`` (e.g. an example catalogue).
    exclusion_level
        GalSim's: "none", "bad_stamp", "bad_fits", "marginal" (default, needs the
        ``_selection`` file).
    min_flux
        Minimum Sersic-fit flux (needs the ``_fits`` file); 50 in the paper.
    use_real
        Draw the real HST images convolved with their original PSF (the paper's choice); with
        False, draw the parametric fits convolved with an HST-like Gaussian PSF.
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        *,
        sample: str = "23.5",
        file_name: str | None = None,
        exclusion_level: str = "marginal",
        min_flux: float = 50.0,
        use_real: bool = True,
        config: SourceStampConfig = SourceStampConfig(),
    ) -> None:
        import galsim

        d = Path(directory)
        if not d.is_dir():
            raise SourceDataError(f"COSMOS directory {d} does not exist; {DOWNLOAD_HINT}")
        name = file_name or f"real_galaxy_catalog_{sample}.fits"
        cat_path = d / name
        if not cat_path.is_file():
            raise SourceDataError(f"no COSMOS catalogue {name} in {d}; {DOWNLOAD_HINT}")
        stem = cat_path.name[: -len(".fits")] if cat_path.name.endswith(".fits") else cat_path.name
        levels = ("none", "bad_stamp", "bad_fits", "marginal")
        if exclusion_level not in levels:
            raise SourceDataError(f"exclusion level must be one of {levels}, got {exclusion_level!r}")
        if exclusion_level in ("marginal", "bad_stamp") and not (d / f"{stem}_selection.fits").is_file():
            raise SourceDataError(
                f"exclusion level {exclusion_level!r} needs {stem}_selection.fits in {d} "
                f"(or use --exclusion-level none); {DOWNLOAD_HINT}"
            )
        if use_real and not (d / "acs_I_unrot_sci_20_cf.fits").is_file():
            raise SourceDataError(
                f"real galaxies need the noise file acs_I_unrot_sci_20_cf.fits in {d}; {DOWNLOAD_HINT}"
            )
        try:
            self.catalog = galsim.COSMOSCatalog(
                file_name=name, dir=str(d), exclusion_level=exclusion_level, min_flux=min_flux, use_real=use_real
            )
        except (OSError, KeyError, ValueError, galsim.GalSimError) as e:
            raise SourceDataError(f"cannot read the COSMOS catalogue {cat_path}: {type(e).__name__}: {e}") from None
        self.use_real = use_real
        self.config = config
        self.path = cat_path
        if len(self) == 0:
            raise SourceDataError(
                f"{cat_path}: no galaxy passes exclusion level {exclusion_level!r} and min flux {min_flux}"
            )
        if use_real:  # refused now, not at the first galaxy drawn from a missing file
            real, used = self.catalog.real_cat, np.asarray(self.catalog.orig_index)
            files = {
                str(f).strip() for names in (real.gal_file_name, real.psf_file_name) for f in np.asarray(names)[used]
            }
            missing = sorted(Path(f).name for f in files if not Path(f).is_file())
            if missing:
                raise SourceDataError(
                    f"{cat_path}: no {', '.join(missing)} in {d}, which its real galaxies are drawn from (the "
                    f"parametric fits, --parametric, need only the catalogue); {DOWNLOAD_HINT}"
                )

    def __len__(self) -> int:
        return int(self.catalog.nobjects)

    def stamp(self, index: int, rng: np.random.Generator) -> np.ndarray:
        """Galaxy ``index`` drawn on the stamp grid (before preparation)."""
        import galsim

        c = self.config
        if not 0 <= index < len(self):
            raise IndexError(f"galaxy index {index} out of range 0..{len(self) - 1}")
        try:
            if self.use_real:
                seed = int(rng.integers(1, 2**31 - 1))
                gal = self.catalog.makeGalaxy(
                    index, gal_type="real", noise_pad_size=c.stamp * c.pixel_scale, rng=galsim.BaseDeviate(seed)
                )
                profile = galsim.Convolve(gal, gal.original_psf)
            else:
                gal = self.catalog.makeGalaxy(index, gal_type="parametric")
                profile = galsim.Convolve(gal, galsim.Gaussian(fwhm=c.hst_psf_fwhm))
            img = profile.drawImage(nx=c.stamp, ny=c.stamp, scale=c.pixel_scale, method="no_pixel")
        except OSError as e:
            raise SourceDataError(f"cannot draw COSMOS galaxy {index} from {self.path}: {e}; {DOWNLOAD_HINT}") from None
        return img.array.astype(np.float64)
