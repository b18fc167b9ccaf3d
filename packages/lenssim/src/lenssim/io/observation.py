"""Observed lenses as a reconstruction sees them: images, PSFs and noise on a grid.

An :class:`Observation` comes from a FITS file (one lens, at the file's own resolution until it is
put on a model's grid) or from a lens dataset (a batch, already on its grid, with the truth when
the file holds it). ``on_grid(pixels, image_fov)`` is what a model calls: a FITS observation is
resampled there by exact pixel-area overlap (:mod:`lenssim.io.fits`); a dataset must already be on
that grid.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lenssim.geometry import same_fov
from lenssim.io.datasets import DatasetError, dataset_info, read_dataset
from lenssim.io.fits import (
    _field_room,
    fits_onto_grid,
    load_fits,
    read_observation_cards,
    read_sky_wcs,
    wcs_on_grid,
    wcs_pixel_scale,
)

__all__ = ["Observation"]


def _measured(o) -> dict[str, Any]:
    """What was measured on the grid of ``o`` (a :class:`FitsObservation`): by ``noise_sigma="auto"``,
    and the noise's correlation (as nested lists, for JSON)."""
    out: dict[str, Any] = {k: getattr(o, k) for k in ("sky_sigma", "noise_scale") if getattr(o, k) is not None}
    if o.noise_correlation is not None:
        out["noise_correlation"] = o.noise_correlation.tolist()
    return out


@dataclass
class Observation:
    """``observation (B, 1, N, N)`` across ``image_fov`` arcsec, ``psf (B, 1, k, k)`` on the same
    pixel scale, ``noise`` a sigma per lens ``(B,)`` or a noise map ``(B, 1, N, N)`` (+inf where a
    pixel has no data; the observation is 0 there), all divided by ``flux_scale`` (one number, or
    one per lens ``(B,)`` for lenses stacked from several files, whose origins are then
    ``origin["lenses"]``). ``source_fov`` is the source plane's field when the data fix it
    (datasets); ``truth`` holds ``source`` and ``kappa`` when known."""

    observation: torch.Tensor
    psf: torch.Tensor
    noise: torch.Tensor
    image_fov: float
    source_fov: float | None = None
    flux_scale: float | torch.Tensor = 1.0
    truth: dict[str, torch.Tensor] = field(default_factory=dict)
    origin: dict[str, Any] = field(default_factory=dict)
    _fits: tuple | None = field(default=None, repr=False)

    @property
    def pixels(self) -> int:
        return int(self.observation.shape[-1])

    @property
    def pixel_scale(self) -> float:
        """Arcsec per pixel."""
        return self.image_fov / self.pixels

    def __len__(self) -> int:
        return int(self.observation.shape[0])

    def __getitem__(self, rows: slice) -> Observation:
        """The lenses ``rows`` (a slice), with their noise and truth. A FITS observation not yet
        on a grid can only be taken whole (it is resampled from its file)."""
        if not isinstance(rows, slice):
            raise TypeError(f"select lenses with a slice, got {type(rows).__name__}")
        kept = range(len(self))[rows]
        if self._fits is not None and len(kept) != len(self):
            raise ValueError("put a FITS observation on a grid (on_grid) before selecting its lenses")
        origin = self.origin
        if "lenses" in origin:
            origin = {**origin, "lenses": origin["lenses"][rows]}
        return replace(
            self,
            observation=self.observation[rows],
            psf=self.psf[rows],
            noise=self.noise[rows],
            flux_scale=self.flux_scale[rows] if isinstance(self.flux_scale, torch.Tensor) else self.flux_scale,
            truth={k: v[rows] for k, v in self.truth.items()},
            origin=origin,
        )

    def lens_scale(self, index: int) -> float:
        """The flux scale lens ``index`` was divided by."""
        scale = self.flux_scale
        return float(scale[index]) if isinstance(scale, torch.Tensor) else float(scale)

    def lens_origin(self, index: int) -> dict[str, Any]:
        """Where lens ``index`` came from: its own entry of ``origin["lenses"]`` for stacked
        lenses, else ``origin``."""
        return self.origin["lenses"][index] if "lenses" in self.origin else self.origin

    @classmethod
    def stack(cls, observations: list[Observation], *, origin: dict[str, Any] | None = None) -> Observation:
        """The lenses of ``observations`` (each already on one grid, with one source field) as one
        batch: PSFs zero-padded to the widest (the same convolution), sigmas made maps when any
        lens has a map, a flux scale per lens, each lens's origin in ``origin["lenses"]``."""
        if not observations:
            raise ValueError("no observations to stack")
        first = observations[0]
        for o in observations:
            if o._fits is not None:
                raise ValueError("put FITS observations on a grid (on_grid) before stacking them")
            if o.pixels != first.pixels or not same_fov(o.image_fov, first.image_fov):
                raise DatasetError(
                    f"observations on different grids: {first.pixels} pixels across {first.image_fov:g} arcsec, "
                    f"{o.pixels} across {o.image_fov:g}"
                )
            if (o.source_fov is None) != (first.source_fov is None) or (
                o.source_fov is not None and not same_fov(o.source_fov, first.source_fov)
            ):
                raise DatasetError(f"observations with different source fields: {first.source_fov}, {o.source_fov}")
            if set(o.truth) != set(first.truth):
                raise ValueError("observations with different truths: stack those that all have it, or none")
        k = max(o.psf.shape[-1] for o in observations)
        psfs = [torch.nn.functional.pad(o.psf, [(k - o.psf.shape[-1]) // 2] * 4) for o in observations]
        n = first.pixels
        if all(o.noise.dim() == 1 for o in observations):
            noise = torch.cat([o.noise for o in observations])
        else:
            as_map = [
                o.noise.reshape(-1, 1, 1, 1).expand(-1, 1, n, n) if o.noise.dim() == 1 else o.noise
                for o in observations
            ]
            noise = torch.cat(as_map)
        scales = [torch.tensor([o.lens_scale(i) for i in range(len(o))], dtype=torch.float64) for o in observations]
        lenses = [o.lens_origin(i) for o in observations for i in range(len(o))]
        return cls(
            observation=torch.cat([o.observation for o in observations]),
            psf=torch.cat(psfs),
            noise=noise,
            image_fov=first.image_fov,
            source_fov=first.source_fov,
            flux_scale=torch.cat(scales),
            truth={key: torch.cat([o.truth[key] for o in observations]) for key in first.truth},
            origin={**(origin or {}), "lenses": lenses},
        )

    @classmethod
    def from_fits(
        cls,
        path: str | os.PathLike,
        *,
        psf_fwhm: float | None = None,
        noise_sigma: float | str | None = None,
        pixel_scale: float | None = None,
        flux_scale: float | None = None,
        psf_file: str | os.PathLike | None = None,
        mask_file: str | os.PathLike | None = None,
        center: tuple[float, float] | None = None,
        exposure_time: float | None = None,
    ) -> Observation:
        """One lens from FITS, at the file's own resolution (see :mod:`lenssim.io.fits` for the
        layout; the arguments override the file; ``psf_file``: a FITS PSF on the image's pixel
        scale; ``mask_file``: a FITS mask of the image's shape, non-zero where there are no
        data; ``center``: the lens's 1-based FITS pixel ``(x, y)``, else the image's centre, which
        the model's field is centred on; ``exposure_time``: seconds, to add the source's Poisson
        noise to a background noise; ``noise_sigma="auto"``: the noise measured from the sky on
        the grid the lens is put on, a sigma in ``origin["sky_sigma"]``, or for a file with a noise map
        the factor it was scaled by in ``origin["noise_scale"]``). Divided by
        ``flux_scale`` (default: the peak of the image on the grid it is finally put on). A
        celestial WCS in the header is kept in ``origin["wcs"]``
        (:func:`lenssim.io.fits.read_sky_wcs`) and follows the pixels onto the grid; the unit,
        telescope, instrument, filter, target and date in ``origin["cards"]``
        (:func:`lenssim.io.fits.read_observation_cards`); ``psf_fwhm``, ``noise_sigma`` and
        ``exposure_time``, when given, in ``origin`` under their names."""
        path = Path(path)
        image, scale, psf_in, noise_map = load_fits(
            path,
            pixel_scale=pixel_scale,
            psf_fwhm=psf_fwhm,
            noise_sigma=noise_sigma,
            psf_file=psf_file,
            mask_file=mask_file,
            exposure_time=exposure_time,
        )
        # the widest square around the centre (a crop, or a resampling by a fraction of a pixel)
        n = max(1, int(np.floor(_field_room(path, image.shape, center) + 1e-9)))
        native = fits_onto_grid(
            path,
            image,
            scale,
            psf_in,
            noise_map,
            pixels=n,
            image_fov=n * scale,
            psf_fwhm=psf_fwhm,
            noise_sigma=noise_sigma,
            flux_scale=flux_scale,
            center=center,
            exposure_time=exposure_time,
            sky_warning=False,  # said where it counts: on the grid the lens is put on
            correlation=False,  # measured there too (the file's whole field may be large)
        )
        options = {
            "psf_fwhm": psf_fwhm,
            "noise_sigma": noise_sigma,
            "flux_scale": flux_scale,
            "center": center,
            "exposure_time": exposure_time,
        }
        origin: dict[str, Any] = {"fits": str(path), "pixel_scale": scale}
        if center is not None:
            origin["center"] = [float(v) for v in center]
        given = {"psf_fwhm": psf_fwhm, "noise_sigma": noise_sigma, "exposure_time": exposure_time}
        origin.update({k: v if isinstance(v, str) else float(v) for k, v in given.items() if v is not None})
        origin.update(_measured(native))  # on this grid; on_grid measures it again on its own
        wcs = read_sky_wcs(path)
        if wcs is not None and not np.isclose(wcs_pixel_scale(wcs), scale, rtol=1e-3):
            warnings.warn(
                f"{path}: the header's WCS has {wcs_pixel_scale(wcs):.4g} arcsec pixels, not the {scale:.4g} given: "
                "the outputs carry no sky coordinates",
                stacklevel=2,
            )
        elif wcs is not None:  # on the file's own grid; on_grid moves it with the pixels
            origin["wcs"] = wcs
        cards = read_observation_cards(path)
        if cards:  # the unit, telescope, instrument, filter, target, date: for the outputs' headers
            origin["cards"] = cards
        return cls(
            observation=native.observation,
            psf=native.psf,
            noise=native.noise,
            image_fov=n * scale,
            flux_scale=native.flux_scale,
            origin=origin,
            _fits=(path, image, scale, psf_in, noise_map, options),
        )

    @classmethod
    def from_dataset(cls, path: str | os.PathLike, *, rows: slice | None = None) -> Observation:
        """Lenses of a lens dataset (``rows``: a slice of them; all by default), with the truth
        when the file holds ``source`` and ``kappa`` and a noise map when it holds ``noise_map``."""
        path = Path(path)
        fields = dataset_info(path)["fields"]
        wanted = ["observation", "psf", "noise_sigma"] + [k for k in ("source", "kappa", "noise_map") if k in fields]
        data = read_dataset(path, wanted, required_attrs=("image_fov", "source_fov"), rows=rows)  # rows only
        noise = data["noise_map"] if "noise_map" in data else data["noise_sigma"]
        if data["observation"].shape[0] == 0:
            raise DatasetError(f"{path}: holds no lenses{'' if rows is None else ' in ' + str(rows)}")
        return cls(
            observation=data["observation"],
            psf=data["psf"],
            noise=noise,
            image_fov=float(data["attrs"]["image_fov"]),
            source_fov=float(data["attrs"]["source_fov"]),
            truth={k: data[k] for k in ("source", "kappa") if k in data},
            origin={"dataset": str(path)},
        )

    def on_grid(self, pixels: int, image_fov: float, *, psf_size: int = 21) -> Observation:
        """This observation on ``pixels`` across ``image_fov`` arcsec: resampled from the FITS
        file when it came from one (exact pixel-area overlap, flux scale applied there), else
        itself when it is already there; anything else on another grid is refused."""
        if self._fits is not None:
            path, image, scale, psf_in, noise_map, options = self._fits
            o = fits_onto_grid(
                path, image, scale, psf_in, noise_map, pixels=pixels, image_fov=image_fov, psf_size=psf_size, **options
            )
            noise = o.noise if o.noise.dim() == 4 else o.noise.reshape(1)
            origin = {**self.origin, "resampled": o.resampled}
            origin.update(_measured(o))
            if "wcs" in origin:
                origin["wcs"] = wcs_on_grid(origin["wcs"], image.shape, scale, pixels, image_fov, options["center"])
            return replace(  # on its grid now: slicing or moving it no longer goes back to the file
                self,
                observation=o.observation,
                psf=o.psf,
                noise=noise,
                image_fov=float(image_fov),
                flux_scale=o.flux_scale,
                origin=origin,
                _fits=None,
            )
        if self.pixels != pixels or not same_fov(self.image_fov, image_fov):
            where = self.origin.get("dataset", "the observation")
            raise DatasetError(
                f"{where}: {self.pixels} pixels across {self.image_fov:g} arcsec, the model works on {pixels} across "
                f"{image_fov:g}: simulate the data at the model's grid, or give the observation as FITS"
            )
        return self

    def to(self, device: torch.device | str) -> Observation:
        move = {"observation": self.observation, "psf": self.psf, "noise": self.noise}
        return replace(
            self, **{k: v.to(device) for k, v in move.items()}, truth={k: v.to(device) for k, v in self.truth.items()}
        )

    def noise_correlation(self) -> torch.Tensor | None:
        """The noise's correlation between pixels of each lens as measured from its sky
        (``origin["noise_correlation"]``, :func:`lenssim.io.fits.sky_correlation`), ``(B, K, K)``
        for :func:`lenssim.binned_chi2_nu`, K the widest measured; a lens without one (too little
        sky) taken as white; ``(1, K, K)`` for one origin shared by every lens. ``None`` when no lens
        has one: white noise, as simulated."""
        if "lenses" not in self.origin:  # one origin (a FITS lens, a dataset): one table or none
            shared = self.origin.get("noise_correlation")
            return None if shared is None else torch.tensor(shared, dtype=torch.float64)[None]
        found = [o.get("noise_correlation") for o in self.origin["lenses"]]
        if all(c is None for c in found):
            return None
        k = max(len(c) for c in found if c is not None)
        out = torch.zeros(len(self), k, k, dtype=torch.float64)
        for i, c in enumerate(found):
            c = torch.tensor([[1.0]] if c is None else c, dtype=torch.float64)
            at = (k - c.shape[-1]) // 2
            out[i, at : at + c.shape[-1], at : at + c.shape[-1]] = c
        return out

    def noise_sigma(self) -> torch.Tensor:
        """One sigma per lens ``(B,)``: the noise map's median over the pixels with data where
        there is one."""
        if self.noise.dim() == 4:
            noise = self.noise.flatten(1)
            return torch.where(torch.isfinite(noise), noise, torch.nan).nanmedian(dim=1).values
        return self.noise.reshape(-1)

    def arrays(self) -> dict[str, np.ndarray]:
        """The dataset fields of these lenses (``noise_map`` beside ``noise_sigma`` when the
        noise is a map, ``flux_scale`` when there is one per lens), as numpy arrays."""
        out = {"observation": self.observation, "psf": self.psf, "noise_sigma": self.noise_sigma()}
        if self.noise.dim() == 4:
            out["noise_map"] = self.noise
        if isinstance(self.flux_scale, torch.Tensor):
            out["flux_scale"] = self.flux_scale
        out.update(self.truth)
        return {k: v.detach().cpu().numpy() for k, v in out.items()}
