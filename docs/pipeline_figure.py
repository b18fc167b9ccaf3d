"""Draws docs/pipeline.png, the README's picture of the pipeline: python docs/pipeline_figure.py"""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch  # noqa: E402

BOXES = {
    "tng": (0.0, 3.0, "IllustrisTNG particles\n(cutouts, snapshots)\nor synthetic halos", "#dde"),
    "cosmos": (0.0, 1.0, "COSMOS stamps (GalSim)\n+ denoiser, or\nsynthetic galaxies", "#dde"),
    "kappa": (2.6, 3.0, "kappa maps\nNumba KDE, eq. 11-13\naugmented; + SIE maps", "#eef"),
    "sources": (2.6, 1.0, "source stamps\n[0, 1], 128^2", "#eef"),
    "vaes": (5.2, 4.2, "kappa & source VAEs\nTables 5, 6", "#efe"),
    "lenses": (5.2, 2.0, "simulated lenses\nFFT ray tracer, PSF,\nnoise (Table 1)", "#eef"),
    "rim": (7.8, 2.0, "RIM training\nConvGRU U-net, T = 8\nAdam-processed gradients", "#fee"),
    "obs": (7.8, 0.0, "observation y\n(HDF5 or FITS)\nPSF, noise", "#dde"),
    "ft": (10.4, 2.0, "EWC fine-tuning\nFisher from VAE draws\nRMSProp, early stop", "#fee"),
    "eval": (10.4, 4.2, "evaluation\nchi2_nu, Table 4 loss,\ncoherence, figures", "#ffe"),
}
ARROWS = [
    ("tng", "kappa"),
    ("cosmos", "sources"),
    ("kappa", "vaes"),
    ("sources", "vaes"),
    ("kappa", "lenses"),
    ("sources", "lenses"),
    ("vaes", "lenses"),
    ("lenses", "rim"),
    ("rim", "ft"),
    ("obs", "ft"),
    ("vaes", "ft"),
    ("ft", "eval"),
]
PACKAGE = {"lenssim": "#eef", "lensprior": "#efe", "lensrim": "#fee"}


def main() -> None:
    fig, ax = plt.subplots(figsize=(12.5, 5.4))
    w, h = 2.1, 1.15
    for x, y, text, color in BOXES.values():
        ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.05", fc=color, ec="k", lw=0.8))
        ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=8.5)
    for a, b in ARROWS:
        xa, ya = BOXES[a][:2]
        xb, yb = BOXES[b][:2]
        start = (xa + w, ya + h / 2) if xb > xa + 0.5 else (xa + w / 2, ya + (h if yb > ya else 0))
        end = (xb, yb + h / 2) if xb > xa + 0.5 else (xb + w / 2, yb + (0 if yb > ya else h))
        ax.add_patch(FancyArrowPatch(start, end, arrowstyle="-|>", mutation_scale=12, lw=0.9, color="0.3"))
    for i, (name, color) in enumerate(PACKAGE.items()):
        ax.add_patch(FancyBboxPatch((0.1 + 1.6 * i, 5.35), 0.3, 0.22, boxstyle="round,pad=0.02", fc=color, ec="k"))
        ax.text(0.5 + 1.6 * i, 5.46, name, va="center", fontsize=9)
    ax.set_xlim(-0.2, 12.7)
    ax.set_ylim(-0.2, 5.8)
    ax.axis("off")
    fig.tight_layout()
    fig.savefig(Path(__file__).with_name("pipeline.png"), dpi=90)


if __name__ == "__main__":
    main()
