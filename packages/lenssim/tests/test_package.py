"""The public surface: three subpackages, every public name also flat, the old module names still
reachable, and nothing heavy loaded by ``import lenssim``."""

import subprocess
import sys

import lenssim


def test_every_flat_name_is_the_subpackages_object():
    for name in lenssim.__all__:
        if name == "__version__":
            continue
        module = lenssim._WHERE[name]
        top = module.split(".")[0]
        value = getattr(lenssim, name)
        assert getattr(sys.modules[f"lenssim.{module}"], name) is value, name
        if top in ("physics", "data", "io"):  # each subpackage re-exports its modules' names
            assert getattr(getattr(lenssim, top), name) is value, name


def test_the_modules_old_names_reach_their_new_homes():
    assert lenssim.tng is lenssim.data.tng and lenssim.sources is lenssim.data.sources
    assert lenssim.sampling is lenssim.data.observing and lenssim.raytrace is lenssim.physics.raytrace
    assert lenssim.io.dataset_info is lenssim.io.datasets.dataset_info
    from lenssim import tng

    assert tng.synthetic_particles is lenssim.data.tng.synthetic_particles
    # each subpackage reaches its modules as attributes in a fresh interpreter (nothing imported yet)
    code = (
        "import sys, lenssim\n"
        "for sub, names in (('physics', ('raytrace', 'psf')), ('data', ('tng', 'sources', 'observing')), "
        "('io', ('fits', 'datasets'))):\n"
        "    for name in names:\n"
        "        assert getattr(getattr(lenssim, sub), name) is sys.modules[f'lenssim.{sub}.{name}'], (sub, name)\n"
        "print('ok')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "ok", out.stderr[-300:]


def test_import_is_instant_and_loads_neither_torch_nor_numba():
    code = "import sys, lenssim; print(sorted(m for m in ('torch', 'numba', 'galsim') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
