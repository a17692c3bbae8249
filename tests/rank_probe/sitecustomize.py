"""A probe for the torchrun test of `fbench train smirk` (tests/test_smirk_task.py): with this
folder on PYTHONPATH and $FBENCH_RANK_PROBE set to a folder, every torchrun worker ($LOCAL_RANK
set) records the sample keys of its training batches and, at exit, writes them with its final
network weights to $FBENCH_RANK_PROBE/rank<RANK>.pt, so the test can compare what each rank
trained on and ended with (the loop itself writes from rank 0 only). Nothing happens otherwise.
"""

import os

if os.environ.get("FBENCH_RANK_PROBE") and os.environ.get("LOCAL_RANK") is not None:
    import atexit

    from methods.smirk.task import SmirkTask

    _seen: dict = {"keys": [], "task": None}
    _step = SmirkTask.training_step

    def _probe(self, batch, step):
        _seen["task"] = self
        _seen["keys"].append(list(batch["key"]))
        return _step(self, batch, step)

    def _write() -> None:
        import torch

        task = _seen["task"]
        if task is None:
            return
        modules = {name: {k: v.detach().cpu().clone() for k, v in m.state_dict().items()}
                   for name, m in task.modules().items()}
        torch.save({"keys": _seen["keys"], "modules": modules},
                   os.path.join(os.environ["FBENCH_RANK_PROBE"], f"rank{os.environ['RANK']}.pt"))

    SmirkTask.training_step = _probe
    atexit.register(_write)
