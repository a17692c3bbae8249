"""FIELDS' L_3D-GT ablation on the synthetic default, end to end from the command line.

The proof of issue #13: on synthetic BP4D-style images with known FLAME parameters, FIELDS after
training has a lower expression-driven vertex error than the same TEASER base trained for the
same steps without L_3D-GT (`-o train.losses.gt3d=false`, the ablation switch); on synthetic
AffectNet the emotion head beats chance. Every step is an `fbench` command:

1. `fbench synth ffhq|affectnet|bp4d` (SYNTH_SEEDS) and `fbench synth bp4d` (HELD_OUT_SEED:
   other subjects, other expressions);
2. `fbench fit-flame bp4d` on the training BP4D scans, then `fbench prep bp4d --fits` (the 2D
   frames joined to their fits), `fbench prep ffhq|affectnet --landmarks detect`;
3. `fbench train fields` twice with the same options, seed and steps: FIELDS, and the ablation
   without L_3D-GT;
4. the held-out BP4D 2D frames written as a still-image root with their TRUE parameters
   (`held_out_images`), scored by `fbench eval recovery --method fields` for both runs:
   expression-driven vertex-offset error (mm) and jaw error (degrees);
5. the emotion head on the synthetic AffectNet validation split (`methods.fields.model
   .FieldsModel.predict_emotion`): accuracy against the 1/8 chance level and the majority class,
   valence/arousal CCC;
6. `OUT/ablation.json` and `OUT/ablation_table.md`.

Only configuration differs from FIELDS' defaults (printed and written to ablation.json): the tiny
generator, no cycle path (`train.cycle_loss=0`: it doubles a step's cost and is the same in both
arms), batch size, steps, learning rates (the encoder at 0.5 x `train.lr`), the per-batch shares,
and the pose encoder trained (`train.freeze_pose=false`): both arms start from scratch, not from a
trained base, and a pose encoder frozen at its random initialisation fixes the camera, so the
landmark loss can only be met by distorting expression and jaw (what a frozen-pose round gave:
both arms far worse than a neutral prediction). Without a released TEASER.pt
both arms start from the same fresh TEASER initialisation (`loop.seed`); the base-model
regulariser then holds both to that initialisation alike.

A stopped run is restarted by running the same command again (training resumes).

Usage:
    python experiments/fields_ablation.py --out runs/fields_ablation
    python experiments/fields_ablation.py --out /tmp/fa --steps 4 --batch-size 6   # smoke
    python experiments/fields_ablation.py --out runs/fa2 --steps 100 --init-from runs/fa/runs/no_gt3d  # from a base
`fbench train fields` / `fbench eval recovery` must be installed entry points (`pip install -e .`).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from smirk_recovery import fbench  # the one runner (this folder is on the path of a script run from it)

ARMS = {"fields": [], "no_gt3d": ["-o", "train.losses.gt3d=false"]}
SYNTH_SEEDS = {"ffhq": 0, "affectnet": 1, "bp4d": 3}  # training data; the held-out BP4D takes HELD_OUT_SEED
HELD_OUT_SEED = 103


def train_options(shards: Path, steps: int, batch_size: int, seed: int, lr: float,
                  init_from: Path | None = None) -> list[str]:
    """Both arms' options. From scratch the pose encoder trains (frozen at its random
    initialisation it fixes the camera); from a trained base (`init_from`) it is frozen (the paper)."""
    base = ["-o", f"train.init_from={init_from}"] if init_from else ["-o", "train.freeze_pose=false"]
    return ["--shards", str(shards), "--skip-missing", "-o", f"train.batch_size={batch_size}", "-o", "train.workers=0",
            "-o", f"train.samples_per_epoch={steps * batch_size}", "-o", "generator_init_features=8",
            "-o", "generator_res_blocks=1", "-o", "train.cycle_loss=0", "-o", f"train.lr={lr}",
            "-o", "train.encoder_lr_scale=0.5", *base,
            "-o", "train.data.base_fraction=0.2", "-o", "train.data.bp4d_fraction=0.4",
            "-o", "train.data.affectnet_fraction=0.4", "-o", f"loop.max_steps={steps}", "-o", f"loop.seed={seed}",
            "-o", "loop.device=cpu", "-o", "loop.progress=false", "-o", "loop.log_every=10",
            "-o", f"loop.checkpoint_every={max(1, min(20, steps))}"]


def held_out_images(bp4d_root: Path, out: Path) -> Path:
    """The 2D frames of a synthetic BP4D root as a still-image dataset root with ground truth
    (rows: frame -1, path = the JPEG, the frame's true FLAME parameters), which the `recovery`
    benchmark scores."""
    import shutil

    import torch

    from fbench.flame.params import FlameParams
    from fbench.synth.ground_truth import GroundTruthWriter, read_ground_truth

    if (out / "fbench_ground_truth.h5").is_file():
        return out
    gt = read_ground_truth(bp4d_root)
    writer = GroundTruthWriter(dataset="bp4d_frames", seed=int(gt.attrs.get("seed", 0)),
                               attrs={"source": str(bp4d_root), "note": "2D frames of a synthetic BP4D root"})
    for i, key in enumerate(gt.keys):
        rel = gt.extras["frame_2d"][i]
        rel = rel.decode() if isinstance(rel, bytes) else str(rel)
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(bp4d_root / rel, out / rel)
        params = FlameParams(**{k: torch.as_tensor(v[i:i + 1]) for k, v in gt.flame.items()})
        writer.add(key, rel, params, landmarks68=gt.extras["landmarks68_2d"][i])
    writer.write(out)
    return out


def emotion_scores(checkpoint: Path, affectnet_shards: Path) -> dict[str, float]:
    """The emotion head on the AffectNet validation split (its test crops): accuracy, macro accuracy,
    chance (1/8) and majority-class rate, valence/arousal CCC."""
    import numpy as np
    import torch

    from fbench import metrics as M
    from fbench.shards.stream import ShardDataset, shard_set
    from methods.fields.data import FieldsTransform
    from methods.fields.plugin import from_checkpoint
    from methods.smirk.data import SmirkDataConfig

    model = from_checkpoint(checkpoint)
    data = ShardDataset(shard_set("affectnet", affectnet_shards, 1.0, ("val",), {"expression_valid": (True,)}),
                        FieldsTransform(model.n_exp, SmirkDataConfig(augment=False), train=False))
    labels, va, preds, pva = [], [], [], []
    for batch in torch.utils.data.DataLoader(data, batch_size=16):
        out = model.predict_emotion(batch["img"])
        labels.append(batch["emotion_class"].numpy())
        preds.append(out["probabilities"].argmax(1).numpy())
        va.append(torch.stack([batch["valence"], batch["arousal"]], 1).numpy())
        pva.append(torch.stack([out["valence"], out["arousal"]], 1).numpy())
    y, p, t, q = np.concatenate(labels), np.concatenate(preds), np.concatenate(va), np.concatenate(pva)
    return {"n": int(y.size), "accuracy": M.accuracy(y, p), "macro_accuracy": M.macro_accuracy(y, p, 8),
            "chance": 1 / 8, "majority_class_rate": float(np.bincount(y, minlength=8).max() / y.size),
            "v_ccc": M.ccc(t[:, 0], q[:, 0]), "a_ccc": M.ccc(t[:, 1], q[:, 1])}


def run(args: argparse.Namespace) -> dict:
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    log = out / "commands.log"
    timings: dict[str, float] = {}
    t0 = time.time()
    synth = {"ffhq": args.ffhq, "affectnet": args.affectnet, "bp4d": args.bp4d_subjects}
    for name, n in synth.items():
        root = out / "synth" / name
        if not (root / "fbench_ground_truth.h5").is_file():
            fbench("synth", name, "--out", str(root), "--n", str(n), "--seed", str(SYNTH_SEEDS[name]),
                   log=log)
    held = out / "held_out" / "bp4d"
    if not (held / "fbench_ground_truth.h5").is_file():
        fbench("synth", "bp4d", "--out", str(held), "--n", str(args.held_out_subjects),
               "--seed", str(HELD_OUT_SEED), log=log)
    fits = out / "fits" / "bp4d"
    if not (fits / "fits.h5").is_file():
        fbench("fit-flame", "bp4d", "--root", str(out / "synth" / "bp4d"), "--out", str(fits), log=log)
    shards = out / "shards"
    for name in ("ffhq", "affectnet", "bp4d"):
        if not (shards / name / "manifest.json").is_file():
            extra = ["--fits", str(fits / "fits.h5")] if name == "bp4d" else []
            fbench("prep", name, "--root", str(out / "synth" / name), "--out", str(shards), *extra,
                   "--landmarks", "detect", "--fan", "off", "--no-progress", log=log)
    timings["data_s"] = round(time.time() - t0, 1)

    options = train_options(shards, args.steps, args.batch_size, args.seed, args.lr, args.init_from)
    for arm, extra in ARMS.items():
        t0 = time.time()
        run_dir = out / "runs" / arm
        if (run_dir / "FIELDS.pt").is_file():
            print(f"(done: {run_dir})", flush=True)
        elif (run_dir / "checkpoints" / "last.pt").is_file():
            fbench("train", "fields", "--out", str(run_dir), "--resume", log=log)
        else:
            fbench("train", "fields", "--out", str(run_dir), *options, *extra, log=log)
        timings[f"train_{arm}_s"] = round(time.time() - t0, 1)

    t0 = time.time()
    images = held_out_images(held, out / "held_out" / "bp4d_frames")
    results: dict[str, dict] = {}
    for arm in ARMS:
        res = out / "results" / arm
        if not (res / "metrics.json").is_file():
            fbench("eval", "recovery", "--method", "fields", "--checkpoint", str(out / "runs" / arm / "FIELDS.pt"),
                   "--root", str(images), "--out", str(res), log=log)
        results[arm] = {"recovery": json.loads((res / "metrics.json").read_text()),
                        "emotion": emotion_scores(out / "runs" / arm / "FIELDS.pt", shards / "affectnet")}
    timings["eval_s"] = round(time.time() - t0, 1)
    record = {"steps": args.steps, "batch_size": args.batch_size, "seed": args.seed, "synth_seeds": SYNTH_SEEDS,
              "held_out_seed": HELD_OUT_SEED,
              "lr": args.lr, "train_options": options, "arms": {k: " ".join(v) or "(defaults)" for k, v in ARMS.items()},
              "timings": timings, "results": results}
    from fbench.io import atomic_write_text

    atomic_write_text(out / "ablation.json", json.dumps(record, indent=2) + "\n")
    table = format_table(results, args.steps)
    atomic_write_text(out / "ablation_table.md", table + "\n")
    print(table, flush=True)
    return record


def format_table(results: dict[str, dict], steps: int) -> str:
    lines = [f"| run ({steps} steps) | held-out BP4D frames | expression offsets mean (mm) | median (mm) | jaw mean (deg) "
             "| emotion accuracy (chance 0.125) | macro | V CCC | A CCC |", "|---|---|---|---|---|---|---|---|---|"]
    for arm, r in results.items():
        m, e = r["recovery"], r["emotion"]
        lines.append(f"| {arm} | {m['n_items']} | {m['offset_mean_mm']:.3f} | {m['offset_median_mm']:.3f} "
                     f"| {m['jaw_mean_deg']:.2f} | {e['accuracy']:.3f} (n={e['n']}) | {e['macro_accuracy']:.3f} "
                     f"| {e['v_ccc']:.3f} | {e['a_ccc']:.3f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--batch-size", type=int, default=6)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0, help="the training seed (loop.seed)")
    p.add_argument("--ffhq", type=int, default=48)
    p.add_argument("--affectnet", type=int, default=400)
    p.add_argument("--bp4d-subjects", type=int, default=2)
    p.add_argument("--held-out-subjects", type=int, default=3)
    p.add_argument("--init-from", type=Path, default=None,
                   help="base model for both arms (TEASER.pt or a run folder); the pose encoder is then frozen")
    run(p.parse_args(argv))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
