"""`fbench fit-flame <dataset>`: the one command builder the fit pipelines use.

A fit pipeline module defines `command()` returning `fit_command(FitSpec(...))`: its config
dataclass, its fit function and the option that selects its sequences (FaMoS) or tasks (BP4D).
Settings: the config's defaults < `--config FILE` < `-o key=value` < typed options; the resolved
config is written to `OUT/config.yaml` beside `fits.h5`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import click

from fbench.cli.options import (CONTEXT, config_options, dataset_root, flame_option, load_command_config,
                                load_flame_announced, split_list, user_errors)


@dataclass(frozen=True)
class FitSpec:
    """What differs between fit pipelines."""

    name: str  # dataset (catalogued root, default output fits/<name>)
    help: str  # the command's --help (with examples)
    root_help: str
    config: type  # dataclass with `stride` and the `selection` field
    fit: Callable[..., Any]  # fit(root, out, flame, config, subjects=, overwrite=, progress=) -> FitStore
    selection: str  # option and config field selecting sequences/tasks, e.g. "sequences"
    selection_help: str
    # the pipeline's own options (click decorators); their values reach `fit` as keyword arguments
    options: tuple[Callable, ...] = ()
    report: Callable[..., str | None] | None = None  # report(store, **option values) -> a closing line


def finish(store, export_dir: Path | None) -> None:
    """Consolidate fits.h5, print the summary table, export templates when asked."""
    from fbench.fitting.store import export_templates, format_summary, read_fits

    path = store.consolidate()
    click.echo(format_summary(store.summary_rows()))
    n_failed = len(store.failures)
    click.echo(f"fits: {path}" + (f"; {n_failed} frame(s) failed, see {store.out / 'failures.jsonl'}"
                                  if n_failed else ""))
    if n_failed and not sum(r.get("frames", 0) for r in store.summary_rows()):
        raise click.ClickException(f"every frame failed ({n_failed}), e.g. {store.failures[0].get('reason')}; "
                                   f"see {store.out / 'failures.jsonl'}")
    if export_dir is not None:
        fits, _, _ = read_fits(path)
        count = export_templates(fits, export_dir)
        click.echo(f"SMIRK templates: {count} file(s) in {export_dir}")


def fit_command(spec: FitSpec) -> click.Command:
    from fbench.fitting.runner import DatasetError
    from fbench.fitting.store import UnsafeNameError
    from fbench.lock import LockHeldError

    @click.pass_context
    @user_errors(DatasetError, UnsafeNameError, LockHeldError)
    def command(ctx: click.Context, root: Path | None, out: Path | None, subjects: str | None, stride: int | None,
                export_dir: Path | None, config_path: Path | None, overrides: tuple[str, ...], flame: Path | None,
                overwrite: bool, no_progress: bool, **extra: Any) -> None:
        import torch

        from fbench.config import save_config
        from fbench.faults import describe_os_error
        from fbench.fitting.store import claimed_output

        out = out if out is not None else Path("fits") / spec.name
        explicit: dict[str, Any] = {}
        if stride is not None:
            explicit["stride"] = stride
        chosen = split_list(extra.pop(spec.selection))
        if chosen:
            explicit[spec.selection] = chosen
        root = dataset_root(spec.name, root)  # before anything is written
        try:
            with claimed_output(out):  # one run per --out, first; removes a killed run's temporaries
                config = load_command_config(spec.config, config_path, overrides, explicit)
                model = load_flame_announced(flame, n_exp=100, dtype=torch.float64)
                store = spec.fit(root, out, model, config, subjects=split_list(subjects), overwrite=overwrite,
                                 progress=not no_progress, **extra)
                save_config(config, out / "config.yaml")
                finish(store, export_dir)
        except OSError as exc:  # a read-only or full --out
            raise click.ClickException(describe_os_error(exc, out)) from exc
        line = spec.report(store, **extra) if spec.report else None
        if line:
            click.echo(line)

    options = [
        click.option("--root", type=click.Path(file_okay=False, path_type=Path), default=None,
                     help=f"{spec.root_help} Default: the configured {spec.name} root (`fbench assets` lists it)."),
        click.option(f"--{spec.selection}", spec.selection, default=None, help=spec.selection_help),
        *spec.options,
        click.option("--out", "out", type=click.Path(file_okay=False, path_type=Path), default=None,
                     help=f"Output directory (fits.h5, summary.csv, failures.jsonl, config.yaml) [default: "
                          f"fits/{spec.name}]; reruns resume here."),
        click.option("--subjects", default=None, help="Comma-separated subjects to fit (default: all found)."),
        click.option("--stride", default=None, type=click.IntRange(min=1),
                     help="Fit every STRIDE-th frame of each sequence (by position in the sorted frame list)."),
        click.option("--export-templates", "export_dir", type=click.Path(file_okay=False, path_type=Path),
                     default=None, help="Also write SMIRK expression templates DIR/<subject>/<sequence>/<frame>.npy "
                                        "(np.save'd dicts, as SMIRK loads them; in fbench read them only with "
                                        "fbench.safe_pickle.safe_load_npy)."),
        config_options,
        flame_option,
        click.option("--overwrite", is_flag=True, help="Refit sequences that are already finished in --out."),
        click.option("--no-progress", is_flag=True, help="No progress bar."),
    ]
    f = command
    for option in reversed(options):
        f = option(f)
    return click.command(spec.name, help=spec.help, context_settings=CONTEXT)(f)
