"""Synthetic miniature LRS3 (LRS3-TED) in the real release's layout, with ground truth.

Layout (data_cards/lrs3.yaml)::

    <root>/{pretrain,trainval,test}/<video_id>/<clip:05d>.mp4
    <root>/{pretrain,trainval,test}/<video_id>/<clip:05d>.txt
    <root>/fbench_ground_truth.h5

A video id is an 11-character YouTube id and stands for one speaker (one talk); each has
several clips. Every clip is a 224x224, 25 fps H.264 video of a face-centred talking head
whose FLAME parameters follow a smooth trajectory with a fixed identity, the jaw opening
once per syllable of the words in the clip's transcript. The transcript is written as
LRS3's: `Text:`, `Conf:` and `Ref:` (the video id) header lines, a blank line, the face-track
table `FRAME X Y W H` (one row per frame with a face, box relative to the frame), a blank line,
then a `WORD START END ASDSCORE` table with times in seconds from the clip start; the first
test clip's file has no word table (some real files lack it; attrs transcripts_without_words).

The first trainval clip has a short cut-away (`NO_FACE_FRAMES` frames in its middle) where
the speaker is out of the picture: those rows keep their ground truth, with
`face_visible` False and landmarks projecting outside the image, so readers can check a
frame without a face keeps its row. `--corrupt K` damages K clips (never that one), in
turn: an empty video, a truncated video, a malformed transcript.
"""

from __future__ import annotations

import json
import math
import re
import string
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from fbench.flame import FLAME, FlameParams
from fbench.synth import SynthResult
from fbench.synth.faces import (Appearance, Camera, PoseRanges, background_image, frame_output, render_photo,
                                sample_params, smooth_trajectory, syllable_jaw, torch_threads, vertex_albedo)
from fbench.io import atomic_write_text
from fbench.synth.files import choose_corrupted
from fbench.synth.ground_truth import GroundTruthWriter
from fbench.synth.video import corrupt_video, write_h264

DEFAULT_N = 8  # clips
SIZE = 224  # LRS3 clips are 224x224 face-centred crops
FPS = 25
SPLITS = ("pretrain", "trainval", "test")
FRAMES = (14, 20)  # frames per clip, inclusive range (0.56-0.8 s; real clips last seconds)
NO_FACE_FRAMES = 3
CLIPS_PER_SPEAKER = 2
VIDEO_ID_CHARS = string.ascii_letters + string.digits + "-_"
CORRUPTIONS = ("empty_video", "truncated_video", "malformed_txt")
# Head pose of a speaker addressing an audience: mostly frontal.
POSE = PoseRanges(pitch=10.0, yaw=25.0, roll=6.0)
WORDS = ("THE", "AND", "SO", "WE", "THIS", "IS", "WHAT", "PEOPLE", "THINK", "ABOUT", "WORLD", "REALLY",
         "BECAUSE", "KNOW", "LIKE", "TIME", "CHANGE", "IDEA", "STORY", "TOGETHER", "YEARS", "CITY",
         "WATER", "FUTURE", "IMAGINE", "ACTUALLY", "SCIENCE", "QUESTION", "MOMENT", "LITTLE")


@dataclass
class Clip:
    split: str
    video_id: str
    clip: str  # five digits, the file stem
    n_frames: int
    speaker: int  # index into the speakers list
    no_face: list[int] = field(default_factory=list)  # frames where the face is out of the picture

    @property
    def stem(self) -> str:
        return f"{self.split}/{self.video_id}/{self.clip}"


def _video_id(rng: np.random.Generator, taken: set[str]) -> str:
    while True:
        vid = "".join(VIDEO_ID_CHARS[i] for i in rng.integers(len(VIDEO_ID_CHARS), size=11))
        if vid not in taken:
            taken.add(vid)
            return vid


def _split_counts(n: int) -> dict[str, int]:
    """Clips per split: trainval gets most (several speakers for a by-speaker split later);
    pretrain and test get about a sixth each once there are enough clips."""
    if n < 1:
        raise ValueError(f"LRS3 needs at least one clip, got n={n}")
    small = 0 if n < 3 else max(1, round(n / 6))
    return dict(zip(SPLITS, (small, n - 2 * small, small)))


def plan_clips(rng: np.random.Generator, n: int) -> list[Clip]:
    """Which clips to write: splits, speakers (video ids), clip numbers and lengths."""
    clips: list[Clip] = []
    taken: set[str] = set()
    speaker = 0
    for split, count in _split_counts(n).items():
        n_speakers = max(1, count // CLIPS_PER_SPEAKER) if count else 0
        for s in range(n_speakers):
            vid = _video_id(rng, taken)
            n_clips = count // n_speakers + (1 if s < count % n_speakers else 0)
            number = int(rng.integers(1, 10))
            for _ in range(n_clips):
                n_frames = int(rng.integers(FRAMES[0], FRAMES[1] + 1))
                clips.append(Clip(split, vid, f"{number:05d}", n_frames, speaker))
                number += int(rng.integers(1, 4))  # real clip numbers have gaps
            speaker += 1
    first_trainval = next((c for c in clips if c.split == "trainval"), None)
    if first_trainval is not None and first_trainval.n_frames >= NO_FACE_FRAMES + 6:
        mid = first_trainval.n_frames // 2 - NO_FACE_FRAMES // 2
        first_trainval.no_face = list(range(mid, mid + NO_FACE_FRAMES))
    return clips


def _syllables(word: str) -> int:
    return max(1, len(re.findall(r"[AEIOUY]+", word)))


def transcript(rng: np.random.Generator, duration: float) -> tuple[list[tuple[str, float, float, float]], int]:
    """Words with (start, end) times filling about `duration` seconds, ASD scores, and Conf."""
    words: list[tuple[str, float, float, float]] = []
    t = float(rng.uniform(0.0, 0.08))
    while True:
        word = WORDS[int(rng.integers(len(WORDS)))]
        length = 0.09 * _syllables(word) + float(rng.uniform(0.04, 0.1))
        # Two decimals as LRS3 writes them, never past the clip's end.
        start, end = round(t, 2), min(round(t + length, 2), math.floor(duration * 100 + 1e-9) / 100)
        if end - start < 0.08:
            break
        words.append((word, start, end, round(float(rng.uniform(2.0, 12.0)), 1)))
        t = end + float(rng.uniform(0.0, 0.06))
        if t >= duration - 0.08:
            break
    return words, int(rng.integers(1, 6))


def transcript_text(words: list[tuple[str, float, float, float]], conf: int, ref: str | None = None,
                    track: list[tuple[int, float, float, float, float]] | None = None, with_words: bool = True) -> str:
    """An LRS3 `.txt`: `Text:`, `Conf:` and `Ref:` header lines (two, two and three spaces after the
    colon), a blank line, the face-track table `FRAME X Y W H` (tab-separated, one row per frame, box
    relative to the frame size) when `track` is given, a blank line, then the `WORD START END
    ASDSCORE` table (space-separated) unless `with_words` is False (some real files lack it)."""
    lines = [f"Text:  {' '.join(w for w, *_ in words)}", f"Conf:  {conf}"]
    if ref is not None:
        lines.append(f"Ref:   {ref}")
    if track is not None:
        lines += ["", "FRAME \tX \tY \tW \tH "]
        lines += [f"{f:06d} \t{x:.3f} \t{y:.3f} \t{w:.3f} \t{h:.3f} " for f, x, y, w, h in track]
    if with_words:
        lines += ["", "WORD START END ASDSCORE"]
        lines += [f"{w} {s:.2f} {e:.2f} {a:.1f}" for w, s, e, a in words]
    return "\n".join(lines) + "\n"


def face_track(landmarks68: list[np.ndarray], visible: list[bool]) -> list[tuple[int, float, float, float, float]]:
    """The clip's face-track rows: per frame with a face, the box of its 68 landmarks relative to the
    frame size (x, y the top-left corner), rounded to 3 decimals as written."""
    rows = []
    for f, (lm, vis) in enumerate(zip(landmarks68, visible)):
        if vis:
            lo, hi = lm.min(axis=0), lm.max(axis=0)
            rows.append((f, *(round(float(v), 3) for v in (lo[0] / SIZE, lo[1] / SIZE, (hi[0] - lo[0]) / SIZE,
                                                            (hi[1] - lo[1]) / SIZE))))
    return rows


def malformed_transcript_text(words: list[tuple[str, float, float, float]], conf: int) -> str:
    """A transcript a strict reader must reject: header lines swapped and the `Text:` colon
    lost, one row cut short and one START that is not a number."""
    good = transcript_text(words, conf).split("\n")
    lines = [good[1], good[0].replace("Text:", "Text", 1), *good[2:4]]
    rows = good[4:-1]
    if rows:
        w, _, e, a = rows[0].split(" ")
        rows[0] = f"{w} O.{e[-2:]} {e} {a}"
        rows[-1] = rows[-1].rsplit(" ", 2)[0]
    return "\n".join(lines + rows) + "\n"


def write(out: Path, n: int = DEFAULT_N, seed: int = 0, corrupt: int = 0, flame: FLAME | None = None) -> SynthResult:
    """Write a miniature LRS3 with `n` clips under `out` (deterministic for `seed`)."""
    if flame is None:
        raise ValueError("lrs3.write needs a FLAME model (fbench.flame.load_flame())")
    with torch_threads(1):
        return _write(Path(out), n, seed, corrupt, flame)


def _write(out: Path, n: int, seed: int, corrupt: int, flame: FLAME) -> SynthResult:
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, 0x4C525333])  # 'LRS3': independent of other writers' streams
    clips = plan_clips(rng, n)
    candidates = [c.stem for c in clips if not c.no_face]
    if corrupt > len(candidates):
        raise ValueError(f"--corrupt {corrupt}: this LRS3 has {len(clips)} clips and {len(candidates)} may be "
                         f"corrupted (the clip with the no-face frames is kept intact); use a larger --n")
    # A stream of its own: corrupting changes nothing else (other files are as with --corrupt 0).
    to_corrupt = choose_corrupted(np.random.default_rng([seed, 0x4C525333, 1]), candidates, corrupt)
    kinds = {stem: CORRUPTIONS[i % len(CORRUPTIONS)] for i, stem in enumerate(to_corrupt)}

    n_exp = min(flame.n_exp, 50)
    speakers = []
    for _ in range(max(c.speaker for c in clips) + 1):
        speaker_rng = np.random.default_rng(rng.integers(2**63))
        appearance = Appearance.sample(speaker_rng)
        speakers.append((sample_params(speaker_rng, 1, n_exp=n_exp), appearance,
                         vertex_albedo(flame, appearance), background_image(appearance, 2 * SIZE, 2 * SIZE)))

    gt = GroundTruthWriter("lrs3", seed, attrs={})
    corrupted: list[str] = []
    no_words: list[str] = []
    first_test = next((c for c in clips if c.split == "test"), None)
    frames_total = 0
    for clip in tqdm(clips, desc="lrs3 clips", unit="clip", disable=None):  # on a terminal only
        clip_rng = np.random.default_rng(rng.integers(2**63))
        identity, appearance, albedo, background = speakers[clip.speaker]
        words, conf = transcript(clip_rng, clip.n_frames / FPS)
        params = clip_params(clip_rng, clip, identity, words, n_exp)
        # Face-centred crop as LRS3's face tracks: the head fills about half the frame.
        camera = Camera.looking_at_face(SIZE, SIZE, face_height_px=float(clip_rng.uniform(112, 132)),
                                        center_px=(SIZE / 2 + float(clip_rng.uniform(-4, 4)),
                                                   SIZE / 2 + float(clip_rng.uniform(0, 8))))
        # The cut-away: the same camera looking 2.5 frame widths beside the speaker.
        away = Camera(K=camera.K + np.array([[0, 0, 2.5 * SIZE], [0, 0, 0], [0, 0, 0]]), R=camera.R, t=camera.t,
                      width=SIZE, height=SIZE)
        kind = kinds.get(clip.stem)
        with torch.no_grad():
            outputs = flame(params)
        images, clip_landmarks, clip_visible = [], [], []
        for f in range(clip.n_frames):
            visible = f not in clip.no_face
            cam = camera if visible else away
            r = render_photo(flame, params[f], cam, appearance, albedo=albedo, background=background,
                             flame_output=frame_output(outputs, f))
            if visible != bool(r.face_mask.any()):  # the plan and the picture must agree
                raise RuntimeError(f"{clip.stem} frame {f}: face {'missing' if visible else 'in the picture'}")
            images.append(r.image)
            clip_landmarks.append(r.landmarks68)
            clip_visible.append(visible)
            gt.add(f"lrs3_{clip.split}_{clip.video_id}_{clip.clip}_f{f:03d}", f"{clip.stem}.mp4", params[f],
                   frame=f, **cam.as_arrays(), landmarks68=r.landmarks68.astype(np.float64),
                   landmarks_mp=r.landmarks_mp.astype(np.float64), face_visible=np.bool_(visible),
                   face_mask=np.packbits(r.face_mask, axis=1),
                   split=np.bytes_(clip.split), video_id=np.bytes_(clip.video_id), clip=np.bytes_(clip.clip),
                   corrupted=np.int8(CORRUPTIONS.index(kind) + 1 if kind else 0))
        video, text = out / f"{clip.stem}.mp4", out / f"{clip.stem}.txt"
        write_h264(video, images, FPS)
        # Sections as the release writes them; the first test clip lacks the word table (some real files do).
        with_words = clip is not first_test
        if kind == "malformed_txt":
            atomic_write_text(text, malformed_transcript_text(words, conf))
        else:
            atomic_write_text(text, transcript_text(words, conf, ref=clip.video_id,
                                                    track=face_track(clip_landmarks, clip_visible),
                                                    with_words=with_words))
        if not with_words and kind != "malformed_txt":
            no_words.append(f"{clip.stem}.txt")
        if kind in ("empty_video", "truncated_video"):
            corrupt_video(video, kind.split("_")[0])
        if kind:
            corrupted.append(f"{clip.stem}.txt" if kind == "malformed_txt" else f"{clip.stem}.mp4")
        frames_total += clip.n_frames

    gt.attrs.update({
        "fps": FPS, "image_size": np.array([SIZE, SIZE]), "codec": "h264 (libx264, yuv420p)",
        "flame_model": str(flame.source),
        "layout": "{split}/{video_id}/{clip:05d}.mp4 and .txt",
        "corrupted": json.dumps(corrupted),
        "corruption_kinds": ",".join(CORRUPTIONS),
        "no_face": json.dumps({f"{c.stem}.mp4": c.no_face for c in clips if c.no_face}),
        "transcripts_without_words": json.dumps(no_words),
        "transcript_sections": ("Text/Conf/Ref header; FRAME X Y W H face track (frames with a face; box of the "
                                "landmarks68 relative to the frame, 3 decimals); WORD START END ASDSCORE table "
                                "(except the files in transcripts_without_words)"),
        "conventions": (
            "landmarks68 / landmarks_mp: pixels, (0,0) = top-left image corner, pixel centres at +0.5. "
            "camera_K/R/t: pinhole, OpenCV axes, world->camera x_cam = R x + t in metres; the FLAME head is at "
            "the world origin; flame/cam and flame/translation are unused (zero). "
            "face_visible False: the face is out of the picture (its landmarks project outside the image). "
            "face_mask: np.unpackbits(face_mask, axis=1)[:, :width] is the head's silhouette. "
            "split, video_id, clip: ASCII bytes. corrupted: 0 intact, else 1 + index in corruption_kinds "
            "(the clip's video or transcript, see attrs corrupted)."),
    })
    gt.write(out)
    return SynthResult(root=out, counts={"clips": len(clips), "frames": frames_total,
                                         "speakers": len({c.video_id for c in clips})}, corrupted=corrupted)


def clip_params(rng: np.random.Generator, clip: Clip, identity: FlameParams,
                words: list[tuple[str, float, float, float]], n_exp: int) -> FlameParams:
    """The clip's FLAME trajectory: a smooth talking head whose jaw opens once per syllable of `words`."""
    params = smooth_trajectory(rng, clip.n_frames, identity, n_exp=n_exp, pose=POSE)
    syllables = []
    for word, start, end, _ in words:
        k = _syllables(word)
        syllables += [(start + (end - start) * i / k, start + (end - start) * (i + 1) / k) for i in range(k)]
    params.jaw[:, 0] = torch.as_tensor(syllable_jaw(rng, clip.n_frames, FPS, syllables), dtype=torch.float32)
    return params
