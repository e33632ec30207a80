"""Clip files on disk: writer, reader of generated datasets, reader of a user's own folder of mp4s.

Format: a folder of clips, each a group of files sharing a stem (e.g. ``clip_0000042``):

- ``STEM.mp4`` (required): the video, MPEG-4 part 2 (fourcc ``mp4v``, even H and W) written by OpenCV, BGR
  by the codec and returned as RGB by the readers. The codec is lossy (about 2-3 grey levels mean absolute
  error at 64x64), so exact data lives in the npz.
- ``STEM.json`` (required): metadata, a JSON object with
    - ``video`` (str, required): the mp4 file name, relative to the folder;
    - ``prompt`` (str, required): the text prompt;
    - ``fps`` (float, default 8.0), ``context_frames`` (int, default 4);
    - ``spec`` (object, optional): :class:`SceneSpec` fields (``SceneSpec.to_dict``); required by :func:`load_clip`;
    - ``centroids``, ``velocities``, ``accelerations`` (optional): T lists of [x, y] (px, px/frame, px/frame^2);
    - ``arrays`` (str, optional): the npz file name; ``seed`` (int, optional): the render seed;
    - ``format`` = "newtonrl-clip" and ``version`` = 1 (written; not required from users).
- ``STEM.npz`` (optional, written for generated clips): lossless ``masks`` (T, H, W) bool, ``centroids``,
  ``velocities``, ``accelerations`` (T, 2) float64 and, when written with ``lossless_video=True``, ``video``
  (T, H, W, 3) uint8 (then preferred over the mp4 by the readers).

A user's own folder needs only ``STEM.mp4`` + ``STEM.json`` with ``video`` and ``prompt``. Any defect (an mp4
without its JSON, a JSON naming a missing video, an empty or corrupt video, malformed metadata) raises
:class:`InputError` naming the file.
"""

from __future__ import annotations

import io
import json
import tempfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from envs.newton.spec import Clip, SceneSpec
from pipeline.errors import ConfigError, InputError

FORMAT = "newtonrl-clip"
VERSION = 1
_TRAJECTORY_KEYS = ("centroids", "velocities", "accelerations")


@dataclass
class VideoRecord:
    """A clip read from disk; fields that the metadata does not provide are None.

    video (T, H, W, 3) uint8 RGB; masks (T, H, W) bool; centroids/velocities/accelerations (T, 2) in px, px/frame,
    px/frame^2; ``path`` is the metadata JSON.
    """

    path: Path
    video: np.ndarray
    prompt: str
    fps: float = 8.0
    context_frames: int = 4
    spec: SceneSpec | None = None
    seed: int | None = None
    masks: np.ndarray | None = None
    centroids: np.ndarray | None = None
    velocities: np.ndarray | None = None
    accelerations: np.ndarray | None = None


def encode_video(video: np.ndarray, fps: float) -> bytes:
    """mp4 (``mp4v``) bytes of a (T, H, W, 3) uint8 RGB video; checks that the file decodes to T frames."""
    frames, height, width = video.shape[:3]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "clip.mp4"
        writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), float(fps), (width, height))
        if not writer.isOpened():
            raise InputError(f"OpenCV cannot open an mp4v writer for {width}x{height} at {fps} fps")
        for frame in video:
            writer.write(np.ascontiguousarray(frame[..., ::-1]))
        writer.release()
        decoded = read_video(path)
        if decoded.shape != video.shape:
            raise InputError(f"mp4v round trip of a {video.shape} video decoded as {decoded.shape}")
        return path.read_bytes()


def read_video(path: str | Path) -> np.ndarray:
    """(T, H, W, 3) uint8 RGB frames of a video file; InputError if it is missing, empty or unreadable."""
    path = Path(path)
    if not path.is_file() or path.stat().st_size == 0:
        raise InputError(f"{path}: video file missing or empty")
    capture = cv2.VideoCapture(str(path))
    frames = []
    try:
        while True:
            ok, frame = capture.read()
            if not ok:
                break
            frames.append(frame[..., ::-1])
    finally:
        capture.release()
    if not frames:
        raise InputError(f"{path}: no decodable video frames (corrupt or unsupported file)")
    return np.ascontiguousarray(np.stack(frames))


def _arrays_bytes(clip: Clip, lossless_video: bool) -> bytes:
    arrays = {"masks": clip.masks, **{key: getattr(clip, key) for key in _TRAJECTORY_KEYS}}
    if lossless_video:
        arrays["video"] = clip.video
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    return buffer.getvalue()


def encode_clip(clip: Clip, stem: str, *, seed: int | None = None, lossless_video: bool = False) -> dict[str, bytes]:
    """File name -> bytes of one clip (mp4, npz, json) in the format of this module."""
    meta = {
        "format": FORMAT, "version": VERSION, "video": f"{stem}.mp4", "arrays": f"{stem}.npz",
        "prompt": clip.prompt, "fps": clip.spec.fps, "context_frames": clip.spec.context_frames,
        "spec": clip.spec.to_dict(), "seed": seed,
        **{key: np.asarray(getattr(clip, key)).tolist() for key in _TRAJECTORY_KEYS},
    }
    return {
        f"{stem}.mp4": encode_video(clip.video, clip.spec.fps),
        f"{stem}.npz": _arrays_bytes(clip, lossless_video),
        f"{stem}.json": json.dumps(meta).encode(),
    }


def write_files(files: dict[str, bytes], folder: str | Path) -> None:
    """Write ``name -> bytes`` into ``folder`` (created if needed)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)


def write_clip(clip: Clip, folder: str | Path, stem: str, *, seed: int | None = None,
               lossless_video: bool = False) -> Path:
    """Write one clip into ``folder``; returns the metadata JSON path."""
    write_files(encode_clip(clip, stem, seed=seed, lossless_video=lossless_video), folder)
    return Path(folder) / f"{stem}.json"


def _load_meta(path: Path) -> dict:
    try:
        meta = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: unreadable metadata JSON ({exc})") from exc
    if not isinstance(meta, dict):
        raise InputError(f"{path}: metadata must be a JSON object, got {type(meta).__name__}")
    for key in ("video", "prompt"):
        if not isinstance(meta.get(key), str) or not meta[key]:
            raise InputError(f"{path}: metadata key {key!r} must be a non-empty string")
    return meta


def _load_arrays(path: Path) -> dict[str, np.ndarray]:
    try:
        data = np.load(path)
        if not isinstance(data, np.lib.npyio.NpzFile):
            raise InputError(f"{path}: expected an .npz archive, got a single array")
        with data:
            return {key: data[key] for key in data.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise InputError(f"{path}: unreadable npz ({exc})") from exc


def _check_shapes(path: Path, arrays: dict[str, np.ndarray], video: np.ndarray) -> None:
    frames, height, width = video.shape[:3]
    expected = {key: (frames, 2) for key in _TRAJECTORY_KEYS} | {"masks": (frames, height, width)}
    for key, shape in expected.items():
        if key in arrays and arrays[key].shape != shape:
            raise InputError(f"{path}: {key} has shape {arrays[key].shape}, expected {shape} to match the video")


def load_record(path: str | Path) -> VideoRecord:
    """Read one clip from its metadata JSON ``path`` (see the module doc for the format)."""
    path = Path(path)
    meta = _load_meta(path)
    arrays = {key: np.asarray(meta[key], dtype=np.float64) for key in _TRAJECTORY_KEYS if meta.get(key) is not None}
    if meta.get("arrays"):
        arrays.update(_load_arrays(path.parent / meta["arrays"]))
    video = arrays.pop("video", None)
    video = read_video(path.parent / meta["video"]) if video is None else video
    _check_shapes(path, arrays, video)
    try:
        spec = SceneSpec.from_dict(meta["spec"]) if meta.get("spec") is not None else None
    except ConfigError as exc:
        raise InputError(f"{path}: bad 'spec' ({exc})") from exc
    if spec is not None and (video.shape[0] != spec.num_frames or video.shape[1:3] != tuple(spec.resolution)):
        raise InputError(f"{path}: video is {video.shape[:3]}, spec says {spec.num_frames} x {spec.resolution}")
    return VideoRecord(
        path=path, video=video, prompt=meta["prompt"], fps=float(meta.get("fps", 8.0)),
        context_frames=int(meta.get("context_frames", 4)), spec=spec, seed=meta.get("seed"),
        masks=arrays.get("masks"), **{key: arrays.get(key) for key in _TRAJECTORY_KEYS},
    )


def load_clip(path: str | Path) -> Clip:
    """Read a generated clip (metadata with ``spec``, trajectories and masks) as a :class:`Clip`."""
    record = load_record(path)
    missing = [key for key in ("spec", "masks", *_TRAJECTORY_KEYS) if getattr(record, key) is None]
    if missing:
        raise InputError(f"{record.path}: not a generated clip, missing {missing}")
    return Clip(
        video=record.video, masks=record.masks.astype(bool), centroids=record.centroids,
        velocities=record.velocities, accelerations=record.accelerations, prompt=record.prompt,
        context=record.video[: record.spec.context_frames].copy(), spec=record.spec,
    )


def metadata_paths(folder: str | Path) -> list[Path]:
    """Sorted metadata JSON paths of every mp4 in ``folder``; InputError for an mp4 without its JSON."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: not a directory")
    videos = sorted(folder.glob("*.mp4"))
    if not videos:
        raise InputError(f"{folder}: no .mp4 clips found")
    for video in videos:
        if not video.with_suffix(".json").is_file():
            raise InputError(f"{video}: missing metadata file {video.with_suffix('.json').name}")
    return [video.with_suffix(".json") for video in videos]


def iter_records(folder: str | Path) -> Iterator[VideoRecord]:
    """Lazily read a user's folder of mp4 + JSON clips (only ``video`` and ``prompt`` are required)."""
    for path in metadata_paths(folder):
        yield load_record(path)


def iter_clips(folder: str | Path) -> Iterator[Clip]:
    """Lazily read a generated dataset folder as :class:`Clip` objects."""
    for path in metadata_paths(folder):
        yield load_clip(path)


def read_dataset(folder: str | Path) -> list[Clip]:
    """All clips of a generated dataset folder, sorted by file name."""
    return list(iter_clips(folder))


def read_user_folder(folder: str | Path) -> list[VideoRecord]:
    """All clips of a user's folder of mp4s with metadata JSONs, sorted by file name."""
    return list(iter_records(folder))
