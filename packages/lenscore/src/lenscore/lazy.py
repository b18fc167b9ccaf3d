"""Names of a package loaded on first use (SPEC 1's lazy loading), written once for all packages.

No torch: ``import lenssim`` and friends stay instant, and a command line can read torch-free
modules (configs, presets) at start-up.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping, Sequence

__all__ = ["attach"]


def attach(
    package: str, exports: Mapping[str, Sequence[str]], submodules: Mapping[str, str] | Sequence[str] = ()
) -> tuple[Callable[[str], object], Callable[[], list[str]], dict[str, str]]:
    """``(__getattr__, __dir__, where)`` for ``package``'s ``__init__``.

    ``exports`` maps a submodule (dotted, relative to the package) to the names it provides;
    ``submodules`` names the submodules reachable as attributes (a sequence of names, or a mapping
    from an attribute name to the dotted submodule it stands for). A name is imported when first
    asked for and then kept on the package; ``where`` maps each exported name to its submodule.
    """
    where = {name: module for module, names in exports.items() for name in names}
    subs = dict(submodules) if isinstance(submodules, Mapping) else {name: name for name in submodules}

    def __getattr__(name: str):
        if name in where:
            value = getattr(importlib.import_module(f"{package}.{where[name]}"), name)
        elif name in subs:
            value = importlib.import_module(f"{package}.{subs[name]}")
        else:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        setattr(sys.modules[package], name, value)
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(where) | set(subs))

    return __getattr__, __dir__, where
