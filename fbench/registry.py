"""Plugin registries filled from entry points.

Three groups, one registry each, holding the plugin types of `fbench/plugins.py`:

- `fbench.pipelines`: `PipelinePlugin` (`fbench prep <name>` or `fbench fit-flame <name>`);
- `fbench.methods`: `MethodPlugin` (`fbench train <name>`, `--method <name>` of benchmarks);
- `fbench.benchmarks`: `BenchmarkPlugin` (`fbench eval <name>`).

A third-party distribution registers its own plugin by adding an entry point to one of these
groups in its pyproject.toml, pointing at an instance of the type; fbench's core never
imports a plugin package. A loaded plugin of the wrong type, or whose name differs from its
entry point, is refused with a `PluginError` that names the entry point.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from importlib.metadata import EntryPoint, entry_points
from typing import Any, Iterable

from fbench.plugins import PLUGIN_TYPES


class PluginError(RuntimeError):
    """A plugin could not be loaded or does not follow its registry's protocol."""


@dataclass(frozen=True)
class RegistrySpec:
    group: str
    kind: str  # "pipeline", "method", "benchmark"
    type: type  # the plugin type every entry point must resolve to


SPECS = {name: RegistrySpec(f"fbench.{name}", name.rstrip("s"), cls) for name, cls in PLUGIN_TYPES.items()}


def check_plugin(spec: RegistrySpec, entry_name: str, plugin: Any) -> list[str]:
    """Protocol violations of a loaded plugin (empty when it conforms)."""
    if not isinstance(plugin, spec.type):
        return [f"is a {type(plugin).__name__}, not a fbench.plugins.{spec.type.__name__}"]
    if plugin.name != entry_name:
        return [f"name {plugin.name!r} differs from its entry point {entry_name!r}"]
    return []


class Registry:
    """Plugins of one kind, loaded lazily from their entry-point group."""

    def __init__(self, spec: RegistrySpec, eps: Iterable[EntryPoint] | None = None) -> None:
        self.spec = spec
        self._eps = eps

    @cached_property
    def entry_points(self) -> dict[str, EntryPoint]:
        eps = self._eps if self._eps is not None else entry_points(group=self.spec.group)
        return {ep.name: ep for ep in sorted(eps, key=lambda e: e.name)}

    def names(self) -> list[str]:
        return list(self.entry_points)

    def __contains__(self, name: str) -> bool:
        return name in self.entry_points

    def get(self, name: str) -> Any:
        if name not in self.entry_points:
            known = ", ".join(self.names()) or "none installed"
            raise PluginError(f"no {self.spec.kind} named {name!r} (known: {known})")
        return self._load(name)

    def _load(self, name: str) -> Any:
        ep = self.entry_points[name]
        try:
            plugin = ep.load()
        except Exception as exc:
            raise PluginError(f"{self.spec.kind} plugin {name!r} ({ep.value}) failed to import: {exc}") from exc
        problems = check_plugin(self.spec, name, plugin)
        if problems:
            raise PluginError(f"{self.spec.kind} plugin {name!r} ({ep.value}): " + "; ".join(problems))
        return plugin

    def items(self) -> list[tuple[str, Any]]:
        return [(name, self.get(name)) for name in self.names()]


_REGISTRIES: dict[str, Registry] = {}


def registry(kind: str) -> Registry:
    """The registry for "pipelines", "methods" or "benchmarks"."""
    if kind not in SPECS:
        raise KeyError(f"unknown registry {kind!r}; known: {', '.join(SPECS)}")
    if kind not in _REGISTRIES:
        _REGISTRIES[kind] = Registry(SPECS[kind])
    return _REGISTRIES[kind]
