"""Options and error handling shared by fbench's commands: FLAME, configs, dataset roots."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Callable, Mapping, TypeVar

import click

T = TypeVar("T")

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}

FLAME_OPTION_HELP = ("FLAME directory (generic_model.pkl + SMIRK assets). Default: $FBENCH_FLAME_DIR, else a real "
                     "FLAME under $FBENCH_HOME/flame, else the synthetic model (generated on first use).")


def flame_option(f: Callable) -> Callable:
    return click.option("--flame", "flame", type=click.Path(file_okay=False, path_type=Path), default=None,
                        help=FLAME_OPTION_HELP)(f)


def load_flame_announced(flame: Path | None, **kwargs: Any):
    """Load FLAME and tell the user which model it is (synthetic results are never FLAME2020's)."""
    from fbench.flame import FlameFileError, load_flame

    try:
        model = load_flame(flame, **kwargs)
    except FlameFileError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"FLAME: {model.flame_source.describe()}", err=True)
    return model


def config_options(f: Callable) -> Callable:
    """`--config FILE` and repeatable `-o key=value` (dotted keys for nested settings)."""
    f = click.option("-o", "--set", "overrides", multiple=True, metavar="KEY=VALUE",
                     help="Override a config value, e.g. -o landmarks.crop_scale=2.0 (repeatable).")(f)
    return click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
                        help="YAML config file (the config.yaml an earlier run wrote beside its outputs works).")(f)


def load_command_config(cls: type[T], path: Path | None, overrides: tuple[str, ...] | list[str],
                        explicit: Mapping[str, Any] | None = None) -> T:
    """Defaults < `--config` file < `-o` overrides < options typed on the command line (`explicit`,
    dotted keys). Errors name the key and become usage errors."""
    from fbench.config import ConfigError, load_config

    extra = [f"{key}={_yaml_scalar(value)}" for key, value in (explicit or {}).items()]
    try:
        return load_config(cls, path, [*overrides, *extra])
    except ConfigError as exc:
        raise click.BadParameter(str(exc), param_hint="--config / -o") from exc


def _yaml_scalar(value: Any) -> str:
    import yaml

    from fbench.config import to_plain

    return yaml.safe_dump(to_plain(value), default_flow_style=True, width=1 << 20).strip().removesuffix("\n...")


def explicit_options(ctx: click.Context, mapping: Mapping[str, str]) -> dict[str, Any]:
    """{config key: value} for the options in `mapping` (option name -> config key) that the user
    typed, so they win over the config file while untouched defaults do not."""
    out = {}
    for name, key in mapping.items():
        if ctx.get_parameter_source(name) not in (click.core.ParameterSource.DEFAULT, None):
            out[key] = ctx.params[name]
    return out


def split_list(value: str | None) -> list[str] | None:
    """'a,b , c' -> ['a', 'b', 'c']; None/'' -> None."""
    if not value:
        return None
    return [v.strip() for v in value.split(",") if v.strip()]


def root_option(dataset: str, help: str) -> Callable:
    """`--root DIR`, defaulting to the dataset's catalogued place (see `fbench assets`)."""
    return click.option("--root", type=click.Path(file_okay=False, path_type=Path), default=None,
                        help=f"{help} Default: the configured {dataset} root (`fbench assets` lists it).")


def dataset_root(dataset: str, explicit: Path | None) -> Path:
    """--root, else the catalogued root; a one-line error saying where fbench looked otherwise."""
    from fbench.assets import DatasetRootError, get_dataset

    try:
        return get_dataset(dataset).root(explicit)
    except KeyError:  # a third-party pipeline without a catalogue entry
        if explicit is None:
            raise click.ClickException(f"{dataset}: pass --root DIR (no catalogued location for this dataset)") from None
        if not Path(explicit).is_dir():
            raise click.ClickException(f"{dataset}: --root {explicit} is not a folder") from None
        return Path(explicit)
    except DatasetRootError as exc:
        raise click.ClickException(str(exc)) from None


def user_errors(*errors: type[BaseException]) -> Callable[[Callable], Callable]:
    """Turn the expected errors of a command (bad input the user can fix) into one-line click
    errors instead of tracebacks."""
    from fbench.config import ConfigError

    caught = (ConfigError, FileNotFoundError, NotADirectoryError, *errors)

    def decorate(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return fn(*args, **kwargs)
            except click.ClickException:
                raise
            except caught as exc:
                raise click.ClickException(str(exc)) from exc
        return wrapper
    return decorate
