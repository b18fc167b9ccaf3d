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

import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

import lenssim
from lensrim.finetune import FineTuneConfig, finetune
from lensrim.model import RIM
from lensrim.training import load_rim

__all__ = [
    "FineTune",
    "RECONSTRUCTION_FIELDS",
    "RECONSTRUCTION_OPTIONAL",
    "Reconstruction",
    "finetune_to_file",
    "load",
    "read_reconstruction",
    "reconstruct",
]

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
)
"""The fields it holds when known: a noise map, the truth, the baseline before fine-tuning."""


def read_reconstruction(path: str | os.PathLike) -> dict[str, Any]:
    """The fields of a reconstruction file that are present, as tensors, and its ``attrs``
    (validated like every dataset; a file that is not a reconstruction is refused in one line)."""
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
        d = read_reconstruction(path)
        attrs = d["attrs"]
        flux = attrs.get("flux_scale")
        if flux is None and "fits" in attrs:
            flux = json.loads(attrs["fits"]).get("flux_scale") if isinstance(attrs["fits"], str) else None
        obs = lenssim.Observation(
            observation=d["observation"],
            psf=d["psf"],
            noise=d.get("noise_map", d["noise_sigma"]),
            image_fov=float(attrs["image_fov"]),
            source_fov=float(attrs["source_fov"]),
            flux_scale=float(flux or 1.0),
            truth={k: d[k] for k in ("source", "kappa") if k in d},
            origin={"reconstruction": str(path)},
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

    def model_image(self) -> torch.Tensor:
        """The noiseless model image of the estimates, ``(B, 1, N, N)``, in the observation's units."""
        o = self.observation
        with torch.no_grad():
            return lenssim.lens_image(
                self.source, self.kappa, image_fov=o.image_fov, source_fov=self.source_fov, psf=o.psf
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
            "flux_scale": self.observation.flux_scale,
            "config": self.meta,
        }
        return lenssim.write_dataset(path, self.arrays(), attrs)

    def to_fits(self, path: str | os.PathLike, *, index: int = 0) -> Path:
        """Lens ``index`` as FITS image extensions (observation, model, residual, source, kappa,
        and the baseline maps after fine-tuning), in the observation's original units (the flux
        scale undone), with the geometry and chi2_nu in the primary header; written atomically."""
        o, i, scale = self.observation, index, float(self.observation.flux_scale)
        model = self.model_image()
        maps = {
            "observation": o.observation[i, 0] * scale,
            "model": model[i, 0] * scale,
            "residual": (o.observation[i, 0] - model[i, 0]) * scale,
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
        }
        if self.chi2_nu_baseline is not None:
            maps.update(source_baseline=self.source_baseline[i, 0] * scale, kappa_baseline=self.kappa_baseline[i, 0])
            header["chi2nu0"] = float(self.chi2_nu_baseline[i])
        return lenssim.write_fits_reconstruction(path, {k: v.detach().cpu().numpy() for k, v in maps.items()}, header)


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


def finetune_to_file(
    rim: RIM,
    finetune: FineTune,
    observation: lenssim.Observation,
    output: str | os.PathLike,
    *,
    attrs: dict[str, Any],
    batch_size: int = 8,
    inputs: tuple = (),
    progress: Callable[[int], None] | None = None,
    phase: Callable[[int, int, str, int, int], None] | None = None,
) -> Path:
    """Fine-tune every lens of ``observation`` into the reconstruction file ``output``,
    ``batch_size`` lenses per resumable block (a killed run resumes from its last finished batch;
    lens i draws from (seed, i) alone, so the batch size changes nothing). ``progress(count)``
    after each block; ``phase(first, last, name, done, total)`` during a block's fine-tuning."""
    obs = observation.on_grid(rim.config.pixels, rim.config.image_fov)

    def make_block(k: int, count: int, _seedseq) -> dict:
        rows = slice(k * batch_size, k * batch_size + count)
        part = obs[rows]
        follow = (
            None if phase is None else (lambda name, done, total: phase(rows.start, rows.stop - 1, name, done, total))
        )
        rec = reconstruct(rim, part, finetune=finetune, batch_size=count, first_index=rows.start, progress=follow)
        return rec.arrays()

    return lenssim.write_in_blocks(
        output,
        len(obs),
        make_block,
        attrs=attrs,
        seed=finetune.seed,
        block_size=batch_size,
        progress=progress,
        inputs=inputs,
    )


lensrim_finetune = finetune  # the module-level name; ``finetune`` is also reconstruct's argument
