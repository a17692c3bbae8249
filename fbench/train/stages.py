"""Runs of several training stages (`fbench train <method> --phase both`, `fbench.plugins.TrainStages`).

Layout: RUN/<stage>/ is a normal run folder for each stage, in order, and RUN/stages.json
records the stages, the first stage's `--init` and which stages finished:
`{"stages": ["pretrain", "core"], "init": "", "done": ["pretrain"]}`. A later stage starts from
the network weights of the previous stage's `checkpoints/last.pt` (the loop's `init`: fresh
optimisers, step 0, modules matched by name). Resuming skips the finished stages, continues an
unfinished one from its own checkpoint and starts one without a checkpoint afresh.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fbench.io import atomic_write_json, read_json

STAGES_FILE = "stages.json"


@dataclass(frozen=True)
class StagePlan:
    """What to do for one stage of a staged run."""

    name: str
    index: int  # 0-based position among the stages
    out: Path  # RUN/<name>
    done: bool  # finished in an earlier invocation: skip
    resume: bool  # continue from out/checkpoints/last.pt
    init: Path | None  # start from these weights (the previous stage's last checkpoint; the first: --init)
    previous: Path | None  # the previous stage's folder

    def resume_config(self) -> Path | None:
        """The config a resumed invocation starts from: this stage's config.yaml, else (a stage
        not begun yet) the previous stage's, whose settings every stage shares; None if neither."""
        for folder in (self.out, self.previous):
            if folder is not None and (folder / "config.yaml").is_file():
                return folder / "config.yaml"
        return None


def staged_record(out: Path) -> dict | None:
    """RUN/stages.json, or None when RUN is not a staged run."""
    path = Path(out) / STAGES_FILE
    if not path.is_file():
        return None
    record = read_json(path)
    if not isinstance(record, dict) or not isinstance(record.get("stages"), list) \
            or not isinstance(record.get("done"), list):
        raise ValueError(f"{path}: not a staged-run record (expected stages and done lists)")
    return record


def plan_stages(out: Path, names: tuple[str, ...], resume: bool, init: Path | None,
                write: bool = True) -> list[StagePlan]:
    """The stages of run `out` in order. A new run writes RUN/stages.json (no stage done; `write`
    False: only rank 0 of a torchrun writes); `resume` reads it, and the stage names must be the
    recorded ones."""
    out = Path(out)
    if resume:
        record = staged_record(out)
        if record is None:
            raise FileNotFoundError(f"{out / STAGES_FILE}: no such file, so {out} is not a staged run to resume "
                                    "(a run of all stages writes it)")
        if tuple(record["stages"]) != tuple(names):
            raise ValueError(f"{out / STAGES_FILE}: stages {record['stages']} differ from this method's {list(names)}")
        init = Path(record["init"]) if record.get("init") else None
    else:
        record = {"stages": list(names), "init": str(init or ""), "done": []}
        if write:
            atomic_write_json(out / STAGES_FILE, record)
    plans = []
    for i, name in enumerate(names):
        stage_out = out / name
        checkpoint = stage_out / "checkpoints" / "last.pt"
        cont = resume and checkpoint.is_file()
        previous = out / names[i - 1] if i else None
        start = (previous / "checkpoints" / "last.pt") if previous is not None else init
        plans.append(StagePlan(name=name, index=i, out=stage_out, done=name in record["done"], resume=cont,
                               init=None if cont else start, previous=previous))
    return plans


def mark_stage_done(out: Path, name: str) -> None:
    """Record in RUN/stages.json that stage `name` finished."""
    record = staged_record(out)
    if record is None:
        raise FileNotFoundError(f"{Path(out) / STAGES_FILE}: no such file")
    if name not in record["done"]:
        record["done"].append(name)
    atomic_write_json(Path(out) / STAGES_FILE, record)
