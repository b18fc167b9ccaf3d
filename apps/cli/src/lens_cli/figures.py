"""Figures written by the commands (matplotlib, no display needed)."""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from lens_cli.common import atomic_path  # noqa: E402


def lens_panels(path: Path, data: dict, *, image_fov: float, source_fov: float, count: int = 4) -> Path:
    """Source, convergence (log10) and observation of the first ``count`` lenses, one per row."""
    count = min(count, data["observation"].shape[0])
    fig, axes = plt.subplots(count, 3, figsize=(9, 3 * count), squeeze=False)
    ext_i = [-image_fov / 2, image_fov / 2] * 2
    ext_s = [-source_fov / 2, source_fov / 2] * 2
    for r in range(count):
        panels = [
            (data["source"][r, 0], ext_s, "source", "magma"),
            (np.log10(np.clip(data["kappa"][r, 0], 1e-3, None)), ext_i, r"$\log_{10}\kappa$", "viridis"),
            (data["observation"][r, 0], ext_i, f"observation (SNR {1 / float(data['noise_sigma'][r]):.0f})", "magma"),
        ]
        for ax, (img, ext, title, cmap) in zip(axes[r], panels, strict=True):
            im = ax.imshow(np.asarray(img), origin="lower", extent=ext, cmap=cmap)
            ax.set_title(title, fontsize=9)
            ax.set_xlabel("arcsec", fontsize=8)
            fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    tmp = atomic_path(path)
    fig.savefig(tmp, dpi=80, format="png")
    plt.close(fig)
    os.replace(tmp, path)
    return path


def samples_beside_data(path: Path, data, samples, *, log10: bool = False) -> Path:
    """Training images (top row) beside VAE samples (bottom row)."""
    n = min(len(data), len(samples))
    fig, axes = plt.subplots(2, n, figsize=(2 * n, 4.3), squeeze=False)
    for row, (imgs, label) in enumerate(((data, "data"), (samples, "samples"))):
        for i in range(n):
            img = np.asarray(imgs[i, 0], dtype=np.float64)
            if log10:
                img = np.log10(np.clip(img, 1e-3, None))
            axes[row, i].imshow(img, origin="lower", cmap="viridis" if log10 else "magma")
            axes[row, i].set_xticks([])
            axes[row, i].set_yticks([])
        axes[row, 0].set_ylabel(label + (r" ($\log_{10}\kappa$)" if log10 else ""))
    fig.tight_layout()
    tmp = atomic_path(path)
    fig.savefig(tmp, dpi=70, format="png")
    plt.close(fig)
    os.replace(tmp, path)
    return path
