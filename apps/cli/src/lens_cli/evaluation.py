"""The evaluation report of a reconstruction file: metrics JSON, figures and a summary page."""

from __future__ import annotations

import html
import json
import math
import os
from pathlib import Path

import numpy as np
import torch

import lenssim
from lens_cli.common import atomic_path
from lensrim.metrics import (
    chi2_summary,
    coherence_bands,
    coherence_spectrum,
    constant_reference,
    log_loss_moments,
    snr,
)
from lensrim.model import rim_loss

REQUIRED = ("observation", "psf", "noise_sigma", "source_pred", "kappa_pred", "chi2_nu")
OPTIONAL = ("source", "kappa", "source_baseline", "kappa_baseline", "chi2_nu_baseline", "noise_map", "finetune_steps")


def read_reconstruction(path: Path) -> dict:
    """The fields of a reconstruction file that are present (validated by lenssim)."""
    info = lenssim.io.dataset_info(path)
    missing = [k for k in REQUIRED if k not in info["fields"]]
    if missing:
        raise lenssim.DatasetError(f"{path}: not a reconstruction (missing {', '.join(missing)}); run lens reconstruct")
    fields = list(REQUIRED) + [k for k in OPTIONAL if k in info["fields"]]
    return lenssim.read_dataset(path, fields, required_attrs=("image_fov", "source_fov"))


def _loss(source_pred, kappa_pred, source, kappa) -> np.ndarray:
    est = torch.cat([source_pred, torch.log10(kappa_pred.clamp_min(1e-6))], dim=1)[None]
    return rim_loss(est, source, kappa.clamp_min(1e-6)).numpy()


def compute_metrics(data: dict) -> dict:
    """Metrics of a reconstruction (SPEC 7): chi2_nu, Table 4 loss moments, coherence bands."""
    attrs = data["attrs"]
    out: dict = {"lenses": int(data["observation"].shape[0])}
    out["chi2_nu"] = {"final": chi2_summary(data["chi2_nu"])}
    stages = {"final": ("source_pred", "kappa_pred")}
    if "chi2_nu_baseline" in data:
        out["chi2_nu"]["baseline"] = chi2_summary(data["chi2_nu_baseline"])
        stages = {"baseline": ("source_baseline", "kappa_baseline"), "final": ("source_pred", "kappa_pred")}
    per_lens = {"snr": snr(data["noise_sigma"]).tolist(), "chi2_nu": data["chi2_nu"].tolist()}
    if "chi2_nu_baseline" in data:
        per_lens["chi2_nu_baseline"] = data["chi2_nu_baseline"].tolist()
    if "source" in data and "kappa" in data:
        out["log10_loss"], out["coherence"] = {}, {}
        for stage, (s_key, k_key) in stages.items():
            loss = _loss(data[s_key], data[k_key], data["source"], data["kappa"])
            per_lens[f"loss_{stage}"] = loss.tolist()
            out["log10_loss"][stage] = log_loss_moments(loss)
            ks, gs = coherence_spectrum(data[s_key], data["source"], fov=float(attrs["source_fov"]))
            kk, gk = coherence_spectrum(data[k_key], data["kappa"], fov=float(attrs["image_fov"]))
            out["coherence"][stage] = {
                "source": {"k_per_arcsec": ks.tolist(), **coherence_bands(gs)},
                "kappa": {"k_per_arcsec": kk.tolist(), **coherence_bands(gk)},
            }
        # the reference every loss is judged against: source 0 and the best constant log10 kappa
        ref = constant_reference(data["source"], data["kappa"])
        sigma = data["noise_map"] if "noise_map" in data else data["noise_sigma"]
        y = data["observation"]
        chi2 = lenssim.reduced_chi_squared(y, torch.zeros_like(y), sigma)
        out["constant_predictor"] = {
            "log10_kappa": ref.log10_kappa,
            "log10_loss": log_loss_moments(ref.loss.numpy()),
            "chi2_nu": chi2_summary(chi2),
        }
        per_lens["loss_constant"] = ref.loss.tolist()
        out["log10_loss_gain_over_constant"] = {
            stage: out["constant_predictor"]["log10_loss"]["mu"] - m["mu"] for stage, m in out["log10_loss"].items()
        }
    out["per_lens"] = per_lens
    return out


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    tmp = atomic_path(path)
    fig.savefig(tmp, dpi=80, format="png")
    plt.close(fig)
    os.replace(tmp, path)
    return path


def _chi2_pdf(c_nu: np.ndarray, nu: int) -> np.ndarray:
    """Density of chi2 / nu for the chi2 distribution with nu degrees of freedom."""
    x = c_nu * nu
    logpdf = (nu / 2 - 1) * np.log(x) - x / 2 - (nu / 2) * math.log(2) - math.lgamma(nu / 2)
    return nu * np.exp(logpdf)


def figures(data: dict, metrics: dict, report: Path, *, count: int = 4) -> list[Path]:
    """Per-lens panels, the chi2 histogram, chi2_nu against SNR and the coherence bands."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    attrs = data["attrs"]
    ifov, sfov = float(attrs["image_fov"]), float(attrs["source_fov"])
    paths = []
    n = data["observation"].shape[0]
    noise = data.get("noise_map", data["noise_sigma"])
    physics_sigma = noise if noise.dim() == 4 else noise.view(-1, 1, 1, 1)
    order = np.argsort(data["chi2_nu"].numpy())
    rows = order[np.linspace(0, n - 1, min(count, n)).round().astype(int)]  # best to worst
    shown = torch.as_tensor(rows)
    model = lenssim.lens_image(  # only the lenses on the figure
        data["source_pred"][shown], data["kappa_pred"][shown].clamp_min(1e-6), image_fov=ifov, source_fov=sfov,
        psf=data["psf"][shown],
    )  # fmt: skip
    has_truth = "source" in data
    cols = 7 if has_truth else 5
    fig, axes = plt.subplots(len(rows), cols, figsize=(2.4 * cols, 2.4 * len(rows)), squeeze=False)
    ext_i, ext_s = [-ifov / 2, ifov / 2] * 2, [-sfov / 2, sfov / 2] * 2
    for r, i in enumerate(rows):
        resid = ((data["observation"][i, 0] - model[r, 0]) / physics_sigma[i, 0]).numpy()
        panels = [
            (data["observation"][i, 0], ext_i, "observation", "magma", None),
            (model[r, 0], ext_i, "model", "magma", None),
            (resid, ext_i, rf"residual/$\sigma$ ($\chi^2_\nu$={float(data['chi2_nu'][i]):.2f})", "RdBu_r", (-4, 4)),
            (data["source_pred"][i, 0], ext_s, "source", "magma", None),
        ]
        if has_truth:
            panels.append((data["source"][i, 0], ext_s, "true source", "magma", None))
        panels.append(
            (np.log10(data["kappa_pred"][i, 0].clamp_min(1e-3)), ext_i, r"$\log_{10}\kappa$", "viridis", None)
        )
        if has_truth:
            lo, hi = (
                float(np.log10(data["kappa"][i, 0].clamp_min(1e-3)).min()),
                float(np.log10(data["kappa"][i, 0].clamp_min(1e-3)).max()),
            )
            panels[-1] = (*panels[-1][:4], (lo, hi))
            panels.append(
                (np.log10(data["kappa"][i, 0].clamp_min(1e-3)), ext_i, r"true $\log_{10}\kappa$", "viridis", (lo, hi))
            )
        for ax, (img, ext, title, cmap, lim) in zip(axes[r], panels, strict=True):
            kw = {} if lim is None else {"vmin": lim[0], "vmax": lim[1]}
            ax.imshow(np.asarray(img), origin="lower", extent=ext, cmap=cmap, **kw)
            ax.set_title(title, fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
    fig.tight_layout()
    paths.append(_save(fig, report / "lenses.png"))

    nu = int(data["observation"][0].numel())
    fig, ax = plt.subplots(figsize=(5, 3.5))
    c = data["chi2_nu"].numpy()
    hi = max(float(np.percentile(c, 99)), 1 + 6 * math.sqrt(2 / nu))
    bins = np.linspace(0, hi, 40)
    if "chi2_nu_baseline" in data:
        ax.hist(data["chi2_nu_baseline"].numpy().clip(0, hi), bins=bins, density=True, alpha=0.5, label="RIM baseline")
    ax.hist(c.clip(0, hi), bins=bins, density=True, alpha=0.6, label="final")
    grid = np.linspace(max(1e-3, 1 - 6 * math.sqrt(2 / nu)), 1 + 6 * math.sqrt(2 / nu), 200)
    ax.plot(grid, _chi2_pdf(grid, nu), "k-", lw=1, label=rf"$\chi^2_{{\nu={nu}}}/\nu$")
    ax.set_xlabel(r"$\chi^2_\nu$")
    ax.set_ylabel("density")
    ax.legend(fontsize=8)
    fig.tight_layout()
    paths.append(_save(fig, report / "chi2_histogram.png"))

    fig, ax = plt.subplots(figsize=(5, 3.5))
    s = snr(data["noise_sigma"])
    if "chi2_nu_baseline" in data:
        ax.scatter(s, data["chi2_nu_baseline"].numpy(), s=10, alpha=0.6, label="RIM baseline")
    ax.scatter(s, c, s=10, alpha=0.8, label="final")
    ax.axhline(1.0, color="k", lw=0.8, ls="--")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("SNR = 1 / sigma")
    ax.set_ylabel(r"$\chi^2_\nu$")
    ax.legend(fontsize=8)
    fig.tight_layout()
    paths.append(_save(fig, report / "chi2_vs_snr.png"))

    if "coherence" in metrics:
        fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
        for ax, field in zip(axes, ("source", "kappa"), strict=True):
            for stage, color in (("baseline", "k"), ("final", "C3")):
                if stage not in metrics["coherence"]:
                    continue
                m = metrics["coherence"][stage][field]
                ax.plot(m["k_per_arcsec"], m["mean"], color=color, label=stage)
                ax.fill_between(m["k_per_arcsec"], m["low"], m["high"], color=color, alpha=0.2)
            ax.set_title(field)
            ax.set_xlabel("k (1/arcsec)")
            ax.set_ylabel(r"coherence $\gamma(k)$")
            ax.set_ylim(-0.2, 1.05)
            ax.legend(fontsize=8)
        fig.tight_layout()
        paths.append(_save(fig, report / "coherence.png"))
    return paths


def summary_page(report: Path, metrics: dict, images: list[Path], title: str) -> Path:
    """A short HTML page with the headline numbers and the figures."""
    rows = []
    for stage, s in metrics["chi2_nu"].items():
        rows.append(
            f"<tr><td>chi2_nu, {stage}</td><td>median {s['median']:.3g} (16-84 %: {s['p16']:.3g}-{s['p84']:.3g}); "
            f"{100 * s['fraction_at_or_below_1.1']:.0f} % at or below 1.1</td></tr>"
        )
    for stage, m in metrics.get("log10_loss", {}).items():
        gain = metrics.get("log10_loss_gain_over_constant", {}).get(stage)
        beside = "" if gain is None else f" ({gain:+.3f} dex better than the constant predictor)"
        rows.append(f"<tr><td>log10 loss, {stage}</td><td>{m['mu']:.3f} &plusmn; {m['sigma']:.3f}{beside}</td></tr>")
    if "constant_predictor" in metrics:
        c = metrics["constant_predictor"]
        rows.append(
            f"<tr><td>constant predictor (source 0, log10 kappa = {c['log10_kappa']:.3f})</td><td>log10 loss "
            f"{c['log10_loss']['mu']:.3f} &plusmn; {c['log10_loss']['sigma']:.3f}; median chi2_nu "
            f"{c['chi2_nu']['median']:.3g}</td></tr>"
        )
    for stage, c in metrics.get("coherence", {}).items():
        rows.append(
            f"<tr><td>mean coherence, {stage}</td><td>source {np.mean(c['source']['mean']):.3f}, "
            f"kappa {np.mean(c['kappa']['mean']):.3f} (averaged over k)</td></tr>"
        )
    for key, text in metrics.get("notes", {}).items():
        rows.append(f"<tr><td>{html.escape(key)}</td><td>{html.escape(text)}</td></tr>")
    body = "\n".join(rows)
    figs = "\n".join(f'<p><img src="{p.name}" alt="{p.stem}"></p>' for p in images)
    page = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title></head><body>"
        f"<h1>{html.escape(title)}</h1><p>{metrics['lenses']} lenses. Details in metrics.json.</p>"
        f"<table border='1' cellpadding='4'>{body}</table>{figs}</body></html>\n"
    )
    path = report / "index.html"
    tmp = atomic_path(path)
    tmp.write_text(page)
    os.replace(tmp, path)
    return path


def write_report(data: dict, report: Path, *, title: str, extra: dict | None = None) -> dict:
    """metrics.json, the figures and index.html in ``report``; returns the metrics."""
    report.mkdir(parents=True, exist_ok=True)
    metrics = compute_metrics(data)
    if extra:
        metrics.update(extra)
    images = figures(data, metrics, report)
    path = report / "metrics.json"
    tmp = atomic_path(path)
    tmp.write_text(json.dumps(metrics, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)
    summary_page(report, metrics, images, title)
    return metrics
