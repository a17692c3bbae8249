"""Plugin registries: the core never imports a plugin; every installed plugin honours its protocol."""

from __future__ import annotations

import ast
import subprocess
import sys
import types
from importlib.metadata import EntryPoint
from pathlib import Path
from typing import Callable

import click
import pytest

from fbench.plugins import PLUGIN_TYPES, PipelinePlugin
from fbench.registry import SPECS, PluginError, Registry, registry

ROOT = Path(__file__).resolve().parents[1]
PLUGIN_PACKAGES = {"pipelines", "methods", "benchmarks"}


def _imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def _offenders(folder: str, forbidden: Callable[[str], bool], exempt: tuple[str, ...] = ()) -> list[str]:
    found = []
    for path in sorted((ROOT / folder).rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        if rel.startswith(exempt):
            continue
        found += [f"{rel} imports {m}" for m in sorted(_imported_modules(path)) if forbidden(m)]
    return found


def test_core_never_imports_a_plugin_package():
    assert not _offenders("fbench", lambda m: m.split(".")[0] in PLUGIN_PACKAGES)


def test_only_the_cli_package_imports_click_or_the_cli():
    assert not _offenders("fbench", lambda m: m.split(".")[0] == "click" or m.startswith("fbench.cli"),
                          exempt=("fbench/cli/", "fbench/__main__.py"))
    assert _offenders("fbench", lambda m: m.split(".")[0] == "click"), "the check must see fbench/cli's imports"


def test_benchmarks_never_import_methods():
    # Benchmarks reach methods only through the registry (`--method NAME`).
    assert not _offenders("benchmarks", lambda m: m.split(".")[0] == "methods")


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Import cycles found by a depth-first search (each reported once, from where it closes)."""
    found, state = [], {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                found.append(path[path.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    return found


def test_no_import_cycle_between_core_modules():
    graph: dict[str, set[str]] = {}
    modules = {p.relative_to(ROOT).with_suffix("").as_posix().replace("/", ".").removesuffix(".__init__"): p
               for p in (ROOT / "fbench").rglob("*.py")}
    for name, path in modules.items():
        tree = ast.parse(path.read_text())
        # only module-level imports form cycles at import time
        for node in tree.body:
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            for t in targets:
                if t in modules and t != name and not name.startswith(t + "."):
                    graph.setdefault(name, set()).add(t)
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]  # the search sees cycles
    assert not _cycles(graph), _cycles(graph)


def test_the_static_check_sees_plugin_imports(tmp_path):
    # Guard against the check above passing vacuously.
    bad = tmp_path / "bad.py"
    bad.write_text("import os\nfrom methods.smirk import trainer\nimport benchmarks.multiface as m\n")
    assert {"methods.smirk", "benchmarks.multiface"} <= _imported_modules(bad)


INSTALLED = [(kind, name) for kind in SPECS for name in registry(kind).names()]


def _command_of(kind: str, plugin):
    from fbench.cli.plugins import eval_command, train_command

    if kind == "pipelines":
        return [plugin.command_for(stage) for stage in plugin.stages]
    return [{"methods": train_command, "benchmarks": eval_command}[kind](plugin)]


def _declared() -> dict[str, list[EntryPoint]]:
    """The entry points this tree's pyproject.toml declares, per registry (installed or not yet)."""
    import tomllib

    groups = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"]
    return {kind: [EntryPoint(n, v, spec.group) for n, v in groups.get(spec.group, {}).items()]
            for kind, spec in SPECS.items()}


DECLARED = _declared()


@pytest.mark.parametrize("kind, name", sorted(set(INSTALLED) | {(k, ep.name) for k, eps in DECLARED.items()
                                                                for ep in eps}))
def test_installed_plugin_follows_its_protocol(kind, name):
    # declared in pyproject.toml (checked before a reinstall) or installed (a third party's)
    reg = registry(kind) if name in registry(kind) and name not in {ep.name for ep in DECLARED[kind]} \
        else Registry(SPECS[kind], DECLARED[kind])
    plugin = reg.get(name)  # raises PluginError naming every protocol violation
    assert isinstance(plugin, PLUGIN_TYPES[kind])
    assert isinstance(plugin.summary, str) and plugin.summary
    for command in _command_of(kind, plugin):
        assert isinstance(command, click.Command) and command.name == name
        assert "Example" in (command.help or ""), f"{kind} {name}: --help needs an example"


def _fake_plugin_module(monkeypatch, **plugins) -> str:
    module = types.ModuleType("fbench_test_plugins")
    for attr, plugin in plugins.items():
        setattr(module, attr, plugin)
    monkeypatch.setitem(sys.modules, module.__name__, module)
    return module.__name__


@click.command(help="Fake prep.\n\nExample:\n  fbench prep fake")
def _fake_command() -> None:
    click.echo("fake ran")


def _fake_pipeline(name: str, *stages: str) -> PipelinePlugin:
    return PipelinePlugin(name=name, summary="a fake dataset",
                          commands={stage: (lambda: _fake_command) for stage in stages or ("prep",)})


def test_registry_loads_and_validates_plugins(monkeypatch):
    good, renamed = _fake_pipeline("fake"), _fake_pipeline("other")
    untyped = types.SimpleNamespace(name="untyped", summary="x", stage="prep", command=_fake_command)
    mod = _fake_plugin_module(monkeypatch, good=good, renamed=renamed, untyped=untyped)
    eps = [EntryPoint("fake", f"{mod}:good", "fbench.pipelines"),
           EntryPoint("renamed", f"{mod}:renamed", "fbench.pipelines"),
           EntryPoint("untyped", f"{mod}:untyped", "fbench.pipelines"),
           EntryPoint("missing", "fbench_no_such_module:x", "fbench.pipelines")]
    reg = Registry(SPECS["pipelines"], eps)
    assert reg.names() == ["fake", "missing", "renamed", "untyped"]
    assert reg.get("fake") is good
    with pytest.raises(PluginError, match="differs from its entry point"):
        reg.get("renamed")
    with pytest.raises(PluginError, match="not a fbench.plugins.PipelinePlugin"):
        reg.get("untyped")
    with pytest.raises(PluginError, match="failed to import"):
        reg.get("missing")
    with pytest.raises(PluginError, match="no pipeline named 'nope'"):
        reg.get("nope")
    with pytest.raises(ValueError, match="must map stages from"):
        _fake_pipeline("bad", "train")
    with pytest.raises(ValueError, match="must map stages from"):
        PipelinePlugin(name="none", summary="x", commands={})
    with pytest.raises(ValueError, match="not callable"):
        PipelinePlugin(name="bad", summary="x", commands={"prep": "pipelines.x:command"})


def test_pipeline_commands_are_built_lazily_and_once():
    calls = []

    def make():
        calls.append(1)
        return _fake_command

    @click.command("lazy-prep")
    def prep_command() -> None: ...

    plugin = PipelinePlugin(name="lazy", summary="x", commands={"fit": make, "prep": lambda: prep_command})
    assert calls == [] and plugin.stages == ("prep", "fit")  # PIPELINE_STAGES order, whatever the mapping's
    assert plugin.command_for("fit") is plugin.command_for("fit") is _fake_command and calls == [1]
    assert plugin.command_for("prep") is prep_command and calls == [1]  # one stage's maker is not another's
    with pytest.raises(KeyError, match="has no 'fit' command"):
        _fake_pipeline("prep-only").command_for("fit")


def test_choosing_a_pipeline_by_stage_imports_no_pipeline_module():
    # `fbench prep X` and `fbench list` read the light registry records only.
    code = ("import sys; from fbench.registry import registry; reg = registry('pipelines'); "
            "stages = {n: ','.join(reg.get(n).stages) for n in reg.names()}; "
            "heavy = sorted(m for m in sys.modules if m.startswith('pipelines.') or m in ('torch', 'cv2')); "
            "print(stages['famos'], stages['affectnet'], heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "fit prep []"


def test_cli_mounts_plugins_from_the_registry(monkeypatch):
    from click.testing import CliRunner

    import fbench.registry as registry_module
    from fbench.cli import main

    mod = _fake_plugin_module(monkeypatch, good=_fake_pipeline("fake"), both=_fake_pipeline("both", "prep", "fit"))
    fake = Registry(SPECS["pipelines"], [EntryPoint("fake", f"{mod}:good", "fbench.pipelines"),
                                         EntryPoint("both", f"{mod}:both", "fbench.pipelines")])
    monkeypatch.setitem(registry_module._REGISTRIES, "pipelines", fake)
    runner = CliRunner()
    assert "fake" in runner.invoke(main, ["prep", "--help"]).output
    assert "fake" not in runner.invoke(main, ["fit-flame", "--help"]).output  # stage "prep" only
    assert runner.invoke(main, ["fit-flame", "fake"]).exit_code == 2  # no such fit command
    result = runner.invoke(main, ["prep", "fake"])
    assert result.exit_code == 0 and "fake ran" in result.output
    assert "a fake dataset" in runner.invoke(main, ["list"]).output
    assert "both" in runner.invoke(main, ["fit-flame", "--help"]).output  # a two-stage pipeline is in both groups
    assert "both" in runner.invoke(main, ["prep", "--help"]).output
    assert "fake ran" in runner.invoke(main, ["fit-flame", "both"]).output
    assert "[prep, fit]" in runner.invoke(main, ["list"]).output
