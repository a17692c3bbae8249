"""experiments/smirk_recovery.py: SMIRK trained from the command line on synthetic FFHQ/CelebA/LRS3/MEAD
shards and scored by parameter recovery on held-out synthetic images (issue #11's proof).

The slow test runs the whole chain at the `small` size and asserts that the core training beats
the initialisation on both held-out sets; the fast ones check the script's table and options."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "experiments" / "smirk_recovery.py"


def _script():
    spec = importlib.util.spec_from_file_location("smirk_recovery", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(spec.name, module)  # its dataclasses look their module up there
    spec.loader.exec_module(sys.modules[spec.name])
    return sys.modules[spec.name]


def _metrics(offset: float, jaw: float) -> dict:
    return {"n_items": 3, "offset_mean_mm": offset, "offset_median_mm": offset / 2, "jaw_mean_deg": jaw,
            "jaw_median_deg": jaw / 2}


def test_table_lists_every_stage_per_held_out_set():
    script = _script()
    results = {stage: {"ffhq": _metrics(i + 1.0, 10.0 * i), "celeba": _metrics(i + 5.0, 1.0)}
               for i, stage in enumerate((*script.STAGES, "mean"))}
    for name in ("ffhq", "celeba"):
        results["init"][name].update(neutral_offset_mean_mm=4.0, neutral_offset_median_mm=3.5)
    lines = script.format_table(results).splitlines()
    assert len(lines) == 2 + 2 * 5
    assert lines[2] == "| ffhq | init | 3 | 1.000 | 0.500 | 0.00 | 0.00 |"
    assert lines[4] == "| ffhq | core | 3 | 3.000 | 1.500 | 20.00 | 10.00 |"
    assert lines[5] == "| ffhq | (reference: mean method) | 3 | 4.000 | 2.000 | 30.00 | 15.00 |"
    assert lines[6] == "| ffhq | (neutral face: no expression) | 3 | 4.000 | 3.500 | | |"
    assert lines[9].startswith("| celeba | core | 3 | 7.000 |")


def test_training_options_make_the_run_one_cosine_epoch():
    script = _script()
    size = script.SIZES["small"]
    options = script.train_options(size, 40, seed=3)
    values = dict(o.split("=", 1) for o in options[1::2])
    assert values["train.samples_per_epoch"] == str(40 * size.batch_size)  # one epoch = the run
    assert values["loop.schedule"] == "cosine_epoch" and values["loop.max_steps"] == "40"
    assert values["generator_init_features"] == "8" and values["generator_res_blocks"] == "1"
    assert values["loop.seed"] == "3" and values["train.batch_size"] == str(size.batch_size)


def _environment() -> dict[str, str]:
    """PYTHONPATH with this tree, one torch thread."""
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


@pytest.mark.slow
def test_core_training_beats_the_initialisation_on_held_out_images(tmp_path):
    out = tmp_path / "recovery"
    result = subprocess.run([sys.executable, str(SCRIPT), "--out", str(out), "--size", "small"], cwd=tmp_path,
                            env=_environment(), capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    record = json.loads((out / "recovery.json").read_text())
    for name in ("ffhq", "celeba"):
        init, core = record["results"]["init"][name], record["results"]["core"][name]
        assert core["n_items"] == init["n_items"] >= 10
        assert core["offset_mean_mm"] < 0.8 * init["offset_mean_mm"], (name, init, core)
        assert core["jaw_mean_deg"] < init["jaw_mean_deg"], (name, init, core)
    assert "| ffhq | core |" in result.stdout and (out / "recovery_table.md").is_file()
    assert (out / "runs" / "core" / "SMIRK.pt").is_file() and (out / "runs" / "pretrain" / "SMIRK.pt").is_file()


def test_the_initial_checkpoint_is_the_encoder_the_pretraining_starts_from(tmp_path):
    # fbench.train.train seeds with loop.seed, then builds the task (tiny generator, pretrain phase)
    import torch

    from fbench.train.loop import seed_everything
    from methods.smirk.checkpoint import read_state_dict
    from methods.smirk.plugin import SmirkConfig
    from methods.smirk.task import SmirkTask

    _script().write_initial_checkpoint(tmp_path / "init.pt", seed=5)
    config = SmirkConfig.tiny()
    config.train.phase = "pretrain"
    seed_everything(5)
    encoder = SmirkTask(config).encoder.state_dict()
    saved = read_state_dict(tmp_path / "init.pt")
    assert {k for k in saved if not k.startswith("smirk_encoder.")} == set()
    assert all(torch.equal(saved[f"smirk_encoder.{k}"].float(), v.float()) for k, v in encoder.items())
