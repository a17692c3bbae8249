"""`fbench reconstruct --generator` with a SMIRK model from SmirkConfig.tiny() (random weights: the
tests check the plumbing, shapes and finiteness, never the quality of the reconstruction)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from fbench.landmarks.crop import crop_for_method, transform_points
from fbench.reconstruct import ReconstructOptions, check_generator, run_reconstruct

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def model():
    from methods.smirk.plugin import SmirkConfig, build

    torch.manual_seed(0)
    return build(SmirkConfig.tiny())


@pytest.fixture(scope="module")
def flame(flame_dir):
    from fbench.flame import load_flame

    return load_flame(flame_dir, n_exp=50)


def _write(path: Path, rgb: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return path


def test_generate_runs_the_generator_on_the_render_and_the_masked_crop(model, flame, astronaut):
    from fbench.landmarks.mediapipe_detector import MediaPipeDetector
    from methods.smirk import masking

    with MediaPipeDetector() as det:
        points = det.detect(astronaut)
    crop, affine = crop_for_method(astronaut, points, model.crop)
    images = torch.from_numpy(crop).permute(2, 0, 1)[None]
    params = model.reconstruct(images)
    landmarks = torch.from_numpy(transform_points(affine, points[:, :2]))[None]
    seen = []
    hook = model.generator.register_forward_hook(lambda mod, args, out: seen.append((args[0], out)))
    try:
        out = model.generate(images, params, landmarks, flame, torch.Generator().manual_seed(0))
    finally:
        hook.remove()
    assert out.shape == (1, 3, 224, 224) and torch.isfinite(out).all() and 0 <= out.min() and out.max() <= 1
    (x, y), = seen
    assert torch.equal(y, out) and x.shape == (1, 6, 224, 224)
    hidden = masking.dilate_face(masking.hull_masks(landmarks, 224)) == 0
    assert 0.2 < hidden.float().mean() < 0.8  # the MediaPipe hull, grown by 10 pixels
    rendered, masked = x[:, :3], x[:, 3:]
    assert rendered.amax() > 0.3 and (rendered[:, 0] > 0).float().mean() > 0.1  # the FLAME face
    kept = ((masked > 0).any(1, keepdim=True) & hidden).sum()
    assert 0 < kept < 0.05 * 224 * 224  # the face is hidden but for sampled pixels
    assert torch.equal(masked * ~hidden, images * ~hidden)  # the rest of the crop as it is


def test_generator_png_for_an_image(model, flame, astronaut, tmp_path, monkeypatch):
    src = _write(tmp_path / "in" / "astronaut.png", astronaut)
    seeds = []
    generate = model.generate

    def recording(images, params, landmarks, flame, generator=None):
        seeds.append(generator.initial_seed())
        return generate(images, params, landmarks, flame, generator)

    monkeypatch.setattr(model, "generate", recording)
    options = ReconstructOptions(generator=True, flame=flame, progress=False)
    summary = run_reconstruct(model, [src], tmp_path / "out", options)
    assert summary.done == 1 and summary.faces == 1
    path = tmp_path / "out" / "astronaut" / "generator.png"
    picture = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
    assert picture.shape == astronaut.shape
    changed = np.abs(picture.astype(int) - astronaut).max(-1) > 8
    assert changed.mean() > 0.05  # the crop square is the generator's
    assert not changed[:, :40].any() and not changed[-40:].any()  # far from the face: the input
    again = run_reconstruct(model, [src], tmp_path / "out", options)
    assert again.skipped == 1  # resumable: generator.png counts as an output
    first = path.read_bytes()
    path.unlink()
    run_reconstruct(model, [src], tmp_path / "out", options)
    assert path.read_bytes() == first  # the masking's randomness is seeded
    run_reconstruct(model, [src], tmp_path / "seeded", ReconstructOptions(generator=True, flame=flame, progress=False,
                                                                          generator_seed=7))
    assert seeds == [0, 0, 7]


def test_generator_mp4_for_a_video(model, flame, astronaut, tmp_path):
    import av

    from fbench.synth.video import write_h264

    head = np.ascontiguousarray(astronaut[0:240, 100:340])
    frames = [np.roll(head, s, axis=1) for s in (0, 4, -4)]
    frames[1] = np.full_like(head, 100)  # no face: the frame is kept as it is
    write_h264(tmp_path / "clip.mp4", frames, fps=10)
    run_reconstruct(model, [tmp_path / "clip.mp4"], tmp_path / "out",
                    ReconstructOptions(generator=True, flame=flame, progress=False))
    with av.open(str(tmp_path / "out" / "clip" / "generator.mp4")) as c:
        decoded = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    assert len(decoded) == 3 and decoded[0].shape == head.shape
    assert np.abs(decoded[0].astype(int) - head).mean() > 5  # generated face, not the input
    assert np.abs(decoded[1].astype(int) - 100).mean() < 3


def test_generator_refused_for_methods_without_one(model, flame, astronaut, tmp_path):
    from methods.smirk.model import SmirkModel

    src = _write(tmp_path / "a.png", astronaut)
    encoder_only = SmirkModel(model.encoder, None)
    with pytest.raises(ValueError, match=r"^--generator: this SmirkModel has no generator"):
        run_reconstruct(encoder_only, [src], tmp_path / "out", ReconstructOptions(generator=True, flame=flame))

    class Oracle:  # any other Reconstructor
        crop, n_exp = model.crop, 50

        def reconstruct(self, images, items=None):
            raise AssertionError("never reached")

    with pytest.raises(ValueError, match=r"^--generator: the method's model \(Oracle\) has no image generator"):
        check_generator(Oracle())
    with pytest.raises(ValueError, match="FLAME"):
        ReconstructOptions(generator=True)
    assert not (tmp_path / "out").exists()


def test_cli_generator_error_is_one_line(model, tmp_path):
    from click.testing import CliRunner

    from fbench.cli.main import main as cli
    from methods.smirk.model import SmirkModel
    from methods.smirk.plugin import save

    ckpt = save(SmirkModel(model.encoder, None), tmp_path / "encoder_only.pt")
    img = _write(tmp_path / "a.png", np.zeros((64, 64, 3), np.uint8))
    result = CliRunner().invoke(cli, ["reconstruct", str(img), "--method", "smirk", "--checkpoint", str(ckpt),
                                      "--generator", "--out", str(tmp_path / "out")])
    assert result.exit_code != 0
    assert result.output.strip().splitlines() == [
        "Error: --generator: this SmirkModel has no generator (its checkpoint holds only the encoder)"]
