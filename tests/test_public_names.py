"""Each package's public names are written once, in its ``__init__.pyi``; every one of them loads,
from the module the stub names, and lenssim's flat names are its subpackages' (issue 25)."""

from __future__ import annotations

import importlib

import pytest

PACKAGES = ("lenssim", "lenssim.data", "lenssim.io", "lenssim.physics", "lensprior", "lensrim")


@pytest.mark.parametrize("name", PACKAGES)
def test_every_name_of_a_stub_loads_from_the_module_it_names(name):
    package = importlib.import_module(name)
    assert package.__all__, name
    for export in package.__all__:
        if export == "__version__":
            continue
        value = getattr(package, export)
        module = importlib.import_module(f"{name}.{package._WHERE[export]}")
        assert value is getattr(module, export), (name, export)


def test_lenssims_flat_names_are_every_subpackage_name():
    import lenssim

    for sub in ("data", "io", "physics"):
        subpackage = importlib.import_module(f"lenssim.{sub}")
        missing = set(subpackage.__all__) - set(lenssim.__all__)
        assert not missing, (sub, missing)
        assert all(getattr(lenssim, n) is getattr(subpackage, n) for n in subpackage.__all__)
