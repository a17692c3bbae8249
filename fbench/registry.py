"""Plugin registries filled from entry points.

Three groups, one registry each:

- `fbench.pipelines`: dataset pipelines. A plugin has `name`, `summary`, `stage`
  ("prep" for `fbench prep <name>`, "fit" for `fbench fit-flame <name>`) and `command`,
  the click command mounted there.
- `fbench.methods`: reconstruction methods (DESIGN.md's plugin protocol): `name`,
  `summary`, `build(config)`, `from_checkpoint(path)` (models have
  `reconstruct(images) -> FlameParams`) and `train_command` for `fbench train <name>`.
- `fbench.benchmarks`: `name`, `summary` and `command` for `fbench eval <name>`.

A third-party distribution registers its own plugin by adding an entry point to one
of these groups in its pyproject.toml; fbench's core never imports a plugin package.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from importlib.metadata import EntryPoint, entry_points
from typing import Any, Iterable

PIPELINE_STAGES = ("prep", "fit")


class PluginError(RuntimeError):
    """A plugin could not be loaded or does not follow its registry's protocol."""


@dataclass(frozen=True)
class RegistrySpec:
    group: str
    kind: str  # "pipeline", "method", "benchmark"
    required: tuple[str, ...]  # attributes every plugin of this kind must have
    callables: tuple[str, ...]  # of which these must be callable


SPECS = {
    "pipelines": RegistrySpec("fbench.pipelines", "pipeline", ("name", "summary", "stage", "command"), ()),
    "methods": RegistrySpec("fbench.methods", "method",
                            ("name", "summary", "build", "from_checkpoint", "train_command"),
                            ("build", "from_checkpoint")),
    "benchmarks": RegistrySpec("fbench.benchmarks", "benchmark", ("name", "summary", "command"), ()),
}


def check_plugin(spec: RegistrySpec, entry_name: str, plugin: Any) -> list[str]:
    """Protocol violations of a loaded plugin (empty when it conforms)."""
    problems = [f"lacks attribute '{a}'" for a in spec.required if not hasattr(plugin, a)]
    problems += [f"'{a}' is not callable" for a in spec.callables if hasattr(plugin, a) and not callable(getattr(plugin, a))]
    if hasattr(plugin, "name") and plugin.name != entry_name:
        problems.append(f"name {plugin.name!r} differs from its entry point {entry_name!r}")
    if spec.kind == "pipeline" and getattr(plugin, "stage", None) not in PIPELINE_STAGES:
        problems.append(f"stage must be one of {PIPELINE_STAGES}")
    return problems


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
