"""Plugin registries: the core never imports a plugin; every installed plugin honours its protocol."""

from __future__ import annotations

import ast
import sys
import types
from importlib.metadata import EntryPoint
from pathlib import Path

import click
import pytest

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


def test_core_never_imports_a_plugin_package():
    offenders = []
    for path in sorted((ROOT / "fbench").rglob("*.py")):
        for module in _imported_modules(path):
            if module.split(".")[0] in PLUGIN_PACKAGES:
                offenders.append(f"{path.relative_to(ROOT)} imports {module}")
    assert not offenders, offenders


def test_the_static_check_sees_plugin_imports(tmp_path):
    # Guard against the check above passing vacuously.
    bad = tmp_path / "bad.py"
    bad.write_text("import os\nfrom methods.smirk import trainer\nimport benchmarks.multiface as m\n")
    assert {"methods.smirk", "benchmarks.multiface"} <= _imported_modules(bad)


INSTALLED = [(kind, name) for kind in SPECS for name in registry(kind).names()]


@pytest.mark.parametrize("kind, name", INSTALLED)
def test_installed_plugin_follows_its_protocol(kind, name):
    plugin = registry(kind).get(name)  # raises PluginError naming every protocol violation
    assert isinstance(plugin.summary, str) and plugin.summary
    commands = {"pipelines": "command", "methods": "train_command", "benchmarks": "command"}
    command = getattr(plugin, commands[kind])
    assert isinstance(command, click.Command)
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


def test_registry_loads_and_validates_plugins(monkeypatch):
    good = types.SimpleNamespace(name="fake", summary="a fake dataset", stage="prep", command=_fake_command)
    renamed = types.SimpleNamespace(name="other", summary="x", stage="prep", command=_fake_command)
    no_stage = types.SimpleNamespace(name="nostage", summary="x", command=_fake_command)
    mod = _fake_plugin_module(monkeypatch, good=good, renamed=renamed, no_stage=no_stage)
    eps = [EntryPoint("fake", f"{mod}:good", "fbench.pipelines"),
           EntryPoint("renamed", f"{mod}:renamed", "fbench.pipelines"),
           EntryPoint("nostage", f"{mod}:no_stage", "fbench.pipelines"),
           EntryPoint("missing", "fbench_no_such_module:x", "fbench.pipelines")]
    reg = Registry(SPECS["pipelines"], eps)
    assert reg.names() == ["fake", "missing", "nostage", "renamed"]
    assert reg.get("fake") is good
    with pytest.raises(PluginError, match="differs from its entry point"):
        reg.get("renamed")
    with pytest.raises(PluginError, match="lacks attribute 'stage'"):
        reg.get("nostage")
    with pytest.raises(PluginError, match="failed to import"):
        reg.get("missing")
    with pytest.raises(PluginError, match="no pipeline named 'nope'"):
        reg.get("nope")


def test_cli_mounts_plugins_from_the_registry(monkeypatch):
    from click.testing import CliRunner

    import fbench.registry as registry_module
    from fbench.cli import main

    good = types.SimpleNamespace(name="fake", summary="a fake dataset", stage="prep", command=_fake_command)
    mod = _fake_plugin_module(monkeypatch, good=good)
    fake = Registry(SPECS["pipelines"], [EntryPoint("fake", f"{mod}:good", "fbench.pipelines")])
    monkeypatch.setitem(registry_module._REGISTRIES, "pipelines", fake)
    runner = CliRunner()
    assert "fake" in runner.invoke(main, ["prep", "--help"]).output
    assert "fake" not in runner.invoke(main, ["fit-flame", "--help"]).output  # stage "prep" only
    result = runner.invoke(main, ["prep", "fake"])
    assert result.exit_code == 0 and "fake ran" in result.output
    assert "a fake dataset" in runner.invoke(main, ["list"]).output
