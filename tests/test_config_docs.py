"""Every number a user can set is documented where it is defined: each field of every settings
dataclass the packages export (frozen dataclasses) has a docstring, so its unit and meaning are
one read away (issue 25)."""

from __future__ import annotations

import dataclasses
import importlib

import pytest

from lenscore.config import field_docs

PACKAGES = ("lenssim", "lenssim.data", "lenssim.io", "lenssim.physics", "lensprior", "lensrim", "lensrim.demo")


def settings_classes() -> dict[str, type]:
    found = {}
    for name in PACKAGES:
        module = importlib.import_module(name)
        for export in getattr(module, "__all__", ()):
            value = getattr(module, export, None)
            is_settings = isinstance(value, type) and dataclasses.is_dataclass(value)
            if is_settings and value.__dataclass_params__.frozen:
                found[f"{value.__module__}.{value.__qualname__}"] = value
    return found


def test_the_settings_classes_are_found():
    names = {n.rsplit(".", 1)[1] for n in settings_classes()}
    assert {"ObservationConfig", "RIMConfig", "VAEConfig", "FineTuneConfig", "DemoConfig", "Geometry"} <= names


@pytest.mark.parametrize("name", sorted(settings_classes()))
def test_every_field_of_every_settings_class_is_documented(name):
    cls = settings_classes()[name]
    docs = field_docs(cls)
    missing = [f.name for f in dataclasses.fields(cls) if len(docs.get(f.name, "")) < 10]
    assert not missing, f"{name}: fields without a docstring (unit and meaning): {missing}"


def test_field_docs_reads_attribute_docstrings_and_attributes_sections():
    @dataclasses.dataclass(frozen=True)
    class Example:
        """An example.

        Attributes
        ----------
        a, b
            Two lengths, arcsec.
        """

        a: float = 1.0
        b: float = 2.0
        c: int = 3
        """A count of pixels."""
        d: int = 4

    assert field_docs(Example) == {"a": "Two lengths, arcsec.", "b": "Two lengths, arcsec.", "c": "A count of pixels."}
