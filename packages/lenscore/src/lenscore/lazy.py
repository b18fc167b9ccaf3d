"""Names of a package loaded on first use (SPEC 1's lazy loading), written once for all packages.

No torch: ``import lenssim`` and friends stay instant, and a command line can read torch-free
modules (configs, presets) at start-up.
"""

from __future__ import annotations

import ast
import importlib
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

__all__ = ["attach", "attach_stub", "stub_exports"]


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


def stub_exports(package: str, init_file: str) -> dict[str, tuple[str, ...]]:
    """The names a package exports, read from the stub ``__init__.pyi`` beside ``init_file``: each
    ``from package.sub import Name as Name`` (the re-export form type checkers read) puts ``Name``
    under ``sub``; ``from package.sub import *`` takes every name ``sub`` exports (its own stub's
    for a subpackage, its ``__all__`` for a module). The stubs are the one place a package
    writes its public names."""
    stub = Path(init_file).with_suffix(".pyi")
    exports: dict[str, list[str]] = {}
    for node in ast.parse(stub.read_text(), str(stub)).body:
        if not isinstance(node, ast.ImportFrom) or node.module is None:
            continue
        module = node.module if node.level == 0 else f"{package}.{node.module}"
        if not module.startswith(package + "."):
            continue  # an import the stub itself needs (typing, torch), not an export
        sub = module.removeprefix(package + ".")
        if [alias.name for alias in node.names] == ["*"]:
            for where, names in _star(package, sub, Path(init_file).parent).items():
                exports.setdefault(where, []).extend(names)
            continue
        for alias in node.names:
            if alias.asname != alias.name:
                raise ValueError(f"{stub}: re-export {alias.name} as 'import {alias.name} as {alias.name}'")
            exports.setdefault(sub, []).append(alias.name)
    return {module: tuple(names) for module, names in exports.items()}


def _star(package: str, sub: str, root: Path) -> dict[str, tuple[str, ...]]:
    """What ``from package.sub import *`` brings: a subpackage's stub exports (under ``sub.``) or a
    module's literal ``__all__``."""
    path = root.joinpath(*sub.split("."))
    if (path / "__init__.pyi").is_file():
        inner = stub_exports(f"{package}.{sub}", str(path / "__init__.py"))
        return {f"{sub}.{module}": names for module, names in inner.items()}
    source = path.with_suffix(".py")
    for node in ast.parse(source.read_text(), str(source)).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__all__" for t in node.targets):
            return {sub: tuple(ast.literal_eval(node.value))}
    raise ValueError(f"{source}: 'import *' from a module without a literal __all__")


def attach_stub(
    package: str, init_file: str, submodules: Mapping[str, str] | Sequence[str] = ()
) -> tuple[Callable[[str], object], Callable[[], list[str]], list[str], dict[str, str]]:
    """``(__getattr__, __dir__, __all__, where)`` for ``package``'s ``__init__``, its names read from
    the stub beside it (:func:`stub_exports`); ``__all__`` also names ``__version__`` when the
    package has set it by then."""
    getattr_, dir_, where = attach(package, stub_exports(package, init_file), submodules)
    version = ["__version__"] if hasattr(sys.modules[package], "__version__") else []
    return getattr_, dir_, [*where, *version], where
