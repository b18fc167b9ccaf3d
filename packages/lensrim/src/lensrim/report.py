"""The evaluation report of a reconstruction: metrics JSON, figures and a summary page.

In a notebook::

    rec = lensrim.report.read_reconstruction("recon.h5")  # a lensrim.Reconstruction
    metrics = lensrim.report.write_report(rec, Path("report"), title="my lenses")

:func:`compute_metrics` alone needs no plotting library; the figures need matplotlib
(``pip install "lensrim[report]"``). ``lens evaluate`` and the demo write their reports with it.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

import lenssim
from lenscore.files import remove_stale_temporaries, written
from lensrim.api import Reconstruction, read_reconstruction
from lensrim.metrics import (
    block_scan,
    chi2_summary,
    chunks,
    coherence_bands,
    coherence_spectrum,
    constant_reference,
    log_loss_moments,
    residual_block,
    snr,
)
from lensrim.model import rim_loss

__all__ = [
    "block_figure",
    "chi2_histogram",
    "chi2_vs_snr",
    "coherence_figure",
    "comparison_figure",
    "compute_metrics",
    "figures",
    "lens_panels",
    "loss_change_histogram",
    "read_reconstruction",
    "summary_page",
    "write_report",
]


def _pyplot():
    """matplotlib's pyplot on the Agg backend (no display), or a one-line error naming the extra."""
    try:
        import matplotlib
    except ImportError:
        raise ImportError('the report\'s figures need matplotlib: pip install "lensrim[report]"') from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


LOSS_FLOOR = 1e-12
"""The smallest per-lens loss a report takes log10 of: an exact reconstruction (loss 0) counts
as 1e-12, 12 dex below a perfect-fit kappa map's usual losses, not as minus infinity."""


def _loss(source_pred, kappa_pred, source, kappa) -> np.ndarray:
    def part(rows: slice) -> torch.Tensor:  # in chunks of lenses: the temporaries stay small
        est = torch.cat([source_pred[rows], torch.log10(kappa_pred[rows].clamp_min(1e-6))], dim=1)[None]
        return rim_loss(est, source[rows], kappa[rows].clamp_min(1e-6)).clamp_min(LOSS_FLOOR)

    return torch.cat([part(rows) for rows in chunks(len(source))]).numpy()


def _chi2_of_nothing(obs: lenssim.Observation, sides: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """chi2_nu ``(B,)`` and the binned chi2_nu at each block side in ``sides`` ``(len(sides), B)`` of
    the constant predictor's model: no source, so no light at all."""
    dark, rho = torch.zeros_like(obs.observation), obs.noise_correlation()
    scan = torch.stack(
        [lenssim.binned_chi2_nu(obs.observation, dark, obs.noise, block=b, correlation=rho) for b in sides]
    )
    return lenssim.chi2_nu(obs.observation, dark, obs.noise), scan


def _percentiles(scan: torch.Tensor) -> dict[str, list[float]]:
    """Median and 16-84 % over the lenses of a block scan ``(sides, B)``, per side."""
    q = np.percentile(scan.double().numpy(), [16, 50, 84], axis=1)
    return {"p16": q[0].tolist(), "median": q[1].tolist(), "p84": q[2].tolist()}


def compute_metrics(rec: Reconstruction) -> dict:
    """Metrics of a reconstruction (SPEC 7): chi2_nu, Table 4 loss moments, coherence bands."""
    rec = _typed(rec)
    obs, truth = rec.observation, rec.observation.truth
    out: dict = {"lenses": len(obs)}
    out["chi2_nu"] = {"final": chi2_summary(rec.chi2_nu)}
    stages = {"final": (rec.source, rec.kappa)}
    per_lens = {"snr": snr(obs.noise_sigma()).tolist(), "chi2_nu": rec.chi2_nu.tolist()}
    if rec.chi2_nu_baseline is not None:
        out["chi2_nu"]["baseline"] = chi2_summary(rec.chi2_nu_baseline)
        stages = {"baseline": (rec.source_baseline, rec.kappa_baseline), **stages}
        per_lens["chi2_nu_baseline"] = rec.chi2_nu_baseline.tolist()
    # whether what chi2_nu leaves is noise (about 1) or structure on the blocks' scale (above chi2_nu),
    # at RESIDUAL_BLOCK and across block sides (one model image per lens and stage)
    block, sides = residual_block(obs.pixels), block_scan(obs.pixels)
    out["chi2_nu_binned"] = {"block_pixels": block}
    out["chi2_nu_by_block"] = {"block_pixels": list(sides), "pixel_arcsec": obs.pixel_scale}
    for stage in stages:
        scan = torch.cat(
            [rec.binned_chi2_nu_by_block(sides, rows, baseline=stage == "baseline") for rows in chunks(len(obs))], dim=1
        )
        binned = scan[sides.index(block)]
        out["chi2_nu_binned"][stage] = chi2_summary(binned)
        per_lens["chi2_nu_binned" if stage == "final" else f"chi2_nu_binned_{stage}"] = binned.tolist()
        out["chi2_nu_by_block"][stage] = _percentiles(scan)
    if "source" in truth and "kappa" in truth:
        out["log10_loss"], out["coherence"] = {}, {}
        for stage, (source, kappa) in stages.items():
            loss = _loss(source, kappa, truth["source"], truth["kappa"])
            per_lens[f"loss_{stage}"] = loss.tolist()
            out["log10_loss"][stage] = log_loss_moments(loss)
            ks, gs = coherence_spectrum(source, truth["source"], fov=rec.source_fov)
            kk, gk = coherence_spectrum(kappa, truth["kappa"], fov=obs.image_fov)
            out["coherence"][stage] = {
                "source": {"k_per_arcsec": ks.tolist(), **coherence_bands(gs)},
                "kappa": {"k_per_arcsec": kk.tolist(), **coherence_bands(gk)},
            }
        # the reference every loss is judged against: source 0 and the best constant log10 kappa
        ref = constant_reference(truth["source"], truth["kappa"])
        parts = [_chi2_of_nothing(obs[rows], sides) for rows in chunks(len(obs))]
        chi2, dark = torch.cat([c for c, _ in parts]), torch.cat([d for _, d in parts], dim=1)
        out["constant_predictor"] = {
            "log10_kappa": ref.log10_kappa,
            "log10_loss": log_loss_moments(ref.loss.numpy()),
            "chi2_nu": chi2_summary(chi2),
            "chi2_nu_binned": chi2_summary(dark[sides.index(block)]),
        }
        out["chi2_nu_by_block"]["constant_predictor"] = _percentiles(dark)
        per_lens["loss_constant"] = ref.loss.tolist()
        out["log10_loss_gain_over_constant"] = {
            stage: out["constant_predictor"]["log10_loss"]["mu"] - m["mu"] for stage, m in out["log10_loss"].items()
        }
    if "loss_baseline" in per_lens:
        # Fig. 8 (left): the per-lens change of log10 loss by fine-tuning (the paper: scatter 0.28)
        change = np.log10(per_lens["loss_final"]) - np.log10(per_lens["loss_baseline"])
        out["log10_loss_change"] = {
            "mean": float(change.mean()),
            "std": float(change.std(ddof=1) if change.size > 1 else 0.0),
        }
    out["per_lens"] = per_lens
    return out


def _typed(rec: Reconstruction) -> Reconstruction:
    if not isinstance(rec, Reconstruction):
        raise TypeError(f"the report reads a lensrim.Reconstruction (read_reconstruction(path)), got {type(rec)}")
    return rec


def _save(fig, path: Path) -> Path:
    plt = _pyplot()
    with written(path) as tmp:
        fig.savefig(tmp, dpi=80, format="png")
    plt.close(fig)
    return path


RESIDUAL_SIGMA = 4.0
"""The residual panels' colour range, in units of the noise sigma (+-)."""


def figures(rec: Reconstruction, metrics: dict, report: Path, *, count: int = 8) -> list[Path]:
    """The report's figures in ``report``: :func:`lens_panels`, :func:`chi2_histogram`,
    :func:`chi2_vs_snr`, :func:`block_figure` and, when the metrics hold them, :func:`loss_change_histogram` and
    :func:`coherence_figure`."""
    rec = _typed(rec)
    paths = [
        lens_panels(rec, report / "lenses.png", count=count),
        chi2_histogram(rec, report / "chi2_histogram.png"),
        chi2_vs_snr(rec, report / "chi2_vs_snr.png"),
        block_figure(metrics, report / "chi2_by_block.png"),
    ]
    if "log10_loss_change" in metrics:
        paths.append(loss_change_histogram(metrics, report / "loss_change.png"))
    if "coherence" in metrics:
        paths.append(coherence_figure(metrics, report / "coherence.png"))
    return paths


def data_panels(obs: lenssim.Observation, model: torch.Tensor, index: int) -> tuple[np.ndarray, np.ndarray]:
    """The observation and the residual over the noise of lens ``index`` (``model`` its model
    image, ``(1, N, N)`` or ``(N, N)``) as the panels show them: NaN where a pixel has no data."""
    sigma = obs.noise[index, 0] if obs.noise.dim() == 4 else obs.noise.reshape(-1)[index]
    y = obs.observation[index, 0]
    blank = ~torch.isfinite(torch.as_tensor(sigma).expand_as(y))
    data = y.masked_fill(blank, float("nan"))
    resid = ((y - model.reshape(y.shape)) / sigma).masked_fill(blank, float("nan"))
    return data.numpy(), resid.numpy()


def lens_panels(rec: Reconstruction, path: Path, *, count: int = 8) -> Path:
    """Per-lens panels, ``count`` lenses from the best to the worst chi2_nu (all of them when
    there are at most ``count``): observation, model, residual / sigma, source and log10 kappa
    (beside the truth when known)."""
    plt = _pyplot()
    obs, truth = rec.observation, rec.observation.truth
    ifov, sfov = obs.image_fov, rec.source_fov
    n = len(obs)
    noise_sigma = obs.noise_sigma()
    order = np.argsort(rec.chi2_nu.numpy())
    rows = order[np.linspace(0, n - 1, min(count, n)).round().astype(int)]  # best to worst
    shown = torch.as_tensor(rows)
    model = rec.model_image(shown)  # only the lenses on the figure
    has_truth = "source" in truth
    cols = 7 if has_truth else 5
    fig, axes = plt.subplots(len(rows), cols, figsize=(2.9 * cols, 2.6 * len(rows)), squeeze=False)
    ext_i, ext_s = [-ifov / 2, ifov / 2] * 2, [-sfov / 2, sfov / 2] * 2
    for r, i in enumerate(rows):
        obs_img, resid = data_panels(obs, model[r, 0], int(i))  # pixels without data: NaN, drawn grey
        flux = (float(np.nanmin(obs_img)), float(np.nanmax(obs_img)))  # data and model on one scale
        log_k = np.log10(rec.kappa[i, 0].clamp_min(1e-3).numpy())
        snr_i = 1.0 / float(noise_sigma[i])
        panels = [
            (obs_img, ext_i, f"observation (SNR {snr_i:.0f})", "magma", flux, ""),
            (model[r, 0], ext_i, "model F(source, kappa)", "magma", flux, ""),
            (
                resid,
                ext_i,
                rf"residual / $\sigma$, $\chi^2_\nu$ = {float(rec.chi2_nu[i]):.2f}",
                "RdBu_r",
                (-RESIDUAL_SIGMA, RESIDUAL_SIGMA),
                rf"$\sigma$ (range $\pm${RESIDUAL_SIGMA:g})",
            ),
        ]
        src_lim = None
        if has_truth:
            t = truth["source"][i, 0].numpy()
            src_lim = (min(0.0, float(t.min())), max(float(t.max()), 1e-6))
        panels.append((rec.source[i, 0], ext_s, "source", "magma", src_lim, ""))
        if has_truth:
            panels.append((truth["source"][i, 0], ext_s, "true source", "magma", src_lim, ""))
        k_lim = (float(log_k.min()), float(log_k.max()))
        if has_truth:
            log_t = np.log10(truth["kappa"][i, 0].clamp_min(1e-3).numpy())
            k_lim = (float(log_t.min()), float(log_t.max()))
        panels.append((log_k, ext_i, r"$\log_{10}\kappa$", "viridis", k_lim, ""))
        if has_truth:
            panels.append((log_t, ext_i, r"true $\log_{10}\kappa$", "viridis", k_lim, ""))
        for c, (ax, (img, ext, title, cmap, lim, unit)) in enumerate(zip(axes[r], panels, strict=True)):
            kw = {} if lim is None else {"vmin": lim[0], "vmax": lim[1]}
            colours = plt.get_cmap(cmap).with_extremes(bad="0.6")
            im = ax.imshow(np.asarray(img), origin="lower", extent=ext, cmap=colours, **kw)
            ax.set_title(title, fontsize=8)
            ax.tick_params(labelsize=6)
            if r == len(rows) - 1:
                ax.set_xlabel("arcsec", fontsize=7)
            if c == 0:
                ax.set_ylabel(f"lens {int(i)}\narcsec", fontsize=7)
            bar = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.03)
            bar.ax.tick_params(labelsize=6)
            if unit:
                bar.set_label(unit, fontsize=6)
    fig.tight_layout()
    return _save(fig, path)


def chi2_histogram(rec: Reconstruction, path: Path) -> Path:
    """chi2_nu of the lenses (final, and the RIM's baseline after fine-tuning) against the band
    that pure noise fills."""
    plt = _pyplot()
    obs = rec.observation
    nu = int(lenssim.data_pixels(obs.noise, obs.observation).median())  # pixels with data
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    c = rec.chi2_nu.numpy()
    width = 6 * math.sqrt(2 / nu)  # the chi2_nu distribution of pure noise: 1 +- 6 sigma
    values = [c] + ([rec.chi2_nu_baseline.numpy()] if rec.chi2_nu_baseline is not None else [])
    lo = min(1 - width, *(float(v.min()) for v in values))
    hi = max(1 + width, *(float(v.max()) for v in values))
    bins = np.geomspace(max(lo, 1e-3), hi * 1.01, 40)
    if rec.chi2_nu_baseline is not None:
        ax.hist(rec.chi2_nu_baseline.numpy(), bins=bins, alpha=0.5, label="RIM baseline")
    ax.hist(c, bins=bins, alpha=0.6, label="final")
    ax.axvspan(
        1 - 3 * width / 6, 1 + 3 * width / 6, color="k", alpha=0.15, label=rf"pure noise, $\nu$={nu}: 99.7 % in here"
    )
    ax.axvline(1.0, color="k", lw=0.8)
    ax.set_xscale("log")
    ax.set_xlabel(r"$\chi^2_\nu$ (log scale)")
    ax.set_ylabel("lenses")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, path)


def chi2_vs_snr(rec: Reconstruction, path: Path) -> Path:
    """chi2_nu of each lens against its signal-to-noise ratio 1 / sigma."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    s = snr(rec.observation.noise_sigma())
    if rec.chi2_nu_baseline is not None:
        ax.scatter(s, rec.chi2_nu_baseline.numpy(), s=10, alpha=0.6, label="RIM baseline")
    ax.scatter(s, rec.chi2_nu.numpy(), s=10, alpha=0.8, label="final")
    ax.axhline(1.0, color="k", lw=0.8, ls="--")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("SNR = 1 / sigma")
    ax.set_ylabel(r"$\chi^2_\nu$")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def block_figure(metrics: dict, path: Path) -> Path:
    """The binned chi2_nu of the residual against the block side (median and 16-84 % over the
    lenses): flat at 1 for noise, flat above 1 for a noise level off by one factor, rising with the
    block where the fit leaves structure on that scale."""
    plt = _pyplot()
    scan = metrics["chi2_nu_by_block"]
    sides = scan["block_pixels"]
    pixel = scan["pixel_arcsec"]
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    styles = {"constant_predictor": ("0.5", "constant predictor (no light)"), "baseline": ("k", "RIM baseline")}
    for key, (color, label) in {**styles, "final": ("C3", "final")}.items():
        if key in scan:
            m = scan[key]
            ax.plot(sides, m["median"], "o-", color=color, label=label)
            ax.fill_between(sides, m["p16"], m["p84"], color=color, alpha=0.15)
    ax.axhline(1.0, color="k", lw=0.8, ls="--", label="the noise")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(sides, [str(b) for b in sides])
    ax.set_xlabel(f'block side (pixels of {pixel:.3g}")')
    ax.set_ylabel(r"$\chi^2_\nu$ of the residual summed in blocks")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, path)


def loss_change_histogram(metrics: dict, path: Path) -> Path:
    """The per-lens change of log10 loss by fine-tuning (Fig. 8, left)."""
    plt = _pyplot()
    per = metrics["per_lens"]
    change = np.log10(per["loss_final"]) - np.log10(per["loss_baseline"])
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.hist(change, bins=max(5, min(30, len(change) // 2)), color="C2")
    ax.axvline(0.0, color="k", lw=0.8)
    m = metrics["log10_loss_change"]
    ax.set_title(f"mean {m['mean']:+.3f} dex, std {m['std']:.3f} dex", fontsize=9)
    ax.set_xlabel(r"$\log_{10}$ loss fine-tuned $-$ $\log_{10}$ loss baseline (< 0: closer to the truth)")
    ax.set_ylabel("lenses")
    fig.tight_layout()
    return _save(fig, path)


def coherence_figure(metrics: dict, path: Path) -> Path:
    """The coherence of source and kappa with the truth per spatial frequency, with its 16-84 % band."""
    plt = _pyplot()
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
        lows = [min(metrics["coherence"][st][field]["low"]) for st in metrics["coherence"]]
        ax.set_ylim(min(-0.2, 1.1 * min(lows)), 1.05)  # never clip a band
        ax.axhline(0.0, color="grey", lw=0.6)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


HOW_TO_READ = (
    (
        "chi2_nu",
        "the reduced chi-square of the fit, sum_i ((y_i - F(x)_i) / sigma_i)^2 / N^2 over the N^2 image "
        "pixels: about 1 (within 1 +- 3 sqrt(2 / N^2)) when the model explains the data down to the noise, above 1 "
        "when structure is left in the residuals, below 1 when the noise itself is fitted.",
    ),
    (
        "chi2_nu of pixel blocks",
        "the residual summed in blocks of pixels, each sum over its own noise (lenssim.binned_chi2_nu): "
        "about 1 when the residuals are the stated noise, and about chi2_nu when they are white noise of another "
        "level, so beside chi2_nu it tells why a fit misses. Both about equal and above 1: a noise level set too low "
        "(or a misfit that alternates from pixel to pixel). Binned well above chi2_nu: structure left on the blocks' "
        "scale (an arc not modelled adds up coherently, up to the block's pixel count times what it "
        "adds to chi2_nu). Correlated noise (drizzled or resampled frames) would raise it too: for a FITS "
        "observation the block sums' noise allows for the correlation measured from its sky. The figure chi2 by "
        "block scans the block side from 1 pixel (chi2_nu itself): where the curve rises is the scale of what "
        "the fit misses.",
    ),
    (
        "log10 loss",
        "log10 of eq. 7 of the paper against the true maps (needs the truth): the source's mean squared "
        "error plus the sqrt(kappa)-weighted squared error of log10 kappa. Lower is better; 1 dex = 10 times smaller "
        "error. As in Table 4, only the final RIM estimate (its last step) counts, and mu and sigma are the mean and "
        "standard deviation of log10 loss over the lenses.",
    ),
    (
        "constant predictor",
        "the trivial reference on the same lenses: source 0 everywhere and the single constant "
        "log10 kappa that minimises eq. 7 over these lenses. A reconstruction that does not beat it has learned "
        "nothing about these lenses.",
    ),
    (
        "Adam on the likelihood",
        "the no-prior reference (demo only): every pixel of source and log10 kappa fitted "
        "by Adam to the likelihood alone, from the RIM's gradient-free first estimate, with the RIM's number of "
        "likelihood gradients and with many more; its learning rate is chosen on chi2_nu alone (no labels).",
    ),
    (
        "coherence",
        "gamma(k) = Re P12 / sqrt(P11 P22) between reconstruction and truth in rings of spatial frequency "
        "k (1/arcsec): 1 where the structure at that scale is recovered with the right phase, 0 where it is "
        "unrelated, negative where it is anti-correlated. The bands are the 16-84 % range over lenses.",
    ),
    (
        "residual panels",
        "(data - model) / sigma with the colour range fixed at +-4 sigma: pure noise looks like "
        "salt and pepper, coherent arcs mean unexplained flux.",
    ),
)


def _comparison_table(comparison: dict) -> str:
    head = (
        "<tr><th>method (same lenses)</th><th>median chi2_nu</th><th>median chi2_nu, pixel blocks</th>"
        "<th>mean log10 loss &plusmn; std</th><th>mean coherence source / kappa</th></tr>"
    )

    def coh(v):
        return "n/a" if v is None else f"{v:.3f}"

    def binned(m):  # a comparison made before the binned chi2_nu existed has none
        return f"{m['chi2_nu_binned']['median']:.3g}" if "chi2_nu_binned" in m else "n/a"

    rows = [
        f"<tr><td>{html.escape(name)}</td><td>{m['chi2_nu']['median']:.3g}</td><td>{binned(m)}</td>"
        f"<td>{m['log10_loss']['mu']:.3f} &plusmn; {m['log10_loss']['sigma']:.3f}</td>"
        f"<td>{coh(m['coherence_source_mean'])} / {coh(m['coherence_kappa_mean'])}</td></tr>"
        for name, m in comparison.items()
    ]
    return f"<h2>Against the references</h2><table border='1' cellpadding='4'>{head}{''.join(rows)}</table>"


def summary_page(report: Path, metrics: dict, images: list[Path], title: str) -> Path:
    """A short HTML page with the headline numbers, the references, every figure and how to read them."""
    rows = []
    for stage, s in metrics["chi2_nu"].items():
        rows.append(
            f"<tr><td>chi2_nu, {stage}</td><td>median {s['median']:.3g} (16-84 %: {s['p16']:.3g}-{s['p84']:.3g}); "
            f"{100 * s['fraction_at_or_below_1.1']:.0f} % at or below 1.1</td></tr>"
        )
    binned = metrics.get("chi2_nu_binned", {})
    for stage, s in binned.items():
        if stage != "block_pixels":
            rows.append(
                f"<tr><td>chi2_nu of {binned['block_pixels']} x {binned['block_pixels']}-pixel blocks, {stage}</td>"
                f"<td>median {s['median']:.3g} (16-84 %: {s['p16']:.3g}-{s['p84']:.3g}): about 1 when the "
                f"residuals are noise, above chi2_nu when they are structure</td></tr>"
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
    table = _comparison_table(metrics["comparison"]) if "comparison" in metrics else ""
    figs = "\n".join(f'<h3>{p.stem.replace("_", " ")}</h3><p><img src="{p.name}" alt="{p.stem}"></p>' for p in images)
    guide = "".join(f"<dt><b>{html.escape(k)}</b></dt><dd>{html.escape(v)}</dd>" for k, v in HOW_TO_READ)
    page = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title></head><body>"
        f"<h1>{html.escape(title)}</h1><p>{metrics['lenses']} lenses. Every number is also in metrics.json.</p>"
        f"<table border='1' cellpadding='4'>{body}</table>{table}<h2>How to read this</h2><dl>{guide}</dl>"
        f"<h2>Figures</h2>{figs}</body></html>\n"
    )
    path = report / "index.html"
    with written(path) as tmp:
        tmp.write_text(page)
    return path


def write_report(
    rec: Reconstruction,
    report: Path,
    *,
    title: str,
    extra: dict | None = None,
    extra_figures: Callable[[Path, dict], list[Path]] | None = None,
) -> dict:
    """metrics.json, the figures and index.html in ``report``; returns the metrics.
    ``extra_figures(report, metrics)`` draws more figures, listed first on the page."""
    metrics = compute_metrics(rec)  # before anything is written: a failure leaves no folder
    report.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(report)  # a killed report's half-drawn figures
    if extra:
        metrics.update(extra)
    images = (extra_figures(report, metrics) if extra_figures else []) + figures(rec, metrics, report)
    path = report / "metrics.json"
    with written(path) as tmp:
        tmp.write_text(json.dumps(metrics, indent=1, sort_keys=True) + "\n")
    summary_page(report, metrics, images, title)
    return metrics


def comparison_figure(path: Path, comparison: dict) -> Path:
    """Bars of median chi2_nu, mean log10 loss and mean coherence for each method of
    ``comparison`` (method name -> the figures of :func:`compute_metrics`' layout)."""
    plt = _pyplot()
    names = list(comparison)
    short = [k.split(" (")[0] + ("\n(" + k.split(" (", 1)[1] if " (" in k else "") for k in names]
    fig, axes = plt.subplots(1, 3, figsize=(13, 4.2))
    y = np.arange(len(names))
    axes[0].barh(y, [comparison[k]["chi2_nu"]["median"] for k in names], color="C0")
    axes[0].set_xscale("log")
    axes[0].axvline(1.0, color="k", lw=0.8, ls="--")
    axes[0].set_xlabel(r"median $\chi^2_\nu$ (fit to the data)")
    axes[1].barh(y, [comparison[k]["log10_loss"]["mu"] for k in names], color="C1")
    axes[1].set_xlabel("mean log10 loss against the truth (lower is better)")
    w = 0.4

    def coherence(key):  # None (no power: the constant predictor's source) draws no bar
        return [np.nan if comparison[k][key] is None else comparison[k][key] for k in names]

    axes[2].barh(y - w / 2, coherence("coherence_source_mean"), w, label="source")
    axes[2].barh(y + w / 2, coherence("coherence_kappa_mean"), w, label="kappa")
    axes[2].set_xlabel("mean coherence with the truth")
    axes[2].legend(fontsize=8)
    for i, ax in enumerate(axes):
        ax.set_yticks(y)
        ax.set_yticklabels(short if i == 0 else [], fontsize=7)
        ax.invert_yaxis()
    fig.tight_layout()
    return _save(fig, path)
