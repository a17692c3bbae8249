"""Loading FLAME directories: the synthetic model, SMIRK's layout, and clear errors for bad files."""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest

from fbench.flame import FlameFileError, load_flame_assets, resolve_flame_dir
from fbench.flame.io import load_flame_model


@pytest.fixture
def flame_copy(flame_dir: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(flame_dir, tmp_path / "flame"))


def test_synthetic_model_loads_with_chumpy_shapedirs(flame_dir, flame_assets):
    raw = (flame_dir / "generic_model.pkl").read_bytes()
    assert b"chumpy.ch" in raw  # written like FLAME2020, and still loaded without chumpy
    assert flame_assets.shapedirs.shape[2] == 400 and flame_assets.num_shape == 300
    assert flame_assets.parents[0] == -1 and flame_assets.j_regressor.shape[0] == 5
    assert flame_assets.dynamic_lmk_faces.shape == (79, 17) and flame_assets.full_lmk_faces.shape == (68,)


def test_smirk_assets_layout_is_accepted(flame_dir, tmp_path):
    # SMIRK keeps FLAME2020/, FLAME_masks/ and mediapipe_landmark_embedding/ sub-folders under assets/.
    smirk = tmp_path / "assets"
    for sub, name in (("FLAME2020", "generic_model.pkl"), ("FLAME_masks", "FLAME_masks.pkl"),
                      ("mediapipe_landmark_embedding", "mediapipe_landmark_embedding.npz"), ("", "l_eyelid.npy"),
                      ("", "r_eyelid.npy"), ("", "landmark_embedding.npy")):
        (smirk / sub).mkdir(parents=True, exist_ok=True)
        shutil.copy(flame_dir / name, smirk / sub / name)
    assets = load_flame_assets(smirk)
    assert assets.files["model"] == smirk / "FLAME2020" / "generic_model.pkl"


def test_a_directory_with_only_the_model_decodes_and_uses_name_the_missing_companions(flame_copy, flame_dir):
    import torch

    from fbench.flame import FLAME, FlameParams

    full = FLAME(flame_dir)
    for name in ("landmark_embedding.npy", "mediapipe_landmark_embedding.npz", "FLAME_masks.pkl", "l_eyelid.npy",
                 "r_eyelid.npy"):
        (flame_copy / name).unlink()
    assets = load_flame_assets(flame_copy)
    assert set(assets.missing) == {"landmarks", "mediapipe", "masks", "l_eyelid", "r_eyelid", "mask_triangles"}
    bare = FLAME(assets)
    params = FlameParams.zeros(2, n_exp=10)
    params.expression[:, :3] = torch.tensor([1.5, -1.0, 0.5])
    params.jaw[:, 0] = 0.2
    with torch.no_grad():
        assert torch.allclose(bare(params).vertices, full(params).vertices, atol=1e-7)  # same surface
        assert bare(params).landmarks.shape == (2, 0, 3)
    with pytest.raises(FlameFileError, match=r"FLAME_masks\.pkl"):
        bare.masks
    with pytest.raises(FlameFileError, match=r"landmark_embedding\.npy"):
        bare.require("landmarks")
    params.eyelids[:, 0] = 0.5  # eyelids without SMIRK's eyelid blendshapes cannot be decoded
    with pytest.raises(FlameFileError, match=r"l_eyelid\.npy"):
        bare(params)


def test_a_directory_without_the_model_is_refused(flame_copy):
    (flame_copy / "generic_model.pkl").unlink()
    with pytest.raises(FlameFileError, match=r"lacks the model: .*generic_model\.pkl"):
        load_flame_assets(flame_copy)


def test_flame_decode_cli_with_only_generic_model(flame_copy, tmp_path):
    import numpy as np
    from click.testing import CliRunner

    from fbench.cli import main

    for name in ("landmark_embedding.npy", "mediapipe_landmark_embedding.npz", "FLAME_masks.pkl", "l_eyelid.npy",
                 "r_eyelid.npy"):
        (flame_copy / name).unlink()
    np.savez(tmp_path / "p.npz", jaw=[0.2, 0, 0], expression=[2.0])
    runner = CliRunner()
    result = runner.invoke(main, ["flame", "decode", "--flame", str(flame_copy), "--params", str(tmp_path / "p.npz"),
                                  "--out", str(tmp_path / "m.obj")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "m.obj").stat().st_size > 0
    result = runner.invoke(main, ["render", "--flame", str(flame_copy), "--params", str(tmp_path / "p.npz"),
                                  "--out", str(tmp_path / "r.png")])  # renders the face region: needs the masks
    assert result.exit_code == 1 and "FLAME_masks.pkl" in result.output and "Traceback" not in result.output


def test_truncated_model_names_the_file(flame_copy):
    path = flame_copy / "generic_model.pkl"
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(FlameFileError, match=str(path)):
        load_flame_assets(flame_copy)


def test_malicious_model_is_refused(flame_copy):
    class RunsCode:
        def __reduce__(self):
            return (shutil.rmtree, ("/nonexistent-fbench-test",))

    path = flame_copy / "generic_model.pkl"
    path.write_bytes(pickle.dumps({"v_template": RunsCode()}, protocol=2))
    with pytest.raises(FlameFileError, match="refusing to load shutil.rmtree"):
        load_flame_model(path)


def _rewrite_model(path: Path, **changes) -> None:
    model = load_flame_model(path)
    data = {"v_template": model["v_template"], "f": model["faces"], "shapedirs": model["shapedirs"],
            "posedirs": model["posedirs"], "J_regressor": model["j_regressor"], "weights": model["weights"],
            "kintree_table": np.stack([np.r_[4294967295, model["parents"][1:]], np.arange(len(model["parents"]))])}
    data.update(changes)
    path.unlink()
    np.savez(path.with_suffix(".npz"), **data)


def test_npz_model_and_bad_contents(flame_copy):
    pkl = flame_copy / "generic_model.pkl"
    base = load_flame_model(pkl)
    _rewrite_model(pkl)
    npz = flame_copy / "generic_model.npz"
    np.testing.assert_array_equal(load_flame_model(npz)["shapedirs"], base["shapedirs"])

    bad_v = base["v_template"].copy()
    bad_v[3, 1] = np.nan
    np.savez(npz, **{**dict(np.load(npz)), "v_template": bad_v})
    with pytest.raises(FlameFileError, match=f"{npz}.*'v_template' contains NaN"):
        load_flame_model(npz)

    bad_f = base["faces"].copy()
    bad_f[0, 0] = len(base["v_template"]) + 5
    np.savez(npz, **{**dict(np.load(npz)), "v_template": base["v_template"], "f": bad_f})
    with pytest.raises(FlameFileError, match="'f' has indices outside"):
        load_flame_model(npz)

    np.savez(npz, **{**dict(np.load(npz)), "f": base["faces"], "weights": base["weights"][:, :3]})
    with pytest.raises(FlameFileError, match="'weights' has shape"):
        load_flame_model(npz)


def test_resolution_order(flame_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("FBENCH_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("FBENCH_FLAME_DIR", raising=False)
    explicit = resolve_flame_dir(flame_dir)
    assert explicit.path == flame_dir and explicit.origin == "--flame" and explicit.synthetic
    monkeypatch.setenv("FBENCH_FLAME_DIR", str(flame_dir))
    assert resolve_flame_dir().origin == "$FBENCH_FLAME_DIR"
    monkeypatch.delenv("FBENCH_FLAME_DIR")
    # A FLAME under $FBENCH_HOME/flame wins over the synthetic default.
    shutil.copytree(flame_dir, tmp_path / "home" / "flame")
    assert resolve_flame_dir().origin == "$FBENCH_HOME"
    shutil.rmtree(tmp_path / "home" / "flame")
    default = resolve_flame_dir()
    assert default.origin == "synthetic default" and default.synthetic
    assert default.path.is_relative_to(tmp_path / "home")
    assert (default.path / "generic_model.pkl").read_bytes() == (flame_dir / "generic_model.pkl").read_bytes()
    with pytest.raises(FlameFileError, match="does not exist"):
        resolve_flame_dir(tmp_path / "nowhere")
