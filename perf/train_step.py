"""One SMIRK core training step (methods/smirk/task.py) against a bare encoder + generator
forward/backward on the same batch.

Setup (deterministic): the official sizes (encoder, generator 32 features / 5 residual
blocks), the synthetic FLAME (or --flame), a batch of B 224 x 224 images: noise images with
the face of a random FLAME head rendered into them, its MediaPipe points as landmarks and
face-hull mask. The SMIRK step is `SmirkTask.training_step`: first path (encoder, FLAME,
rendering, masking, generator, losses, one backward, both optimisers) then the cycle path
(augmentation, two renders, cycle masking, generator, re-encoding, backward, clip, step). Steps
alternate freezing, so an even number of steps is timed. The bare step is one encoder
forward and one generator forward on (image, image), a summed loss, one backward, one Adam
step of each: the network cost without FLAME, rendering, masking or the cycle path.

The network floor of the SMIRK step is also timed: the network calls that the recipe itself
makes, nothing else (no FLAME, rendering, masking or augmentation). First path: encoder and
generator forward, the generator's three shading channels carrying a gradient (the rendered
shading does, to the encoder), one backward, both Adam steps; cycle path with the same
freezing as the step (no gradient, eval mode): generator forward, encoder forward on its
output, the cycle loss's terms, one backward, the generator's clipping and the unfrozen
side's Adam step. The cycle path doubles the forwards of both networks, so no
implementation of the recipe gets below `floor=<floor / bare>`; the distance from the floor
is what rendering, masking and the rest of the step cost.

Correctness first: a SMIRK step must give finite losses and move the expression encoder
and the generator; otherwise the script exits 1 without a ratio. Printed: time per step
of each (the median over consecutive even + odd step pairs), the share of the SMIRK step
spent rendering (`SmirkTask.render`, FLAME included) and masking (`masked_image`,
`cycle_masked_image`), `floor=<network floor / bare>` and last `ratio=<smirk / bare>`.

`--clock cpu` times with the process's CPU time instead of the wall clock: with one thread
(OMP_NUM_THREADS=1) on a CPU shared with other jobs it measures the step's own work, which
the wall clock does not (it needs the CPU device; a GPU's work is not the process's CPU time).

Run: `python perf/train_step.py [--batch 4] [--repeats 6] [--device auto] [--clock wall|cpu]`.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_batch(task, b: int, device: torch.device) -> dict:
    """Noise images with a random FLAME face rendered in, its landmarks and hull masks."""
    from fbench.flame.params import FlameParams
    from fbench.render.smirk import render_flame
    from methods.smirk.masking import hull_masks

    g = torch.Generator().manual_seed(0)
    params = FlameParams.zeros(b, task.config.n_shape, task.config.n_exp)
    params.expression = torch.randn(b, task.config.n_exp, generator=g)
    params.shape = torch.randn(b, task.config.n_shape, generator=g) * 0.5
    with torch.no_grad():
        out = render_flame(task.flame, params.to(device=device), task.renderer)
    img = torch.rand(b, 3, 224, 224, generator=g).to(device) * 0.5
    face = out["rendered_img"]
    img = torch.where(face > 0, face, img)
    mp = out["landmarks_mp"]
    fan = out["landmarks_fan"]
    return {"img": img, "mask": hull_masks((mp + 1) / 2 * 224, 224).to(device), "landmarks_mp": mp,
            "flag_landmarks_mp": torch.ones(b, dtype=torch.bool, device=device), "landmarks_fan": fan,
            "flag_landmarks_fan": torch.ones(b, dtype=torch.bool, device=device)}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=6, help="timed steps of each (even)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--flame", default=None)
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                    help="wall clock, or the process's CPU time (CPU device only)")
    args = ap.parse_args()
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    if args.repeats < 2 or args.repeats % 2:
        ap.error(f"--repeats must be even and at least 2 (both halves of the alternation), got {args.repeats}")
    if args.clock == "cpu" and device.type != "cpu":
        ap.error(f"--clock cpu times CPU work only; the device is {device}")
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    torch.manual_seed(0)

    from fbench.train import RunContext
    from methods.smirk import masking
    from methods.smirk.plugin import SmirkConfig, SmirkTrainConfig
    from methods.smirk.task import SmirkTask

    task = SmirkTask(SmirkConfig(train=SmirkTrainConfig(batch_size=args.batch)))
    for m in task.modules().values():
        m.to(device)
    with tempfile.TemporaryDirectory() as tmp:
        task.setup(RunContext(out=Path(tmp), device=device, seed=0, flame=Path(args.flame) if args.flame else None))
    task.configure_optimizers()
    batch = make_batch(task, args.batch, device)

    # time spent in rendering and masking inside the SMIRK step
    spent = {"render": 0.0, "masking": 0.0}

    def timed(fn, key):
        def wrapper(*a, **k):
            sync(device)
            t0 = clock()
            try:
                return fn(*a, **k)
            finally:
                sync(device)
                spent[key] += clock() - t0
        return wrapper

    task.render = timed(task.render, "render")
    masking.masked_image = timed(masking.masked_image, "masking")
    masking.cycle_masked_image = timed(masking.cycle_masked_image, "masking")

    # correctness first
    before_e = [p.detach().clone() for p in task.encoder.expression_encoder.parameters()]
    before_g = [p.detach().clone() for p in task.generator.parameters()]
    logs = task.training_step(batch, 0)
    logs.update(task.training_step(batch, 1))
    moved_e = any(not torch.equal(a, p) for a, p in zip(before_e, task.encoder.expression_encoder.parameters()))
    moved_g = any(not torch.equal(a, p) for a, p in zip(before_g, task.generator.parameters()))
    import math

    if not all(math.isfinite(v) for v in logs.values()) or not (moved_e and moved_g):
        print(f"FAILED: losses {logs}, expression encoder moved {moved_e}, generator moved {moved_g}")
        return 1

    enc, gen = task.encoder, task.generator
    bare_opts = [torch.optim.Adam(enc.parameters(), lr=1e-4), torch.optim.Adam(gen.parameters(), lr=1e-4)]

    def bare_step() -> None:
        out = enc(batch["img"])
        recon = gen(torch.cat([batch["img"], batch["img"]], 1))
        loss = sum(v.float().pow(2).mean() for v in out.values()) + F.l1_loss(recon, batch["img"])
        for o in bare_opts:
            o.zero_grad()
        loss.backward()
        for o in bare_opts:
            o.step()

    floor_opts = [torch.optim.Adam(task.encoder_opt.param_groups[0]["params"], lr=1e-4),
                  torch.optim.Adam(gen.parameters(), lr=1e-4, betas=(0.5, 0.999))]
    img = batch["img"]
    shading = img.detach().clone().requires_grad_(True)  # stands for the rendered shading

    def floor_step(step: int) -> None:
        out = enc(img)
        recon = gen(torch.cat([shading, img], 1))
        loss = sum(v.float().pow(2).mean() for v in out.values()) + F.l1_loss(recon, img)
        for o in floor_opts:
            o.zero_grad()
        loss.backward()
        for o in floor_opts:
            o.step()
        freeze_enc, freeze_gen = step % 2 == 0, step % 2 == 1  # as SmirkTask.training_step
        trainable = {p: p.requires_grad for p in list(enc.parameters()) + list(gen.parameters())}
        frozen = enc if freeze_enc else gen
        for p in frozen.parameters():
            p.requires_grad_(False)
        frozen.eval()  # frozen as the official freeze_module: no gradient, eval mode
        try:
            recon = gen(torch.cat([img, img], 1))
            feats = enc(recon.detach() if freeze_gen else recon)
            keys = ["expression_params", "jaw_params", "eyelid_params"] + ([] if freeze_gen else ["shape_params"])
            loss = sum(F.mse_loss(feats[k], out[k].detach()) for k in keys)
            for o in floor_opts:
                o.zero_grad()
            loss.backward()
            if not freeze_gen:
                torch.nn.utils.clip_grad_norm_(gen.parameters(), 0.1)
            floor_opts[1 if freeze_enc else 0].step()
        finally:
            for p, flag in trainable.items():
                p.requires_grad_(flag)
            frozen.train()

    bare_step()
    floor_step(0)
    smirk_t, bare_t, floor_t = [], [], []
    spent.update(render=0.0, masking=0.0)
    for i in range(args.repeats):  # interleaved, so drift favours none
        sync(device)
        t0 = clock()
        task.training_step(batch, 2 + i)
        sync(device)
        smirk_t.append(clock() - t0)
        t0 = clock()
        floor_step(2 + i)
        sync(device)
        floor_t.append(clock() - t0)
        t0 = clock()
        bare_step()
        sync(device)
        bare_t.append(clock() - t0)
    def per_step(times: list[float]) -> float:
        # median over (even, odd) pairs: the two halves of the alternation cost differently (the
        # generator's backward in the cycle path on even steps only), and the median of single
        # steps would fall between the two groups wherever their spreads put it
        return statistics.median((times[i] + times[i + 1]) / 2 for i in range(0, len(times) - 1, 2))

    s, b, f = per_step(smirk_t), per_step(bare_t), per_step(floor_t)
    total = sum(smirk_t)
    print(f"device {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}), "
          f"batch {args.batch}, {args.repeats} steps each, {torch.get_num_threads()} thread(s), {args.clock} clock")
    print(f"smirk core step: {s * 1000:.1f} ms (median over step pairs); its network floor: {f * 1000:.1f} ms; "
          f"bare encoder+generator step: {b * 1000:.1f} ms")
    print(f"share of the smirk step: rendering {spent['render'] / total:.1%}, masking {spent['masking'] / total:.1%}; "
          f"smirk step / its network floor {s / f:.3f}")
    print(f"floor={f / b:.3f}")
    print(f"ratio={s / b:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
