"""The training loop (fbench/train) and `fbench train <method>`, on the toy task of train_support.py."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

import fbench.registry as registry_module
from fbench.io import load_checkpoint
from fbench.plugins import TrainingTask
from fbench.train import LoopConfig, train
from fbench.train.logs import MetricLog
from fbench.train.loop import cosine_factor, make_schedulers

sys.path.insert(0, str(Path(__file__).parent))
import train_support

ROOT = Path(__file__).resolve().parents[1]
FAST = ["-o", "loop.progress=false", "-o", "loop.log_every=1", "-o", "loop.checkpoint_every=2",
        "-o", "loop.schedule=cosine_epoch", "-o", "loop.visualize_every=3"]


@pytest.fixture
def toy_cli(monkeypatch):
    from fbench.cli import main

    monkeypatch.setitem(registry_module._REGISTRIES, "methods", train_support.mount())
    runner = CliRunner()

    def invoke(*args: str):
        result = runner.invoke(main, ["train", *args], catch_exceptions=False)
        return result
    return invoke


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(run / "checkpoints" / "last.pt")["modules"]["model"]


def _rows(run: Path) -> list[dict[str, str]]:
    with open(run / "metrics.csv") as fh:
        return [{k: v for k, v in row.items() if k != "time_s"} for row in csv.DictReader(fh)]


def _same_run(a: Path, b: Path) -> None:
    wa, wb = _weights(a), _weights(b)
    assert all(torch.equal(wa[k], wb[k]) for k in wa), "resumed parameters differ from the uninterrupted run's"
    ca, cb = load_checkpoint(a / "checkpoints" / "last.pt"), load_checkpoint(b / "checkpoints" / "last.pt")
    assert ca["task"] == cb["task"] and ca["position"] == cb["position"]
    assert torch.equal(ca["optimizers"]["adam"]["state"][0]["exp_avg"], cb["optimizers"]["adam"]["state"][0]["exp_avg"])
    assert _rows(a) == _rows(b)  # the same metrics, rows past the checkpoint dropped and rewritten
    for png in (a / "images").glob("*.png"):
        assert png.read_bytes() == (b / "images" / png.name).read_bytes()


@pytest.mark.parametrize("stop, position", [(4, (1, 1)), (3, (1, 0))], ids=["mid-epoch", "epoch-end"])
def test_train_cli_trains_and_a_stopped_run_resumes_to_the_same_parameters(toy_cli, tmp_path, one_torch_thread,
                                                                           stop, position):
    # 7 steps of 3 per epoch; the resumed run stops at step 4, mid-epoch 1 (data position and
    # every RNG stream matter), or at 3, the end of epoch 0; then continues to 7.
    full, part = tmp_path / "full", tmp_path / "part"
    r = toy_cli("toy", "--out", str(full), "-o", "loop.max_steps=7", *FAST)
    assert r.exit_code == 0, r.output
    assert "shards:" in r.output and f"run: {full.resolve()}" in r.output
    r = toy_cli("toy", "--out", str(part), "-o", f"loop.max_steps={stop}", *FAST)
    assert r.exit_code == 0, r.output
    epoch, batch = position
    assert load_checkpoint(part / "checkpoints" / "last.pt")["position"] == {"step": stop, "epoch": epoch,
                                                                               "batch": batch}
    r = toy_cli("toy", "--out", str(part), "--resume", "-o", "loop.max_steps=7")  # config from part/config.yaml
    assert r.exit_code == 0, r.output
    assert "resuming" in r.output and f"at step {stop} (epoch {epoch}, batch {batch})" in r.output
    _same_run(full, part)
    assert load_checkpoint(full / "checkpoints" / "last.pt")["task"]["seen"] == list(range(7))
    for name in ("config.yaml", "summary.json", "toy.pt", "images/step_0000003.png", "images/step_0000006.png"):
        assert (full / name).is_file(), name
    rows = _rows(full)
    assert [r["step"] for r in rows if r["phase"] == "val"] == ["3", "6"]  # validation at each epoch's end
    assert {"loss", "lr_adam", "val_mse"} <= set(rows[0])


def _fbench_toy(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    environ = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", **(env or {}))
    return subprocess.Popen([sys.executable, str(ROOT / "tests" / "train_support.py"), "train", "toy", *args],
                            env=environ, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_a_killed_run_resumes_to_the_parameters_of_an_uninterrupted_run(toy_cli, tmp_path, one_torch_thread):
    full, killed = tmp_path / "full", tmp_path / "killed"
    assert toy_cli("toy", "--out", str(full), "-o", "loop.max_steps=8", *FAST).exit_code == 0
    # Stall in step 6 (0-based 5), after its optimiser step, after checkpoint 4 and the log row of
    # step 5; SIGKILL there.
    proc = _fbench_toy("--out", str(killed), "-o", "loop.max_steps=8", *FAST, env={"TOY_STALL_AT": "5"})
    deadline = time.monotonic() + 120
    while not (killed / "stalled").exists():
        assert proc.poll() is None, proc.communicate()[0]
        assert time.monotonic() < deadline, "the toy run never reached step 6"
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    assert proc.returncode == -signal.SIGKILL
    assert load_checkpoint(killed / "checkpoints" / "last.pt")["position"]["step"] == 4
    assert any(r["step"] == "5" for r in _rows(killed))  # a row past the checkpoint, to be dropped
    (killed / "checkpoints" / ".last.pt.x1.tmp.pt").write_bytes(b"torn")  # as a kill mid-write leaves
    r = toy_cli("toy", "--out", str(killed), "--resume")
    assert r.exit_code == 0, r.output
    assert "warning" not in r.output and not list((killed / "checkpoints").glob(".*tmp*"))
    _same_run(full, killed)
    r = toy_cli("toy", "--out", str(killed), "--resume")
    assert r.exit_code == 0 and "the run has done its 8 steps; raise -o loop.max_steps" in r.output
    r = toy_cli("toy", "--out", str(killed), "--resume", "-o", "loop.seed=3", "-o", "loop.max_steps=9")
    assert "warning: loop seed 0 -> 3 since" in r.output


def test_train_cli_errors_and_defaults(toy_cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = toy_cli("frozen")
    assert r.exit_code == 1 and "frozen: this method plugin has no training task" in r.output
    assert len(r.output.strip().splitlines()) == 1
    r = toy_cli("toy", "--help")
    assert "Examples:" in r.output and "--resume" in r.output and "--shards" in r.output
    r = toy_cli("toy", "--resume", "-o", "loop.progress=false")
    assert r.exit_code == 1 and "runs/toy/checkpoints/last.pt: no such checkpoint file" in r.output
    r = toy_cli("toy", "--resume", "--init", "x.pt")
    assert r.exit_code == 2 and "pass one of them" in r.output
    r = toy_cli("toy", "-o", "loop.max_step=3")
    assert r.exit_code == 2 and "loop.max_step" in r.output
    # defaults: shards/ in the working folder, runs/<method>; --device fills loop.device
    r = toy_cli("toy", "--device", "cpu", "-o", "loop.max_steps=2", "-o", "loop.progress=false", "-o", "lr=0.1")
    assert r.exit_code == 0, r.output
    assert f"shards: {tmp_path / 'shards'}" in r.output and f"run: {tmp_path / 'runs' / 'toy'}" in r.output
    import yaml

    saved = yaml.safe_load((tmp_path / "runs" / "toy" / "config.yaml").read_text())
    assert saved["lr"] == 0.1 and saved["loop"]["device"] == "cpu" and saved["run"]["device"] == "cpu"
    # the saved config is a valid --config; --init takes another run's weights, fresh optimisers
    r = toy_cli("toy", "--config", "runs/toy/config.yaml", "--out", "again", "--init", "runs/toy/checkpoints/last.pt",
                "-o", "loop.max_steps=1")
    assert r.exit_code == 0 and "initial weights from runs/toy/checkpoints/last.pt" in r.output
    r = toy_cli("toy", "--out", "bad", "--init", "runs/toy/toy.pt", "-o", "loop.max_steps=1")
    assert r.exit_code == 1 and "runs/toy/toy.pt: not an fbench training checkpoint" in r.output
    # a loss disabled for a missing asset: said at start, recorded in the run's config.yaml
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    r = toy_cli("toy", "--out", "vgg", "-o", "perceptual=true", "-o", "loop.max_steps=1", "-o", "loop.progress=false")
    assert r.exit_code == 0 and "perceptual loss DISABLED: no VGG16 weights at" in r.output
    record = yaml.safe_load((tmp_path / "vgg" / "config.yaml").read_text())["run"]["perceptual_loss"]
    assert record.startswith("perceptual loss DISABLED") and str(tmp_path / "torch") in record


def test_init_loads_weights_and_restarts_the_optimiser(tmp_path, one_torch_thread):
    loop = LoopConfig(max_steps=2, progress=False, checkpoint_every=2)
    first = train(lambda: train_support.ToyTask(train_support.ToyConfig()), loop, tmp_path / "a")
    trained = _weights(tmp_path / "a")
    seen = {}

    class Probe(train_support.ToyTask):
        def training_step(self, batch, step):
            if step == 0:
                seen["w"] = self.model[1].weight.detach().clone()
                seen["opt"] = dict(self.opt.state)
            return super().training_step(batch, step)

    train(lambda: Probe(train_support.ToyConfig()), LoopConfig(max_steps=1, progress=False, seed=5), tmp_path / "b",
          init=first.last_checkpoint)
    assert torch.equal(seen["w"], trained["1.weight"]) and seen["opt"] == {}


def test_cosine_schedules_follow_torch_cosine_annealing():
    # SMIRK: CosineAnnealingLR(T_max=steps per epoch, eta_min=0.01 lr), re-created every epoch.
    w = torch.nn.Parameter(torch.zeros(1))
    ref_opt = torch.optim.SGD([w], lr=0.4)
    ref = torch.optim.lr_scheduler.CosineAnnealingLR(ref_opt, T_max=5, eta_min=0.004)
    want = []
    for _ in range(5):
        want.append(ref_opt.param_groups[0]["lr"])
        ref_opt.step()
        ref.step()
    opt = torch.optim.SGD([w], lr=0.4)
    sched = make_schedulers({"o": opt}, LoopConfig(schedule="cosine_epoch"), total=15, per_epoch=5)["o"]
    got = []
    for _ in range(15):
        got.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert got == pytest.approx(want * 3, rel=1e-12)
    assert cosine_factor(10, 10, 0.01) == pytest.approx(0.01) and cosine_factor(0, 10, 0.01) == 1.0


def test_metric_log_recovery_drops_rows_past_the_checkpoint_and_torn_lines(tmp_path):
    log = MetricLog(tmp_path)
    for step in range(1, 5):
        log.write(step, 0, "train", 0.0, {"loss": step / 10})
    log.write(4, 0, "val", 0.0, {"val": 1.5})
    with open(tmp_path / "metrics.csv", "a") as fh:
        fh.write("5,0,train,0.0,0.5")  # a kill mid-line
    again = MetricLog(tmp_path, resume_step=3)
    again.write(4, 0, "train", 0.0, {"loss": 9.0})
    with open(tmp_path / "metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["step"], r["phase"], r["loss"]) for r in rows] == [("1", "train", "0.1"), ("2", "train", "0.2"),
                                                                  ("3", "train", "0.3"), ("4", "train", "9.0")]
    assert "val" in rows[0]  # the header keeps every column seen


def _torchrun(tmp_path: Path, out: Path, batch: int, nproc: int) -> subprocess.CompletedProcess:
    args = ["train", "toy", "--out", str(out), "-o", f"batch={batch}", "-o", "noise=0", "-o", "dropout=0",
            "-o", "clip=0.5", "-o", "loop.max_steps=4", "-o", "loop.progress=false", "-o", "loop.checkpoint_every=2"]
    if nproc == 1:
        cmd = [sys.executable, str(ROOT / "tests" / "train_support.py"), *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_port", "0",
               "--rdzv_backend", "c10d", "--rdzv_endpoint", "localhost:0",
               str(ROOT / "tests" / "train_support.py"), *args]
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path,
                          check=False)


def test_two_spawned_gloo_ranks_train_as_one_process_with_twice_the_batch(tmp_path, one_torch_thread):
    # Fast variant of the torchrun test below: two ranks from torch.multiprocessing, the
    # single-process reference in this process.
    import torch.multiprocessing as mp

    config = train_support.ToyConfig(batch=4, noise=0.0, dropout=0.0)  # no clipping: the pre-step hook syncs
    mp.spawn(train_support.ddp_worker, args=(2, _free_port(), str(tmp_path / "two"), config, 3), nprocs=2)
    from dataclasses import replace

    train(lambda: train_support.ToyTask(replace(config, batch=8)),
          LoopConfig(max_steps=3, progress=False, checkpoint_every=2, device="cpu", log_every=1), tmp_path / "one")
    a, b = _weights(tmp_path / "one"), _weights(tmp_path / "two")
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    assert not all(torch.equal(a[k], _weights_of_untrained()[k]) for k in a)
    # validation: each rank scores its half of the rows; the logged value is the mean over both
    val = [{r["step"]: float(r["val_mse"]) for r in _rows(tmp_path / run) if r["phase"] == "val"}
           for run in ("one", "two")]
    assert val[0].keys() == val[1].keys() == {"3"} and val[0]["3"] == pytest.approx(val[1]["3"], rel=1e-5)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_a_stopped_two_rank_run_resumes_to_the_parameters_of_an_uninterrupted_one(tmp_path):
    # Dropout and target noise differ per rank: each rank's RNG streams must come back.
    import torch.multiprocessing as mp

    config = train_support.ToyConfig(batch=4)
    mp.spawn(train_support.ddp_worker, args=(2, _free_port(), str(tmp_path / "full"), config, 7), nprocs=2)
    mp.spawn(train_support.ddp_worker, args=(2, _free_port(), str(tmp_path / "part"), config, 4), nprocs=2)
    assert len(load_checkpoint(tmp_path / "part" / "checkpoints" / "last.pt")["rng"]) == 2
    mp.spawn(train_support.ddp_worker, args=(2, _free_port(), str(tmp_path / "part"), config, 7, True), nprocs=2)
    _same_run(tmp_path / "full", tmp_path / "part")


def _weights_of_untrained() -> dict[str, torch.Tensor]:
    from fbench.train import seed_everything

    seed_everything(0)
    return train_support.ToyTask(train_support.ToyConfig()).model.state_dict()


@pytest.mark.slow
def test_two_gloo_processes_train_as_one_process_with_twice_the_batch(tmp_path):
    one = _torchrun(tmp_path, tmp_path / "one", batch=8, nproc=1)
    assert one.returncode == 0, one.stderr[-3000:]
    two = _torchrun(tmp_path, tmp_path / "two", batch=4, nproc=2)
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = _weights(tmp_path / "one"), _weights(tmp_path / "two")
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    assert load_checkpoint(tmp_path / "two" / "checkpoints" / "last.pt")["__fbench__"]["world_size"] == 2
    assert two.stderr.count("run: ") == 1  # rank 0 speaks


def test_gradients_are_averaged_once_before_each_step(monkeypatch):
    # Fast stand-in for the two-process test: a fake second rank whose gradients are all 1.
    import torch.distributed as dist

    from fbench.train import distributed as D

    calls = []

    def fake_all_reduce(t, op=None):
        calls.append(t.numel())
        t.add_(torch.ones_like(t))

    monkeypatch.setattr(D, "active", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda: 2)
    monkeypatch.setattr(dist, "all_reduce", fake_all_reduce)
    w, b = torch.nn.Parameter(torch.zeros(2, 3)), torch.nn.Parameter(torch.zeros(3))
    opt = torch.optim.SGD([w, b], lr=1.0)
    hook = D.average_gradients_before_step(opt)
    for presync in (False, True):
        with torch.no_grad():
            w.zero_(), b.zero_()
        opt.zero_grad()
        (w.sum() * 3 + (b * torch.arange(3.0)).sum()).backward()
        if presync:  # a task clipping gradients syncs first; the hook must not average again
            D.sync_gradients([w, b])
        opt.step()
        assert torch.allclose(w, torch.full((2, 3), -(3 + 1) / 2)) and torch.allclose(b, -(torch.arange(3.0) + 1) / 2)
    assert calls == [9, 9]  # one flat all-reduce per sync
    hook.remove()


def test_the_loop_refuses_a_task_that_misses_part_of_the_protocol(tmp_path):
    class Half:
        def modules(self):
            return {}

    with pytest.raises(TypeError, match=r"Half is not a fbench.plugins.TrainingTask \(missing \['setup', "
                                        r"'configure_optimizers', 'train_loader'"):
        train(Half, LoopConfig(max_steps=1, progress=False), tmp_path)
    assert isinstance(train_support.ToyTask(train_support.ToyConfig()), TrainingTask)


def test_a_run_on_shards_with_loader_workers_resumes_exactly(toy_cli, tmp_path, one_torch_thread):
    # The data position through fbench.shards.stream (resampled shards, shuffle buffer, the
    # reader's own generator) in a DataLoader worker process: stop mid-epoch, resume, compare.
    shards = train_support.write_toy_shards(tmp_path / "shards")
    common = ["--shards", str(shards), "-o", "loop.progress=false", "-o", "loop.log_every=1",
              "-o", "loop.checkpoint_every=2", "-o", "loop.steps_per_epoch=3"]
    assert toy_cli("shardtoy", "--out", str(tmp_path / "full"), "-o", "loop.max_steps=7", *common).exit_code == 0
    r = toy_cli("shardtoy", "--out", str(tmp_path / "part"), "-o", "loop.max_steps=5", *common)
    assert r.exit_code == 0 and f"shards: {shards.resolve()}" in r.output
    r = toy_cli("shardtoy", "--out", str(tmp_path / "part"), "--resume", "-o", "loop.max_steps=7")
    assert r.exit_code == 0 and "at step 5 (epoch 1, batch 2)" in r.output, r.output
    _same_run(tmp_path / "full", tmp_path / "part")
    xs = [row["x_sum"] for row in _rows(tmp_path / "full")]
    assert len(set(xs)) == len(xs) == 7  # seven different batches: the stream really moved on


def test_bf16_precision_runs_the_steps_under_autocast(tmp_path, one_torch_thread):
    dtypes = {}

    class Probe(train_support.ToyTask):
        def training_step(self, batch, step):
            dtypes["train"] = self.model(batch["x"]).dtype
            return super().training_step(batch, step)

        def validation_step(self, batch, step):
            dtypes["val"] = self.model(batch["x"]).dtype
            return super().validation_step(batch, step)

    for precision, want in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        result = train(lambda: Probe(train_support.ToyConfig()), LoopConfig(max_steps=3, progress=False,
                                                                            precision=precision, device="cpu"),
                       tmp_path / precision)
        assert dtypes == {"train": want, "val": want}
        assert result.metrics["train"]["loss"] < 100
        assert _weights(tmp_path / precision)["1.weight"].dtype == torch.float32


def test_validation_cadence_batch_limit_and_kept_checkpoints(tmp_path, one_torch_thread):
    calls = []

    class Probe(train_support.ToyTask):
        def validation_step(self, batch, step):
            calls.append(step)
            assert not self.model.training  # eval mode during validation
            return super().validation_step(batch, step)

    loop = LoopConfig(max_steps=5, val_every=2, val_batches=1, keep_every=2, checkpoint_every=1, progress=False,
                      log_every=0)
    result = train(lambda: Probe(train_support.ToyConfig()), loop, tmp_path)
    assert calls == [2, 4]  # every 2 steps, one batch each (the validation loader has 2)
    rows = _rows(tmp_path)
    assert [(r["step"], r["phase"]) for r in rows] == [("2", "val"), ("4", "val"), ("5", "train")]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["last.pt", "step_0000002.pt",
                                                                            "step_0000004.pt"]
    import json

    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["val"]["step"] == 4 and summary["train"]["step"] == 5 == result.step


def test_gradients_accumulated_again_after_a_sync_are_averaged_again(monkeypatch):
    # Two backward passes between syncs, or a fresh gradient after zero_grad: never skipped.
    import torch.distributed as dist

    from fbench.train import distributed as D

    monkeypatch.setattr(D, "active", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda: 2)
    monkeypatch.setattr(dist, "all_reduce", lambda t, op=None: t.add_(torch.ones_like(t)))
    w = torch.nn.Parameter(torch.zeros(3))
    for _ in range(3):
        w.grad = None
        w.sum().backward()  # grad 1
        D.sync_gradients([w])  # (1 + 1) / 2 = 1
        w.sum().backward()  # accumulated in place: 2
        D.sync_gradients([w])  # (2 + 1) / 2 = 1.5
        assert torch.allclose(w.grad, torch.full((3,), 1.5))


# ------------------------------------------------------------ method options, stages, epoch hook


def _task_state(run: Path) -> dict:
    return load_checkpoint(run / "checkpoints" / "last.pt")["task"]


def test_a_run_of_all_stages_chains_them_and_resumes_in_the_second(toy_cli, tmp_path, one_torch_thread):
    import json

    import yaml

    common = ["-o", "loop.progress=false", "-o", "loop.log_every=1", "-o", "loop.checkpoint_every=2",
              "-o", "loop.max_steps=4"]
    full, part = tmp_path / "full", tmp_path / "part"
    r = toy_cli("stagedtoy", "--step", "both", "--out", str(full), *common)
    assert r.exit_code == 0, r.output
    assert json.loads((full / "stages.json").read_text()) == {"stages": ["1", "2"], "init": "", "done": ["1", "2"]}
    assert not (full / "checkpoints").exists()  # each stage is a run folder of its own
    for stage in ("1", "2"):
        saved = yaml.safe_load((full / stage / "config.yaml").read_text())
        assert saved["step"] == stage and saved["run"]["stage"] == stage and saved["run"]["stages"] == ["1", "2"]
    assert f"stage 2 (2/2): from {full / '1' / 'checkpoints' / 'last.pt'}" in r.output
    assert "its modules ['aux'] are not in this task: skipped" in r.output
    # stage 2 began from stage 1's last weights (network weights only: a fresh Adam)
    first = load_checkpoint(full / "1" / "checkpoints" / "last.pt")["modules"]["model"]["1.weight"]
    second = _task_state(full / "2")
    assert second["start"] == first.flatten().tolist() and second["adam_steps"][0] == 0
    assert set(load_checkpoint(full / "2" / "checkpoints" / "last.pt")["modules"]) == {"model"}
    # the same run (the stage value given as -o), stopped in stage 2's third step, after its checkpoint at 2
    with pytest.raises(train_support.StopTraining):
        toy_cli("stagedtoy", "-o", "step=both", "--out", str(part), *common, "-o", "crash_at=2")
    assert json.loads((part / "stages.json").read_text())["done"] == ["1"]
    r = toy_cli("stagedtoy", "--out", str(part), "--resume", "-o", "crash_at=-1")
    assert r.exit_code == 0, r.output
    assert f"stage 1 (1/2): finished, skipped ({part / '1'})" in r.output
    assert "stage 2 (2/2): resuming" in r.output and "at step 2 (epoch 0, batch 2)" in r.output
    assert f"config: {part / '2' / 'config.yaml'} (the run's own)" in r.output
    _same_run(full / "1", part / "1")
    _same_run(full / "2", part / "2")
    assert json.loads((part / "stages.json").read_text())["done"] == ["1", "2"]
    r = toy_cli("stagedtoy", "--out", str(part), "--resume")
    assert r.exit_code == 0 and r.output.count("finished, skipped") == 2
    r = toy_cli("stagedtoy", "--step", "2", "--out", str(part), "--resume")
    assert r.exit_code == 2 and "holds a run of all stages" in r.output
    r = toy_cli("stagedtoy", "--step", "both", "--out", str(tmp_path / "none"), "--resume")
    assert r.exit_code == 1 and "is not a staged run to resume" in r.output


def test_one_stage_is_a_plain_run_and_method_options_set_their_keys(toy_cli, tmp_path, one_torch_thread):
    import yaml

    run = tmp_path / "one"
    r = toy_cli("stagedtoy", "--step", "2", "--out", str(run), "-o", "loop.max_steps=1", "-o", "loop.progress=false",
                "--gain", "2.5", "--note-file", "notes/a.txt", "-o", "reset_adam=true", "--no-reset-adam",
                "-o", "gain=7")
    assert r.exit_code == 0, r.output
    saved = yaml.safe_load((run / "config.yaml").read_text())
    # typed options win over -o; free text is read as YAML (a float), a path stays text
    assert saved["step"] == "2" and saved["gain"] == 2.5 and saved["note"] == "notes/a.txt"
    assert saved["reset_adam"] is False
    assert (run / "checkpoints" / "last.pt").is_file() and not (run / "stages.json").exists()
    r = toy_cli("stagedtoy", "--help")
    assert "--step [1|2|both]" in r.output and "--reset-adam / --no-reset-adam" in r.output


@pytest.mark.parametrize("stop", [4, 3], ids=["mid-epoch", "epoch-end"])
def test_an_epoch_start_hook_resets_adam_and_resumes_exactly(toy_cli, tmp_path, one_torch_thread, stop):
    # 7 steps of 3 per epoch; the hook runs once per epoch start, also after a resume at an epoch's
    # start (stop 3), never twice for an epoch resumed in its middle (stop 4)
    common = ["--step", "1", "-o", "loop.progress=false", "-o", "loop.log_every=1", "-o", "loop.checkpoint_every=1"]
    for reset in (False, True):
        full, part = tmp_path / f"full{reset}", tmp_path / f"part{reset}"
        flag = ["--reset-adam"] if reset else []
        assert toy_cli("stagedtoy", "--out", str(full), *common, *flag, "-o", "loop.max_steps=7").exit_code == 0
        state = _task_state(full)
        assert state["epochs_started"] == [0, 1, 2]
        assert state["adam_steps"] == ([0, 1, 2, 0, 1, 2, 0] if reset else list(range(7)))
        assert toy_cli("stagedtoy", "--out", str(part), *common, *flag, "-o", f"loop.max_steps={stop}").exit_code == 0
        r = toy_cli("stagedtoy", "--out", str(part), "--resume", "-o", "loop.max_steps=7")
        assert r.exit_code == 0 and "resuming" in r.output, r.output
        _same_run(full, part)
