"""The frozen geometry: Table 1's numbers, refusals in one line, and importable without torch."""

import subprocess
import sys

import pytest

import lenssim
from lenssim.geometry import IMAGE_FOV, SOURCE_FOV, Geometry


def test_table_1_pixels_are_0_06_arcsec_and_every_default_is_these_numbers():
    assert Geometry(128).pixel_scale == pytest.approx(0.06, rel=2e-3)  # 128 pixels of 0.06"
    obs, kappa = lenssim.ObservationConfig(), lenssim.KappaMapConfig()
    assert (obs.image_fov, obs.source_fov, kappa.image_fov) == (IMAGE_FOV, SOURCE_FOV, IMAGE_FOV)
    assert (obs.z_lens, obs.z_source, kappa.z_lens, kappa.z_source) == (0.5, 1.5, 0.5, 1.5)


@pytest.mark.parametrize(
    "args, message",
    [
        ((0,), "pixels"),
        ((32.0,), "pixels"),
        ((True,), "pixels"),
        ((32, float("nan")), "image_fov"),
        ((32, True), "image_fov must be a positive number"),  # Python counts True as 1: not 1 arcsec
        ((32, 7.69, True), "source_fov must be a positive number"),
        ((32, "7.69"), "image_fov must be a positive number"),
        ((32, 3.0, 7.69), "source_fov"),
    ],
)
def test_impossible_geometries_are_refused(args, message):
    with pytest.raises(ValueError, match=message):
        Geometry(*args)


def test_other_data_are_refused_naming_where_and_what():
    g = Geometry(64)
    g.refuse_other("same", pixels=64, image_fov=IMAGE_FOV * (1 + 1e-8), source_fov=None)  # within 1e-6
    with pytest.raises(ValueError, match="lenses.h5: source_fov 2 differs from the model's 3 arcsec; fix it"):
        g.refuse_other("lenses.h5", source_fov=2.0, hint="; fix it")
    with pytest.raises(lenssim.DatasetError, match="maps are 32 pixels wide, the model's are 64"):
        g.refuse_other("x", pixels=32, error=lenssim.DatasetError)


def test_the_geometry_loads_without_torch():
    code = "import sys, lenssim.geometry as g; g.Geometry(8); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
