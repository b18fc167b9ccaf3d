"""Configurations saved beside every run as JSON (never pickled) and read back strictly.

No torch: a command line reads configurations (their defaults) at start-up.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, fields
from typing import Any, ClassVar, TypeVar

__all__ = ["JsonConfig", "exponential_decay"]

C = TypeVar("C", bound="JsonConfig")


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
