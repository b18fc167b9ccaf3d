"""Catalogues of FITS observations, and several observations stacked into one batch."""

import numpy as np
import pytest
import torch
from astropy.io import fits

import lenssim
from lenssim.io import read_lens_catalogue


def _cutout(path, seed, *, side=40, scale=0.25, noise=None):
    image = np.random.default_rng(seed).random((side, side)) + 0.5
    hdus = [fits.PrimaryHDU(image, header=fits.Header({"PIXSCALE": scale}))]
    if noise is not None:
        hdus.append(fits.ImageHDU(np.full((side, side), noise), name="NOISE"))
    fits.HDUList(hdus).writeto(path)
    return path


def test_a_catalogue_gives_each_lens_its_files_and_options(tmp_path):
    (tmp_path / "cut").mkdir()
    text = (
        "\ufeff# two lenses\n"  # a byte-order mark and a comment, as spreadsheets write them
        "Name,fits,psf,mask,psf_fwhm,noise_sigma,exposure_time,flux_scale,pixel_scale,center_x,center_y\n"
        "j0946,cut/j0946.fits,psf.fits,,,0.1,2184,,,,\n"
        ",cut/j1148.fits.gz,,m.fits,0.12,,,3.5,0.05,101.5,-2\n"
        "j2321,j2321.fits,,,0.1, auto ,,,,,\n"  # the noise measured from the sky
    )
    (tmp_path / "lenses.csv").write_text(text, encoding="utf-8")
    a, b, c = read_lens_catalogue(tmp_path / "lenses.csv")
    assert c == {"row": 5, "name": "j2321", "fits": tmp_path / "j2321.fits", "psf_fwhm": 0.1, "noise_sigma": "auto"}
    assert a == {
        "row": 3,
        "name": "j0946",
        "fits": tmp_path / "cut/j0946.fits",
        "psf_file": tmp_path / "psf.fits",
        "noise_sigma": 0.1,
        "exposure_time": 2184.0,
    }
    assert b == {
        "row": 4,
        "name": "j1148",  # the file's name up to its first dot
        "fits": tmp_path / "cut/j1148.fits.gz",
        "mask_file": tmp_path / "m.fits",
        "psf_fwhm": 0.12,
        "flux_scale": 3.5,
        "pixel_scale": 0.05,
        "center": (101.5, -2.0),
    }
    assert lenssim.io.is_catalogue(tmp_path / "x.CSV") and not lenssim.io.is_catalogue(tmp_path / "x.fits")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "an empty catalogue"),
        ("fits\n", "the catalogue lists no lens"),
        ("fit,psf_fwhm\na.fits,1\n", "unknown column 'fit' \\(known: name, fits,"),
        ("psf_fwhm\n1\n", "no 'fits' column"),
        ("fits,fits\na,b\n", "the column 'fits' is there twice"),
        ("fits,center_x\na.fits,3\n", "give both center_x and center_y, or neither"),
        ("fits,center_x,center_y\na.fits,3,\n", "row 2: give both center_x and center_y, or neither"),
        ("fits,psf_fwhm\na.fits,0.1,3\n", "row 2: 3 cells for 2 columns"),
        ("fits,psf_fwhm\n\na.fits,zero\n", "row 3: psf_fwhm 'zero' is not a number"),
        ("fits,noise_sigma\na.fits,-1\n", "row 2: noise_sigma '-1' is not a positive number"),
        ("fits,noise_sigma\na.fits,Auto\n", "row 2: noise_sigma 'Auto' is not a number or 'auto'"),
        ("fits,flux_scale\na.fits,nan\n", "row 2: flux_scale 'nan' is not a positive number"),
        ("fits,center_x,center_y\na.fits,inf,1\n", "row 2: center_x 'inf' is not a finite number"),
        ("fits,name\n,a\n", "row 2: no FITS file given"),
        ("fits,name\na.fits,../up\n", "row 2: the name '../up' is not a file-name part"),
        ("fits\nx/a.fits\ny/a.fits\n", "rows 2 and 3 are both named 'a' \\(their outputs would collide\\)"),
        ('fits\n"a.fits\n', "not a CSV catalogue"),
    ],
)
def test_a_catalogue_that_cannot_be_used_is_refused_naming_the_row(tmp_path, text, message):
    (tmp_path / "c.csv").write_text(text)
    with pytest.raises(lenssim.FitsError, match=message):
        read_lens_catalogue(tmp_path / "c.csv")
    (tmp_path / "bin.csv").write_bytes(b"\xff\xfe\x00fits")
    with pytest.raises(lenssim.FitsError, match="not a readable text catalogue"):
        read_lens_catalogue(tmp_path / "bin.csv")
    with pytest.raises(lenssim.FitsError, match="no such file"):
        read_lens_catalogue(tmp_path / "none.csv")


def test_stacked_observations_are_each_observation_unchanged(tmp_path):
    a = lenssim.Observation.from_fits(_cutout(tmp_path / "a.fits", 0), psf_fwhm=0.3, noise_sigma=0.1)
    b = lenssim.Observation.from_fits(_cutout(tmp_path / "b.fits", 1, side=64, scale=0.125, noise=0.2), psf_fwhm=0.5)
    a, b = a.on_grid(32, 8.0, psf_size=11), b.on_grid(32, 8.0, psf_size=21)
    both = lenssim.Observation.stack([a, b], origin={"catalogue": "c.csv"})
    assert len(both) == 2 and both.psf.shape == (2, 1, 21, 21) and both.noise.shape == (2, 1, 32, 32)
    assert torch.equal(both.observation, torch.cat([a.observation, b.observation]))
    assert torch.equal(both.noise[0], torch.full((1, 32, 32), float(a.noise[0])))  # the sigma made a map
    assert torch.equal(both.noise[1], b.noise[0])
    torch.testing.assert_close(both.flux_scale, torch.tensor([a.flux_scale, b.flux_scale], dtype=torch.float64))
    # the padded PSF is the same convolution: the same model image of one source and kappa
    source = torch.rand(1, 1, 32, 32, generator=torch.Generator().manual_seed(2))
    kappa = torch.full((1, 1, 32, 32), 0.3)
    kw = dict(image_fov=8.0, source_fov=3.0)
    same = lenssim.lens_image(source, kappa, psf=a.psf, **kw), lenssim.lens_image(source, kappa, psf=both.psf[:1], **kw)
    torch.testing.assert_close(same[0], same[1], rtol=0, atol=1e-6)
    # a lens taken out keeps its own scale and origin
    second = both[1:]
    assert second.lens_scale(0) == pytest.approx(b.flux_scale) and second.lens_origin(0)["fits"].endswith("b.fits")
    assert both.origin["catalogue"] == "c.csv" and both.lens_origin(0)["fits"].endswith("a.fits")
    assert set(both.arrays()) == {"observation", "psf", "noise_sigma", "noise_map", "flux_scale"}
    sigmas = lenssim.Observation.stack([a, a])  # sigmas alone stay sigmas
    assert sigmas.noise.shape == (2,) and sigmas.lens_scale(1) == pytest.approx(a.flux_scale)


def test_observations_that_do_not_stack_are_refused(tmp_path):
    a = lenssim.Observation.from_fits(_cutout(tmp_path / "a.fits", 0), psf_fwhm=0.3, noise_sigma=0.1)
    with pytest.raises(ValueError, match="put FITS observations on a grid"):
        lenssim.Observation.stack([a])
    with pytest.raises(lenssim.DatasetError, match="different grids: 32 pixels across 8 arcsec, 16 across 8"):
        lenssim.Observation.stack([a.on_grid(32, 8.0), a.on_grid(16, 8.0)])
    with pytest.raises(ValueError, match="no observations to stack"):
        lenssim.Observation.stack([])


def test_any_text_is_a_catalogue_or_a_one_line_refusal(tmp_path):
    """Texts drawn from a catalogue's own pieces (columns, cells, separators, quotes, comments):
    the reader returns rows or raises FitsError, never anything else."""
    columns = "name fits psf mask psf_fwhm noise_sigma center_x center_y flux_scale".split()
    cells = ["a.fits", "b.fits", "../c", "0.1", "-2", "nan", "1e400", "", " ", "é", "x" * 80]
    pieces = [*columns, *cells, ",", ",", "\n", "\n", '"', "#", "\ufeff", "\r\n", "\t"]
    rng = np.random.default_rng(0)
    kinds = set()
    for _ in range(400):
        head = rng.choice(["", "fits\n", "name,fits\n", "fits,psf_fwhm\n"])  # a header, or none
        text = head + "".join(rng.choice(pieces, size=rng.integers(1, 12)))
        (tmp_path / "c.csv").write_text(text, encoding="utf-8")
        try:
            rows = read_lens_catalogue(tmp_path / "c.csv")
        except lenssim.FitsError as e:
            assert "\n" not in str(e) and str(e).startswith(str(tmp_path / "c.csv")), str(e)
            kinds.add("refused")
            continue
        assert rows and all(isinstance(r["fits"], type(tmp_path)) and r["name"] for r in rows)
        kinds.add("read")
    assert kinds == {"refused", "read"}
