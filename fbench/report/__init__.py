"""Result tables (Markdown, CSV, LaTeX) and plots (cumulative error curve, confusion matrix).

A `Table` holds method rows and, apart, published reference rows; the writers never mix
them: reference rows get their own section (Markdown/CSV) or a separated block (LaTeX), and
a table of synthetic results says so in its title, because published numbers are not
comparable with runs on synthetic data.

`gather_results(folder)` reads every `metrics.json` under `folder` (as written by the
benchmarks: `results/<benchmark>/<method>/metrics.json`, with `reference.json` beside) into
one table per benchmark, methods as rows.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["Table", "cumulative_curve", "gather_results", "plot_confusion_matrix", "plot_cumulative_error",
           "save_figure", "to_csv", "to_latex", "to_markdown", "write_tables"]


@dataclass
class Table:
    """Rows of scalar results. `rows` and `reference` are lists of {column: value}; the
    first column, `label`, names the row (a method, or a published method)."""

    title: str
    columns: list[str]
    rows: list[dict[str, Any]] = field(default_factory=list)
    reference: list[dict[str, Any]] = field(default_factory=list)
    reference_title: str = "Published (reference only)"
    label: str = "method"
    note: str = ""


def _fmt(value: Any, digits: int) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return "nan" if math.isnan(value) else f"{float(value):.{digits}f}"
    return str(value)


def _cells(table: Table, rows: Sequence[Mapping[str, Any]], digits: int) -> list[list[str]]:
    return [[_fmt(r.get(table.label), digits)] + [_fmt(r.get(c), digits) for c in table.columns] for r in rows]


def to_markdown(table: Table, digits: int = 3) -> str:
    def block(rows: Sequence[Mapping[str, Any]]) -> list[str]:
        head = [table.label] + table.columns
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(r) + " |" for r in _cells(table, rows, digits)]
        return lines

    out = [f"### {table.title}", ""]
    if table.note:
        out += [table.note, ""]
    out += block(table.rows) if table.rows else ["(no results)"]
    if table.reference:
        out += ["", f"**{table.reference_title}**", ""] + block(table.reference)
    return "\n".join(out) + "\n"


def to_csv(table: Table, digits: int = 6) -> str:
    """One CSV: a `kind` column says `result` or `reference` (never averaged together)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["kind", table.label] + table.columns)
    for kind, rows in (("result", table.rows), ("reference", table.reference)):
        for cells in _cells(table, rows, digits):
            writer.writerow([kind] + cells)
    return buffer.getvalue()


def _tex(text: str) -> str:
    for a, b in (("\\", r"\textbackslash{}"), ("_", r"\_"), ("%", r"\%"), ("&", r"\&"), ("#", r"\#")):
        text = text.replace(a, b)
    return text


def to_latex(table: Table, digits: int = 3) -> str:
    """A booktabs tabular; reference rows below a \\midrule, under their own caption line."""
    n = len(table.columns) + 1
    head = " & ".join(_tex(c) for c in [table.label] + table.columns) + r" \\"
    lines = [f"% {_tex(table.title)}", r"\begin{tabular}{l" + "r" * (n - 1) + "}", r"\toprule", head, r"\midrule"]
    lines += [" & ".join(_tex(c) for c in r) + r" \\" for r in _cells(table, table.rows, digits)]
    if table.reference:
        lines += [r"\midrule", rf"\multicolumn{{{n}}}{{l}}{{\emph{{{_tex(table.reference_title)}}}}} \\"]
        lines += [" & ".join(_tex(c) for c in r) + r" \\" for r in _cells(table, table.reference, digits)]
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


def write_tables(tables: Sequence[Table], out: str | Path) -> dict[str, Path]:
    """`out` (.md) plus `<stem>.csv` (each table under a `# title` line) and `<stem>.tex` beside."""
    from fbench.io import atomic_write_text

    out = Path(out)
    md = "\n".join(to_markdown(t) for t in tables)
    paths = {"markdown": out, "csv": out.with_suffix(".csv"), "latex": out.with_suffix(".tex")}
    atomic_write_text(paths["markdown"], md)
    # One header per table in the CSV (columns differ between benchmarks).
    csv_text = "\n\n".join(f"# {t.title}\n" + to_csv(t) for t in tables)
    atomic_write_text(paths["csv"], csv_text)
    atomic_write_text(paths["latex"], "\n".join(to_latex(t) for t in tables))
    return paths


def _scalar(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def gather_results(folder: str | Path) -> list[Table]:
    """One `Table` per benchmark from every metrics.json under `folder`.

    A metrics.json must hold `benchmark` and `method`. The columns are the `columns` listed in a
    `reference.json` beside any of that benchmark's results (`{"title": ..., "columns": [...],
    "rows": [{"method": ..., col: value}]}`, written by the benchmark), else every scalar
    top-level value (first-seen order); nested values (per-subject, per-class) are left to the
    per-benchmark report; a missing or null value is a blank cell. A benchmark with any
    synthetic run gets "(synthetic data)" in its title.
    """
    folder = Path(folder)
    found: dict[str, dict[str, Any]] = {}
    for path in sorted(folder.rglob("metrics.json")):
        try:
            metrics = json.loads(path.read_text())
            bench, method = metrics["benchmark"], metrics["method"]
        except (OSError, ValueError, KeyError, TypeError):
            continue  # not a benchmark result
        entry = found.setdefault(bench, {"columns": [], "rows": [], "reference": None, "synthetic": False})
        for k, v in metrics.items():
            if _scalar(v) and k not in entry["columns"]:
                entry["columns"].append(k)
        entry["rows"].append({"method": str(method), **{k: v for k, v in metrics.items() if _scalar(v) or v is None}})
        entry["synthetic"] |= bool(metrics.get("synthetic", False))
        ref = path.with_name("reference.json")
        if entry["reference"] is None and ref.is_file():
            entry["reference"] = json.loads(ref.read_text())
    tables = []
    for bench in sorted(found):
        entry = found[bench]
        ref = entry["reference"] or {"rows": []}
        title = bench + (" (synthetic data)" if entry["synthetic"] else "")
        note = ("Results on synthetic data: the published rows are listed apart and are not comparable."
                if entry["synthetic"] else "")
        tables.append(Table(title=title, columns=list(ref.get("columns") or entry["columns"]), rows=sorted(entry["rows"], key=lambda r: r["method"]),
                            reference=list(ref.get("rows", [])), reference_title=ref.get("title", "Published (reference only)"),
                            note=note))
    return tables


def save_figure(fig, path: Path) -> Path:
    """Write a matplotlib figure as PNG atomically (fbench.io) and close it."""
    import matplotlib.pyplot as plt

    from fbench.io import atomic_path

    try:
        with atomic_path(path) as tmp:  # the temporary keeps the .png suffix matplotlib reads
            fig.savefig(tmp, dpi=120, bbox_inches="tight")
        return Path(path)
    finally:
        plt.close(fig)


def cumulative_curve(distances: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Fraction of distances <= each threshold (NoW's cumulative error curve)."""
    d = np.sort(np.asarray(distances, dtype=np.float64).ravel())
    return np.searchsorted(d, np.asarray(thresholds, dtype=np.float64), side="right") / max(d.size, 1)


def plot_cumulative_error(curves: Mapping[str, tuple[np.ndarray, np.ndarray]], path: str | Path,
                          xlabel: str = "scan-to-mesh error (mm)", title: str = "") -> Path:
    """One line per method: `curves[name] = (thresholds, fraction <= threshold)`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4))
    for name, (x, y) in curves.items():
        ax.plot(x, 100 * np.asarray(y), label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("points within (%)")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    if title:
        ax.set_title(title)
    return save_figure(fig, Path(path))


def plot_confusion_matrix(matrix: np.ndarray, class_names: Sequence[str], path: str | Path, title: str = "") -> Path:
    """Row-normalised confusion matrix (rows = true class) with the counts written in."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = np.asarray(matrix, dtype=np.float64)
    rates = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(1 + 0.7 * len(class_names), 0.8 + 0.6 * len(class_names)))
    im = ax.imshow(rates, vmin=0, vmax=1, cmap="Blues")
    ax.set_xticks(range(len(class_names)), class_names, rotation=45, ha="right")
    ax.set_yticks(range(len(class_names)), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(j, i, f"{rates[i, j]:.2f}\n({int(cm[i, j])})", ha="center", va="center", fontsize=6,
                    color="white" if rates[i, j] > 0.5 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046)
    if title:
        ax.set_title(title)
    return save_figure(fig, Path(path))
