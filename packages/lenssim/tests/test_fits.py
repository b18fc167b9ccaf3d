import numpy as np
import pytest
import torch
from astropy.io import fits

import lenssim
from lenssim.io.fits import resample_matrix


def _write(path, image, *, scale=None, psf=None, noise=None, cdelt=True):
    hdr = fits.Header()
    if scale is not None:
        hdr["CDELT1" if cdelt else "PIXSCALE"] = -scale / 3600 if cdelt else scale
        if cdelt:
            hdr["CDELT2"] = scale / 3600
    hdus = [fits.PrimaryHDU(image, header=hdr)]
    if psf is not None:
        hdus.append(fits.ImageHDU(psf, name="PSF"))
    if noise is not None:
        hdus.append(fits.ImageHDU(noise, name="NOISE"))
    fits.HDUList(hdus).writeto(path)
    return path


def test_same_pixel_scale_is_an_exact_central_crop(tmp_path):
    rng = np.random.default_rng(0)
    img = rng.random((40, 40))
    p = _write(tmp_path / "o.fits", img, scale=0.25)
    obs = lenssim.read_fits_observation(p, pixels=32, image_fov=8.0, psf_fwhm=0.3, noise_sigma=0.1)
    peak = img[4:36, 4:36].max()
    assert not obs.resampled and obs.flux_scale == pytest.approx(peak)
    np.testing.assert_allclose(obs.observation[0, 0].numpy(), img[4:36, 4:36] / peak, rtol=1e-6)
    assert obs.noise.shape == (1,) and obs.noise.item() == pytest.approx(0.1 / peak)
    assert obs.psf.shape == (1, 1, 21, 21) and obs.psf.sum().item() == pytest.approx(1.0)


def test_resampling_averages_areas_and_carries_the_noise(tmp_path):
    rng = np.random.default_rng(1)
    img = rng.random((64, 64)) + 1.0
    noise = np.full((64, 64), 0.2)
    p = _write(tmp_path / "o.fits", img, scale=0.125, noise=noise, psf=np.outer([1, 2, 1], [1, 2, 1]).astype(float))
    with pytest.warns(UserWarning, match="the PSF HDU sums to 16; renormalised to 1"):
        obs = lenssim.read_fits_observation(p, pixels=32, image_fov=8.0, flux_scale=1.0)
    blocks = img.reshape(32, 2, 32, 2).mean(axis=(1, 3))  # 2x2 averages
    np.testing.assert_allclose(obs.observation[0, 0].numpy(), blocks, rtol=1e-6)
    np.testing.assert_allclose(obs.noise[0, 0].numpy(), 0.1, rtol=1e-6)  # 0.2 / sqrt(4)
    assert obs.resampled and obs.psf.sum().item() == pytest.approx(1.0)
    k = obs.psf.shape[-1]
    c = np.arange(k) - k // 2
    assert abs((obs.psf[0, 0].numpy() * c[None, :]).sum()) < 1e-6  # still centred


def test_resampling_matches_a_dense_numerical_integral_and_conserves_flux(tmp_path):
    n_in, s_in = 50, 0.2  # 10 arcsec
    rng = np.random.default_rng(2)
    img = rng.random((n_in, n_in))
    p = _write(tmp_path / "o.fits", img, scale=s_in, cdelt=False)
    obs = lenssim.read_fits_observation(p, pixels=24, image_fov=7.69, psf_fwhm=0.2, noise_sigma=0.05, flux_scale=1)
    s_out = 7.69 / 24
    for j, i in [(0, 0), (5, 17), (23, 11)]:  # mean of the piecewise-constant input over the output pixel
        u = (np.arange(400) + 0.5) / 400
        ys = (j - 12 + u) * s_out
        xs = (i - 12 + u) * s_out
        rows = np.floor(ys / s_in + n_in / 2).astype(int)
        cols = np.floor(xs / s_in + n_in / 2).astype(int)
        assert obs.observation[0, 0, j, i].item() == pytest.approx(img[np.ix_(rows, cols)].mean(), rel=3e-3)
    # white noise through the weights: sigma * sqrt(sum w^2) per axis
    w = resample_matrix(n_in, s_in, 24, s_out)
    expected = 0.05 * np.sqrt(np.outer((w**2).sum(1), (w**2).sum(1)))
    np.testing.assert_allclose(obs.noise[0, 0].numpy(), expected, rtol=1e-5)
    assert np.allclose(w.sum(axis=1), 1.0)  # every output pixel is fully covered
    # a field that covers the whole input conserves the total flux
    whole = lenssim.read_fits_observation(p, pixels=24, image_fov=10.0, psf_fwhm=0.2, noise_sigma=0.05, flux_scale=1)
    assert whole.observation.sum().item() * (10.0 / 24) ** 2 == pytest.approx(img.sum() * s_in**2, rel=1e-5)


def _header(**cards):
    hdr = fits.Header()
    hdr["CTYPE1"], hdr["CTYPE2"] = "RA---TAN", "DEC--TAN"
    for k, v in cards.items():
        hdr[k] = v
    return hdr


def _astropy_scale(hdr):  # an independent reading of the same WCS: wcslib through astropy
    from astropy.wcs import WCS
    from astropy.wcs.utils import proj_plane_pixel_scales

    return proj_plane_pixel_scales(WCS(hdr)) * 3600.0


@pytest.mark.parametrize("angle", [0.0, 30.0, 60.0, 90.0, 137.0, 270.0])
def test_rotated_and_flipped_wcs_give_the_true_pixel_scale(tmp_path, angle):
    # drizzled HST / JWST images keep the detector's orientation: the CD matrix is a rotation,
    # with the sky's east-left flip. CD2_2 alone read 0.05 * cos(angle) (and nothing at 90 deg).
    s, t = 0.05 / 3600, np.radians(angle)
    cd = {"CD1_1": -s * np.cos(t), "CD1_2": s * np.sin(t), "CD2_1": s * np.sin(t), "CD2_2": s * np.cos(t)}
    cd = {k: v for k, v in cd.items() if v != 0.0}  # a writer leaves zero entries out
    hdr = _header(**cd)
    np.testing.assert_allclose(_astropy_scale(hdr), 0.05, rtol=1e-12)
    img = np.random.default_rng(3).random((200, 200))
    fits.PrimaryHDU(img, header=hdr).writeto(tmp_path / "rot.fits")
    assert lenssim.load_fits(tmp_path / "rot.fits", psf_fwhm=0.1, noise_sigma=0.1)[1] == pytest.approx(0.05, rel=1e-12)
    plain = _write(tmp_path / "plain.fits", img, scale=0.05)  # the same pixels, north up
    kw = dict(pixels=32, image_fov=7.69, psf_fwhm=0.1, noise_sigma=0.1)
    rotated, reference = (lenssim.read_fits_observation(p, **kw) for p in (tmp_path / "rot.fits", plain))
    np.testing.assert_allclose(rotated.observation.numpy(), reference.observation.numpy(), rtol=1e-6)


@pytest.mark.parametrize(
    "cards",
    [
        {"CDELT1": -0.03 / 3600, "CDELT2": 0.03 / 3600, "PC1_1": 0.6, "PC1_2": -0.8, "PC2_1": 0.8, "PC2_2": 0.6},
        {"CDELT1": -0.5 / 60, "CDELT2": 0.5 / 60, "CUNIT1": "arcmin", "CUNIT2": "arcmin"},  # 30"
        {"CD1_1": -0.1, "CD2_2": 0.1, "CUNIT1": "arcsec", "CUNIT2": "arcsec"},
        {"CDELT1": -0.03 / 3600, "CDELT2": 0.03 / 3600, "CROTA2": 40.0},  # the old AIPS rotation
    ],
)
def test_pixel_scale_from_pc_matrices_and_units_agrees_with_wcslib(tmp_path, cards):
    hdr = _header(**cards)
    expected = _astropy_scale(hdr)
    assert expected[0] == pytest.approx(expected[1], rel=1e-12)
    fits.PrimaryHDU(np.ones((8, 8)), header=hdr).writeto(tmp_path / "o.fits")
    assert lenssim.load_fits(tmp_path / "o.fits", psf_fwhm=0.1, noise_sigma=0.1)[1] == pytest.approx(expected[0])


@pytest.mark.parametrize(
    "cards, message",
    [
        ({"CD1_1": -0.05 / 3600, "CD2_2": 0.06 / 3600}, r"pixels of 0.05 by 0.06 arcsec at 90 degrees, not square"),
        ({"CD1_1": -0.05 / 3600, "CD1_2": 0.01 / 3600, "CD2_2": 0.05 / 3600}, r"not square: resample"),  # skewed
        ({"CD1_1": 1e-5, "PC2_2": 1.0}, "both CD1_1 and PC2_2, two WCS matrices"),
        ({"CDELT1": 1.0, "CDELT2": 1.0, "CUNIT1": "pixel"}, "CUNIT1 is 'pixel', not an angle"),
        ({"CD1_2": 0.0, "CD2_1": 0.0}, "gives pixels of zero size"),
    ],
)
def test_wcs_that_give_no_square_pixel_scale_are_refused(tmp_path, cards, message):
    fits.PrimaryHDU(np.ones((8, 8)), header=_header(**cards)).writeto(tmp_path / "o.fits")
    with pytest.raises(lenssim.FitsError, match=message) as e:
        lenssim.load_fits(tmp_path / "o.fits", psf_fwhm=0.1, noise_sigma=0.1)
    assert str(tmp_path / "o.fits") in str(e.value) and "\n" not in str(e.value)
    assert lenssim.load_fits(tmp_path / "o.fits", pixel_scale=0.05, psf_fwhm=0.1, noise_sigma=0.1)[1] == 0.05


def test_bad_inputs_get_one_line_reasons(tmp_path):
    img = np.ones((40, 40))
    p = _write(tmp_path / "a.fits", img, scale=0.25)
    kw = dict(pixels=32, image_fov=8.0)
    with pytest.raises(
        lenssim.FitsError, match=r"no noise given: pass a sigma \(or auto, to measure it from the sky\)"
    ):
        lenssim.read_fits_observation(p, psf_fwhm=0.3, **kw)
    with pytest.raises(lenssim.FitsError, match="no PSF"):
        lenssim.read_fits_observation(p, noise_sigma=0.1, **kw)
    with pytest.raises(lenssim.FitsError, match="less than the model's field"):
        lenssim.read_fits_observation(p, psf_fwhm=0.3, noise_sigma=0.1, pixels=32, image_fov=12.0)
    with pytest.raises(lenssim.FitsError, match="no pixel has data"):
        lenssim.read_fits_observation(
            _write(tmp_path / "b.fits", img * np.nan, scale=0.25), psf_fwhm=0.3, noise_sigma=0.1, **kw
        )
    with pytest.raises(lenssim.FitsError, match="pixel scale"):
        lenssim.read_fits_observation(_write(tmp_path / "c.fits", img), psf_fwhm=0.3, noise_sigma=0.1, **kw)
    (tmp_path / "d.fits").write_text("not fits")
    with pytest.raises(lenssim.FitsError, match="not a readable FITS"):
        lenssim.read_fits_observation(tmp_path / "d.fits", psf_fwhm=0.3, noise_sigma=0.1, **kw)
    with pytest.raises(lenssim.FitsError, match="no such file"):
        lenssim.read_fits_observation(tmp_path / "e.fits", psf_fwhm=0.3, noise_sigma=0.1, **kw)


def test_meaningless_or_hostile_fits_get_one_line_reasons(tmp_path):
    img = np.ones((40, 40))
    kw = dict(pixels=32, image_fov=8.0, noise_sigma=0.1)
    delta = np.zeros((5, 5))
    delta[2, 2] = 1.0
    cases = {
        "PSF HDU has negative pixels": (_write(tmp_path / "neg.fits", img, scale=0.25, psf=delta - 0.01), {}),
        "PSF HDU spans 10.2 arcsec": (_write(tmp_path / "big.fits", img, scale=0.25, psf=np.ones((41, 41))), {}),
        # a huge pixel scale used to resample the PSF onto millions of pixels (killed for memory)
        "PSF HDU spans 5e+06 arcsec": (_write(tmp_path / "huge.fits", img, scale=1e6, psf=delta), {}),
        "reaches 1e+30, beyond 1e+06": (_write(tmp_path / "bright.fits", img * 1e30, scale=0.25), {"flux_scale": 1.0}),
    }
    for message, (path, extra) in cases.items():
        psf = {} if "PSF" in message else {"psf_fwhm": 0.3}  # the PSF cases read their HDU
        with pytest.raises(lenssim.FitsError, match=message.replace("+", r"\+")) as e:
            lenssim.read_fits_observation(path, **kw, **extra, **psf)
        assert str(path) in str(e.value)
    hdr = fits.Header()
    hdr["PIXSCALE"] = "abc"
    fits.PrimaryHDU(img, header=hdr).writeto(tmp_path / "abc.fits")
    with pytest.raises(lenssim.FitsError, match="PIXSCALE is 'abc', not a number"):
        lenssim.read_fits_observation(tmp_path / "abc.fits", psf_fwhm=0.3, **kw)
    whole = _write(tmp_path / "whole.fits", np.ones((64, 64)), scale=0.25)
    (tmp_path / "cut.fits").write_bytes(whole.read_bytes()[: 2880 + 1000])  # header and a fraction of the data
    with pytest.raises(lenssim.FitsError, match="cut.fits: truncated or corrupt FITS data"):
        lenssim.read_fits_observation(tmp_path / "cut.fits", psf_fwhm=0.3, **kw)
    hdr = fits.Header()
    hdr["NAXIS"], hdr["NAXIS1"], hdr["NAXIS2"] = 2, 100_000, 100_000
    huge = fits.PrimaryHDU(np.ones((2, 2)), header=hdr)
    huge.header["NAXIS1"] = huge.header["NAXIS2"] = 100_000  # claims 1e10 pixels, holds 4
    (tmp_path / "claims.fits").write_bytes(huge.header.tostring().encode() + b"\0" * 2880)
    with pytest.raises(lenssim.FitsError, match="beyond 8192: cut out the lens first"):
        lenssim.read_fits_observation(tmp_path / "claims.fits", psf_fwhm=0.3, **kw)


def test_reconstruction_round_trips(tmp_path):
    maps = {"source": np.random.default_rng(0).random((8, 8)), "kappa": np.ones((8, 8))}
    out = lenssim.write_fits_reconstruction(tmp_path / "r.fits", maps, {"fluxscl": 2.5, "chi2nu": 1.1})
    with fits.open(out) as h:
        assert h[0].header["FLUXSCL"] == 2.5
        np.testing.assert_allclose(h["SOURCE"].data, maps["source"], rtol=1e-6)
    assert not list(tmp_path.glob(".*tmp"))


def _sky(cards, x, y):  # wcslib through astropy: (RA, Dec) of the 1-based pixel (x, y)
    from astropy.wcs import WCS

    return np.array(WCS(fits.Header(cards)).all_pix2world([[x, y]], 1)[0])


def test_the_sky_wcs_follows_the_pixels_onto_the_model_grid(tmp_path):
    # a rotated, flipped TAN cutout, reference pixel off-centre; the model's grid has pixels 3x wider
    n_in, s_in, t = 120, 0.04, np.radians(37.0)
    cards = _header(
        CRVAL1=150.1,
        CRVAL2=2.2,
        CRPIX1=70.3,
        CRPIX2=41.7,
        RADESYS="ICRS",
        **{
            "CD1_1": -s_in * np.cos(t) / 3600,
            "CD1_2": s_in * np.sin(t) / 3600,
            "CD2_1": s_in * np.sin(t) / 3600,
            "CD2_2": s_in * np.cos(t) / 3600,
        },
    )
    cards["CTYPE1"], cards["CTYPE2"] = "RA---TAN-SIP", "DEC--TAN-SIP"  # the distortion is left out
    image = np.zeros((n_in, n_in))
    image[42:45, 75:78] = 1.0  # exactly one output pixel: 0-based row 10, column 21 (input centre 60)
    fits.PrimaryHDU(image, header=cards).writeto(tmp_path / "lens.fits")
    obs = lenssim.Observation.from_fits(tmp_path / "lens.fits", psf_fwhm=0.1, noise_sigma=0.1)
    assert obs.origin["wcs"]["CTYPE1"] == "RA---TAN" and obs.origin["wcs"]["CRPIX1"] == 70.3
    gridded = obs.on_grid(32, 3.84)
    ((row, col),) = np.argwhere(gridded.observation[0, 0].numpy() > 0.5)
    assert (row, col) == (10, 21) and gridded.observation.sum().item() == pytest.approx(1.0)
    wcs = gridded.origin["wcs"]
    assert lenssim.wcs_pixel_scale(wcs) == pytest.approx(0.12, rel=1e-12)
    linear = {**cards, "CTYPE1": "RA---TAN", "CTYPE2": "DEC--TAN"}
    # the lit output pixel's centre is where the lit input block's centre is on the sky
    np.testing.assert_allclose(_sky(wcs, col + 1, row + 1), _sky(linear, 77, 44), rtol=0, atol=1e-10)
    # and so is every output pixel's centre: input pixel 60.5 + 3 (k - 15.5), 1-based
    for x, y in [(1, 1), (32, 5), (17, 30)]:
        np.testing.assert_allclose(
            _sky(wcs, x, y), _sky(linear, 60.5 + 3 * (x - 16.5), 60.5 + 3 * (y - 16.5)), rtol=0, atol=1e-10
        )


def test_a_header_without_a_usable_sky_wcs_gives_none_or_a_warning(tmp_path):
    img = np.ones((8, 8))
    plain = _write(tmp_path / "plain.fits", img, scale=0.05)  # CDELT but no celestial CTYPE
    assert lenssim.read_sky_wcs(plain) is None
    fits.PrimaryHDU(img, header=_header(CD1_1=-1e-5, CD2_2=1.2e-5)).writeto(tmp_path / "rect.fits")
    with pytest.warns(UserWarning, match="WCS has no square pixels of a size in arcsec: the outputs carry no sky"):
        assert lenssim.read_sky_wcs(tmp_path / "rect.fits") is None
    good = _header(CD1_1=-1e-5, CD2_2=1e-5)
    fits.PrimaryHDU(img, header=good).writeto(tmp_path / "good.fits")
    with pytest.warns(UserWarning, match="WCS has 0.036 arcsec pixels, not the 0.05 given"):
        obs = lenssim.Observation.from_fits(tmp_path / "good.fits", pixel_scale=0.05, psf_fwhm=0.1, noise_sigma=0.1)
    assert "wcs" not in obs.origin
    cards = lenssim.read_sky_wcs(tmp_path / "good.fits")
    assert lenssim.check_sky_wcs(cards, "x") is cards
    for bad in ({**cards, "CRVAL1": float("nan")}, {**cards, "CTYPE1": "RA\n"}, {**cards, "EVIL": 1.0}, [1]):
        with pytest.raises(lenssim.FitsError, match="^x: the sky WCS"):
            lenssim.check_sky_wcs(bad, "x")


def test_the_reconstruction_maps_on_the_image_grid_carry_the_wcs(tmp_path):
    maps = {"observation": np.ones((4, 4)), "source": np.ones((4, 4)), "kappa": np.ones((4, 4))}
    wcs = {"CTYPE1": "RA---TAN", "CTYPE2": "DEC--TAN", "CRVAL1": 10.0, "CRVAL2": -5.0, "CRPIX1": 2.5}
    wcs |= {"CRPIX2": 2.5, "CUNIT1": "deg", "CUNIT2": "deg", "CD1_1": -1e-5, "CD1_2": 0.0, "CD2_1": 0.0, "CD2_2": 1e-5}
    out = lenssim.write_fits_reconstruction(tmp_path / "r.fits", maps, {}, wcs=wcs, on_sky=("observation", "kappa"))
    with fits.open(out) as h:
        for name in ("OBSERVATION", "KAPPA"):
            np.testing.assert_allclose(_sky(h[name].header, 2.5, 2.5), [10.0, -5.0], atol=1e-12)
        assert "CTYPE1" not in h["SOURCE"].header


def test_a_psf_file_serves_as_the_psf_hdu_and_is_validated(tmp_path):
    img = np.random.default_rng(4).random((40, 40))
    psf = np.arange(1.0, 10.0).reshape(3, 3) / 45  # asymmetric (a transpose or flip would show), sums to 1
    kw = dict(pixels=32, image_fov=8.0, noise_sigma=0.1)
    in_hdu = lenssim.read_fits_observation(_write(tmp_path / "a.fits", img, scale=0.25, psf=psf), **kw)
    plain = _write(tmp_path / "b.fits", img, scale=0.25)
    fits.PrimaryHDU(psf).writeto(tmp_path / "psf.fits")  # no pixel scale: the image's is assumed
    from_file = lenssim.read_fits_observation(plain, psf_file=tmp_path / "psf.fits", **kw)
    np.testing.assert_allclose(from_file.psf[0, 0].numpy(), psf, rtol=1e-6)
    assert torch.equal(from_file.psf, in_hdu.psf)
    hdr = fits.Header()
    hdr["PIXSCALE"] = 0.25
    named = fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(np.ones((5, 5))), fits.ImageHDU(psf, hdr, name="PSF")])
    named.writeto(tmp_path / "named.fits")  # the HDU named PSF is preferred
    assert torch.equal(lenssim.read_fits_observation(plain, psf_file=tmp_path / "named.fits", **kw).psf, in_hdu.psf)
    hdr["PIXSCALE"] = 0.125
    fits.PrimaryHDU(psf, header=hdr).writeto(tmp_path / "fine.fits")
    (tmp_path / "text.fits").write_text("not fits")
    fits.PrimaryHDU(np.ones((4, 4))).writeto(tmp_path / "even.fits")
    fits.PrimaryHDU(psf - 0.05).writeto(tmp_path / "neg.fits")
    cases = {
        "fine.fits: the PSF's pixels are 0.125 arcsec, the image's 0.25": {"psf_file": tmp_path / "fine.fits"},
        "nope.fits: no such PSF file": {"psf_file": tmp_path / "nope.fits"},
        "text.fits: not a readable FITS PSF": {"psf_file": tmp_path / "text.fits"},
        r"even.fits: the PSF is \(4, 4\), expected an odd square": {"psf_file": tmp_path / "even.fits"},
        "neg.fits: the PSF has negative pixels": {"psf_file": tmp_path / "neg.fits"},
        "give a PSF FWHM or a PSF file, not both": {"psf_file": tmp_path / "psf.fits", "psf_fwhm": 0.3},
    }
    for message, extra in cases.items():
        with pytest.raises(lenssim.FitsError, match=message):
            lenssim.read_fits_observation(plain, **kw, **extra)


def test_a_cutout_that_is_not_square_is_cut_or_resampled_per_axis(tmp_path):
    rng = np.random.default_rng(5)
    img = rng.random((40, 44)) + 0.5  # 40 rows, 44 columns, at the model's pixel scale
    noise = rng.random((40, 44)) + 0.1
    p = _write(tmp_path / "wide.fits", img, scale=0.25, noise=noise)
    obs = lenssim.read_fits_observation(p, pixels=32, image_fov=8.0, psf_fwhm=0.3, flux_scale=1.0)
    assert not obs.resampled  # both sides differ from 32 by an even count: a central crop
    np.testing.assert_allclose(obs.observation[0, 0].numpy(), img[4:36, 6:38], rtol=1e-6)
    np.testing.assert_allclose(obs.noise[0, 0].numpy(), noise[4:36, 6:38], rtol=1e-6)
    # 41 columns: the columns are resampled by half a pixel (pairs averaged), the rows cut
    odd = _write(tmp_path / "odd.fits", img[:, :41], scale=0.25)
    half = lenssim.read_fits_observation(odd, pixels=32, image_fov=8.0, psf_fwhm=0.3, noise_sigma=0.1, flux_scale=1)
    cols = 0.5 * (img[4:36, 4:36] + img[4:36, 5:37])
    assert half.resampled
    np.testing.assert_allclose(half.observation[0, 0].numpy(), cols, rtol=1e-6)
    np.testing.assert_allclose(half.noise[0, 0].numpy(), 0.1 * np.sqrt(0.5), rtol=1e-6)
    narrow = _write(tmp_path / "narrow.fits", img[:, :20], scale=0.25)
    with pytest.raises(lenssim.FitsError, match="covers 5 by 10 arcsec, less than the model's field of 8.0"):
        lenssim.read_fits_observation(narrow, pixels=32, image_fov=8.0, psf_fwhm=0.3, noise_sigma=0.1)
    native = lenssim.Observation.from_fits(p, psf_fwhm=0.3, noise_sigma=0.1, flux_scale=1.0)
    assert native.pixels == 40 and native.image_fov == pytest.approx(10.0)
    np.testing.assert_allclose(native.observation[0, 0].numpy(), img[:, 2:42], rtol=1e-6)


def test_the_sky_wcs_follows_each_axis_of_a_cutout_that_is_not_square(tmp_path):
    ny, nx = 108, 132  # centres at 1-based 54.5 and 66.5; the model's pixels 3x wider
    cards = _header(CRVAL1=20.0, CRVAL2=-30.0, CRPIX1=10.0, CRPIX2=99.0, CD1_1=-0.04 / 3600, CD2_2=0.04 / 3600)
    fits.PrimaryHDU(np.ones((ny, nx)), header=cards).writeto(tmp_path / "wide.fits")
    wcs = lenssim.Observation.from_fits(tmp_path / "wide.fits", psf_fwhm=0.1, noise_sigma=0.1).on_grid(32, 3.84)
    for x, y in [(1, 1), (32, 5), (17, 30)]:
        np.testing.assert_allclose(
            _sky(wcs.origin["wcs"], x, y), _sky(cards, 66.5 + 3 * (x - 16.5), 54.5 + 3 * (y - 16.5)), atol=1e-10
        )


def test_pixels_without_data_are_masked_on_the_native_grid(tmp_path):
    rng = np.random.default_rng(5)
    img = rng.random((40, 40)) + 0.5
    img[10, 12] = np.nan  # inside the 32^2 field
    img[20, 30] = np.inf
    img[1, 1] = np.nan  # outside it: cut away
    mask = np.zeros((40, 40), dtype=np.int16)
    mask[25, 7] = 4  # a flagged cosmic ray
    img[25, 7] = 1e4
    p = _write(tmp_path / "o.fits", img, scale=0.25)
    with fits.open(p, mode="append") as hdul:
        hdul.append(fits.ImageHDU(mask, name="MASK"))
    obs = lenssim.read_fits_observation(p, pixels=32, image_fov=8.0, psf_fwhm=0.3, noise_sigma=0.1, flux_scale=1)
    bad = np.zeros((40, 40), bool)
    bad[10, 12] = bad[20, 30] = bad[25, 7] = True
    bad = bad[4:36, 4:36]
    noise, y = obs.noise[0, 0].numpy(), obs.observation[0, 0].numpy()
    assert np.isinf(noise[bad]).all() and (y[bad] == 0).all()
    np.testing.assert_allclose(noise[~bad], 0.1, rtol=1e-6)
    np.testing.assert_allclose(y[~bad], img[4:36, 4:36][~bad], rtol=1e-6)
    assert not obs.resampled


def test_resampling_averages_only_the_good_pixels(tmp_path):
    rng = np.random.default_rng(6)
    img = rng.random((64, 64)) + 1.0
    noise = rng.random((64, 64)) * 0.1 + 0.1
    img[0, 0] = np.nan  # 3 of 4 left in the output pixel (0, 0)
    img[2:4, 2] = np.nan  # 2 of 4 in (1, 1): half covered, still fitted
    noise[4:6, 4:6] = np.inf  # 0 of 4 in (2, 2)
    noise[6, 6] = noise[7, 6] = noise[6, 7] = np.nan  # 1 of 4 in (3, 3): masked
    p = _write(tmp_path / "o.fits", img, scale=0.125, noise=noise)
    obs = lenssim.read_fits_observation(p, pixels=32, image_fov=8.0, psf_fwhm=0.3, flux_scale=1)
    good = np.isfinite(img) & np.isfinite(noise)
    y, sigma = obs.observation[0, 0].numpy(), obs.noise[0, 0].numpy()
    for j in range(32):  # each output pixel: the mean of its good 2x2 inputs, or masked
        for i in range(32):
            g = good[2 * j : 2 * j + 2, 2 * i : 2 * i + 2]
            if g.sum() < 2:
                assert y[j, i] == 0 and np.isinf(sigma[j, i]), (j, i)
                continue
            block = img[2 * j : 2 * j + 2, 2 * i : 2 * i + 2][g]
            var = noise[2 * j : 2 * j + 2, 2 * i : 2 * i + 2][g] ** 2
            assert y[j, i] == pytest.approx(block.mean(), rel=1e-6)
            assert sigma[j, i] == pytest.approx(np.sqrt(var.sum()) / g.sum(), rel=1e-6)
    assert np.isinf(sigma).sum() == 2


def test_a_mask_or_noise_that_makes_no_sense_is_refused(tmp_path):
    img = np.ones((40, 40))
    kw = dict(pixels=32, image_fov=8.0, psf_fwhm=0.3)
    zero = np.full((40, 40), 0.1)
    zero[3, 3] = 0.0
    with pytest.raises(lenssim.FitsError, match="non-positive pixels \\(mark pixels without data NaN"):
        lenssim.read_fits_observation(_write(tmp_path / "z.fits", img, scale=0.25, noise=zero), **kw)
    p = _write(tmp_path / "m.fits", img, scale=0.25)
    with fits.open(p, mode="append") as hdul:
        hdul.append(fits.ImageHDU(np.zeros((8, 8)), name="MASK"))
    with pytest.raises(lenssim.FitsError, match="the mask is \\(8, 8\\), the image \\(40, 40\\)"):
        lenssim.read_fits_observation(p, noise_sigma=0.1, **kw)
    edge = img.copy()
    edge[:, :22] = np.nan  # the model's field (the central 32) more than half empty, column by column
    edge[:22, :] = np.nan
    obs = lenssim.read_fits_observation(_write(tmp_path / "e.fits", edge, scale=0.25), noise_sigma=0.1, **kw)
    assert np.isinf(obs.noise[0, 0].numpy()).sum() == 32 * 32 - 14 * 14
    one = np.full((40, 40), np.nan)
    one[20, 20] = 1.0  # data in 1/64 of one 2-arcsec model pixel
    with pytest.raises(lenssim.FitsError, match="no pixel of the model's field is at least 50% covered by data"):
        lenssim.read_fits_observation(
            _write(tmp_path / "f.fits", one, scale=0.25), noise_sigma=0.1, pixels=4, image_fov=8.0, psf_fwhm=0.3
        )


def test_a_mask_file_replaces_the_mask_hdu(tmp_path):
    rng = np.random.default_rng(7)
    img = rng.random((40, 40)) + 0.5
    hdu_mask = np.zeros((40, 40), np.uint8)
    hdu_mask[10, 10] = 1
    p = _write(tmp_path / "o.fits", img, scale=0.25)
    with fits.open(p, mode="append") as hdul:
        hdul.append(fits.ImageHDU(hdu_mask, name="MASK"))
    own = np.zeros((40, 40), np.int32)
    own[20:22, 5] = 7
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(own, name="MASK")]).writeto(tmp_path / "mask.fits")
    kw = dict(pixels=32, image_fov=8.0, psf_fwhm=0.3, noise_sigma=0.1, flux_scale=1)
    by_hdu = lenssim.read_fits_observation(p, **kw)
    by_file = lenssim.read_fits_observation(p, mask_file=tmp_path / "mask.fits", **kw)
    assert torch.isinf(by_hdu.noise).nonzero()[:, 2:].tolist() == [[6, 6]]
    assert torch.isinf(by_file.noise).nonzero()[:, 2:].tolist() == [[16, 1], [17, 1]]
    obs = lenssim.Observation.from_fits(p, mask_file=tmp_path / "mask.fits", psf_fwhm=0.3, noise_sigma=0.1)
    assert torch.equal(torch.isinf(obs.on_grid(32, 8.0).noise), torch.isinf(by_file.noise))
    (tmp_path / "junk.fits").write_text("not fits")
    fits.PrimaryHDU(own * np.nan).writeto(tmp_path / "nan.fits")
    for mask, message in [
        ("none.fits", "none.fits: no such mask file"),
        ("junk.fits", "junk.fits: not a readable FITS mask"),
        ("nan.fits", "nan.fits: the mask HDU 'PRIMARY' contains NaN"),
    ]:
        with pytest.raises(lenssim.FitsError, match=message):
            lenssim.read_fits_observation(p, mask_file=tmp_path / mask, **kw)


def test_the_observation_cards_come_from_both_headers_the_image_winning(tmp_path):
    primary = fits.Header()
    primary["TELESCOP"], primary["INSTRUME"], primary["FILTER"] = "HST", "WFC3", "F160W"
    primary["BUNIT"], primary["OBJECT"] = "COUNTS", ""  # the image's BUNIT wins; an empty card says nothing
    sci = fits.Header()
    sci["PIXSCALE"], sci["BUNIT"], sci["EXPTIME"], sci["DATE-OBS"] = 0.25, "ELECTRONS/S", 2397, "2011-11-09"
    sci["DETECTOR"] = "IR" * 40  # longer than a card's string: left out
    img = fits.ImageHDU(np.ones((40, 40)), header=sci, name="SCI")
    fits.HDUList([fits.PrimaryHDU(header=primary), img]).writeto(tmp_path / "o.fits")
    cards = lenssim.read_observation_cards(tmp_path / "o.fits")
    assert cards == {
        "TELESCOP": "HST",
        "INSTRUME": "WFC3",
        "FILTER": "F160W",
        "BUNIT": "ELECTRONS/S",
        "EXPTIME": 2397.0,
        "DATE-OBS": "2011-11-09",
    }
    obs = lenssim.Observation.from_fits(tmp_path / "o.fits", psf_fwhm=0.3, noise_sigma=0.1)
    assert obs.on_grid(32, 8.0).origin["cards"] == cards
    assert lenssim.check_observation_cards(cards, "x") == cards
    for bad, message in [
        ([1], "not a dict"),
        ({"EXPTIME": "long"}, "'EXPTIME' is 'long'"),
        ({"SECRET": "x"}, "'SECRET' is 'x'"),
    ]:
        with pytest.raises(lenssim.FitsError, match=message):
            lenssim.check_observation_cards(bad, "x")


def test_a_lens_centre_off_the_cutouts_centre_moves_the_field_and_its_wcs(tmp_path):
    rng = np.random.default_rng(8)
    img = rng.random((64, 64))
    p = _write(tmp_path / "o.fits", img, scale=0.25)
    kw = dict(pixels=32, image_fov=8.0, psf_fwhm=0.3, noise_sigma=0.1, flux_scale=1)
    # centred between pixels 30 and 31 (x) and 36 and 37 (y): an exact crop, 0-based columns 14-45, rows 20-51
    crop = lenssim.read_fits_observation(p, center=(30.5, 36.5), **kw)
    assert not crop.resampled
    np.testing.assert_allclose(crop.observation[0, 0].numpy(), img[20:52, 14:46], rtol=1e-6)
    # centred on pixel 31 (x): each model pixel half of two columns
    half = lenssim.read_fits_observation(p, center=(np.int64(31), np.float32(36.5)), **kw)  # numpy numbers too
    expected = 0.5 * (img[20:52, 14:46] + img[20:52, 15:47])
    assert half.resampled
    np.testing.assert_allclose(half.observation[0, 0].numpy(), expected, rtol=1e-6)
    np.testing.assert_allclose(half.noise[0, 0].numpy(), 0.1 * np.sqrt(0.5), rtol=1e-6)
    obs = lenssim.Observation.from_fits(p, center=(31, 36.5), psf_fwhm=0.3, noise_sigma=0.1, flux_scale=1)
    assert torch.equal(obs.on_grid(32, 8.0).observation, half.observation)
    for center, message in [
        ((70.0, 3.0), r"the lens centre \(70, 3\) is outside the image's 64 by 64 pixels"),
        ((10.5, 32.5), r"around the lens centre \(10.5, 32.5\) the image holds a field of 5 arcsec, less than"),
        ((np.nan, 3.0), "two finite pixel coordinates"),
    ]:
        with pytest.raises(lenssim.FitsError, match=message):
            lenssim.read_fits_observation(p, center=center, **kw)


def test_the_sky_wcs_follows_a_lens_centre_off_the_cutouts_centre(tmp_path):
    s_in, t = 0.05, np.radians(-23.0)
    cards = _header(
        CRVAL1=34.5,
        CRVAL2=-5.1,
        CRPIX1=50.0,
        CRPIX2=45.0,
        **{
            "CD1_1": -s_in * np.cos(t) / 3600,
            "CD1_2": s_in * np.sin(t) / 3600,
            "CD2_1": s_in * np.sin(t) / 3600,
            "CD2_2": s_in * np.cos(t) / 3600,
        },
    )
    fits.PrimaryHDU(np.ones((90, 100)), header=cards).writeto(tmp_path / "lens.fits")
    center = (61.3, 40.8)  # 1-based x, y: not a pixel edge, so the image is resampled
    obs = lenssim.Observation.from_fits(tmp_path / "lens.fits", psf_fwhm=0.1, noise_sigma=0.1, center=center)
    gridded = obs.on_grid(24, 3.0)  # 0.125" pixels
    wcs = gridded.origin["wcs"]
    # the model grid's centre is the given centre on the sky; a corner pixel 11.5 model pixels away
    np.testing.assert_allclose(_sky(wcs, 12.5, 12.5), _sky(cards, *center), rtol=0, atol=1e-10)
    corner = (center[0] - 11.5 * 2.5, center[1] - 11.5 * 2.5)
    np.testing.assert_allclose(_sky(wcs, 1, 1), _sky(cards, *corner), rtol=0, atol=1e-10)


def test_an_exposure_time_adds_the_sources_poisson_noise_to_the_background(tmp_path):
    rng = np.random.default_rng(11)
    img = rng.normal(0.0, 1.0, (40, 40)) + 3.0  # some pixels negative: no Poisson variance there
    img[12, 15] = np.nan  # no data: stays masked
    p = _write(tmp_path / "o.fits", img, scale=0.25)
    kw = dict(pixels=32, image_fov=8.0, psf_fwhm=0.3, flux_scale=2.0)
    obs = lenssim.read_fits_observation(p, noise_sigma=0.1, exposure_time=50.0, **kw)
    cut = img[4:36, 4:36]
    want = np.sqrt(0.1**2 + np.where(cut > 0, cut, 0.0) / 50.0) / 2.0
    got = obs.noise[0, 0].numpy()
    good = np.isfinite(cut)
    np.testing.assert_allclose(got[good], want[good], rtol=1e-6)
    assert np.isinf(got[~good]).all() and (cut < 0).any()
    noise = np.full((40, 40), 0.3)  # a background noise map instead of a sigma
    q = _write(tmp_path / "n.fits", np.abs(np.nan_to_num(img)), scale=0.25, noise=noise)
    obs = lenssim.read_fits_observation(q, exposure_time=8.0, **kw)
    want = np.sqrt(0.3**2 + np.abs(np.nan_to_num(cut)) / 8.0) / 2.0
    np.testing.assert_allclose(obs.noise[0, 0].numpy(), want, rtol=1e-6)


def test_with_the_exposure_time_bright_arcs_have_residuals_like_noise(tmp_path):
    """Counts drawn from Poisson statistics over a sky noise of 6 electrons, resampled 2x2: with the
    source's Poisson noise the true model's chi2_nu is 1 on the arc, and a little under 1 in the sky
    (the image clipped at 0 stands in for the model there); with the sky's noise alone it is far
    above 1."""
    rng = np.random.default_rng(12)
    y, x = np.mgrid[:64, :64] - 31.5
    model = 4.0 * np.exp(-0.5 * ((np.hypot(x, y) - 14.0) / 2.5) ** 2)  # a ring peaking at 4 electrons/s
    t, sky = 300.0, 0.02
    truth = model.reshape(32, 2, 32, 2).mean(axis=(1, 3))
    arc = truth > 1.0
    kw = dict(pixels=32, image_fov=8.0, psf_fwhm=0.3, noise_sigma=sky, flux_scale=1.0)
    chi2 = {t: [], None: []}
    for draw in range(10):
        image = rng.poisson(model * t) / t + rng.normal(0.0, sky, model.shape)
        p = _write(tmp_path / f"arc{draw}.fits", image, scale=0.125)
        for exposure in chi2:
            obs = lenssim.read_fits_observation(p, exposure_time=exposure, **kw)
            chi2[exposure].append((obs.observation[0, 0].numpy() - truth) ** 2 / obs.noise.numpy().squeeze() ** 2)
    with_poisson, sky_alone = np.mean(chi2[t], axis=0), np.mean(chi2[None], axis=0)
    assert 0.95 < with_poisson[arc].mean() < 1.05 and arc.sum() > 100
    assert 0.9 < with_poisson[~arc].mean() < 0.99  # about 1 - 0.8 / 6 in pure sky, the arc's wings nearer 1
    assert sky_alone[arc].mean() > 20 and sky_alone.mean() > 3


@pytest.mark.parametrize(
    ("exposure", "bunit", "message"),
    [
        (0.0, None, "exposure time must be a positive number of seconds, got 0.0"),
        (float("nan"), None, "exposure time must be a positive number of seconds, got nan"),
        (True, None, "exposure time must be a positive number of seconds, got True"),
        (100.0, "MJy/sr", "the image is in MJy/sr, not electrons: its Poisson noise cannot come from an exposure"),
        (100.0, "erg / (s cm2 Angstrom)", "the image is in erg / \\(s cm2 Angstrom\\), not electrons"),
    ],
)
def test_an_exposure_time_that_makes_no_sense_is_refused(tmp_path, exposure, bunit, message):
    p = _write(tmp_path / "o.fits", np.ones((40, 40)), scale=0.25)
    if bunit is not None:
        fits.setval(p, "BUNIT", value=bunit)
    with pytest.raises(lenssim.FitsError, match=message):
        lenssim.read_fits_observation(
            p, pixels=32, image_fov=8.0, psf_fwhm=0.3, noise_sigma=0.1, exposure_time=exposure
        )
    fits.setval(p, "BUNIT", value="ELECTRONS/S")  # HST's drizzled unit: accepted
    lenssim.read_fits_observation(p, pixels=32, image_fov=8.0, psf_fwhm=0.3, noise_sigma=0.1, exposure_time=100.0)


def _ring(n, amplitude, width):
    """A lopsided ring of radius n / 4.5 (an Einstein ring's arcs), peaking near 1.8 amplitude."""
    y, x = np.mgrid[:n, :n] - (n - 1) / 2
    r = np.hypot(1.2 * x, y)
    return amplitude * np.exp(-0.5 * ((r - n / 4.5) / width) ** 2) * (1 + 0.8 * np.cos(np.arctan2(y, x)))


@pytest.mark.parametrize("correlated", [False, True])
@pytest.mark.parametrize(("amplitude", "width"), [(0.0, 2.5), (5.0, 2.5), (50.0, 2.5), (50.0, 5.0)])
def test_the_sky_sigma_is_unbiased_on_pure_noise_and_beside_bright_arcs(amplitude, width, correlated):
    """Unit noise, white or correlated over 3x3 pixels, alone and under arcs 5-90 sigma bright
    covering up to 60 % of the field: the measured sigma is 1 to within 1 % (2 % correlated) on
    average over 40 draws, where the median absolute deviation of all the pixels is 20 % to 3.7
    times too large under the arcs."""
    from scipy import ndimage

    rng = np.random.default_rng(3)
    kernel = np.outer([0.5, 1.0, 0.5], [0.5, 1.0, 0.5])
    kernel /= np.sqrt((kernel**2).sum())  # unit variance per pixel
    good = np.ones((64, 64), dtype=bool)
    good[:, :3] = False  # pixels without data count for nothing
    measured, naive, sky, levels = [], [], [], []
    for _ in range(40):
        noise = rng.normal(size=(64, 64))
        z = _ring(64, amplitude, width) + (ndimage.convolve(noise, kernel, mode="wrap") if correlated else noise)
        z[~good] = np.nan
        found = lenssim.io.fits.measure_sky(z, good)
        levels.append(found.level)
        measured.append(found.sigma)
        sky.append(found.pixels)
        naive.append(1.4826 * np.median(np.abs(z[good] - np.median(z[good]))))
    assert abs(np.mean(measured) - 1.0) < (0.02 if correlated else 0.01) and np.std(measured) < 0.05
    assert np.min(sky) >= 1000 and np.max(sky) <= good.sum()
    assert abs(np.mean(levels)) < 0.1  # the sky's 0 (the arcs' faintest wings lift it by a few hundredths)
    if amplitude > 0:
        assert np.mean(naive) > 1.18


def test_auto_noise_measures_correlated_noise_where_a_sigma_per_input_pixel_cannot(tmp_path):
    """A drizzled image's noise is correlated between neighbouring pixels, and its ERR map says how
    it varies across the field (here from 0.5 to 1.5 times 0.05, left to right). Taken through a
    4x4 resampling as if the pixels were independent, the map gives the true model a chi2_nu of
    4.6. With auto the map is scaled to the sky's scatter on the model's grid: chi2_nu 1.01, 0.99 on
    the left and 1.04 on the right. A uniform sigma measured from a file without the map fits
    neither side (0.84 and 2.4)."""
    from scipy import ndimage

    rng = np.random.default_rng(4)
    model = _ring(256, 1.0, 10.0)
    truth = model.reshape(64, 4, 64, 4).mean(axis=(1, 3))
    kernel = np.outer([0.5, 1.0, 0.5], [0.5, 1.0, 0.5])
    kernel /= np.sqrt((kernel**2).sum())  # unit variance per pixel, correlated over 3x3
    err = np.broadcast_to(0.05 * np.linspace(0.5, 1.5, 256), model.shape)
    kw = dict(pixels=64, image_fov=7.68, psf_fwhm=0.1, flux_scale=1.0)
    chi2 = {"err map": [], "auto, map": [], "auto, uniform": []}
    for draw in range(4):
        image = model + err * ndimage.convolve(rng.normal(size=model.shape), kernel, mode="wrap")
        with_map = _write(tmp_path / f"d{draw}.fits", image, scale=0.03, noise=err)
        without = _write(tmp_path / f"u{draw}.fits", image, scale=0.03)
        for how, path, sigma in (
            ("err map", with_map, None),
            ("auto, map", with_map, "auto"),
            ("auto, uniform", without, "auto"),
        ):
            obs = lenssim.read_fits_observation(path, noise_sigma=sigma, **kw)
            residual = (obs.observation[0, 0].numpy() - truth) / obs.noise.numpy().squeeze()
            chi2[how].append([np.mean(residual**2), np.mean(residual[:, :32] ** 2), np.mean(residual[:, 32:] ** 2)])
            assert (obs.noise_scale is not None, obs.sky_sigma is not None) == (
                how == "auto, map",
                how == "auto, uniform",
            )
            if how == "auto, map":
                assert obs.noise_scale**2 == pytest.approx(chi2["err map"][-1][0], rel=0.1)  # what it scales away
    field, left, right = np.mean(chi2["err map"], axis=0)
    assert field > 4.0 and left > 4.0 and right > 4.0
    for side in np.mean(chi2["auto, map"], axis=0):
        assert side == pytest.approx(1.0, abs=0.06)
    field, left, right = np.mean(chi2["auto, uniform"], axis=0)
    assert left < 0.9 and right > 2.0 and field > 1.3


@pytest.mark.parametrize(("amplitude", "width"), [(0.0, 2.5), (50.0, 2.5)])
def test_the_sky_correlation_is_measured_beside_bright_arcs(amplitude, width):
    """Noise correlated over 3x3 pixels: its correlation coefficients (2/3 between neighbours,
    4/9 diagonally, 1/6 two pixels away, 0 beyond) measured from the sky to within 0.03 on average
    over 20 draws, beside arcs 90 sigma bright as without them; white noise gives 0 off the centre.
    Too little sky gives no measurement."""
    from scipy import ndimage, signal

    rng = np.random.default_rng(8)
    kernel = np.outer([0.5, 1.0, 0.5], [0.5, 1.0, 0.5])
    kernel /= np.sqrt((kernel**2).sum())
    expected = np.pad(signal.correlate2d(kernel, kernel), 1)  # offsets -3..3; 0 beyond 2
    good = np.ones((64, 64), dtype=bool)
    good[:, :3] = False
    correlated, white = [], []
    for _ in range(20):
        arcs = _ring(64, amplitude, width)
        noise = rng.normal(size=(64, 64))
        correlated.append(lenssim.io.fits.sky_correlation(arcs + ndimage.convolve(noise, kernel, mode="wrap"), good))
        white.append(lenssim.io.fits.sky_correlation(arcs + noise, good))
    assert correlated[0].shape == (7, 7) and correlated[0][3, 3] == 1
    np.testing.assert_allclose(np.mean(correlated, axis=0), expected, atol=0.03)
    off_centre = np.mean(white, axis=0) - np.pad([[1.0]], 3)
    assert np.abs(off_centre).max() < 0.03 and np.std(white, axis=0).max() < 0.06
    assert lenssim.io.fits.neighbour_correlation(expected) == (pytest.approx(2 / 3), pytest.approx(2 / 3))
    few = np.zeros((64, 64), dtype=bool)
    few[:12, :12] = True  # 144 sky pixels
    assert lenssim.io.fits.sky_correlation(rng.normal(size=(64, 64)), few) is None


def test_the_binned_chi2_nu_of_a_drizzled_frame_is_one_with_its_measured_correlation(tmp_path):
    """A drizzled frame's noise (correlated over 3x3 input pixels, with a noise map) resampled
    onto a grid 1.5 times coarser, the map scaled to the sky's scatter there (auto): the true
    model's chi2_nu is 1, but its residual summed in 4x4 blocks reads as 2.5 times the noise or
    more when taken as white; 1 with the correlation the reader measured from the sky. A frame
    only cut from white noise is measured white, and its binned chi2_nu barely moves."""
    from scipy import ndimage

    rng = np.random.default_rng(9)
    model = _ring(192, 1.0, 8.0)
    kernel = np.outer([0.5, 1.0, 0.5], [0.5, 1.0, 0.5])
    kernel /= np.sqrt((kernel**2).sum())
    err = np.full(model.shape, 0.05)
    kw = dict(pixels=128, image_fov=7.68, psf_fwhm=0.1, flux_scale=1.0)
    truth = lenssim.read_fits_observation(_write(tmp_path / "truth.fits", model, scale=0.04), noise_sigma=1.0, **kw)
    truth = truth.observation.double()
    as_white, allowed, neighbours = [], [], []
    for draw in range(3):
        image = model + err * ndimage.convolve(rng.normal(size=model.shape), kernel, mode="wrap")
        path = _write(tmp_path / f"d{draw}.fits", image, scale=0.04, noise=err)
        obs = lenssim.read_fits_observation(path, noise_sigma="auto", **kw)  # the map scaled to the sky
        rho = torch.from_numpy(obs.noise_correlation)
        y, sigma = obs.observation.double(), obs.noise.double()
        assert float(lenssim.chi2_nu(y, truth, sigma)) == pytest.approx(1.0, abs=0.05)
        as_white.append(float(lenssim.binned_chi2_nu(y, truth, sigma)))
        allowed.append(float(lenssim.binned_chi2_nu(y, truth, sigma, correlation=rho)))
        neighbours.append(lenssim.io.fits.neighbour_correlation(obs.noise_correlation))
    assert np.mean(as_white) > 2.5 and np.min(neighbours) > 0.3
    assert np.mean(allowed) == pytest.approx(1.0, abs=0.1)
    # cut from white noise, not resampled: measured white (3 x 3 k pixels of sky, 1 / sqrt(pairs) ~ 0.02)
    image = _ring(128, 1.0, 5.0) + rng.normal(0.0, 0.05, (128, 128))
    obs = lenssim.read_fits_observation(_write(tmp_path / "w.fits", image, scale=0.06), noise_sigma=0.05, **kw)
    assert not obs.resampled and np.abs(obs.noise_correlation - np.pad([[1.0]], 3)).max() < 0.1
    y, sigma = obs.observation.double(), obs.noise.double()
    model_here = torch.from_numpy(_ring(128, 1.0, 5.0))[None, None]
    white = lenssim.binned_chi2_nu(y, model_here, sigma)
    corrected = lenssim.binned_chi2_nu(y, model_here, sigma, correlation=torch.from_numpy(obs.noise_correlation))
    assert float(corrected) == pytest.approx(float(white), rel=0.15)
    # the field as a whole is not measured (only the grid a lens is put on)
    native = lenssim.Observation.from_fits(tmp_path / "w.fits", psf_fwhm=0.1, noise_sigma=0.05)
    assert "noise_correlation" not in native.origin
    assert native.on_grid(128, 7.68).origin["noise_correlation"] == obs.noise_correlation.tolist()


def test_auto_noise_keeps_masks_adds_the_sources_poisson_noise_and_is_a_sigma_when_only_cut(tmp_path):
    rng = np.random.default_rng(5)
    # cut, not resampled: one sigma, the measured one
    img = _ring(48, 10.0, 2.0) + rng.normal(0.0, 0.3, (48, 48))
    p = _write(tmp_path / "cut.fits", img, scale=0.25)
    obs = lenssim.read_fits_observation(p, pixels=40, image_fov=10.0, psf_fwhm=0.3, noise_sigma="auto", flux_scale=2)
    assert obs.noise.shape == (1,) and obs.noise.item() == pytest.approx(obs.sky_sigma / 2)
    assert obs.sky_sigma == pytest.approx(0.3, rel=0.06)
    # masked, resampled: the noise is the measured sigma taken through the masked resampling
    img = _ring(64, 10.0, 2.0) + rng.normal(0.0, 0.3, (64, 64))
    img[10:20, 5:9] = np.nan
    q = _write(tmp_path / "masked.fits", img, scale=0.25)
    kw = dict(pixels=32, image_fov=16.0, psf_fwhm=0.3, flux_scale=1.0)
    auto = lenssim.read_fits_observation(q, noise_sigma="auto", **kw)
    given = lenssim.read_fits_observation(q, noise_sigma=auto.sky_sigma, **kw)
    assert torch.equal(auto.observation, given.observation) and np.isinf(auto.noise.numpy()).any()
    np.testing.assert_allclose(auto.noise.numpy(), given.noise.numpy(), rtol=1e-6)
    # a noise-map HDU is scaled to the sky: a flat map gives the uniform sigma
    with_map = _write(tmp_path / "map.fits", img, scale=0.25, noise=np.full(img.shape, 7.0))
    scaled = lenssim.read_fits_observation(with_map, noise_sigma="auto", **kw)
    np.testing.assert_allclose(scaled.noise.numpy(), auto.noise.numpy(), rtol=1e-9)
    assert scaled.sky_sigma is None and scaled.noise_scale == pytest.approx(auto.sky_sigma / 7.0, rel=1e-9)
    # with an exposure time the map carries the source's Poisson noise too, and is scaled whole
    both = [lenssim.read_fits_observation(with_map, noise_sigma=s, exposure_time=0.5, **kw) for s in ("auto", None)]
    np.testing.assert_allclose(both[0].noise.numpy(), both[1].noise.numpy() * both[0].noise_scale, rtol=1e-6)
    assert (both[1].noise > scaled.noise / scaled.noise_scale * (1 + 1e-6)).any()  # the Poisson part is there
    # with an exposure time: the source's Poisson noise on top of the sky's measured sigma
    t = 40.0
    poisson = lenssim.read_fits_observation(q, noise_sigma="auto", exposure_time=t, **kw)
    both = lenssim.read_fits_observation(q, noise_sigma=auto.sky_sigma, exposure_time=t, **kw)
    assert poisson.sky_sigma == auto.sky_sigma
    np.testing.assert_allclose(poisson.noise.numpy(), both.noise.numpy(), rtol=1e-6)
    assert (poisson.noise > auto.noise).any()


def test_with_auto_noise_and_the_exposure_time_arcs_and_sky_have_residuals_like_noise(tmp_path):
    """The Poisson counts of the exposure-time test, with the sky's sigma measured instead of given:
    the true model's chi2_nu is 1 on the arc and about 0.9 off it, as with the sigma given."""
    rng = np.random.default_rng(12)
    y, x = np.mgrid[:64, :64] - 31.5
    model = 4.0 * np.exp(-0.5 * ((np.hypot(x, y) - 14.0) / 2.5) ** 2)
    t, sky = 300.0, 0.02
    truth = model.reshape(32, 2, 32, 2).mean(axis=(1, 3))
    arc = truth > 1.0
    chi2, measured = [], []
    for draw in range(10):
        image = rng.poisson(model * t) / t + rng.normal(0.0, sky, model.shape)
        p = _write(tmp_path / f"arc{draw}.fits", image, scale=0.125)
        obs = lenssim.read_fits_observation(
            p, pixels=32, image_fov=8.0, psf_fwhm=0.3, noise_sigma="auto", exposure_time=t, flux_scale=1.0
        )
        chi2.append((obs.observation[0, 0].numpy() - truth) ** 2 / obs.noise.numpy().squeeze() ** 2)
        measured.append(obs.sky_sigma)
    chi2 = np.mean(chi2, axis=0)
    assert np.mean(measured) == pytest.approx(sky, rel=0.03)
    assert 0.95 < chi2[arc].mean() < 1.05 and 0.85 < chi2[~arc].mean() < 1.0


@pytest.mark.parametrize(
    ("image", "pixels", "sigma", "message"),
    [
        ("noise", 12, "auto", "144 pixels of sky on the model's grid, too few to measure the noise from"),
        ("flat", 32, "auto", "the sky has no scatter to measure the noise from"),
        ("noise", 32, "Auto", "noise sigma must be a positive number or 'auto', got 'Auto'"),
    ],
)
def test_a_noise_that_cannot_be_measured_is_refused(tmp_path, image, pixels, sigma, message):
    data = np.random.default_rng(6).normal(size=(40, 40)) if image == "noise" else np.ones((40, 40))
    p = _write(tmp_path / "o.fits", data, scale=0.25)
    with pytest.raises(lenssim.FitsError, match=message):
        lenssim.read_fits_observation(p, pixels=pixels, image_fov=pixels * 0.25, psf_fwhm=0.3, noise_sigma=sigma)


def test_a_sky_left_in_the_image_is_measured_around_and_warned_of(tmp_path):
    """A sky of 1 sigma per input pixel (2 on the 2x2 coarser grid, where chi2_nu counts it) left
    under a ring that covers much of the cut: the noise is measured around it (the densest level,
    not 0, starts the search), and the command warns that the model has no background; a sky at 0
    raises no warning."""
    rng = np.random.default_rng(8)
    kw = dict(pixels=32, image_fov=8.0, psf_fwhm=0.3, noise_sigma="auto", flux_scale=1.0)
    for level in (0.2, 0.0):
        image = _ring(64, 4.0, 6.0) + rng.normal(level, 0.2, (64, 64))
        p = _write(tmp_path / f"sky{level}.fits", image, scale=0.125)
        if level:
            with pytest.warns(
                UserWarning, match=r"the sky is at 0\.2\d* \(\+2\.\d\d sigma\), not 0: subtract it first"
            ):
                obs = lenssim.read_fits_observation(p, **kw)
        else:
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("error")
                obs = lenssim.read_fits_observation(p, **kw)
        assert obs.sky_sigma == pytest.approx(0.2, rel=0.06)


def test_the_half_sample_mode_finds_a_sky_peak_under_widely_spread_arcs():
    rng = np.random.default_rng(10)
    sky, arcs = rng.normal(0.0, 1.0, 1000), rng.uniform(3.0, 100.0, 3000)  # the sky a quarter of the pixels
    mode = lenssim.io.fits.half_sample_mode(np.concatenate([arcs, sky]))
    assert abs(mode) < 0.5 and np.median(np.concatenate([arcs, sky])) > 20
    # where the arcs crowd one level more than the sky does, that level is the densest
    crowded = rng.normal(20.0, 1.0, 3000)
    assert abs(lenssim.io.fits.half_sample_mode(np.concatenate([sky, crowded])) - 20.0) < 0.5
    assert np.isnan(lenssim.io.fits.half_sample_mode(np.array([])))
