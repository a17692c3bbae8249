"""Range checks of config dataclasses, declared beside each field.

    @dataclass
    class Options:
        batch_size: int = field(default=50, metadata=limits(ge=1))
        weight: float = field(default=1e-3, metadata=limits(ge=0))

        def __post_init__(self) -> None:
            check_fields(self)

`check_fields` raises `ConfigValueError` naming the field ("batch_size: must be >= 1, got -5");
the config loader prefixes the section ("registration.batch_size: ..."), so whoever builds the
config (YAML, `-o key=value`, Python) gets the same one-line error. Every float field must be
finite, bounded or not.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any


class ConfigValueError(ValueError):
    """A config value is out of range; the message starts with the field name."""


def limits(ge: float | None = None, gt: float | None = None, le: float | None = None, lt: float | None = None,
           nonempty: bool = False) -> dict[str, Any]:
    """Field metadata: bounds (inclusive ge/le, exclusive gt/lt) or, for lists, nonempty."""
    bounds: dict[str, Any] = {k: v for k, v in (("ge", ge), ("gt", gt), ("le", le), ("lt", lt)) if v is not None}
    if nonempty:
        bounds["nonempty"] = True
    return {"limits": bounds}


def check_value(name: str, value: Any, bounds: dict[str, Any]) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigValueError(f"{name}: must be a finite number, got {value!r}")
    if bounds.get("nonempty") and not value:
        raise ConfigValueError(f"{name}: must not be empty")
    for key, ok, word in (("ge", lambda v, b: v >= b, ">="), ("gt", lambda v, b: v > b, ">"),
                          ("le", lambda v, b: v <= b, "<="), ("lt", lambda v, b: v < b, "<")):
        if key in bounds and isinstance(value, (int, float)) and not ok(value, bounds[key]):
            raise ConfigValueError(f"{name}: must be {word} {bounds[key]}, got {value!r}")


def check_fields(obj: Any) -> None:
    """Check every field of a dataclass instance against its `limits` (and floats for finiteness)."""
    for f in dataclasses.fields(obj):
        check_value(f.name, getattr(obj, f.name), f.metadata.get("limits", {}))
