"""Every Python snippet of every README runs, as a reader would paste it.

Long jobs are cut to a few steps (the substitutions are listed per snippet and change sizes only)
and the files a snippet reads are made first, as its surrounding text says to."""

import os
import re
import shutil
from pathlib import Path

import pytest
from lens_runner import requires_lens, run

ROOT = Path(__file__).resolve().parents[1]
READMES = [
    "packages/lenscore/README.md",
    "packages/lenssim/README.md",
    "packages/lensprior/README.md",
    "packages/lensrim/README.md",
    "README.md",
]
CUTS = {  # snippet text -> the same call with fewer steps or draws
    "lensrim.FineTune(*vaes)": "lensrim.FineTune(*vaes, lensrim.FineTuneConfig(max_steps=1, fisher_samples=1))",
    "steps=600, learning_rate=1e-3": "steps=3, learning_rate=1e-3",
    "steps=300, log_every=25": "steps=2, log_every=2, validation_size=4",
    "lensrim.FineTuneConfig(),": "lensrim.FineTuneConfig(max_steps=1, fisher_samples=1),",
}


def snippets(readme: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", (ROOT / readme).read_text(), flags=re.S)


def test_every_readme_with_python_has_its_snippets_found():
    assert all(snippets(r) for r in READMES)


def _cut(code: str) -> str:
    for long, short in CUTS.items():
        code = code.replace(long, short)
    return code


@pytest.fixture
def workdir(tmp_path):
    here = os.getcwd()
    os.chdir(tmp_path)
    yield tmp_path
    os.chdir(here)


@requires_lens
@pytest.mark.slow
def test_readme_snippets_run_in_order_with_their_files(workdir):
    # the files the snippets' text says to make first, at the snippets' 64^2
    run("simulate", "sources", "--synthetic", 16, "--pixels", 64, "--test-fraction", 0.25, "-o", "sources.h5")
    run(
        "simulate",
        "kappa",
        "--synthetic",
        2,
        "--maps-per-halo",
        4,
        "--pixels",
        64,
        "--test-fraction",
        0.5,
        "-o",
        "kappa.h5",
    )
    import lensprior

    kappa = lensprior.load_field("kappa.h5", "kappa", split="train", pixels=64)
    kcfg = lensprior.kappa_vae_config(pixels=64, levels=3, filters=8, latent_dim=16, steps=3)
    lensprior.train_vae(kcfg, kappa, "runs/kappa-vae")
    namespace: dict = {}
    for readme in READMES:  # one namespace per page; the lensrim page uses the lensprior page's runs
        if readme == "README.md":  # the notebook example: the lensrim page's RIM as runs/rim, a FITS lens
            assert namespace["result"].chi2_nu.shape == (4,)
            shutil.copytree("runs/rim-64", "runs/rim")
            _fits_lens("lens.fits")
        namespace = {} if readme != "packages/lensrim/README.md" else namespace
        for code in snippets(readme):
            exec(compile(_cut(code), f"{readme} snippet", "exec"), namespace)  # noqa: S102
    assert Path("lens-reconstruction.fits").is_file() and namespace["rec"].source.shape == (1, 1, 64, 64)
    # the report and demo example: the quick demo's held-out lenses, reported again from Python
    assert namespace["metrics"]["lenses"] == 3 and Path("my-report/index.html").is_file()


def _fits_lens(path):
    """A lensed SIE + Sersic image as a FITS cutout, 80 pixels of 0.1" (wider than 7.69")."""
    import torch
    from astropy.io import fits

    import lenssim

    g = torch.Generator().manual_seed(0)
    kappa = lenssim.sie_convergence(lenssim.sample_sie_parameters(1, generator=g), n=80, fov=8.0)
    source = lenssim.sersic_sources(1, pixels=80, fov=3.0, generator=g)
    image = lenssim.lens_image(source, kappa, image_fov=8.0, source_fov=3.0)[0, 0].numpy()
    header = fits.Header()
    header["PIXSCALE"] = 0.1
    fits.PrimaryHDU(image, header=header).writeto(path)
