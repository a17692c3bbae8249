"""Data-parallel training over `torch.distributed`, started by `torchrun`.

Our design (not DistributedDataParallel's module wrapper): gradients are averaged over the
ranks just before each optimiser steps, by a step pre-hook on every optimiser, after the
parameters and buffers were broadcast from rank 0 once. The result per step is the
same as DDP's (every rank steps with the mean gradient), but it places no demands on the
task's forward passes: fbench's tasks call their own backward and alternate optimisers
and frozen modules within one step (SMIRK freezes the encoder or the generator on
alternate steps and runs networks without backward), which DDP's reducer refuses.
The price is no overlap of communication with the backward pass. Buffers (BatchNorm running
statistics) are broadcast once at the start and then kept per rank (DDP re-broadcasts rank 0's
before every forward); checkpoints hold rank 0's.

A task that reads gradients before stepping calls `sync_gradients(params)` first, so it sees
the mean gradient as a DDP run would; the pre-hook then leaves those gradients alone unless they
changed since (a gradient accumulated again is averaged again). Gradient clipping changes them
in place: `clip_gradients(params, max_norm)` averages, clips and keeps the clipped gradients
marked as averaged (a clip after `sync_gradients` alone would make the hook all-reduce them a
second time: the same values on every rank, but a wasted exchange).
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    created: bool = False  # this process group was started by fbench (and is closed by it)

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env_world() -> tuple[int, int, int]:
    """(rank, world size, local rank) that torchrun put in the environment; (0, 1, 0) otherwise."""
    return (int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1")),
            int(os.environ.get("LOCAL_RANK", "0")))


def init_distributed(device: torch.device) -> DistInfo:
    """Join the process group torchrun describes (gloo on CPU, NCCL on CUDA); a no-op for one process."""
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
    rank, world, local = env_world()
    if world <= 1:
        return DistInfo(0, 1, 0)
    # torch._dynamo (imported on first use by torch.optim, i.e. by the task's optimisers) keeps ten
    # references to a process group that is up when it is imported: the group then outlives
    # destroy_process_group, its gloo threads running until interpreter exit, where its destruction
    # sometimes aborts a finished worker ("terminate called without an active exception", exit
    # -6; 1 of 24 two-process toy runs). Imported before the group exists, it holds none.
    import torch._dynamo  # noqa: F401

    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, init_method="env://", rank=rank, world_size=world,
                            device_id=device if device.type == "cuda" else None)
    return DistInfo(rank, world, local, created=True)


def close_distributed(info: DistInfo) -> None:
    if info.created and dist.is_initialized():
        dist.destroy_process_group()


def process_group_up() -> bool:
    return dist.is_available() and dist.is_initialized()


def shutdown() -> None:
    """Close the process group, if one is up (after runs that kept it open)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def broadcast_state(modules: Iterable[torch.nn.Module]) -> None:
    """Every rank starts from rank 0's parameters and buffers (as DDP does at construction)."""
    if not active():
        return
    with torch.no_grad():
        for module in modules:
            for tensor in [*module.parameters(), *module.buffers()]:
                dist.broadcast(tensor.data, src=0)


# id(param) -> (weak reference to its averaged gradient tensor, that tensor's version then): a
# gradient is averaged again only when it is a new tensor or was changed in place since
_SYNCED: dict[int, tuple[weakref.ref, int]] = {}


def _flat_allreduce_mean(grads: list[Tensor]) -> None:
    """Average gradients over the ranks, one flat all-reduce per dtype and device."""
    world = dist.get_world_size()
    groups: dict[tuple[Any, Any], list[Tensor]] = {}
    for g in grads:
        groups.setdefault((g.dtype, g.device), []).append(g)
    for group in groups.values():
        flat = torch.cat([g.reshape(-1) for g in group])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat /= world
        offset = 0
        for g in group:
            g.copy_(flat[offset:offset + g.numel()].view_as(g))
            offset += g.numel()


def sync_gradients(params: Iterable[Tensor]) -> None:
    """Average the gradients of `params` over the ranks now (each once per backward); a
    no-op in a single process. Every rank must call it with the same parameters."""
    if not active():
        return
    todo = []
    for p in params:
        if p.grad is None:
            continue
        seen = _SYNCED.get(id(p))
        if seen is None or seen[0]() is not p.grad or seen[1] != p.grad._version:
            todo.append(p)
    if not todo:
        return
    with torch.no_grad():
        _flat_allreduce_mean([p.grad for p in todo])
    _mark_synced(todo)


def _mark_synced(params: Iterable[Tensor]) -> None:
    for p in params:
        if p.grad is not None:
            _SYNCED[id(p)] = (weakref.ref(p.grad), p.grad._version)


def clip_gradients(params: Iterable[Tensor], max_norm: float) -> Tensor:
    """`torch.nn.utils.clip_grad_norm_` of the gradients averaged over the ranks (as under DDP);
    the clipped gradients count as averaged, so the optimiser's pre-step hook leaves them. Returns
    the total norm before clipping. Every rank must call it with the same parameters."""
    params = [p for p in params if p.grad is not None]
    sync_gradients(params)
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
    if active():
        _mark_synced(params)
    return norm


def average_gradients_before_step(optimizer: torch.optim.Optimizer) -> Any:
    """Install the pre-step hook that averages this optimiser's gradients over the ranks."""
    def hook(opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        sync_gradients(p for group in opt.param_groups for p in group["params"])
    return optimizer.register_step_pre_hook(hook)


def all_gather_objects(obj: Any) -> list[Any]:
    """[obj of rank 0, obj of rank 1, ...] (just [obj] in a single process)."""
    if not active():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def mean_over_ranks(sums: dict[str, float], count: float) -> dict[str, float]:
    """Means of per-rank sums weighted by per-rank counts (validation metrics)."""
    gathered = all_gather_objects((sums, count))
    total = sum(c for _, c in gathered)
    keys = sorted(set().union(*(s for s, _ in gathered)))
    return {k: sum(s.get(k, 0.0) for s, _ in gathered) / max(total, 1e-12) for k in keys}


def barrier() -> None:
    if active():
        dist.barrier()
