"""Sources: the real COSMOS catalogues of ../shared/data through GalSim, and synthetic galaxies."""

import numpy as np
import pytest
from conftest import shared_cosmos_dir

from lenssim.data.sources import (
    CosmosSources,
    SourceDataError,
    SourceStampConfig,
    prepare_source,
    synthetic_galaxy_stamp,
)

COSMOS = shared_cosmos_dir()
needs_data = pytest.mark.skipif(COSMOS is None, reason="../shared/data/cosmos not present")


@needs_data
@pytest.mark.parametrize("min_flux, expected", [(20, 96), (50, 50), (100, 27)])
def test_example_catalogue_selection_matches_galsim(min_flux, expected):
    # counts documented with the data: marginal exclusion keeps 96 of 100, then the flux cuts
    cat = CosmosSources(
        COSMOS / "galsim-23.5-example",
        file_name="real_galaxy_catalog_23.5_example.fits",
        min_flux=min_flux,
        use_real=False,
    )
    assert len(cat) == expected


@needs_data
def test_real_galaxies_are_drawn_with_their_psf_and_prepared():
    cat = CosmosSources(
        COSMOS / "btk-26-extension",
        file_name="real_galaxy_catalog_26_extension_example.fits",
        exclusion_level="none",
        min_flux=0,
    )
    assert len(cat) == 100
    rng = np.random.default_rng(0)
    stamp = cat.stamp(3, rng)
    assert stamp.shape == (158, 158) and np.isfinite(stamp).all()
    # the galaxy is at the centre: the central region holds more flux than any border strip
    assert stamp[69:89, 69:89].sum() > 5 * abs(stamp[:20, :20].sum())
    src = prepare_source(stamp, rng)
    assert src.shape == (128, 128) and src.max() == 1.0 and src.min() == 0.0
    # the background was subtracted: the border is dark on average
    assert np.median(src[:10]) < 0.05
    again = cat.stamp(3, np.random.default_rng(0))
    assert np.array_equal(stamp, again)  # the noise padding follows the seed


@needs_data
def test_parametric_fits_draw():
    cat = CosmosSources(
        COSMOS / "galsim-23.5-example", file_name="real_galaxy_catalog_23.5_example.fits", use_real=False
    )
    img = cat.stamp(0, np.random.default_rng(1))
    assert img.shape == (158, 158) and img.max() > 0


@needs_data
def test_missing_pieces_get_clear_messages(tmp_path):
    with pytest.raises(SourceDataError, match="galsim_download_cosmos -s 23.5"):
        CosmosSources(tmp_path / "absent")
    with pytest.raises(SourceDataError, match="real_galaxy_catalog_23.5.fits"):
        CosmosSources(tmp_path)
    # the btk example has no _selection file: marginal exclusion cannot work
    with pytest.raises(SourceDataError, match="_selection.fits"):
        CosmosSources(COSMOS / "btk-26-extension", file_name="real_galaxy_catalog_26_extension_example.fits")
    # the 23.5 example ships no galaxy images: refused when opened, naming the file, with the hint
    with pytest.raises(SourceDataError, match=r"no real_galaxy_images\.fits in .*galsim_download_cosmos"):
        CosmosSources(COSMOS / "galsim-23.5-example", file_name="real_galaxy_catalog_23.5_example.fits")
    # the same files, the PSF images gone (a copy of the directory): that file is named
    copy = tmp_path / "copy"
    copy.mkdir()
    for f in (COSMOS / "btk-26-extension").iterdir():
        if "PSF" not in f.name:
            (copy / f.name).symlink_to(f)
    with pytest.raises(SourceDataError, match=r"no \S*PSF\S*\.fits in"):
        CosmosSources(
            copy, file_name="real_galaxy_catalog_26_extension_example.fits", exclusion_level="none", min_flux=0
        )


def test_synthetic_galaxies_are_seeded_and_centred():
    a = synthetic_galaxy_stamp(np.random.default_rng(3))
    b = synthetic_galaxy_stamp(np.random.default_rng(3))
    c = synthetic_galaxy_stamp(np.random.default_rng(4))
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert a.shape == (158, 158) and a.min() >= 0
    i, j = np.unravel_index(a.argmax(), a.shape)
    assert abs(i - 79) < 12 and abs(j - 79) < 12
    # a flux of about 1 (the profile's) lands in the stamp
    assert 0.8 < a.sum() < 1.01


def test_prepare_source_rotates_shifts_and_normalises():
    cfg = SourceStampConfig()
    stamp = np.zeros((158, 158))
    stamp[79, 79] = 2.0
    stamp[79, 85] = 1.0  # a companion to the right (+x)
    stamp += 0.5  # a flat background
    seen = set()
    for s in range(40):
        out = prepare_source(stamp, np.random.default_rng(s), cfg)
        assert out.max() == 1.0 and np.median(out) == 0.0
        (i, j), (k, m) = np.argwhere(out == 1.0)[0], np.argwhere(out == 0.5)[0]
        seen.add((int(np.sign(m - j)), int(np.sign(k - i))))
        assert abs(i - 64) <= cfg.max_shift + 1 and abs(j - 64) <= cfg.max_shift + 1
    assert seen == {(1, 0), (0, 1), (-1, 0), (0, -1)}  # all four rotations
    assert prepare_source(np.zeros((158, 158)), np.random.default_rng(0)) is None
    with pytest.raises(ValueError, match="158"):
        prepare_source(np.zeros((100, 100)), np.random.default_rng(0))
