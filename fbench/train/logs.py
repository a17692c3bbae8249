"""The run's metric log: `metrics.csv` (one row per logged step and phase) and `summary.json`.

`metrics.csv` is the one file fbench appends to instead of replacing (a replace per logged
step would rewrite the whole log, quadratic over a 250k-step run). Its repair is atomic:
a resumed run rewrites it through `fbench.io.atomic_write_text`, keeping only rows up to
the checkpoint's step (so a killed run's rows past its last checkpoint, and a torn last
line, are dropped and the resumed run writes them again, identically). A new metric name
also rewrites it atomically, with the wider header. `summary.json` (the latest train and
validation metrics) is replaced atomically at every write.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fbench.io import atomic_write_json, atomic_write_text

FIXED = ("step", "epoch", "phase", "time_s")


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return repr(value)  # round-trips exactly
    return str(value)


class MetricLog:
    def __init__(self, folder: Path, resume_step: int | None = None) -> None:
        self.path = Path(folder) / "metrics.csv"
        self.summary_path = Path(folder) / "summary.json"
        self.columns: list[str] = list(FIXED)
        self.rows: list[dict[str, str]] = []
        self.latest: dict[str, dict[str, Any]] = {}
        if resume_step is not None and self.path.is_file():
            self._recover(resume_step)
        else:
            self._rewrite()

    def _recover(self, step: int) -> None:
        text = self.path.read_text()
        if text and not text.endswith("\n"):  # a torn last line from a kill
            text = text[: text.rfind("\n") + 1]
        reader = csv.DictReader(io.StringIO(text))
        self.columns = list(reader.fieldnames or FIXED)
        for row in reader:
            try:
                if int(row["step"]) <= step and None not in row.values():
                    self.rows.append(row)
            except (KeyError, TypeError, ValueError):
                continue
        self._rewrite()

    def _rewrite(self) -> None:
        out = io.StringIO()
        writer = csv.DictWriter(out, self.columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.rows)
        atomic_write_text(self.path, out.getvalue())

    def write(self, step: int, epoch: int, phase: str, time_s: float, metrics: Mapping[str, float]) -> None:
        row = {"step": str(step), "epoch": str(epoch), "phase": phase, "time_s": f"{time_s:.3f}"}
        row.update({k: _fmt(float(v)) for k, v in metrics.items()})
        self.rows.append(row)
        new = [k for k in metrics if k not in self.columns]
        if new:
            self.columns += new
            self._rewrite()
        else:
            out = io.StringIO()
            csv.DictWriter(out, self.columns, lineterminator="\n").writerow(row)
            with open(self.path, "a", encoding="utf-8") as fh:
                fh.write(out.getvalue())
                fh.flush()
        self.latest[phase] = {"step": step, "epoch": epoch,
                              **{k: (float(v) if math.isfinite(float(v)) else None) for k, v in metrics.items()}}
        atomic_write_json(self.summary_path, self.latest)
