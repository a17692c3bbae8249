"""Hostile and degenerate inputs (issue 16): bounded memory and time, no hangs, clean errors.

Each test reproduces one way a small crafted input used to exhaust memory, hang a run or end in
a traceback; where the failure is resource exhaustion the work runs under a time limit (and, in
a subprocess, an address-space cap) so a regression fails instead of hanging the suite.
"""

from __future__ import annotations

import importlib
import os
import shutil
import struct
import threading
import zlib
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from fbench.shards.media import InputError, read_image
from fbench.safe_read import MAX_IMAGE_PIXELS, FileRefusedError, decode_image, read_regular_file


def png_bytes(width: int, height: int, rows: int | None = None) -> bytes:
    """A grey 8-bit PNG of `width` x `height` black pixels (compressed: a bomb is a few hundred KB).
    `rows`: write only the first rows of pixel data (a header that promises more than the file holds)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    comp = zlib.compressobj(9)
    row = b"\0" * (width + 1)
    body = b"".join(comp.compress(row) for _ in range(height if rows is None else rows)) + comp.flush()
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", body) + chunk(b"IEND", b""))


def within(seconds: float, fn, *args):
    """fn(*args) in a thread; fails the test (instead of hanging it) when it does not return in time."""
    result: dict = {}

    def run() -> None:
        try:
            result["value"] = fn(*args)
        except BaseException as exc:  # handed back to the test
            result["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"{getattr(fn, '__name__', fn)} still running after {seconds} s (blocked?)"
    if "error" in result:
        raise result["error"]
    return result.get("value")


def pipeline_command(name: str, stage: str | None = None):
    """The click command of a pipeline stage (default: its first), from its registry record (independent of
    installed entry points)."""
    plugin = getattr(importlib.import_module("pipelines"), name.upper())
    return plugin.command_for(stage or plugin.stages[0])


@pytest.fixture(scope="module")
def affectnet_small(tmp_path_factory, flame_dir) -> Path:
    """A 4-image synthetic AffectNet shared by the session (read-only: tests copy it to change it)."""
    from conftest import shared_synthetic
    from fbench.flame import FLAME

    return shared_synthetic(tmp_path_factory, "affectnet", FLAME(flame_dir), n=4, seed=0, corrupt=0).root


def affectnet_images(root: Path) -> list[Path]:
    return sorted((root / "Manually_Annotated_Images").rglob("*.jpg"))


# ------------------------------------------------------------------------- 1. decompression bombs


def test_image_bomb_is_refused_from_its_header() -> None:
    bomb = png_bytes(10_000, 10_000)  # 100 MP > the 64 MP default: 300 MB as RGB, ~100 KB on disk
    assert len(bomb) < 200_000 and 10_000 * 10_000 > MAX_IMAGE_PIXELS
    with pytest.raises(FileRefusedError, match=r"10000 x 10000 pixels, more than the limit"):
        decode_image(bomb, "bomb.png")
    # The 30000 x 30000 header of the report, with only a sliver of data: refused before any decoding.
    with pytest.raises(FileRefusedError, match=r"30000 x 30000 pixels"):
        within(5, decode_image, png_bytes(30_000, 30_000, rows=2), "huge.png")
    # A real image below the limit still decodes, and the limit is configurable.
    assert decode_image(png_bytes(40, 30), "small.png").shape == (30, 40, 3)
    os.environ["FBENCH_MAX_IMAGE_PIXELS"] = "1000"
    try:
        with pytest.raises(FileRefusedError, match="limit of 1000"):
            decode_image(png_bytes(40, 30), "small.png")
    finally:
        del os.environ["FBENCH_MAX_IMAGE_PIXELS"]


def test_image_bomb_in_a_dataset_is_a_reject(affectnet_small, tmp_path) -> None:
    root = tmp_path / "AffectNet"
    shutil.copytree(affectnet_small, root)
    bomb = affectnet_images(root)[0]
    bomb.write_bytes(png_bytes(10_000, 10_000))  # named .jpg: decoders go by content
    result = CliRunner().invoke(pipeline_command("affectnet"), ["--root", str(root), "--out", str(tmp_path / "out"),
                                                                "--landmarks", "annotations", "--no-progress"])
    assert result.exit_code == 0, result.output
    rejects = (tmp_path / "out" / "affectnet" / "rejects.jsonl").read_text()
    assert "pixels, more than the limit" in rejects and bomb.name in rejects and "unexpected" not in rejects


# ------------------------------------------------------------------------------ 2. non-regular files


def test_links_to_devices_and_fifos_are_refused_without_blocking(tmp_path) -> None:
    zero = tmp_path / "zero.jpg"
    zero.symlink_to("/dev/zero")
    with pytest.raises(InputError, match=r"zero.jpg: a character device \(links to /dev/zero\)"):
        within(5, read_image, zero)
    fifo = tmp_path / "fifo.jpg"
    os.mkfifo(fifo)
    with pytest.raises(InputError, match="fifo.jpg: a FIFO"):
        within(5, read_image, fifo)
    big = tmp_path / "big.bin"
    big.write_bytes(b"x" * 1000)
    with pytest.raises(FileRefusedError, match="1000 bytes, more than the limit of 999"):
        read_regular_file(big, max_bytes=999)
    assert read_regular_file(big, max_bytes=1000) == b"x" * 1000
    from fbench.shards.media import iter_video_frames

    video_fifo = tmp_path / "clip.mp4"
    os.mkfifo(video_fifo)
    with pytest.raises(InputError, match="clip.mp4: a FIFO"):
        within(5, lambda: list(iter_video_frames(video_fifo)))


def test_fifo_and_device_link_in_a_dataset_are_rejects(affectnet_small, tmp_path) -> None:
    root = tmp_path / "AffectNet"
    shutil.copytree(affectnet_small, root)
    images = affectnet_images(root)
    images[0].unlink()
    images[0].symlink_to("/dev/zero")
    images[1].unlink()
    os.mkfifo(images[1])
    out = tmp_path / "out"
    result = within(60, CliRunner().invoke, pipeline_command("affectnet"),
                    ["--root", str(root), "--out", str(out), "--landmarks", "annotations", "--no-progress"])
    assert result.exit_code == 0, result.output
    rejects = (out / "affectnet" / "rejects.jsonl").read_text()
    assert "a character device" in rejects and "a FIFO" in rejects
    assert "2 samples" in result.output and "2 rejects" in result.output
    assert not list(out.rglob("*.tmp*"))


# --------------------------------------------------------------- 3. pickle amplification (FLAME files)


def run_capped(code: str, limit_mb: int = 1024, timeout: float = 60) -> tuple[int, str]:
    """Run `code` in a fresh interpreter under an address-space cap and a time limit: (exit code, output).
    Exit code -1: killed by the time limit."""
    import resource
    import subprocess
    import sys

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit_mb << 20, limit_mb << 20))

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "OPENBLAS_NUM_THREADS": "1",
           "OMP_NUM_THREADS": "1"}
    try:
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout,
                              preexec_fn=cap, env=env)
    except subprocess.TimeoutExpired:
        return -1, "timed out"
    return proc.returncode, proc.stdout + proc.stderr


class _Reduce:
    """Pickles as `func(*args)`: a crafted file naming only allow-listed callables."""

    def __init__(self, func, *args) -> None:
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def shared_lists(depth: int) -> bytes:
    """Nested lists that share each level twice: `depth` levels are 2**depth paths but ~10 bytes each."""
    import pickle

    node: list = []
    for _ in range(depth):
        node = [node, node]
    return pickle.dumps({"f": node}, protocol=2)


def bombs() -> dict[str, bytes]:
    import pickle

    return {
        "shared": shared_lists(40),
        "bytearray": pickle.dumps(_Reduce(bytearray, 1 << 31), protocol=2),
        "zero_stride": pickle.dumps({"face": _Reduce(np.ndarray, (1 << 29,), np.dtype(np.int64), b"\0" * 8, 0, (0,))},
                                    protocol=2),
        "reconstruct": pickle.dumps(_Reduce(np.core.multiarray._reconstruct, np.ndarray, (1 << 40,), b"f"), protocol=2),
    }


@pytest.mark.parametrize("kind", ["shared", "bytearray", "zero_stride", "reconstruct"])
def test_small_pickles_cannot_allocate_or_loop(kind, tmp_path) -> None:
    path = tmp_path / "generic_model.pkl"
    path.write_bytes(bombs()[kind])
    assert path.stat().st_size < 600
    code = ("import sys, time\nfrom fbench.safe_pickle import UnsafePickleError, safe_load_pickle\nt = time.time()\n"
            f"try:\n    value = safe_load_pickle({str(path)!r})\n"
            "except UnsafePickleError as exc:\n    print('REFUSED', exc)\nelse:\n    print('LOADED', type(value))\n"
            "print('seconds', time.time() - t)\n")
    rc, output = run_capped(code, limit_mb=1024, timeout=30)
    assert rc == 0, output[-2000:]
    seconds = float(output.split("seconds")[-1])
    assert seconds < 2, output
    if kind == "shared":  # legitimate sharing loads, once per object
        assert "LOADED <class 'dict'>" in output
    else:
        assert "REFUSED" in output, output


def test_cyclic_pickle_is_refused() -> None:
    import io
    import pickle

    from fbench.safe_pickle import UnsafePickleError, safe_load

    loop: list = []
    loop.append(loop)
    with pytest.raises(UnsafePickleError, match="contains itself"):
        safe_load(io.BytesIO(pickle.dumps({"f": loop}, protocol=2)))


@pytest.mark.parametrize("problem, message", [("empty", "is empty"), ("repeated", "repeats 2 vertex"),
                                              ("outside", "indices outside"), ("float", "not an array of vertex")])
def test_decoded_masks_are_validated(problem, message, flame_dir, tmp_path) -> None:
    import pickle

    from fbench.flame import FlameFileError, load_flame_assets
    from fbench.safe_pickle import safe_load_pickle

    flame = tmp_path / "flame"
    shutil.copytree(flame_dir, flame)
    masks_file = next(p for p in flame.rglob("FLAME_masks.pkl"))
    masks = safe_load_pickle(masks_file)
    face = np.asarray(masks["face"])
    masks["face"] = {"empty": face[:0], "repeated": np.concatenate([face, face[:2]]),
                     "outside": np.append(face, 10 ** 6), "float": face + 0.5}[problem]
    masks_file.write_bytes(pickle.dumps(masks, protocol=2))
    with pytest.raises(FlameFileError, match=f"FLAME_masks.pkl: mask 'face' .*{message}|'face' has {message}"):
        load_flame_assets(flame)


# ------------------------------------------------------------------------- 5. one run per output part


def test_second_prep_on_the_same_part_refuses_naming_the_holder(affectnet_small, tmp_path) -> None:
    import socket

    from fbench.lock import output_lock
    from fbench.shards.prep import PrepConfig, PrepError, lock_path, run_prep
    from fbench.landmarks.annotate import LandmarkConfig
    from pipelines.affectnet import AffectNetSource

    out = tmp_path / "out"
    config = PrepConfig(root=affectnet_small, out=out, landmarks=LandmarkConfig(landmarks="annotations"),
                        progress=False)
    with output_lock(lock_path(out / "affectnet", (0, 1)), "a run in progress"):
        with pytest.raises(PrepError, match=rf"part 0/1\) is being written by another run \(host "
                                            rf"{socket.gethostname()}, pid {os.getpid()}, started "):
            run_prep(AffectNetSource(), config)
        # Another part of a job array is not blocked by it (it runs, no PrepError).
        run_prep(AffectNetSource(), PrepConfig(root=affectnet_small, out=out, part=(1, 2), progress=False,
                                               landmarks=LandmarkConfig(landmarks="annotations")))
    assert run_prep(AffectNetSource(), config).counts["samples"] == 4  # released: runs now


def test_lock_of_a_killed_run_is_taken_over(affectnet_small, tmp_path) -> None:
    import subprocess
    import sys

    from fbench.shards.prep import lock_path

    out = tmp_path / "out"
    lock = lock_path(out / "affectnet", (0, 1))
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom fbench.lock import output_lock\n"
                               f"with output_lock({str(lock)!r}, 'x'):\n    print('held', flush=True)\n"
                               "    time.sleep(60)\n"],
                              stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    try:
        assert holder.stdout.readline().strip() == "held"
        busy = CliRunner().invoke(pipeline_command("affectnet"), ["--root", str(affectnet_small), "--out", str(out),
                                                                  "--landmarks", "annotations", "--no-progress"])
        assert busy.exit_code != 0 and f"pid {holder.pid}" in busy.output and "Traceback" not in busy.output
    finally:
        holder.kill()  # kill -9: the lock file still names it, but nothing holds the lock
        holder.wait()
    assert f'"pid": {holder.pid}' in lock.read_text()
    result = CliRunner().invoke(pipeline_command("affectnet"), ["--root", str(affectnet_small), "--out", str(out),
                                                                "--landmarks", "annotations", "--no-progress"])
    assert result.exit_code == 0 and "4 samples" in result.output, result.output
    assert lock.read_text() == ""  # released cleanly


# --------------------------------------------------------- 7. config values checked, all-failed runs


def broken_famos(root: Path) -> Path:
    """A FaMoS layout whose every registration is unreadable (text, not PLY)."""
    for seq in ("jaw", "kissing"):
        for frame in range(3):
            path = root / "FaMoS_subject_001" / seq / f"{seq}.{frame:06d}.ply"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("not a mesh\n")
    return root


@pytest.mark.parametrize("override, message", [
    ("registration.batch_size=-5", "registration.batch_size: must be >= 1, got -5"),
    ("registration.lbfgs.armijo=1.5", "registration.lbfgs.armijo: must be < 1, got 1.5"),
    ("registration.priors.jaw=.nan", "registration.priors.jaw: must be a finite number"),
    ("stride=0", "stride: must be >= 1, got 0"),
    ("sequences=[]", "sequences: must not be empty"),
])
def test_fit_config_values_are_checked_with_the_key_named(override, message, tmp_path) -> None:
    command = pipeline_command("famos")

    result = CliRunner().invoke(command, ["--root", str(broken_famos(tmp_path / "FaMoS")), "--out",
                                          str(tmp_path / "out"), "--no-progress", "-o", override])
    assert result.exit_code == 2 and message in result.output, result.output
    assert "Traceback" not in result.output and not (tmp_path / "out" / "fits.h5").exists()


def test_bp4d_config_values_are_checked() -> None:
    from fbench.config import ConfigError, load_config
    from pipelines.bp4d import Bp4dConfig

    for override, message in (("scan.batch_size=0", "scan.batch_size: must be >= 1"),
                              ("scan.robust_sigma_mm=-1", "scan.robust_sigma_mm: must be > 0"),
                              ("scan.min_landmarks=2", "scan.min_landmarks: must be >= 3"),
                              ("landmark_map=[[3]]", "landmark_map: [3] is not a pair")):
        with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
            load_config(Bp4dConfig, None, [override])


def test_fit_run_where_every_frame_fails_exits_non_zero(flame_dir, tmp_path) -> None:
    command = pipeline_command("famos")

    result = CliRunner().invoke(command, ["--root", str(broken_famos(tmp_path / "FaMoS")), "--out",
                                          str(tmp_path / "out"), "--flame", str(flame_dir), "--no-progress",
                                          "--sequences", "jaw,kissing", "--stride", "1"])
    assert result.exit_code == 1, result.output
    assert "every frame failed (6)" in result.output and "Traceback" not in result.output


def test_second_fit_on_the_same_out_refuses(tmp_path) -> None:
    from fbench.fitting.store import FIT_LOCK
    from fbench.lock import output_lock
    command = pipeline_command("famos")

    out = tmp_path / "out"
    with output_lock(out / FIT_LOCK, "a fit in progress"):
        result = CliRunner().invoke(command, ["--root", str(broken_famos(tmp_path / "FaMoS")), "--out", str(out),
                                              "--no-progress"])
    assert result.exit_code == 1 and f"pid {os.getpid()}" in result.output and "is being written" in result.output


def test_prep_run_where_every_input_is_rejected_exits_non_zero(affectnet_small, tmp_path) -> None:
    root = tmp_path / "AffectNet"
    shutil.copytree(affectnet_small, root)
    for image in affectnet_images(root):
        image.write_bytes(b"not an image")
    result = CliRunner().invoke(pipeline_command("affectnet"), ["--root", str(root), "--out", str(tmp_path / "out"),
                                                                "--landmarks", "annotations", "--no-progress"])
    assert result.exit_code == 1 and "every input was rejected (4)" in result.output, result.output


# ----------------------------------------------------------- 9. bad arguments: one line, no traceback


def leaf_commands():
    """(command line prefix, click command) for every fbench command, pipelines included."""
    import click

    from fbench.cli import main
    from fbench.cli.plugins import PluginGroup

    def walk(prefix, command):
        if isinstance(command, click.Group) and not isinstance(command, PluginGroup):
            for name, sub in sorted(command.commands.items()):
                yield from walk(prefix + [name], sub)
        elif not isinstance(command, click.Group):
            yield prefix, command

    yield from walk([], main)
    for name in ("affectnet", "celeba", "ffhq", "lrs3", "mead", "bp4d"):
        yield ["prep", name], pipeline_command(name, "prep")
    for name in ("famos", "bp4d"):
        yield ["fit-flame", name], pipeline_command(name, "fit")


def bad_value(param) -> str | None:
    import click

    kind = param.type
    if isinstance(kind, click.Choice):
        return "no-such-choice"
    if isinstance(kind, (click.types.IntParamType, click.types.FloatParamType)):
        return "-5" if getattr(kind, "min", None) is not None else "not-a-number"
    if isinstance(kind, click.Path) and kind.exists:
        return "/no/such/path"
    if getattr(param, "callback", None) is not None and isinstance(kind, click.types.StringParamType):
        return "no-such-value,-5"  # validated by its callback (choices, i/N parts, lists)
    return None


def no_traceback(command, args: list[str]) -> str:
    result = CliRunner().invoke(command, args)
    shown = " ".join(args)
    assert result.exception is None or isinstance(result.exception, SystemExit), \
        f"{shown}: {type(result.exception).__name__}: {result.exception}"
    assert "Traceback" not in result.output, f"{shown}:\n{result.output}"
    return result.output


def test_every_command_rejects_bad_options_without_a_traceback() -> None:
    checked = 0
    for prefix, command in leaf_commands():
        assert no_traceback(command, ["--no-such-option"]).count("\n") <= 4, prefix
        for param in command.params:
            value = bad_value(param)
            if value is not None and param.opts and param.opts[0].startswith("--"):
                output = no_traceback(command, [param.opts[0], value])
                assert "Error" in output, (prefix, param.opts[0], output)
                checked += 1
    assert checked > 50


def bad_input_files(tmp_path: Path) -> Path:
    empty = tmp_path / "empty"
    empty.mkdir()
    np.savez(tmp_path / "nan.npz", jaw=[np.nan, 0, 0])
    np.savez(tmp_path / "wide.npz", shape=np.zeros(400))
    np.savez(tmp_path / "ok.npz", jaw=[0.1, 0, 0])
    (tmp_path / "text.npz").write_text("not an npz")
    return empty


def check_one_line_errors(cases) -> None:
    from fbench.cli import main

    for args, message in cases:
        output = no_traceback(main, args)
        assert message in output, (args, output)


def test_synth_and_decode_with_bad_inputs_fail_in_one_line(flame_dir, tmp_path) -> None:
    """The issue's cases: synth --n 0/-5, --corrupt > n; decode with NaN, too many components, a bad suffix."""
    bad_input_files(tmp_path)
    flame = ["--flame", str(flame_dir)]
    check_one_line_errors([
        (["synth", "affectnet", "--out", str(tmp_path / "s"), "--n", "0"], "0 is not in the range"),
        (["synth", "affectnet", "--out", str(tmp_path / "s"), "--n", "-5"], "-5 is not in the range"),
        (["synth", "affectnet", "--out", str(tmp_path / "s"), "--n", "2", "--corrupt", "3", *flame], "--corrupt 3"),
        (["synth", "affectnet", "--out", str(tmp_path / "s"), "--corrupt", "-1"], "-1 is not in the range"),
        (["synth", "affectnet", "--out", str(tmp_path / "s"), "--seed", "-1"], "-1 is not in the range"),
        (["flame", "decode", "--params", str(tmp_path / "nan.npz"), "--out", str(tmp_path / "m.obj"), *flame],
         "nan.npz: jaw contain(s) NaN"),
        (["flame", "decode", "--params", str(tmp_path / "wide.npz"), "--out", str(tmp_path / "m.obj"), *flame],
         "wide.npz: shape has 400 components but this FLAME model uses"),
        (["flame", "decode", "--params", str(tmp_path / "ok.npz"), "--out", str(tmp_path / "m.xyz"), *flame],
         "unsupported mesh format '.xyz'"),
    ])
    assert not (tmp_path / "s").exists()


@pytest.mark.slow
def test_more_commands_with_bad_inputs_fail_in_one_line(flame_dir, tmp_path) -> None:
    empty = bad_input_files(tmp_path)
    flame = ["--flame", str(flame_dir)]
    check_one_line_errors([
        (["flame", "decode", "--params", str(tmp_path / "text.npz"), "--out", str(tmp_path / "m.obj"), *flame],
         "not a readable .npz"),
        (["flame", "decode", "--params", str(tmp_path / "none.npz"), "--out", str(tmp_path / "m.obj"), *flame],
         "no such parameter file"),
        (["render", "--params", str(tmp_path / "nan.npz"), "--out", str(tmp_path / "f.png"), *flame], "NaN"),
        (["render", "--params", str(tmp_path / "ok.npz"), "--out", str(tmp_path / "f.png"), "--size", "-5"],
         "-5 is not in the range"),
        (["flame", "synth", "--out", str(tmp_path / "fs"), "--seed", "-1"], "-1 is not in the range"),
        (["flame", "info", "--flame", str(empty)], str(empty)),
        (["assets", "check", "no-such-asset"], "no-such-asset"),
        (["shards", "inspect", str(empty)], str(empty)),
        (["shards", "merge-manifests", str(empty)], "no manifest.part"),
    ])
    for name in ("affectnet", "celeba", "ffhq", "lrs3", "mead"):
        for extra, message in (([], "cannot list items"), (["--part", "5/2"], "0 <= i < N")):
            output = no_traceback(pipeline_command(name), ["--root", str(empty), "--out", str(tmp_path / "o"),
                                                           "--landmarks", "annotations", *extra])
            assert message in output, (name, output)
    for name in ("famos", "bp4d"):
        output = no_traceback(pipeline_command(name), ["--root", str(empty), "--out", str(tmp_path / "o"), *flame])
        assert "Error" in output, (name, output)


# ------------------------------------------------------ 11. refused checkpoints: no unsafe advice


class _System:
    def __reduce__(self):
        return os.system, ("echo pwned > /dev/null",)


def test_refused_tensor_file_says_why_without_unsafe_advice(tmp_path) -> None:
    import io
    import pickle

    import torch

    from fbench.safe_pickle import UnsafePickleError, load_tensor_file, safe_load

    checkpoint = tmp_path / "model.pt"
    torch.save({"weights": torch.zeros(2), "hook": _System()}, checkpoint)
    with pytest.raises(UnsafePickleError) as refused:
        load_tensor_file(checkpoint)
    message = str(refused.value)
    assert message == f"{checkpoint}: refused: not a plain tensor file (it names {os.system.__module__}.system)"
    for advice in ("weights_only", "likely succeed", "unsafe", "trust", "add_safe_globals"):
        assert advice not in message
    assert load_tensor_file(io.BytesIO(_saved({"w": torch.ones(3)})))["w"].sum() == 3
    # The same refusal when the tensor file is a storage inside a FLAME pickle.
    storage = _Reduce(torch.storage._load_from_bytes, _saved(_System()))
    with pytest.raises(UnsafePickleError, match="refused: not a plain tensor file") as inner:
        safe_load(io.BytesIO(pickle.dumps({"v_template": storage}, protocol=2)))
    assert "likely succeed" not in str(inner.value) and "weights_only" not in str(inner.value)


def _saved(obj) -> bytes:
    import io

    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


# ------------------------------------------------------ 4. landmarks far outside the image (AffectNet)


def test_face_boxes_mostly_outside_the_image_are_rejects(affectnet_small, tmp_path) -> None:
    import csv
    import time

    root = tmp_path / "AffectNet"
    shutil.copytree(affectnet_small, root)
    listing = root / "Manually_Annotated_file_lists" / "training.csv"
    rows = list(csv.reader(listing.read_text().splitlines()))
    header, body = rows[0], rows[1:]
    column = header.index("facial_landmarks")

    def moved(row, fn):
        xy = np.array([float(v) for v in row[column].split(";")]).reshape(-1, 2)
        return row[:column] + [";".join(f"{v:.2f}" for v in fn(xy).reshape(-1))] + row[column + 1:]

    far = body[0][0]
    body[0] = moved(body[0], lambda xy: xy + 100_000.0)  # the whole face 100000 px away
    spread = body[1][0]
    body[1] = moved(body[1], lambda xy: (xy - xy.mean(0)) * 15 + xy.mean(0))  # a face 15x the image: a huge canvas
    listing.write_text("\n".join(",".join(r) for r in [header, *body]) + "\n")
    started = time.perf_counter()
    result = CliRunner().invoke(pipeline_command("affectnet"), ["--root", str(root), "--out", str(tmp_path / "out"),
                                                                "--landmarks", "annotations", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert time.perf_counter() - started < 30
    from fbench.shards.manifest import read_rejects

    reasons = {r["file"].split("/", 1)[-1]: r["reason"] for r in read_rejects(tmp_path / "out" / "affectnet" /
                                                                               "rejects.jsonl")}
    assert set(reasons) == {far, spread}, reasons
    assert all("lies mostly outside" in r for r in reasons.values()), reasons
    assert "2 samples" in result.output


def test_inside_fraction() -> None:
    from fbench.landmarks.crop import CropBox, inside_fraction

    assert inside_fraction(CropBox(50, 50, 22), 100, 100, scale=2.2) == 1.0
    assert inside_fraction(CropBox(0, 50, 10), 100, 100) == pytest.approx(0.5)
    assert inside_fraction(CropBox(0, 0, 10), 100, 100) == pytest.approx(0.25)
    assert inside_fraction(CropBox(1e5, 1e5, 10), 100, 100) == 0.0


# ---------------------------------------------- 6. read-only or full output, stale temporaries


def run_cli(code_args: list[str], fsize: int | None = None, timeout: float = 120) -> tuple[int, str]:
    """Run a command line (`python -c ...` args) in a subprocess, optionally with a file size limit
    (RLIMIT_FSIZE: writes beyond it fail with EFBIG, as on a full disk): (exit code, output)."""
    import resource
    import subprocess
    import sys

    def cap() -> None:
        if fsize is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.run([sys.executable, "-c", *code_args], capture_output=True, text=True, timeout=timeout,
                          preexec_fn=cap, env=env)
    return proc.returncode, proc.stdout + proc.stderr


PREP = "from pipelines import AFFECTNET; AFFECTNET.command_for('prep')()"
MAIN = "from fbench.cli import main; main()"


def test_prep_into_a_full_or_unwritable_out_is_one_line(affectnet_small, tmp_path) -> None:
    out = tmp_path / "out"
    rc, output = run_cli([PREP, "--root", str(affectnet_small), "--out", str(out), "--landmarks", "annotations",
                          "--no-progress"], fsize=20_000)
    assert rc == 1 and "Traceback" not in output, output
    assert "Error: " in output and "cannot write: file too large" in output and str(out) in output, output
    assert not list(out.rglob("*.tmp*")) and not list(out.rglob("*.tar"))
    rc, output = run_cli([PREP, "--root", str(affectnet_small), "--out", "/sys/fbench-no-such-out",
                          "--landmarks", "annotations", "--no-progress"])
    assert rc == 1 and "Traceback" not in output and "Error: /sys/fbench-no-such-out" in output, output


@pytest.mark.slow  # a subprocess importing torch; the fast variant is the prep one above
def test_flame_decode_into_a_full_out_is_one_line(flame_dir, tmp_path) -> None:
    np.savez(tmp_path / "p.npz", jaw=[0.1, 0, 0])
    rc, output = run_cli([MAIN, "flame", "decode", "--params", str(tmp_path / "p.npz"), "--out",
                          str(tmp_path / "m.obj"), "--flame", str(flame_dir)], fsize=5_000)
    assert rc == 1 and "Traceback" not in output and "m.obj" in output and "file too large" in output, output
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*.tmp")) and not (tmp_path / "m.obj").exists()


@pytest.mark.slow  # a subprocess importing torch; the fast variant is the prep one above
def test_fit_into_a_full_out_is_one_line(flame_dir, tmp_path) -> None:
    root = broken_famos(tmp_path / "FaMoS")
    rc, output = run_cli(["from pipelines import FAMOS; FAMOS.command_for('fit')()", "--root", str(root), "--out",
                          str(tmp_path / "out"), "--flame", str(flame_dir), "--no-progress"], fsize=600)
    assert rc == 1 and "Traceback" not in output and "file too large" in output, output


def test_next_run_removes_its_own_stale_temporaries(affectnet_small, tmp_path) -> None:
    out = tmp_path / "out"
    folder = out / "affectnet"
    # the names fbench.io's atomic writes use: .<name>.<random>.tmp<suffix>
    left = [folder / "train" / "affectnet-train-000000.tar.tmp", folder / ".manifest.json.k2j4h1.tmp.json",
            folder / ".prep" / "units" / ".train-000000.json.x8d9a.tmp.json"]
    foreign = folder / "notes.tmp"  # not a name fbench writes: kept
    for path in left + [foreign]:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"half written")
    result = CliRunner().invoke(pipeline_command("affectnet"), ["--root", str(affectnet_small), "--out", str(out),
                                                                "--landmarks", "annotations", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert not any(p.exists() for p in left) and foreign.exists()
    from fbench.fitting.store import PARTS_DIR, stale_temporaries

    fits = tmp_path / "fits"
    fit_left = [fits / ".fits.h5.abc123.tmp.h5", fits / ".summary.csv.q1w2e3.tmp.csv",
                fits / PARTS_DIR / "S1" / ".jaw.h5.zz.tmp.h5"]
    for path in fit_left:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"half written")
    assert stale_temporaries(fits) == sorted(fit_left)
    command = pipeline_command("famos")

    CliRunner().invoke(command, ["--root", str(broken_famos(tmp_path / "FaMoS")), "--out", str(fits),
                                 "--no-progress", "-o", "stride=0"])  # refused config: the lock was taken first
    assert not any(p.exists() for p in fit_left)


# ------------------------------------------------- 8. an empty --subjects/--sequences selection


@pytest.mark.parametrize("args, message", [
    (["--subjects", "nosuch"], "no subject nosuch; found 1: FaMoS_subject_001"),
    (["--sequences", "nosuch,other"], "no sequence nosuch, other; found 2: jaw, kissing"),
])
def test_empty_fit_selection_is_an_error_listing_what_exists(args, message, flame_dir, tmp_path) -> None:
    command = pipeline_command("famos")

    out = tmp_path / "out"
    result = CliRunner().invoke(command, ["--root", str(broken_famos(tmp_path / "FaMoS")), "--out", str(out),
                                          "--flame", str(flame_dir), "--no-progress", *args])
    assert result.exit_code == 1 and message in result.output and "Traceback" not in result.output, result.output
    assert not (out / "fits.h5").exists()


def test_empty_bp4d_selection_is_an_error_listing_what_exists(flame_dir, tmp_path) -> None:
    command = pipeline_command("bp4d", "fit")

    root = tmp_path / "BP4D"
    for task in ("T1", "T2"):
        (root / "F001" / task).mkdir(parents=True)
    for args, message in ((["--subjects", "M999"], "no subject M999; found 1: F001"),
                          (["--tasks", "T7,T8"], "no task T7, T8; found 2: T1, T2")):
        result = CliRunner().invoke(command, ["--root", str(root), "--out", str(tmp_path / "out"), "--flame",
                                              str(flame_dir), "--no-progress", *args])
        assert result.exit_code == 1 and message in result.output, result.output


def test_scan_files_are_bounded_regular_files(tmp_path) -> None:
    """Item 2 for meshes and scans: a link to a device is refused, and a PLY header that declares
    far more elements than its bytes hold is refused before a reader sizes arrays by it."""
    from fbench.geometry import MeshError, read_mesh

    link = tmp_path / "scan.obj"
    link.symlink_to("/dev/zero")
    with pytest.raises(MeshError, match=r"a character device \(links to /dev/zero\)"):
        within(5, lambda: read_mesh(link, units="mm"))
    bomb = tmp_path / "bomb.ply"
    bomb.write_bytes(b"ply\nformat binary_little_endian 1.0\nelement vertex 1000000000\nproperty float x\n"
                     b"property float y\nproperty float z\nelement face 0\nproperty list uchar int vertex_indices\n"
                     b"end_header\n" + b"\0" * 64)
    code = ("from fbench.geometry import MeshError, read_mesh\n"
            f"try:\n    read_mesh({str(bomb)!r}, units='mm')\nexcept MeshError as exc:\n    print('REFUSED', exc)\n")
    rc, output = run_capped(code, limit_mb=3000, timeout=60)
    assert rc == 0 and "REFUSED" in output and "header declares 1000000000 vertex elements" in output, output


def test_video_frames_above_the_pixel_limit_are_refused(tmp_path, monkeypatch) -> None:
    from fbench.shards.media import iter_video_frames, probe_video_frames
    from fbench.synth.video import write_h264

    clip = tmp_path / "clip.mp4"
    write_h264(clip, [np.zeros((64, 96, 3), np.uint8)] * 2, fps=25)
    assert len(list(iter_video_frames(clip))) == 2
    monkeypatch.setenv("FBENCH_MAX_IMAGE_PIXELS", "5000")  # below 96 x 64: as a 30000 x 30000 stream is by default
    for read in (lambda: list(iter_video_frames(clip)), lambda: probe_video_frames(clip)):
        with pytest.raises(InputError, match=r"clip.mp4: video frames: 96 x 64 pixels, more than the limit of 5000"):
            read()


def test_two_concurrent_preps_of_one_part_never_collide(affectnet_small, tmp_path) -> None:
    """The reproduction of item 5: two runs started together on one --out. One writes, the other
    refuses naming it (or, started after the first finished, finds every unit complete)."""
    import subprocess
    import sys

    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    args = [sys.executable, "-c", PREP, "--root", str(affectnet_small), "--out", str(out), "--landmarks",
            "annotations", "--no-progress"]
    runs = [subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
            for _ in range(2)]
    results = [(run.wait(timeout=120), run.stdout.read()) for run in runs]
    for rc, output in results:
        assert "Traceback" not in output, output
        assert rc == 0 or (rc == 1 and "is being written by another run (host" in output), output
    assert any(rc == 0 for rc, _ in results)
    assert not list(out.rglob("*.tmp*"))
    manifest = (out / "affectnet" / "manifest.json").read_text()
    assert '"samples":4' in manifest.replace(" ", "")
