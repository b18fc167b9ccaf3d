"""Figures written by the commands (matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from lenscore.files import written  # noqa: E402


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
    with written(path) as tmp:
        fig.savefig(tmp, dpi=70, format="png")
    plt.close(fig)
    return path
