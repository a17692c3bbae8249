"""Synthetic MultiFace: real on-disk layout, exact geometry and cameras, corruption, determinism.

Files are read back with plain code written here (text parsing, np.fromfile, a minimal OBJ
reader), not with the writer's helpers, and checked against data_cards/multiface.yaml.
Two captures are written (small images, `image_downscale=16`): a clean one and the same seed
with every frame damaged; comparing them checks determinism and that corruption touches
nothing else.
"""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image, ImageDraw
from scipy import ndimage
from scipy.spatial import cKDTree

from fbench.flame import load_flame
from fbench.geometry import MeshError, point_mesh_distance, read_multiface_bin
from fbench.synth import multiface
from fbench.synth.ground_truth import read_ground_truth

CARD = yaml.safe_load((Path(__file__).resolve().parents[1] / "data_cards" / "multiface.yaml").read_text())
N, SEED, DOWNSCALE = 4, 3, 16


# ----------------------------------------------------------------------------- plain readers


def read_krt(path: Path) -> dict[str, dict[str, np.ndarray]]:
    """KRT as the release's loader reads it: name, 3 K rows, distortion, 3 [R|t] rows, blank."""
    lines = path.read_text().split("\n")
    cams, i = {}, 0
    while i < len(lines) and lines[i]:
        name = lines[i]
        K = np.array([[float(x) for x in lines[i + 1 + r].split()] for r in range(3)])
        dist = np.array([float(x) for x in lines[i + 4].split()])
        Rt = np.array([[float(x) for x in lines[i + 5 + r].split()] for r in range(3)])
        assert lines[i + 8] == "", f"camera {name}: block must end with a blank line"
        cams[name] = {"K": K, "dist": dist, "R": Rt[:, :3], "t": Rt[:, 3]}
        i += 9
    assert i == len(lines) - 1 and lines[-1] == "", "KRT ends after the last block's blank line"
    return cams


def read_obj(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    v, vt, f, ft = [], [], [], []
    for line in path.read_text().splitlines():
        parts = line.split()
        if not parts or parts[0].startswith("#"):
            continue
        if parts[0] == "v":
            v.append([float(x) for x in parts[1:4]])
        elif parts[0] == "vt":
            vt.append([float(x) for x in parts[1:3]])
        elif parts[0] == "f":
            assert len(parts) == 4, "triangles only"
            f.append([int(c.split("/")[0]) - 1 for c in parts[1:]])
            ft.append([int(c.split("/")[1]) - 1 for c in parts[1:]])  # v/vt corners, as the release
    return np.array(v), np.array(vt), np.array(f), np.array(ft)


def read_bin(path: Path) -> np.ndarray:
    return np.fromfile(path, dtype="<f4").reshape(-1, 3)


def project(cam: dict[str, np.ndarray], world: np.ndarray) -> np.ndarray:
    x = (world @ cam["R"].T + cam["t"]) @ cam["K"].T
    return x[:, :2] / x[:, 2:]


def files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.suffix != ".h5"}


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def flame(flame_dir):
    return load_flame(flame_dir)


@pytest.fixture(scope="module")
def clean(flame, tmp_path_factory):
    out = tmp_path_factory.mktemp("multiface_clean")
    result = multiface.write(out, n=N, seed=SEED, corrupt=0, flame=flame, image_downscale=DOWNSCALE)
    return out, result


@pytest.fixture(scope="module")
def damaged(flame, tmp_path_factory):
    out = tmp_path_factory.mktemp("multiface_damaged")
    result = multiface.write(out, n=N, seed=SEED, corrupt=N, flame=flame, image_downscale=DOWNSCALE)
    return out, result


@pytest.fixture(scope="module")
def capture(clean):
    """Everything read back with the plain readers, per frame."""
    out, _ = clean
    entities = [p for p in out.iterdir() if p.is_dir() and not p.name.startswith(".")]
    assert len(entities) == 1
    entity = entities[0]
    frames = [line.split() for line in (entity / "frame_list.txt").read_text().splitlines()]
    seg = frames[0][0]
    mesh_dir = entity / "tracked_mesh" / seg
    data = {"entity": entity, "frames": frames, "krt": read_krt(entity / "KRT"), "gt": read_ground_truth(out),
            "transform": [np.loadtxt(mesh_dir / f"{f}_transform.txt") for _, f in frames],
            "bin": [read_bin(mesh_dir / f"{f}.bin") for _, f in frames],
            "obj": [read_obj(mesh_dir / f"{f}.obj") for _, f in frames],
            "image": [np.asarray(Image.open(entity / "images" / seg / "400030" / f"{f}.png")) for _, f in frames]}
    return data


def flame_world(flame, gt, row: int) -> tuple[np.ndarray, object]:
    """GT FLAME vertices of a row in world mm, with the FLAME output."""
    with torch.no_grad():
        out = flame(gt.params(slice(row, row + 1)))
    v = out.vertices[0].double().numpy()
    s, R, t = gt.extras["flame_to_world_scale"][row], gt.extras["flame_to_world_R"][row], gt.extras["flame_to_world_t"][row]
    return s * v @ R.T + t, out


# ----------------------------------------------------------------------------- layout


def test_layout_matches_data_card(clean, capture):
    out, result = clean
    entity = capture["entity"]
    assert re.match(CARD["layout"]["entity_regex"], entity.name)
    assert entity.name == CARD["synthetic"]["entity"].replace("<9000000 + seed>", str(9_000_000 + SEED))
    seg = CARD["synthetic"]["segment"]
    assert [s for s, _ in capture["frames"]] == [seg] * N
    numbers = [int(f) for _, f in capture["frames"]]
    assert all(len(f) == 6 for _, f in capture["frames"]) and np.all(np.diff(numbers) == 3) and numbers[0] % 3 == 0
    expected = {CARD["layout"]["files"][k].format(entity=entity.name) for k in ("krt", "frame_list", "vert_mean", "vert_var")}
    for _, f in capture["frames"]:
        for key in ("tracked_mesh_obj", "tracked_mesh_bin", "head_pose"):
            expected.add(CARD["layout"]["files"][key].format(entity=entity.name, segment=seg, frame=int(f)))
        for cam in CARD["synthetic"]["image_cameras"]:
            expected.add(CARD["layout"]["files"]["image"].format(entity=entity.name, segment=seg, camera=cam, frame=int(f)))
    written = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert written == expected | {"fbench_ground_truth.h5"}
    assert result.root == out and result.corrupted == [] and result.counts["frames"] == N
    gt = capture["gt"]
    assert gt.attrs["dataset"] == "multiface" and bool(gt.attrs["synthetic"])
    assert list(gt.frames) == numbers
    assert gt.paths == [CARD["layout"]["files"]["image"].format(entity=entity.name, segment=seg, camera="400030",
                                                                frame=f) for f in numbers]


def test_default_size_and_cameras_follow_the_card():
    syn = CARD["synthetic"]
    assert tuple(syn["full_image_size"]) == multiface.FULL_IMAGE_SIZE == (1334, 2048)
    assert syn["image_downscale"] == multiface.DEFAULT_IMAGE_DOWNSCALE
    w, h = (np.array(syn["full_image_size"]) / syn["image_downscale"])
    assert [w, h] == syn["image_size"] and w / h == 1334 / 2048  # the release's aspect ratio exactly
    assert syn["cameras"] == sorted(multiface.CAMERA_PLACEMENT) and "400030" in syn["cameras"]
    assert multiface.DEFAULT_N == syn["default_frames"]


def test_krt_format_and_image_size(capture):
    krt, entity = capture["krt"], capture["entity"]
    assert sorted(krt) == CARD["synthetic"]["cameras"]
    width = round(CARD["synthetic"]["full_image_size"][0] / DOWNSCALE)
    height = round(CARD["synthetic"]["full_image_size"][1] / DOWNSCALE)
    for image in capture["image"]:
        assert image.shape == (height, width, 3) and image.dtype == np.uint8
    for name, cam in krt.items():
        assert cam["dist"].shape == (5,) and not cam["dist"].any()
        assert np.allclose(cam["R"] @ cam["R"].T, np.eye(3), atol=1e-12) and np.linalg.det(cam["R"]) > 0
        K = cam["K"]
        assert K[0, 1] == K[1, 0] == K[2, 0] == K[2, 1] == 0 and K[2, 2] == 1
        # Intrinsics of the written size: full-size focal lengths (~7400-7800 px) scaled down.
        assert 7000 < K[0, 0] * 1334 / width < 8200 and 7000 < K[1, 1] * 2048 / height < 8200
        assert 0.4 * width < K[0, 2] < 0.6 * width and 0.4 * height < K[1, 2] < 0.6 * height
        centre = -cam["R"].T @ cam["t"]  # cameras ~1.25 m from the head (mm)
        head = capture["gt"].extras["landmarks68_3d"][0].mean(0)
        assert 1100 < np.linalg.norm(centre - head) < 1400
    assert (entity / "KRT").read_text().count("\n\n") == len(krt)


# ----------------------------------------------------------------------------- geometry


def test_bin_and_obj_agree_and_share_one_topology(capture):
    faces0 = capture["obj"][0][2]
    for (v, vt, f, ft), b in zip(capture["obj"], capture["bin"]):
        assert b.dtype == np.float32 and v.shape == b.shape
        assert np.array_equal(v.astype(np.float32), b) and np.array_equal(v, b.astype(np.float64))
        assert np.array_equal(f, faces0) and ft.shape == f.shape and len(vt) and 0 <= ft.min() and ft.max() < len(vt)
        assert f.min() == 0 and f.max() == len(v) - 1  # every vertex used, 0-based after the 1-based file
    assert not np.array_equal(capture["bin"][0], capture["bin"][1])  # the expression moves


def test_tracked_mesh_is_not_flame_topology_but_lies_on_its_surface(flame, capture):
    gt = capture["gt"]
    eyeballs = torch.cat([flame.masks[k] for k in ("left_eyeball", "right_eyeball")]).numpy()
    keep_faces = ~np.isin(flame.faces.numpy(), eyeballs).any(1)
    for row, (transform, head) in enumerate(zip(capture["transform"], capture["bin"])):
        assert len(head) != flame.num_vertices
        # Head frame -> world with the frame's _transform.txt (world = R v + t).
        world = head.astype(np.float64) @ transform[:, :3].T + transform[:, 3]
        flame_mm, _ = flame_world(flame, gt, row)
        faces = flame.faces.numpy()
        on = point_mesh_distance(world, flame_mm, faces).distances
        assert on.max() < 0.01, f"tracked vertices off the GT FLAME surface by {on.max():.4f} mm"
        # The other way round: FLAME's surface (eyeballs excluded) is close to the tracked mesh,
        # whose triangles are chords of it (worst near the neck and eye boundaries).
        near = point_mesh_distance(flame_mm[np.unique(faces[keep_faces])], world, capture["obj"][0][2]).distances
        assert near.mean() < 0.3, f"mean FLAME-to-tracked distance {near.mean():.3f} mm"
        assert np.percentile(near, 95) < 1.5


def test_tracked_vertices_are_not_flame_vertices(flame, capture):
    flame_mm, _ = flame_world(flame, capture["gt"], 0)
    t = capture["transform"][0]
    world = capture["bin"][0].astype(np.float64) @ t[:, :3].T + t[:, 3]
    d, _ = cKDTree(flame_mm).query(world)
    assert d.min() > 0.01, "a tracked vertex sits on a FLAME vertex"


def test_flame_to_mesh_and_head_pose_are_consistent(flame, capture):
    gt = capture["gt"]
    for row, (transform, head) in enumerate(zip(capture["transform"], capture["bin"])):
        assert np.array_equal(gt.extras["head_pose"][row], transform)
        flame_mm, out = flame_world(flame, gt, row)
        v = out.vertices[0].double().numpy()
        s, R, t = (gt.extras[f"flame_to_mesh_{k}"][row] for k in ("scale", "R", "t"))
        in_mesh_frame = s * v @ R.T + t
        back = in_mesh_frame @ transform[:, :3].T + transform[:, 3]
        assert np.abs(back - flame_mm).max() < 1e-6
        if row == 0:  # the file's vertices lie on the GT surface expressed in the file's frame
            assert point_mesh_distance(head, in_mesh_frame, flame.faces.numpy()).distances.max() < 0.01
        assert gt.extras["flame_to_world_scale"][row] == 1000.0
        R_w = gt.extras["flame_to_world_R"][row]
        assert np.allclose(R_w @ R_w.T, np.eye(3), atol=1e-12)
    # Pose-normalised files: the head pose moves, the mesh in its file barely does (expression only).
    poses = np.stack(capture["transform"])
    assert np.abs(poses[1:] - poses[:1]).max() > 1e-3


# ----------------------------------------------------------------------------- cameras and images


def test_gt_landmarks_are_krt_projections_of_flame_landmarks(flame, capture):
    gt, cam = capture["gt"], capture["krt"]["400030"]
    for key in ("K", "R", "t"):
        assert np.array_equal(gt.extras[f"camera_{key}"][0], cam[key])
    for row in range(len(gt)):
        _, out = flame_world(flame, gt, row)
        s, R, t = (gt.extras[f"flame_to_world_{k}"][row] for k in ("scale", "R", "t"))
        for name, lmk in (("landmarks68", out.landmarks), ("landmarks_mp", out.landmarks_mp)):
            world = s * lmk[0].double().numpy() @ R.T + t
            assert np.abs(world - gt.extras[f"{name}_3d"][row]).max() < 1e-3  # float32 FLAME
            pixels = project(cam, world)
            assert pixels.shape == (lmk.shape[1], 2)
            assert np.abs(pixels - gt.extras[name][row]).max() < 1e-3
        h, w = capture["image"][row].shape[:2]
        inside = (gt.extras["landmarks68"][row] > 0).all() and (gt.extras["landmarks68"][row] < [w, h]).all()
        assert inside, "the whole face is in the picture"


def silhouette(cam: dict, world: np.ndarray, faces: np.ndarray, size: tuple[int, int], sub: int = 8) -> np.ndarray:
    """Pixels mostly covered by the projected triangles: PIL polygon fill on a `sub`-times finer
    grid (no depth test needed for a silhouette), box-averaged, more than half covered."""
    uv = project(cam, world) * sub
    canvas = Image.new("L", (size[0] * sub, size[1] * sub), 0)
    draw = ImageDraw.Draw(canvas)
    for tri in uv[faces]:
        # Continuous coordinates, fine-pixel centres at +0.5: shift so PIL's integer grid samples centres.
        draw.polygon([tuple(p - 0.5) for p in tri], fill=1)
    fine = np.asarray(canvas, dtype=np.float64).reshape(size[1], sub, size[0], sub)
    return fine.mean(axis=(1, 3)) > 0.5


def test_image_shows_the_face_where_the_mesh_projects(capture):
    gt, cam = capture["gt"], capture["krt"]["400030"]
    faces = capture["obj"][0][2]
    for row, (image, transform, head) in enumerate(zip(capture["image"], capture["transform"], capture["bin"])):
        h, w = image.shape[:2]
        world = head.astype(np.float64) @ transform[:, :3].T + transform[:, 3]
        mesh = silhouette(cam, world, faces, (w, h))
        mask = np.unpackbits(gt.extras["face_mask"][row], axis=1)[:, :w].astype(bool)
        iou = (mesh & mask).sum() / (mesh | mask).sum()
        # Disagreeing pixels per pixel of outline: the mean gap between the two outlines, in pixels
        # (about 0.25 here: the re-mesh's neck edge and float rounding; a misplaced mesh gives > 0.8).
        gap = (mesh ^ mask).sum() / (mask ^ ndimage.binary_erosion(mask)).sum()
        assert iou > 0.975 and gap < 0.5, f"frame {row}: silhouette IoU {iou:.3f}, outline gap {gap:.2f} px"
        # The picture changes across the silhouette: background outside, shaded face inside.
        img = image.astype(np.float64)
        edge = mesh[:, 1:] != mesh[:, :-1]
        ys, xs = np.nonzero(edge)
        inner = np.where(mesh[ys, xs], xs, xs + 1)
        outer = np.where(mesh[ys, xs], xs + 1, xs)
        step = np.clip(np.stack([inner - 2 * (outer - inner), outer + 2 * (outer - inner)]), 0, w - 1)
        jump = np.abs(img[ys, step[0]] - img[ys, step[1]]).max(1)
        assert np.median(jump) > 12, f"frame {row}: no visible edge at the mesh silhouette"


# ----------------------------------------------------------------------------- corruption, determinism


def test_corruption_kinds_are_detectable(damaged, capture):
    out, result = damaged
    gt = read_ground_truth(out)
    assert len(result.corrupted) == N == len(set(result.corrupted))
    assert sorted(gt.extras["corrupted"]) == [1, 2, 3, 4]
    kinds = gt.attrs["corruption_kinds"].split(",")
    assert kinds == list(multiface.CORRUPTIONS)
    n_vertices = len(capture["bin"][0])
    for row in range(len(gt)):
        kind = kinds[gt.extras["corrupted"][row] - 1]
        frame = gt.frames[row]
        entity = out / capture["entity"].name
        mesh_dir = entity / "tracked_mesh" / multiface.SEGMENT
        path = {"truncated_bin": mesh_dir / f"{frame:06d}.bin", "nan_bin": mesh_dir / f"{frame:06d}.bin",
                "missing_transform": mesh_dir / f"{frame:06d}_transform.txt",
                "truncated_png": entity / "images" / multiface.SEGMENT / "400030" / f"{frame:06d}.png"}[kind]
        assert path.relative_to(out).as_posix() in result.corrupted
        if kind == "truncated_bin":
            assert path.stat().st_size % 12 and path.stat().st_size < n_vertices * 12
            with pytest.raises(MeshError, match="truncated"):
                read_multiface_bin(path, num_vertices=n_vertices)
        elif kind == "nan_bin":
            assert path.stat().st_size == n_vertices * 12 and np.isnan(read_bin(path)).any()
            with pytest.raises(MeshError, match="NaN"):
                read_multiface_bin(path, num_vertices=n_vertices)
        elif kind == "missing_transform":
            assert not path.exists()
        else:
            with pytest.raises(OSError):
                Image.open(io.BytesIO(path.read_bytes())).load()


def test_deterministic_and_corruption_touches_nothing_else(clean, damaged):
    (a, _), (b, result) = clean, damaged
    fa, fb = files(a), files(b)
    assert set(fa) - set(fb) == {p for p in result.corrupted if p.endswith("_transform.txt")}
    for path, data in fb.items():
        assert (data == fa[path]) == (path not in result.corrupted), path
    ga, gb = read_ground_truth(a), read_ground_truth(b)
    assert ga.keys == gb.keys and ga.paths == gb.paths
    for k in ga.flame:
        assert np.array_equal(ga.flame[k], gb.flame[k])
    for k in ga.extras:
        if k != "corrupted":
            assert np.array_equal(ga.extras[k], gb.extras[k]), k
    assert not ga.extras["corrupted"].any()


def test_seed_changes_the_capture_and_bad_arguments_fail(flame, tmp_path, capture):
    with pytest.raises(ValueError, match="corrupt"):
        multiface.write(tmp_path / "x", n=2, seed=0, corrupt=3, flame=flame)
    with pytest.raises(ValueError, match="at least one frame"):
        multiface.write(tmp_path / "x", n=0, seed=0, corrupt=0, flame=flame)
    other = multiface.write(tmp_path / "other", n=1, seed=SEED + 1, corrupt=0, flame=flame, image_downscale=32)
    entity = [p for p in other.root.iterdir() if p.is_dir()][0]
    assert entity.name != capture["entity"].name
    assert read_krt(entity / "KRT")["400030"]["K"][0, 0] != capture["krt"]["400030"]["K"][0, 0]


def test_cli_writes_the_default_size_fast(tmp_path, flame_dir, monkeypatch):
    """The default-size CLI proof without the full-size render (13 of its 16 s): the photo is
    rendered at a quarter of the camera's resolution and resized to the camera's size, so
    everything else - the CLI's defaults, the image size it asks for, KRT, the file writing and
    the writer's landmark guard (landmarks mapped back exactly) - runs as in the slow test."""
    import cv2
    from click.testing import CliRunner

    from fbench.cli import main
    from fbench.synth import faces, multiface

    real = faces.render_photo
    k = 4.0

    def quarter(flame, params, camera, appearance, **kw):
        K = camera.K.copy()
        K[:2, :2] /= k
        K[:2, 2] = (K[:2, 2] + 0.5) / k - 0.5  # pixel centres stay pixel centres
        small = faces.Camera(K=K, R=camera.R, t=camera.t, width=round(camera.width / k),
                             height=round(camera.height / k))
        r = real(flame, params, small, appearance, **{**kw, "supersample": 1})
        size = (camera.width, camera.height)
        up = lambda p: (p + 0.5) * k - 0.5  # noqa: E731
        return faces.Rendered(image=cv2.resize(r.image, size, interpolation=cv2.INTER_LINEAR),
                              landmarks68=up(r.landmarks68), landmarks_mp=up(r.landmarks_mp),
                              face_mask=cv2.resize(r.face_mask.astype(np.uint8), size,
                                                   interpolation=cv2.INTER_NEAREST).astype(bool))

    monkeypatch.setattr(multiface, "render_photo", quarter)
    result = CliRunner().invoke(main, ["synth", "multiface", "--out", str(tmp_path), "--n", "1",
                                       "--flame", str(flame_dir)])
    check_default_size_output(result, tmp_path)


def check_default_size_output(result, out) -> None:
    """What `fbench synth multiface --n 1` at the default size promises: the card's image size and
    the frontal camera's calibration in both the KRT file and the ground truth."""
    assert result.exit_code == 0, result.output
    entity = [p for p in out.iterdir() if p.is_dir()][0]
    image = next((entity / "images").rglob("*.png"))
    assert Image.open(image).size == tuple(CARD["synthetic"]["image_size"])
    gt = read_ground_truth(out)
    K = read_krt(entity / "KRT")["400030"]["K"]
    assert np.array_equal(gt.extras["camera_K"][0], K) and 7000 < K[0, 0] * 2 < 8200


@pytest.mark.slow
def test_cli_writes_the_default_size(tmp_path, flame_dir):
    from click.testing import CliRunner

    from fbench.cli import main

    result = CliRunner().invoke(main, ["synth", "multiface", "--out", str(tmp_path), "--n", "1",
                                       "--flame", str(flame_dir)])
    check_default_size_output(result, tmp_path)


def test_remesh_on_a_sphere():
    """The re-meshing helper on its own: manifold, oriented as the source, on the surface, deterministic."""
    import trimesh

    from fbench.synth.remesh import remesh

    sphere = trimesh.creation.icosphere(subdivisions=3)
    v, f = np.asarray(sphere.vertices), np.asarray(sphere.faces)
    r = remesh(v, f, 300, seed=1)
    again = remesh(v, f, 300, seed=1)
    assert np.array_equal(r.faces, again.faces) and np.array_equal(r.barycentric, again.barycentric)
    assert abs(r.num_vertices - 300) <= 3 and r.stats["dropped_triangles"] == 0
    new = trimesh.Trimesh(r.points(v), r.faces, process=False)
    assert new.is_watertight and new.is_winding_consistent and new.volume > 0  # closed, outward like the source
    assert np.array_equal(r.source_faces, f[r.source_face_ids])
    assert (r.barycentric >= 0).all() and np.allclose(r.barycentric.sum(1), 1)
    assert point_mesh_distance(r.points(v), v, f).distances.max() < 1e-12
    assert cKDTree(v).query(r.points(v))[0].min() > 1e-6  # no source vertex reused
    moved = v * [1.0, 2.0, 0.5]  # the embedding follows any deformation of the source
    assert np.allclose(r.points(torch.as_tensor(moved)).numpy(), r.points(moved))
    assert point_mesh_distance(r.points(moved), moved, f).distances.max() < 1e-12
    with pytest.raises(ValueError, match="no triangles"):
        remesh(v, f, 300, face_mask=np.zeros(len(f), bool))
