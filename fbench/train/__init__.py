"""The thin training loop every trainer shares (`fbench train <method>`): see `loop.py`.

A method supplies a `fbench.plugins.TrainingTask` (`TaskBase` gives the optional parts);
`train(make_task, LoopConfig(...), out)` runs it: seeding, devices, schedules, validation,
logs (`metrics.csv`, `summary.json`), PNG grids (`images/`), atomic checkpoints
(`checkpoints/last.pt`) with exact `resume`, and data-parallel runs under torchrun.
"""

from fbench.train.distributed import sync_gradients
from fbench.train.loop import (
    CHECKPOINT_KIND,
    LoopConfig,
    RunContext,
    TaskBase,
    TrainResult,
    read_train_checkpoint,
    reset_optimizer_state,
    seed_everything,
    train,
)

__all__ = ["CHECKPOINT_KIND", "LoopConfig", "RunContext", "TaskBase", "TrainResult", "read_train_checkpoint",
           "reset_optimizer_state", "seed_everything", "sync_gradients", "train"]
