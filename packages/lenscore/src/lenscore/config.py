"""Configurations saved beside every run as JSON (never pickled) and read back strictly.

No torch: a command line reads configurations (their defaults) at start-up.
"""

from __future__ import annotations

import ast
import functools
import inspect
import json
import math
import textwrap
from dataclasses import asdict, fields
from typing import Any, ClassVar, TypeVar

__all__ = ["JsonConfig", "SettingError", "differences", "exponential_decay", "field_docs"]

C = TypeVar("C", bound="JsonConfig")


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """The documentation of each field of the dataclass ``cls``: the string literal under the
    field (an attribute docstring), or its entry in an ``Attributes`` section of the class
    docstring (numpydoc: a line naming one or more fields, then indented text). Fields of base
    classes count with their own class's documentation."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if klass is object or "__dataclass_fields__" not in vars(klass):
            continue
        docs.update(_attributes_section(inspect.getdoc(klass) or ""))
        body = ast.parse(textwrap.dedent(inspect.getsource(klass))).body[0].body
        for node, after in zip(body, [*body[1:], None], strict=True):
            documented = isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant)
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and documented:
                docs[node.target.id] = inspect.cleandoc(str(after.value.value))
    return docs


def _attributes_section(doc: str) -> dict[str, str]:
    lines = doc.splitlines()
    if "Attributes" not in lines:
        return {}
    out: dict[str, str] = {}
    names: list[str] = []
    for line in lines[lines.index("Attributes") + 2 :]:
        if line and not line.startswith(" "):
            names = [n.strip() for n in line.split(",")]
        elif line.strip() and names:
            for n in names:
                out[n] = f"{out.get(n, '')} {line.strip()}".strip()
    return out


def differences(before: Any, now: Any, *, most: int = 6, _at: str = "") -> list[str]:
    """What differs between two settings read from JSON (dicts, lists, numbers, strings), each as
    ``"key BEFORE there, NOW here"`` with nested keys dotted (and the records of two lists of
    dicts of one length indexed, ``key[i]``), in the order of ``now``'s keys, at most ``most`` (then
    ``"... N more"``): for messages that refuse to mix two runs."""
    said: list[str] = []
    records = isinstance(before, list) and isinstance(now, list) and len(before) == len(now)
    if records and all(isinstance(r, dict) for r in (*before, *now)):
        for i, (b, n) in enumerate(zip(before, now, strict=True)):
            said += differences(b, n, most=0, _at=f"{_at}[{i}]")
    elif isinstance(before, dict) and isinstance(now, dict):
        for key in [*now, *(k for k in before if k not in now)]:
            name = f"{_at}.{key}" if _at else str(key)
            if key not in before:
                said.append(f"{name} absent there, {_short(now[key])} here")
            elif key not in now:
                said.append(f"{name} {_short(before[key])} there, absent here")
            else:
                said += differences(before[key], now[key], most=0, _at=name)
    elif before != now:
        said.append(f"{_at or 'the settings'} {_short(before)} there, {_short(now)} here")
    if most and len(said) > most:
        said = [*said[:most], f"... {len(said) - most} more"]
    return said


def _short(value: Any, width: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= width else text[: width - 3] + "..."


class SettingError(ValueError):
    """A setting that cannot work, in one line, naming the keyword argument it came in
    (``param``): a command line shows it as an error of the option of that name."""

    def __init__(self, message: str, *, param: str) -> None:
        super().__init__(message)
        self.param = param


def exponential_decay(
    learning_rate: float, decay_rate: float, decay_steps: int, steps: int, *, staircase: bool = False
) -> float:
    """The learning rate after ``steps`` steps of exponential decay: ``learning_rate *
    decay_rate ** (steps / decay_steps)``, the exponent rounded down to whole periods when
    ``staircase`` (Keras' ExponentialDecay, which the original code used). The one schedule of
    every model of the packages."""
    periods = steps // decay_steps if staircase else steps / decay_steps
    return learning_rate * decay_rate**periods


class JsonConfig:
    """Mixin for frozen dataclass configs: ``to_json`` tags the document with ``RUN_KIND``;
    ``from_json`` refuses another kind and unknown keys with a one-line ``ValueError``."""

    RUN_KIND: ClassVar[str] = ""

    def check_numbers(self) -> None:
        """Refuse a field declared ``int`` that holds anything but an integer, and one declared
        ``float`` that holds a non-number, NaN or infinity (a learning rate of inf trains
        nothing and says nothing). Called by each config's ``__post_init__``."""
        for f in fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if f.type in ("int", int) and (isinstance(value, bool) or not isinstance(value, int)):
                raise ValueError(f"{f.name} must be an integer, got {value!r}")
            if f.type in ("float", float):
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    raise ValueError(f"{f.name} must be a number, got {value!r}")
                if not math.isfinite(value):
                    raise ValueError(f"{f.name} must be finite, got {value}")

    def to_json(self) -> str:
        return json.dumps({"model": self.RUN_KIND, **asdict(self)}, indent=2, sort_keys=True)  # type: ignore[call-overload]

    @classmethod
    def from_json(cls: type[C], text: str) -> C:
        data: dict[str, Any] = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError(f"not a {cls.RUN_KIND} configuration (a JSON {type(data).__name__}, not an object)")
        kind = data.pop("model", None)
        if kind != cls.RUN_KIND:
            raise ValueError(f"not a {cls.RUN_KIND} configuration (model: {kind!r})")
        unknown = set(data) - {f.name for f in fields(cls)}  # type: ignore[arg-type]
        if unknown:
            raise ValueError(f"unknown {cls.RUN_KIND} configuration keys {sorted(unknown)}")
        return cls(**data)
