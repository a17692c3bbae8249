"""Dataclass configs for every command: YAML files plus ``-o key=value`` overrides.

A config is a (possibly nested) dataclass. ``load_config(Cls, path, ["a.b=3"])`` starts
from the defaults, applies the YAML mapping at ``path`` (if any) and then the overrides,
in that order. Values are parsed with YAML's scalar rules (``1e-4``, ``true``, ``[1, 2]``)
and checked against the field's declared type, so a typo fails loudly instead of being
ignored.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A config file or override is malformed; the message names the key (and file)."""


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(f"{key}: {value!r} matches none of {annotation}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{key}: {value!r} is not one of {list(args)}")
        return value
    if dataclasses.is_dataclass(annotation):
        if isinstance(value, annotation):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping for {annotation.__name__}, got {value!r}")
        return _from_mapping(annotation, value, prefix=f"{key}.")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        inner = args[0] if args else Any
        items = [_coerce(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if annotation is Path:
        if not isinstance(value, (str, Path)):
            raise ConfigError(f"{key}: expected a path, got {value!r}")
        return Path(value)
    if origin in (dict, typing.Mapping, collections.abc.Mapping):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if annotation is Any:
        return value
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if annotation is float:
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                raise ConfigError(f"{key}: expected a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    return value


def _from_mapping(cls: type[T], mapping: dict[str, Any], prefix: str = "") -> T:
    hints = _field_types(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(mapping) - names
    if unknown:
        raise ConfigError(f"unknown config key(s) {sorted(prefix + k for k in unknown)}; "
                          f"known: {sorted(prefix + n for n in names)}")
    base = cls()
    values = {}
    for name, value in mapping.items():
        current = getattr(base, name)
        if dataclasses.is_dataclass(current) and isinstance(value, dict):
            values[name] = _from_mapping(type(current), {**dataclasses.asdict(current), **value}, f"{prefix}{name}.")
        else:
            values[name] = _coerce(value, hints[name], prefix + name)
    try:
        return dataclasses.replace(base, **values)  # the dataclass's own checks (fbench.checks) run here
    except ValueError as exc:
        raise ConfigError(f"{prefix}{exc}") from None


def to_plain(value: Any) -> Any:
    """YAML-safe form: dataclasses and mappings to dicts, tuples to lists, paths to strings."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, typing.Mapping):
        return {str(k): to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def config_to_dict(config: Any) -> dict[str, Any]:
    """Plain nested dict (YAML-serialisable) of a config dataclass."""
    return to_plain(config)


def save_config(config: Any, path: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """Write the resolved config as YAML (atomically), so the output it sits beside can be
    reproduced with `--config`; `extra` adds sections that are records, not settings (e.g.
    which assets were missing)."""
    from fbench.io import atomic_write_text

    data = config_to_dict(config)
    if extra:
        data = {**data, **to_plain(extra)}
    return atomic_write_text(path, yaml.safe_dump(data, sort_keys=False))


def apply_overrides(config: T, overrides: list[str] | tuple[str, ...]) -> T:
    """Apply ``key=value`` strings (dotted keys for nested configs) to a config copy."""
    data = config_to_dict(config)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        key, raw = item.split("=", 1)
        key = key.strip()
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as exc:
            raise ConfigError(f"override {item!r}: unparsable value ({exc})") from exc
        node = data
        parts = key.split(".")
        for part in parts[:-1]:
            if not isinstance(node.get(part), dict):
                raise ConfigError(f"override {item!r}: {part!r} is not a config section")
            node = node[part]
        if parts[-1] not in node:
            raise ConfigError(f"override {item!r}: unknown key {key!r}; known: {sorted(node)}")
        node[parts[-1]] = value
    return _from_mapping(type(config), data)


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> T:
    """Defaults of ``cls``, then the YAML file at ``path`` (optional), then ``overrides``."""
    config = cls()
    if path is not None:
        path = Path(path)
        try:
            mapping = yaml.safe_load(path.read_text()) or {}
        except FileNotFoundError:
            raise ConfigError(f"{path}: no such config file") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML ({exc})") from exc
        if not isinstance(mapping, dict):
            raise ConfigError(f"{path}: the config must be a YAML mapping")
        try:
            config = _from_mapping(cls, mapping)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from exc
    return apply_overrides(config, overrides)


def typed_value(cls: type, key: str, text: str) -> Any:
    """Text typed for config key `key` (dotted) of dataclass `cls`, as the field's type wants it:
    kept as text where the field takes text (a stage named "1" of a `str` field), else read as
    YAML as `-o key=value` is (the same "1" for an `int` field). An unknown key or a value the
    field refuses either way comes back as text, for `load_config` to report."""
    annotation: Any = cls
    for part in key.split("."):
        if not dataclasses.is_dataclass(annotation):
            return text
        hints = _field_types(annotation)
        if part not in hints:
            return text
        annotation = hints[part]
    for value in (text, _yaml_or_text(text)):
        try:
            return _coerce(value, annotation, key)
        except ConfigError:
            continue
    return text


def _yaml_or_text(text: str) -> Any:
    try:
        return yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError:
        return text
