"""The front door: load a trained RIM, reconstruct observations, fine-tune them, save the result.

    rim = lensrim.load("runs/rim")
    obs = lenssim.Observation.from_fits("lens.fits", psf_fwhm=0.08)
    rec = lensrim.reconstruct(rim, obs, finetune=lensrim.FineTune(source_vae, kappa_vae))
    rec.source, rec.kappa, rec.chi2_nu
    rec.to_fits("out.fits")

The observation is put on the RIM's own grid (its config holds pixels and both fields of view);
without ``finetune`` the result is the RIM's estimate after its T steps.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

import lenssim
from lenscore.config import SettingError
from lensrim.finetune import FineTuneConfig, check_prior, finetune
from lensrim.metrics import residual_block
from lensrim.model import RIM
from lensrim.training import load_rim

__all__ = [
    "FineTune",
    "NOISE_MODEL",
    "RECONSTRUCTION_FIELDS",
    "RECONSTRUCTION_OPTIONAL",
    "Reconstruction",
    "check_dataset",
    "check_priors",
    "finetune_to_file",
    "load",
    "load_observations",
    "output_attrs",
    "read_reconstruction",
    "reconstruct",
    "reconstruct_to_file",
]

NOISE_MODEL = {
    "psf_fwhm": "PSFFWHM",
    "noise_sigma": "NOISESIG",
    "exposure_time": "POISSEXP",
    "sky_sigma": "SKYSIGMA",
    "noise_scale": "NOISESCL",
}
"""The options of a FITS observation that its file does not hold, kept with its reconstruction
(HDF5 ``fits`` attribute) and written into its FITS copy's primary header as these cards: the
Gaussian PSF's FWHM (arcsec), the noise sigma (the input's units, or ``auto``), the exposure time
(s) of the source's Poisson noise, and what ``auto`` measured: a sigma (the input's units, per
input pixel) or, for a file with a noise map, the factor the map was scaled by."""
RECONSTRUCTION_FIELDS = ("observation", "psf", "noise_sigma", "source_pred", "kappa_pred", "chi2_nu")
"""The fields every reconstruction file holds (:meth:`Reconstruction.arrays` writes them)."""
RECONSTRUCTION_OPTIONAL = (
    "noise_map",
    "source",
    "kappa",
    "source_baseline",
    "kappa_baseline",
    "chi2_nu_baseline",
    "finetune_steps",
    "flux_scale",
)
"""The fields it holds when known: a noise map, the truth, the baseline before fine-tuning, a flux
scale per lens (lenses from a catalogue of FITS files)."""


KEPT = ("wcs", "cards", *NOISE_MODEL, "noise_correlation")
"""What a reconstruction keeps of a FITS observation's origin: for its FITS copy, and the noise's
correlation measured from the sky, for the binned chi2_nu (:func:`lenssim.binned_chi2_nu`)."""


def _fits_origin(fits: object, path: Path) -> dict[str, Any]:
    """The :data:`KEPT` part of a reconstruction file's FITS origin (of one lens), checked: it is
    written into FITS headers later."""
    if not isinstance(fits, dict):
        raise lenssim.DatasetError(f"{path}: a lens's FITS origin is not a dict")
    origin: dict[str, Any] = {}
    try:
        if "wcs" in fits:
            origin["wcs"] = lenssim.io.check_sky_wcs(fits["wcs"], str(path))
        if "cards" in fits:
            origin["cards"] = lenssim.io.check_observation_cards(fits["cards"], str(path))
        if "noise_correlation" in fits:
            rho = lenssim.io.fits.check_noise_correlation(fits["noise_correlation"], str(path))
            origin["noise_correlation"] = rho.tolist()
    except lenssim.FitsError as e:
        raise lenssim.DatasetError(str(e)) from None
    for key in NOISE_MODEL:
        v = fits.get(key)
        if v is None:
            continue
        if key == "noise_sigma" and v == lenssim.io.fits.AUTO:
            origin[key] = v
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not (np.isfinite(v) and v > 0):
            raise lenssim.DatasetError(f"{path}: the observation's {key} is {str(v)[:20]!r}, not a positive number")
        origin[key] = float(v)
    if "name" in fits:  # a catalogue's lens: its FITS copy is named after it
        if not isinstance(fits["name"], str) or not lenssim.io.catalogue.NAME.fullmatch(fits["name"]):
            raise lenssim.DatasetError(f"{path}: a lens's name {str(fits['name'])[:70]!r} is not a file-name part")
        origin["name"] = fits["name"]
    return origin


def read_reconstruction(path: str | os.PathLike) -> Reconstruction:
    """A reconstruction file as a :class:`Reconstruction` (validated like every dataset; a file
    that is not a reconstruction is refused in one line)."""
    return Reconstruction.from_hdf5(path)


def _reconstruction_fields(path: str | os.PathLike) -> dict[str, Any]:
    """The fields of a reconstruction file that are present, as tensors, and its ``attrs``."""
    path = Path(path)
    fields = lenssim.io.dataset_info(path)["fields"]
    missing = [k for k in RECONSTRUCTION_FIELDS if k not in fields]
    if missing:
        raise lenssim.DatasetError(
            f"{path}: not a reconstruction (missing {', '.join(missing)}); write one with lens reconstruct"
        )
    wanted = list(RECONSTRUCTION_FIELDS) + [k for k in RECONSTRUCTION_OPTIONAL if k in fields]
    if ("source" in fields) != ("kappa" in fields):
        have, lack = ("source", "kappa") if "source" in fields else ("kappa", "source")
        raise lenssim.DatasetError(f"{path}: holds the true {have} but not the true {lack} (give both or neither)")
    data = lenssim.read_dataset(path, wanted, required_attrs=("image_fov", "source_fov"))
    # maps compared pixel by pixel must be on one grid: kappa on the image's, the source on its own
    same = {
        "kappa_pred": "observation",
        "kappa": "kappa_pred",
        "kappa_baseline": "kappa_pred",
        "noise_map": "observation",
        "source": "source_pred",
        "source_baseline": "source_pred",
    }
    for name, other in same.items():
        if name in data and data[name].shape != data[other].shape:
            raise lenssim.DatasetError(
                f"{path}: {name!r} is {tuple(data[name].shape)}, {other!r} {tuple(data[other].shape)}: they must match"
            )
    return data


def load(run_dir: str | os.PathLike, *, device: str | torch.device = "cpu") -> RIM:
    """The trained RIM of a run directory, in eval mode, its config holding its geometry (runs
    written before the geometry was part of the config take it from their ``run.json``)."""
    model, meta = load_rim(run_dir, device=device)
    stored = {k: float(meta[k]) for k in ("image_fov", "source_fov") if k in meta}
    if not all(lenssim.geometry.same_fov(v, getattr(model.config, k)) for k, v in stored.items()):
        model.config = replace(model.config, **stored)
    model.meta = meta
    return model


@dataclass
class FineTune:
    """EWC fine-tuning (paper section 2.5) for :func:`reconstruct`: the two VAEs, Table 3's
    settings by default, and a seed for the Fisher draws (lens i draws from (seed, i))."""

    source_vae: torch.nn.Module
    kappa_vae: torch.nn.Module
    config: FineTuneConfig = field(default_factory=FineTuneConfig)
    seed: int = 0


@dataclass
class Reconstruction:
    """Source ``(B, 1, Ns, Ns)`` and kappa ``(B, 1, N, N)`` estimates of the lenses of
    ``observation`` (on the RIM's grid), with chi2_nu per lens; after fine-tuning the baseline
    RIM estimates and the steps taken are kept beside them."""

    observation: lenssim.Observation
    source: torch.Tensor
    kappa: torch.Tensor
    chi2_nu: torch.Tensor
    source_fov: float
    source_baseline: torch.Tensor | None = None
    kappa_baseline: torch.Tensor | None = None
    chi2_nu_baseline: torch.Tensor | None = None
    steps: torch.Tensor | None = None
    best_step: torch.Tensor | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_hdf5(cls, path: str | os.PathLike) -> Reconstruction:
        """A reconstruction file as ``lens reconstruct``, ``lens finetune`` or :meth:`to_hdf5`
        wrote it (validated like every dataset)."""
        path = Path(path)
        d = _reconstruction_fields(path)
        attrs = d["attrs"]
        try:
            fits = json.loads(attrs["fits"]) if isinstance(attrs.get("fits"), str) else {}
        except json.JSONDecodeError:
            raise lenssim.DatasetError(f"{path}: the attribute 'fits' is not JSON") from None
        fits = fits if isinstance(fits, dict) else {}
        if "flux_scale" in d:  # one per lens: a catalogue's lenses, each with its own origin
            flux = d["flux_scale"].double()
            lenses = fits.get("lenses")
            if not isinstance(lenses, list) or len(lenses) != len(flux):
                raise lenssim.DatasetError(f"{path}: the attribute 'fits' does not hold one origin per lens")
            origin = {"reconstruction": str(path), "lenses": [_fits_origin(o, path) for o in lenses]}
        else:
            flux = float(attrs.get("flux_scale", fits.get("flux_scale")) or 1.0)
            origin = {"reconstruction": str(path), **_fits_origin(fits, path)}
        obs = lenssim.Observation(
            observation=d["observation"],
            psf=d["psf"],
            noise=d.get("noise_map", d["noise_sigma"]),
            image_fov=float(attrs["image_fov"]),
            source_fov=float(attrs["source_fov"]),
            flux_scale=flux,
            truth={k: d[k] for k in ("source", "kappa") if k in d},
            origin=origin,
        )
        return cls(
            observation=obs,
            source=d["source_pred"],
            kappa=d["kappa_pred"],
            chi2_nu=d["chi2_nu"],
            source_fov=float(attrs["source_fov"]),
            source_baseline=d.get("source_baseline"),
            kappa_baseline=d.get("kappa_baseline"),
            chi2_nu_baseline=d.get("chi2_nu_baseline"),
            steps=d.get("finetune_steps"),
        )

    def model_image(self, rows: slice | torch.Tensor = slice(None), *, baseline: bool = False) -> torch.Tensor:
        """The noiseless model image of the estimates of lenses ``rows`` (a slice or indices; all
        by default), ``(B, 1, N, N)``, in the observation's units; of the baseline RIM estimates
        with ``baseline`` (a fine-tuned reconstruction's)."""
        o = self.observation
        source, kappa = (self.source_baseline, self.kappa_baseline) if baseline else (self.source, self.kappa)
        if source is None:
            raise ValueError("this reconstruction has no baseline estimates: it was not fine-tuned")
        with torch.no_grad():
            return lenssim.lens_image(
                source[rows], kappa[rows], image_fov=o.image_fov, source_fov=self.source_fov, psf=o.psf[rows]
            )

    def binned_chi2_nu(self, rows: slice = slice(None), *, baseline: bool = False) -> torch.Tensor:
        """chi2_nu of the residual of lenses ``rows`` summed in blocks of
        :data:`~lensrim.metrics.RESIDUAL_BLOCK` pixels a side (:func:`lenssim.binned_chi2_nu`),
        ``(B,)``: about 1 when the residual is the noise, above chi2_nu when it is structure."""
        return self.binned_chi2_nu_by_block((residual_block(self.observation.pixels),), rows, baseline=baseline)[0]

    def binned_chi2_nu_by_block(
        self, blocks: Sequence[int], rows: slice = slice(None), *, baseline: bool = False
    ) -> torch.Tensor:
        """The binned chi2_nu of lenses ``rows`` at each block side in ``blocks``, ``(len(blocks), B)``,
        from one model image: flat at 1 when the residual is the noise, flat above 1 when the noise
        level is off by one factor, rising with the block where structure is left on that scale."""
        o = self.observation[rows]
        model = self.model_image(rows, baseline=baseline)
        rho = o.noise_correlation()  # a FITS observation's, measured from its sky; else white
        return torch.stack(
            [lenssim.binned_chi2_nu(o.observation, model, o.noise, block=b, correlation=rho) for b in blocks]
        )

    def arrays(self) -> dict[str, np.ndarray]:
        """The reconstruction's fields as ``lens evaluate`` reads them (truth included when known)."""
        out = self.observation.arrays()
        fitted = {"source_pred": self.source, "kappa_pred": self.kappa, "chi2_nu": self.chi2_nu}
        if self.chi2_nu_baseline is not None:
            fitted.update(
                source_baseline=self.source_baseline,
                kappa_baseline=self.kappa_baseline,
                chi2_nu_baseline=self.chi2_nu_baseline,
                finetune_steps=self.steps,
                best_step=self.best_step,
            )
        out.update({k: v.detach().cpu().numpy() for k, v in fitted.items()})
        return out

    def to_hdf5(self, path: str | os.PathLike) -> Path:
        """Write the reconstruction as a dataset that ``lens evaluate`` reads (atomically)."""
        attrs = {
            "kind": "reconstruction",
            "image_fov": self.observation.image_fov,
            "source_fov": self.source_fov,
            "z_lens": lenssim.ObservationConfig.z_lens,
            "z_source": lenssim.ObservationConfig.z_source,
            "config": self.meta,
        }
        if not isinstance(self.observation.flux_scale, torch.Tensor):  # else one per lens, a field
            attrs["flux_scale"] = self.observation.flux_scale
        origin = self.observation.origin
        if "lenses" in origin:
            attrs["fits"] = {"lenses": [{k: o[k] for k in (*KEPT, "name") if k in o} for o in origin["lenses"]]}
        elif any(k in origin for k in KEPT):
            attrs["fits"] = {k: origin[k] for k in KEPT if k in origin}
        return lenssim.write_dataset(path, self.arrays(), attrs)

    def to_fits(self, path: str | os.PathLike, *, index: int = 0) -> Path:
        """Lens ``index`` as FITS image extensions (observation, model, residual, noise, chi:
        the residual over the noise, whose mean square is chi2_nu; NaN where a pixel has no
        data, ``NMASKED`` of them in the header; source, kappa, and the
        baseline maps after fine-tuning), in the observation's original units (the flux scale
        undone), with the geometry, chi2_nu and ``CHI2BIN`` (chi2_nu of the residual summed in
        blocks of ``BINPIX`` pixels a side: :func:`lenssim.binned_chi2_nu`, allowing for the noise's
        correlation measured from the sky, whose value between neighbours along x and y is in
        ``CORRX`` and ``CORRY``) in the primary header (and the noise model given with the
        observation: :data:`NOISE_MODEL`); written atomically.
        The maps on the image's grid carry the observation's sky WCS when it came from a FITS
        file that had one (resampled with it onto the RIM's grid), the maps in its units its
        ``BUNIT``, and the primary header its telescope, instrument, filter, target and date."""
        o, i, scale = self.observation, index, self.observation.lens_scale(index)
        origin = o.lens_origin(index)
        model = self.model_image(slice(i, i + 1))  # this lens's alone
        residual = o.observation[i, 0] - model[0, 0]
        noise = o.noise[i, 0] if o.noise.dim() == 4 else o.noise.reshape(-1)[i].expand_as(residual)
        blank = torch.where(torch.isfinite(noise), 1.0, torch.nan)  # NaN where a pixel has no data
        maps = {
            "observation": o.observation[i, 0] * scale * blank,
            "model": model[0, 0] * scale,
            "residual": residual * scale * blank,
            "noise": noise * scale * blank,
            "chi": residual / noise * blank,
            "source": self.source[i, 0] * scale,
            "kappa": self.kappa[i, 0],
        }
        header = {
            "imgfov": o.image_fov,
            "srcfov": self.source_fov,
            "imgpix": o.pixel_scale,
            "srcpix": self.source_fov / self.source.shape[-1],
            "fluxscl": scale,
            "chi2nu": float(self.chi2_nu[i]),
            "chi2bin": float(self.binned_chi2_nu(slice(i, i + 1))[0]),
            "binpix": residual_block(o.pixels),
            "nmasked": int((~torch.isfinite(noise)).sum()),
        }
        if self.chi2_nu_baseline is not None:
            maps.update(source_baseline=self.source_baseline[i, 0] * scale, kappa_baseline=self.kappa_baseline[i, 0])
            header["chi2nu0"] = float(self.chi2_nu_baseline[i])
        header.update({card: origin[k] for k, card in NOISE_MODEL.items() if k in origin})
        if "noise_correlation" in origin:  # between neighbours, along x (columns) and y (rows)
            header["corrx"], header["corry"] = lenssim.io.fits.neighbour_correlation(origin["noise_correlation"])
        cards = origin.get("cards", {})
        header.update({k: v for k, v in cards.items() if k != "BUNIT"})
        return lenssim.write_fits_reconstruction(
            path,
            {k: v.detach().cpu().numpy() for k, v in maps.items()},
            header,
            wcs=origin.get("wcs"),
            on_sky=("observation", "model", "residual", "noise", "chi", "kappa", "kappa_baseline"),
            bunit=cards.get("BUNIT"),
            in_units=("observation", "model", "residual", "noise", "source", "source_baseline"),
        )


def reconstruct(
    rim: RIM,
    observation: lenssim.Observation,
    *,
    finetune: FineTune | None = None,
    batch_size: int = 8,
    first_index: int = 0,
    progress: Callable[[str, int, int], None] | None = None,
) -> Reconstruction:
    """Reconstruct the lenses of ``observation`` with ``rim`` (put on the RIM's grid first;
    data on another grid, or with another source field, are refused), ``batch_size`` at a time,
    optionally fine-tuned with EWC per lens. Runs on the RIM's device. Lens i draws its Fisher
    samples from (seed, first_index + i); ``progress(phase, done, total)`` follows fine-tuning."""
    c = rim.config
    if finetune is not None:
        check_priors(rim, finetune.source_vae, finetune.kappa_vae)
    c.geometry.refuse_other("the observation", source_fov=observation.source_fov, error=lenssim.DatasetError)
    if len(observation) == 0:
        raise ValueError("the observation holds no lenses")
    device = next(rim.parameters()).device
    obs = observation.on_grid(c.pixels, c.image_fov).to(device)
    rim.eval()
    parts: list[dict[str, torch.Tensor]] = []
    for start in range(0, len(obs), batch_size):
        sl = slice(start, start + batch_size)
        y, psf, noise = obs.observation[sl], obs.psf[sl], obs.noise[sl]
        if finetune is None:
            physics = c.physics(psf, noise)
            with torch.no_grad():
                est = rim(y, physics)[-1]
            parts.append(
                {
                    "source": est[:, :1],
                    "kappa": torch.pow(10.0, est[:, 1:]),
                    "chi2_nu": physics.chi2_nu(y, est[:, :1], est[:, 1:]),
                }
            )
            continue
        from lenscore.runs import step_generator

        first = first_index + sl.start
        gens = [step_generator(finetune.seed, i, 7) for i in range(first, first + y.shape[0])]
        res = lensrim_finetune(
            rim,
            finetune.source_vae,
            finetune.kappa_vae,
            y,
            c.physics(psf, noise),
            finetune.config,
            generators=gens,
            progress=progress,
        )
        parts.append(
            {
                "source": res.source,
                "kappa": res.kappa,
                "chi2_nu": res.chi2_nu,
                "source_baseline": res.source_baseline,
                "kappa_baseline": res.kappa_baseline,
                "chi2_nu_baseline": res.chi2_nu_baseline,
                "steps": res.steps,
                "best_step": res.best_step,
            }
        )
    joined = {k: torch.cat([p[k].detach().cpu() for p in parts]) for k in parts[0]}
    meta = {"rim": getattr(rim, "meta", {}), "finetune": None if finetune is None else asdict(finetune.config)}
    return Reconstruction(observation=obs.to("cpu"), source_fov=c.source_fov, meta=meta, **joined)


FITS_SUFFIXES = (".fits", ".fit", ".fts", ".fits.gz")
"""File names read as FITS observations; anything else is a lens dataset."""
OUTPUT_ATTRS = ("image_fov", "source_fov", "z_lens", "z_source")
"""The attributes a reconstruction file keeps from its input."""


def is_fits(path: str | os.PathLike) -> bool:
    return Path(path).name.lower().endswith(FITS_SUFFIXES)


def other_resolution(where: str, n: int, pixels: int) -> str:
    """The message for data at another resolution than the model, with the two ways around it."""
    return (
        f"{where}: maps are {n} pixels wide, the RIM expects {pixels}: simulate at its resolution "
        f"(`lens simulate lenses --pixels {pixels}`), or give the observation as FITS, which is resampled onto "
        "the model's grid"
    )


def check_dataset(path: str | os.PathLike, rim: RIM, *, param: str = "data") -> dict[str, Any]:
    """A lens dataset's attributes, after refusing (a :class:`SettingError` naming ``param``) one
    whose maps are not on ``rim``'s grid or whose fields of view are not its own, and (a
    ``DatasetError``) one missing the attributes a reconstruction keeps."""
    info = lenssim.io.dataset_info(path)
    attrs = lenssim.read_dataset(path, [], required_attrs=lenssim.io.datasets.LENS_ATTRS)["attrs"]
    n = info["fields"].get("observation", (0, 0, 0, rim.config.pixels))[-1]
    if n != rim.config.pixels:
        raise SettingError(other_resolution(str(path), n, rim.config.pixels), param=param)
    rim.config.geometry.refuse_other(
        str(path),
        image_fov=attrs.get("image_fov"),
        source_fov=attrs.get("source_fov"),
        whose="the RIM's",
        hint=" (its run.json): simulate the data at the RIM's geometry",
        error=functools.partial(SettingError, param=param),
    )
    lenssim.Observation.from_dataset(path, rows=slice(0, 1))  # the layout of every field, before any work
    attrs.pop("manifest", None)
    return attrs


def check_priors(
    rim: RIM,
    source_vae: torch.nn.Module,
    kappa_vae: torch.nn.Module,
    source_meta: dict | None = None,
    kappa_meta: dict | None = None,
) -> None:
    """Refuse, before any work, VAEs that cannot be ``rim``'s priors: swapped, on maps of
    another size, or trained on maps of other fields of view than the RIM's (their run.json's
    ``data_attrs``, when the metadata are given); a :class:`SettingError` naming the VAE
    (``source_vae`` or ``kappa_vae``). :func:`lensrim.finetune.check_prior` checks each."""
    for kind, vae, meta in (("source", source_vae, source_meta), ("kappa", kappa_vae, kappa_meta)):
        fov = rim.config.source_fov if kind == "source" else rim.config.image_fov
        check_prior(vae, kind, pixels=rim.config.pixels, fov=fov, meta=meta, param=f"{kind}_vae")


def load_observations(
    path: str | os.PathLike, rim: RIM, *, image_fov: float | None = None, stream: bool = False, **fits_options: Any
) -> tuple[lenssim.Observation | Path, dict[str, Any]]:
    """The observations in ``path`` on ``rim``'s grid, and the attributes their reconstruction
    keeps: one FITS observation (``fits_options``: :meth:`lenssim.Observation.from_fits`'s,
    resampled onto the grid), a catalogue of them (:mod:`lenssim.io.catalogue`: each row's options
    over ``fits_options``, the lenses stacked) or a lens dataset (truth kept;
    :func:`check_dataset`). With ``stream``, a dataset is checked but not read: its path comes
    back, for :func:`reconstruct_to_file` to read a block at a time."""
    c = rim.config
    if image_fov is not None and not lenssim.geometry.same_fov(image_fov, c.image_fov):
        raise SettingError(
            f"{image_fov:g} differs from the field the RIM was trained at, {c.image_fov:g} arcsec", param="image_fov"
        )
    options = {k: v for k, v in fits_options.items() if v is not None}
    geometry = {
        "image_fov": c.image_fov,
        "source_fov": c.source_fov,
        "z_lens": lenssim.Z_LENS,
        "z_source": lenssim.Z_SOURCE,
    }
    if lenssim.io.is_catalogue(path):
        observations, lenses = [], []
        for lens in lenssim.io.read_lens_catalogue(path):
            given = {k: v for k, v in lens.items() if k not in ("row", "name", "fits")}
            try:
                obs = lenssim.Observation.from_fits(lens["fits"], **{**options, **given})
                obs = obs.on_grid(c.pixels, c.image_fov)
            except (lenssim.FitsError, lenssim.DatasetError) as e:
                raise type(e)(f"{path} row {lens['row']}: {e}") from None
            obs.origin["name"] = lens["name"]
            observations.append(obs)
            lenses.append({"name": lens["name"], **_fits_attrs(lens["fits"], obs)})
        stacked = lenssim.Observation.stack(observations, origin={"catalogue": str(path)})
        return stacked, {**geometry, "fits": {"catalogue": str(path), "lenses": lenses}}
    if not is_fits(path):
        if options:
            given = " and ".join(options) + (" applies" if len(options) == 1 else " apply")
            raise SettingError(f"{given} to FITS input only, not to a lens dataset", param=next(iter(options)))
        attrs = check_dataset(path, rim)
        return (Path(path) if stream else lenssim.Observation.from_dataset(path)), attrs
    obs = lenssim.Observation.from_fits(path, **options).on_grid(c.pixels, c.image_fov)
    return obs, {**geometry, "fits": _fits_attrs(path, obs)}


def _fits_attrs(path: str | os.PathLike, obs: lenssim.Observation) -> dict[str, Any]:
    """What a reconstruction keeps of one FITS observation ``obs`` (on the RIM's grid): where it
    came from, its flux and pixel scale, centre and noise model (a rerun must agree), its sky WCS on
    the grid and its header's cards (for the FITS output), and its noise's correlation measured
    there (for the binned chi2_nu)."""
    origin = obs.origin
    fits = {"path": str(path), "flux_scale": obs.lens_scale(0), "pixel_scale": origin["pixel_scale"]}
    if "center" in origin:
        fits["center"] = origin["center"]
    for key in NOISE_MODEL:
        if key in origin:
            fits[key] = origin[key]
    fits["resampled"] = origin["resampled"]
    for key in ("wcs", "cards", "noise_correlation"):
        if key in origin:
            fits[key] = origin[key]
    return fits


def output_attrs(attrs: dict[str, Any], provenance: dict[str, Any]) -> dict[str, Any]:
    """A reconstruction file's attributes: the input's geometry and redshifts (and its FITS
    origin), ``kind`` and the ``provenance`` as ``config``."""
    out = {k: attrs[k] for k in OUTPUT_ATTRS}
    out.update(kind="reconstruction", config=provenance)
    if "fits" in attrs:
        out["fits"] = attrs["fits"]
    return out


def reconstruct_to_file(
    rim: RIM,
    observation: lenssim.Observation | str | os.PathLike,
    output: str | os.PathLike,
    *,
    attrs: dict[str, Any],
    finetune: FineTune | None = None,
    batch_size: int = 8,
    seed: int | None = None,
    inputs: tuple = (),
    progress: Callable[[int], None] | None = None,
    phase: Callable[[int, int, str, int, int], None] | None = None,
) -> Path:
    """Reconstruct every lens of ``observation`` into the reconstruction file ``output`` (attributes
    ``attrs``), ``batch_size`` lenses per resumable block: a killed run resumes from its last
    finished block. ``observation`` is an :class:`lenssim.Observation` or a lens dataset, read a
    block at a time (memory stays flat; every value is checked before the first block). With
    ``finetune``, lens i draws from (seed, i) alone, so the batch size changes nothing.
    ``progress(count)`` after each block; ``phase(first, last, name, done, total)`` during a
    block's fine-tuning."""
    if finetune is not None:
        check_priors(rim, finetune.source_vae, finetune.kappa_vae)
    if isinstance(observation, lenssim.Observation):
        obs = observation.on_grid(rim.config.pixels, rim.config.image_fov)
        total, rows_of = len(obs), obs.__getitem__
    else:
        path = Path(observation)
        fields = lenssim.io.dataset_info(path)["fields"]
        total = fields["observation"][0]
        for name in lenssim.LENS_FIELDS:  # every value, in chunks, before the first block
            if name in fields:
                lenssim.io.check_dataset_values(path, name)

        def rows_of(rows: slice) -> lenssim.Observation:
            return lenssim.Observation.from_dataset(path, rows=rows)

    def make_block(k: int, count: int, _seedseq) -> dict:
        rows = slice(k * batch_size, k * batch_size + count)
        follow = None
        if phase is not None:
            follow = lambda name, done, total: phase(rows.start, rows.stop - 1, name, done, total)
        rec = reconstruct(
            rim, rows_of(rows), finetune=finetune, batch_size=count, first_index=rows.start, progress=follow
        )
        return rec.arrays()

    seed = (finetune.seed if finetune is not None else 0) if seed is None else seed
    return lenssim.write_in_blocks(
        output, total, make_block, attrs=attrs, seed=seed, block_size=batch_size, progress=progress, inputs=inputs
    )


def finetune_to_file(
    rim: RIM, finetune: FineTune, observation: lenssim.Observation, output: str | os.PathLike, **options: Any
) -> Path:
    """:func:`reconstruct_to_file` with EWC fine-tuning (``options``: its keywords)."""
    return reconstruct_to_file(rim, observation, output, finetune=finetune, **options)


lensrim_finetune = finetune  # the module-level name; ``finetune`` is also reconstruct's argument
