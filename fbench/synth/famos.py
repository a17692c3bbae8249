"""Synthetic FaMoS: FLAME registrations (metres) and raw scans (mm) of performed expression sequences.

Layout (see data_cards/famos.yaml)::

    <root>/<subject>/<sequence>/<sequence>.<frame:06d>.ply            registration: FLAME topology, metres,
                                                                       binary little-endian, float32 x y z
    <root>/<subject>/<sequence>/meshes/<sequence>.<frame:06d>.obj     raw scan: mm, own topology, noisy, holes
    <root>/fbench_ground_truth.h5

Subjects ``FaMoS_subject_001``...; sequences: SMIRK's twelve plus
``head_rotation_left_right`` (FaMoS has no neutral sequence: every sequence starts from
the neutral face, and so does every synthetic one: frame 0 has zero expression and jaw).
Each sequence is a smooth trajectory (``action_trajectory``): an envelope rising from
neutral into the sequence's action (named designed components of the synthetic model,
e.g. ``kissing`` = lip pucker + funnel; a fixed pseudo-random mix for a real FLAME),
plus small smooth variation of every component, head pose, neck and gaze. Eyelid
parameters are zero: registrations are explained by FLAME2020 without SMIRK's eyelids,
so ``FLAME(ground truth) == registration`` to float32 precision.

``--variant release`` writes the downloads' layout instead: ``registrations/<subject>/...``,
``scans/<subject>/<sequence>/<sequence>.<frame:06d>.obj`` and, for the same frames,
``sampled_scan_points/<subject>/<sequence>/<sequence>.<frame:06d>.npy`` ((4000, 3) float32 points
sampled on the scan surface, mm), as TEMPEH's download scripts extract them.

Raw scans are written for the frames in ``SCAN_FRAMES`` (the release has scans for a
subset of frames too): the subject's head remeshed in its own ~6000-vertex topology over
the whole head (no eyeballs), normal noise ``NOISE_MM``, 2-4 holes, in mm, in the same
coordinate frame as the registrations (x1000).
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import torch

from fbench.flame import FLAME, FlameParams
from fbench.geometry import Mesh, write_mesh
from fbench.synth import SynthResult
from fbench.synth.bp4d import (
    action_trajectory,
    expression_names,
    expression_template,
    flame_description,
    format_obj,
    head_triangles,
    cylindrical_uv,
    simulate_scan,
)
from fbench.synth.faces import PoseRanges, sample_params
from fbench.io import atomic_write, atomic_write_bytes, atomic_write_text
from fbench.synth.files import choose_corrupted, empty_file, truncate_file
from fbench.synth.ground_truth import GroundTruthWriter
from fbench.synth.remesh import remesh

DEFAULT_N = 2  # subjects
FRAMES_PER_SEQUENCE = 11  # frames 000000..000010: stride 10 keeps 0 and 10
SCAN_FRAMES = (0,)  # frames with a raw scan
N_EXP = 100
NOISE_MM = 0.2
SCAN_VERTICES = 6000
SMIRK_SEQUENCES = ("lips_back", "rolling_lips", "mouth_side", "kissing", "high_smile", "mouth_up",
                   "mouth_middle", "mouth_down", "blow_cheeks", "cheeks_in", "jaw", "lips_up")
SEQUENCES = SMIRK_SEQUENCES + ("head_rotation_left_right",)

# Action of each sequence in the synthetic model's designed expression components; jaw opening (rad).
SEQUENCE_EXPRESSIONS: dict[str, tuple[dict[str, float], float]] = {
    "lips_back": ({"lip_stretch": 2.5, "mouth_corners_down": 0.5}, 0.0),
    "rolling_lips": ({"lip_pucker": -1.5, "upper_lip_raise": -1.2, "lower_lip_depress": -1.2}, 0.0),
    "mouth_side": ({"mouth_left": 2.5, "smile_left": 0.8}, 0.02),
    "kissing": ({"lip_pucker": 2.5, "lip_funnel": 1.0}, 0.0),
    "high_smile": ({"smile_left": 2.5, "smile_right": 2.5, "squint_left": 1.0, "squint_right": 1.0}, 0.08),
    "mouth_up": ({"upper_lip_raise": 2.0, "nose_wrinkle": 1.0}, 0.0),
    "mouth_middle": ({"lip_pucker": 1.0, "lip_stretch": -1.5}, 0.0),
    "mouth_down": ({"mouth_corners_down": 2.5, "lower_lip_depress": 1.5}, 0.05),
    "blow_cheeks": ({"cheek_puff_left": 2.5, "cheek_puff_right": 2.5}, 0.0),
    "cheeks_in": ({"cheek_puff_left": -2.0, "cheek_puff_right": -2.0, "lip_pucker": 0.5}, 0.02),
    "jaw": ({"mouth_open": 1.0}, 0.35),
    "lips_up": ({"upper_lip_raise": 1.5, "lower_lip_depress": -1.5}, 0.0),
    "head_rotation_left_right": ({}, 0.0),
}


def subject_name(i: int) -> str:
    return f"FaMoS_subject_{i + 1:03d}"


# --variant: default, registrations and raw scans in one tree (TEMPEH's dataset-root form, scans in
# <subject>/<sequence>/meshes/); release, the downloads as they extract: registrations/ (the registrations
# archive), scans/<subject>/<sequence>/<sequence>.<frame>.obj (the test-subject scans) and
# sampled_scan_points/<subject>/<sequence>/<sequence>.<frame>.npy (the training scans as sampled points, mm).
VARIANTS = ("default", "release")
SAMPLED_POINTS = 4000  # points per sampled scan (TEMPEH samples its own count from the scan surface)


def registration_path(subject: str, sequence: str, frame: int, variant: str = "default") -> str:
    base = "registrations/" if variant == "release" else ""
    return f"{base}{subject}/{sequence}/{sequence}.{frame:06d}.ply"


def scan_path(subject: str, sequence: str, frame: int, variant: str = "default") -> str:
    if variant == "release":
        return f"scans/{subject}/{sequence}/{sequence}.{frame:06d}.obj"
    return f"{subject}/{sequence}/meshes/{sequence}.{frame:06d}.obj"


def sampled_points_path(subject: str, sequence: str, frame: int) -> str:
    return f"sampled_scan_points/{subject}/{sequence}/{sequence}.{frame:06d}.npy"


def _nan_ply(path: Path) -> None:
    """Corrupt: the first vertex of a binary PLY becomes NaN (the file stays well-formed)."""
    data = bytearray(path.read_bytes())
    start = data.index(b"end_header") + len(b"end_header")
    start = data.index(b"\n", start) + 1
    data[start:start + 12] = np.full(3, np.nan, dtype="<f4").tobytes()
    atomic_write_bytes(path, bytes(data))


def write(out: Path, n: int, seed: int, corrupt: int, flame: FLAME, variant: str = "default") -> SynthResult:
    """Write ``n`` synthetic FaMoS subjects, every sequence of SEQUENCES, under ``out`` (layout ``variant``)."""
    if n < 1:
        raise ValueError(f"need at least one subject, got n={n}")
    if variant not in VARIANTS:
        raise ValueError(f"unknown FaMoS variant {variant!r}; choose from {', '.join(VARIANTS)}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    names = expression_names(flame)
    model = copy.deepcopy(flame).double()
    faces = flame.faces.cpu().numpy()
    gt = GroundTruthWriter("famos", seed, attrs={
        "units": "registrations in metres, scans in mm (same frame, x1000)", "scan_noise_mm": NOISE_MM,
        "frames_per_sequence": FRAMES_PER_SEQUENCE, "flame_model": flame_description(flame),
        "note": "synthetic data: never compare with published FaMoS numbers; FaMoS has no neutral sequence, "
                "every sequence starts neutral (frame 0: zero expression and jaw)"})
    registrations, scans = [], []
    for s_idx in range(n):
        subject = subject_name(s_idx)
        rng = np.random.default_rng([seed, s_idx])
        shape = sample_params(rng, 1, n_exp=N_EXP).shape[0].double()
        with torch.no_grad():
            rest = model(FlameParams.from_dict({"shape": shape[None]}, n_shape=300, n_exp=N_EXP,
                                               dtype=torch.float64)).vertices[0].numpy()
        topology = remesh(rest, faces, SCAN_VERTICES, face_mask=head_triangles(flame, rest),
                          seed=int(rng.integers(2**31)))
        uv_all = cylindrical_uv(topology.points(rest))
        for sequence in SEQUENCES:
            spec, jaw_open = SEQUENCE_EXPRESSIONS[sequence]
            template = expression_template(names, spec, sequence, N_EXP)
            yaw = 0.6 if sequence.startswith("head_rotation") else 0.0
            params = action_trajectory(rng, FRAMES_PER_SEQUENCE, shape, template, jaw_open,
                                       PoseRanges(pitch=5.0, yaw=8.0, roll=3.0), yaw_sweep=yaw)
            with torch.no_grad():
                verts = model(params).vertices.numpy()
            for frame in range(FRAMES_PER_SEQUENCE):
                rel = registration_path(subject, sequence, frame, variant)
                write_mesh(out / rel, Mesh(verts[frame], faces, "m"), binary=True)
                row = FlameParams(**{k: v[frame:frame + 1] for k, v in params.as_dict().items()})
                gt.add(f"{subject}_{sequence}_{frame:06d}", rel, row, frame=frame)
                registrations.append(rel)
                if frame in SCAN_FRAMES:
                    scan_m, scan_faces, kept = simulate_scan(topology, verts[frame], rng, NOISE_MM / 1000.0,
                                                             holes=(2, 4))
                    rel_scan = scan_path(subject, sequence, frame, variant)
                    atomic_write_text(out / rel_scan, format_obj(scan_m * 1000.0, scan_faces, uv_all[kept], None))
                    scans.append(rel_scan)
                    if variant == "release":  # the training form: points sampled on the scan surface, mm
                        points = sample_surface(scan_m * 1000.0, scan_faces, SAMPLED_POINTS, rng)
                        atomic_write(out / sampled_points_path(subject, sequence, frame),
                                     lambda f, p=points: np.save(f, p.astype(np.float32), allow_pickle=False))
    corrupted = _corrupt(out, registrations, scans, corrupt, np.random.default_rng([seed, 77]))
    gt.write(out)
    return SynthResult(root=out, counts={"subjects": n, "sequences": n * len(SEQUENCES),
                                         "registrations": len(registrations), "scans": len(scans)},
                       corrupted=corrupted)


def sample_surface(vertices: np.ndarray, faces: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """(count, 3) points uniformly on a triangle mesh's surface (area-weighted faces, uniform barycentrics)."""
    tri = vertices[faces]
    area = 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)
    pick = rng.choice(len(faces), size=count, p=area / area.sum())
    u, v = rng.random(count), rng.random(count)
    flip = u + v > 1
    u[flip], v[flip] = 1 - u[flip], 1 - v[flip]
    t = tri[pick]
    return t[:, 0] + u[:, None] * (t[:, 1] - t[:, 0]) + v[:, None] * (t[:, 2] - t[:, 0])


CORRUPTIONS = ("truncated_ply", "nan_ply", "truncated_obj", "empty_ply")


def _corrupt(out: Path, registrations: list[str], scans: list[str], k: int, rng: np.random.Generator) -> list[str]:
    """Damage ``k`` files, cycling through CORRUPTIONS (never a sequence's first frame: it is the neutral one)."""
    if k == 0:
        return []
    regs = [r for r in registrations if not r.endswith(".000000.ply")]
    n_obj = sum(1 for i in range(k) if CORRUPTIONS[i % len(CORRUPTIONS)] == "truncated_obj")
    picked_regs = iter(choose_corrupted(rng, regs, k - n_obj))
    picked_scans = iter(choose_corrupted(rng, scans, n_obj))
    done = []
    for i in range(k):
        kind = CORRUPTIONS[i % len(CORRUPTIONS)]
        if kind == "truncated_obj":
            path = next(picked_scans)
            truncate_file(out / path, 0.5)
        else:
            path = next(picked_regs)
            if kind == "truncated_ply":
                truncate_file(out / path, 0.6)
            elif kind == "nan_ply":
                _nan_ply(out / path)
            else:
                empty_file(out / path)
        done.append(path)
    return sorted(done)
