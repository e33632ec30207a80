"""Clip files (mp4 + json + npz), user folders, bad files, and dataset generation in-process and on Ray."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest

from envs.newton import read_dataset, read_user_folder, read_video, render_clip, sample_spec, write_clip
from envs.newton.dataset import encode_video, load_clip
from pipeline.commands import dataset as dataset_command
from pipeline.datagen import DatagenOptions, generate_dataset
from pipeline.errors import ConfigError, InputError

#: mp4v (MPEG-4 part 2) at 64x64: measured mean |error| 2.5-3.1 grey levels on these scenes
MP4_MEAN_ABS_TOLERANCE = 5.0


def _clips(n: int, split: str = "train", resolution=(64, 64), frames=16):
    rng = np.random.default_rng(11)
    return [render_clip(sample_spec(split, rng, resolution=resolution, num_frames=frames), seed=i) for i in range(n)]


@pytest.mark.parametrize(("resolution", "frames"), [((64, 64), 16), ((128, 128), 32)])
def test_round_trip(tmp_path, resolution, frames):
    clips = _clips(3, resolution=resolution, frames=frames)
    for i, clip in enumerate(clips):
        write_clip(clip, tmp_path, f"clip_{i:07d}", seed=i)
    back = read_dataset(tmp_path)
    assert len(back) == 3
    for original, loaded in zip(clips, back, strict=True):
        assert loaded.spec == original.spec and loaded.prompt == original.prompt
        np.testing.assert_array_equal(loaded.masks, original.masks)
        for key in ("centroids", "velocities", "accelerations"):
            np.testing.assert_array_equal(getattr(loaded, key), getattr(original, key))
        assert loaded.video.shape == original.video.shape and loaded.video.dtype == np.uint8
        error = np.abs(loaded.video.astype(int) - original.video.astype(int))
        assert error.mean() < MP4_MEAN_ABS_TOLERANCE
        np.testing.assert_array_equal(loaded.context, loaded.video[: original.spec.context_frames])


def test_lossless_video_option(tmp_path):
    clip = _clips(1)[0]
    path = write_clip(clip, tmp_path, "clip_0000000", lossless_video=True)
    np.testing.assert_array_equal(load_clip(path).video, clip.video)


def test_user_folder_needs_only_video_and_prompt(tmp_path):
    clip = _clips(1)[0]
    (tmp_path / "mine.mp4").write_bytes(encode_video(clip.video, fps=8.0))
    (tmp_path / "mine.json").write_text(json.dumps({"video": "mine.mp4", "prompt": "a ball falls"}))
    (record,) = read_user_folder(tmp_path)
    assert record.prompt == "a ball falls" and record.spec is None and record.centroids is None
    assert record.video.shape == clip.video.shape
    with pytest.raises(InputError, match="mine.json.*not a generated clip"):
        read_dataset(tmp_path)


def _write_pair(folder: Path, stem: str, video_bytes: bytes, meta: dict | str | None) -> None:
    (folder / f"{stem}.mp4").write_bytes(video_bytes)
    if meta is not None:
        (folder / f"{stem}.json").write_text(meta if isinstance(meta, str) else json.dumps(meta))


@pytest.mark.parametrize(
    ("video", "meta", "match"),
    [
        (b"", {"video": "bad.mp4", "prompt": "p"}, r"bad\.mp4: video file missing or empty"),
        (b"\x00not an mp4 at all" * 50, {"video": "bad.mp4", "prompt": "p"}, r"bad\.mp4: no decodable video frames"),
        ("good", None, r"bad\.mp4: missing metadata file bad\.json"),
        ("good", "{not json", r"bad\.json: unreadable metadata JSON"),
        ("good", {"video": "bad.mp4"}, r"bad\.json: metadata key 'prompt'"),
        ("good", {"video": "other.mp4", "prompt": "p"}, r"other\.mp4: video file missing"),
        ("good", {"video": "bad.mp4", "prompt": "p", "centroids": [[0, 0]]}, r"bad\.json: centroids has shape"),
        ("good", {"video": "bad.mp4", "prompt": "p", "arrays": "bad.json"}, r"bad\.json: unreadable npz"),
        ("good", {"video": "bad.mp4", "prompt": "p", "spec": {"primitive": "free_fall"}}, r"bad\.json: bad 'spec'"),
    ],
)
def test_bad_files_raise_input_error_naming_the_file(tmp_path, video, meta, match):
    good = encode_video(_clips(1)[0].video, fps=8.0)
    _write_pair(tmp_path, "bad", good if video == "good" else video, meta)
    with pytest.raises(InputError, match=match):
        read_user_folder(tmp_path)


def test_missing_folder_and_empty_folder(tmp_path):
    with pytest.raises(InputError, match="not a directory"):
        read_user_folder(tmp_path / "nope")
    with pytest.raises(InputError, match="no .mp4"):
        read_user_folder(tmp_path)
    with pytest.raises(InputError, match="missing or empty"):
        read_video(tmp_path / "x.mp4")


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.name != "manifest.json"}


def test_in_process_generation_is_balanced_and_guarded(tmp_path):
    options = DatagenOptions(split="ood-speed", num_clips=6, shard_size=4, seed=3)
    ticks = []
    generate_dataset(tmp_path / "a", options, use_ray=False, progress=ticks.append)
    assert sum(ticks) == 6
    clips = read_dataset(tmp_path / "a")
    primitives = [c.spec.primitive for c in clips]
    assert primitives == ["horizontal_throw", "parabolic_throw", "ramp_down", "ramp_up"] + primitives[:2]
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert manifest["split"] == "ood-speed" and manifest["num_clips"] == 6
    with pytest.raises(InputError, match="not empty"):
        generate_dataset(tmp_path / "a", options, use_ray=False)
    before = _files(tmp_path / "a")
    generate_dataset(tmp_path / "a", DatagenOptions(split="ood-speed", num_clips=2, shard_size=4, seed=3),
                     use_ray=False, overwrite=True)
    after = _files(tmp_path / "a")  # old clips removed; the first clips of a shard do not depend on num_clips
    assert sorted(after) == [f"clip_000000{i}.{ext}" for i in range(2) for ext in ("json", "mp4", "npz")]
    assert after == {name: before[name] for name in after}
    with pytest.raises(ConfigError, match="primitive"):
        generate_dataset(tmp_path / "c", DatagenOptions(split="ood-friction", num_clips=1, primitive="free_fall"))
    with pytest.raises(ConfigError, match="even"):
        generate_dataset(tmp_path / "c", DatagenOptions(split="train", num_clips=1, resolution=(63, 64)))


def test_ray_generation_equals_in_process(tmp_path):
    ray = pytest.importorskip("ray")
    options = DatagenOptions(split="test", num_clips=4, shard_size=1, seed=5)
    generate_dataset(tmp_path / "local", options, use_ray=False)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        generate_dataset(tmp_path / "ray", options, workers=2, use_ray=True)
    finally:
        ray.shutdown()
    local, remote = _files(tmp_path / "local"), _files(tmp_path / "ray")
    assert len(local) == 12 and local == remote


def test_cli_generate_and_inspect(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    dataset_command.add_arguments(parser)
    out = tmp_path / "ds"
    args = parser.parse_args(["generate", "--out", str(out), "--split", "train", "--num-clips", "5", "--no-ray",
                              "--primitive", "ramp_up", "--resolution", "48x64", "--frames", "12"])
    assert dataset_command.main(args) == 0
    (clip,) = {c.spec.resolution for c in read_dataset(out)}
    assert clip == (48, 64)
    capsys.readouterr()
    assert dataset_command.main(parser.parse_args(["inspect", str(out), "--check"])) == 0
    text = capsys.readouterr().out
    assert "ramp_up      5" in text and "total      5" in text and '"split": "train"' in text
    with pytest.raises(ConfigError, match="resolution"):
        dataset_command.main(parser.parse_args(["generate", "--out", str(tmp_path / "x"), "--num-clips", "1",
                                                "--resolution", "big", "--no-ray"]))
