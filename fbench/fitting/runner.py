"""What the fitting pipelines (``pipelines.famos``, ``pipelines.bp4d``) share: plugin object,
command-line options, frame selection, residual statistics and the closing summary."""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import click
import numpy as np

from fbench.fitting.config import ConfigError, load_config
from fbench.fitting.store import FitStore, UnsafeNameError, export_templates, format_summary, read_fits

log = logging.getLogger("fbench.fitting")


@dataclass(frozen=True)
class PipelinePlugin:
    """An entry of the ``fbench.pipelines`` registry (see fbench/registry.py)."""

    name: str
    summary: str
    stage: str
    command: click.Command


def split_list(value: str | None) -> list[str] | None:
    """'a,b , c' -> ['a', 'b', 'c']; None/'' -> None."""
    if not value:
        return None
    return [v.strip() for v in value.split(",") if v.strip()]


def fit_options(f: Callable) -> Callable:
    """Options every fit command has (root and dataset-specific ones are added by the command)."""
    options = [
        click.option("--out", "out", type=click.Path(file_okay=False, path_type=Path), required=True,
                     help="Output directory (fits.h5, summary.csv, failures.jsonl); reruns resume here."),
        click.option("--subjects", default=None, help="Comma-separated subjects to fit (default: all found)."),
        click.option("--stride", default=None, type=click.IntRange(min=1),
                     help="Fit every STRIDE-th frame of each sequence (by position in the sorted frame list)."),
        click.option("--export-templates", "export_dir", type=click.Path(file_okay=False, path_type=Path),
                     default=None, help="Also write SMIRK expression templates DIR/<subject>/<sequence>/<frame>.npy "
                                        "(np.save'd dicts, as SMIRK loads them; in fbench read them only with "
                                        "fbench.safe_pickle.safe_load_npy)."),
        click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
                     help="YAML file with fitting settings (see the pipeline module for the keys)."),
        click.option("-o", "--set", "overrides", multiple=True, metavar="KEY=VALUE",
                     help="Override a config value, e.g. -o registration.batch_size=32 (repeatable)."),
        click.option("--flame", "flame", type=click.Path(file_okay=False, path_type=Path), default=None,
                     help="FLAME directory (default: $FBENCH_FLAME_DIR, a FLAME under $FBENCH_HOME, "
                          "else the synthetic model)."),
        click.option("--overwrite", is_flag=True, help="Refit sequences that are already finished in --out."),
        click.option("--no-progress", is_flag=True, help="No progress bar."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def load_pipeline_config(cls: type, path: Path | None, overrides: tuple[str, ...]) -> Any:
    try:
        return load_config(cls, path, list(overrides))
    except ConfigError as exc:
        raise click.BadParameter(str(exc), param_hint="--config / -o") from exc


def load_flame_for_fitting(flame: Path | None):
    """float64 FLAME, announced on stderr (synthetic results are never FLAME2020's)."""
    import torch

    from fbench.cli import load_flame_announced

    return load_flame_announced(flame, n_shape=300, n_exp=100, dtype=torch.float64)


def strided(items: list, stride: int) -> list:
    return items[::max(1, stride)]


def residual_stats(distances: np.ndarray) -> tuple[float, float, float]:
    """(mean, median, max) of a set of distances; NaN when empty."""
    if distances.size == 0:
        return float("nan"), float("nan"), float("nan")
    return float(distances.mean()), float(np.median(distances)), float(distances.max())


def finish(store: FitStore, export_dir: Path | None) -> None:
    """Consolidate fits.h5, print the summary table, export templates when asked."""
    path = store.consolidate()
    rows = store.summary_rows()
    click.echo(format_summary(rows))
    n_failed = len(store.failures)
    click.echo(f"fits: {path}" + (f"; {n_failed} frame(s) failed, see {store.out / 'failures.jsonl'}"
                                  if n_failed else ""))
    if n_failed and not sum(r.get("frames", 0) for r in rows):
        raise click.ClickException(f"every frame failed ({n_failed}), e.g. {store.failures[0].get('reason')}; "
                                   f"see {store.out / 'failures.jsonl'}")
    if export_dir is not None:
        fits, _, _ = read_fits(path)
        count = export_templates(fits, export_dir)
        click.echo(f"SMIRK templates: {count} file(s) in {export_dir}")


class DatasetError(ValueError):
    """The dataset root does not look like the dataset (the message says what was expected)."""


def select_existing(requested: list[str] | None, available: list[str], what: str, where: Path | str) -> list[str]:
    """`available` when nothing is requested, else the requested names that exist (a warning for
    each that does not); DatasetError listing what exists when none of them does."""
    if not requested:
        return list(available)
    chosen = [name for name in requested if name in available]
    if not chosen:
        raise DatasetError(f"{where}: no {what} {', '.join(requested)}; found {len(available)}: "
                           f"{', '.join(available) if available else '(none)'}")
    for name in requested:
        if name not in available:
            log.warning("%s %s not found under %s", what, name, where)
    return chosen


def guarded(fn: Callable) -> Callable:
    """Turn expected user-facing errors into click errors (no traceback)."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from fbench.faults import describe_os_error
        from fbench.fitting.store import claimed_output
        from fbench.lock import LockHeldError

        out = Path(kwargs["out"])
        try:
            with claimed_output(out):
                return fn(*args, **kwargs)
        except (DatasetError, UnsafeNameError, ConfigError, FileNotFoundError, NotADirectoryError,
                LockHeldError) as exc:
            raise click.ClickException(str(exc)) from exc
        except OSError as exc:  # a read-only or full --out
            raise click.ClickException(describe_os_error(exc, out)) from exc
    return wrapper
