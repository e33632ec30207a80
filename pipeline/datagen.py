"""Generate a NewtonBench-style dataset on Ray workers (remote tasks over shards) or in-process.

Clip ``i`` belongs to shard ``i // shard_size``; every shard draws its scenes and render seeds from
``np.random.SeedSequence([seed, shard_index])``, so the data depends only on (split, seed, shard_size and the
scene options), never on the number of workers or on Ray. Without ``primitive`` the clips cycle through the
split's primitives (clip ``i`` gets ``primitives[i % n]``), so every primitive gets the same count (+-1).
Workers return the encoded files (mp4, npz, json as bytes) and the driver writes them, so workers on other
nodes need no shared file system. Layout and format: :mod:`envs.newton.dataset`, plus ``manifest.json``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from envs.newton.dataset import encode_clip, write_files
from envs.newton.render import render_clip
from envs.newton.splits import sample_spec, split_primitives
from pipeline.errors import ConfigError, InputError

log = logging.getLogger(__name__)
MANIFEST = "manifest.json"


@dataclass(frozen=True)
class DatagenOptions:
    """What to generate.

    split: one of SPLITS; num_clips: total clips; primitive: a single primitive or None (all of the split's,
    balanced); resolution: (H, W) px; num_frames: T; seed: base seed; shard_size: clips per task (part of the
    data's identity); lossless_video: also store the raw frames in each npz.
    """

    split: str
    num_clips: int
    primitive: str | None = None
    resolution: tuple[int, int] = (64, 64)
    num_frames: int = 16
    seed: int = 0
    shard_size: int = 16
    lossless_video: bool = False

    def validate(self) -> None:
        """ConfigError naming the bad option."""
        primitives = split_primitives(self.split)
        if self.primitive is not None and self.primitive not in primitives:
            raise ConfigError(f"primitive={self.primitive!r}: split {self.split!r} has {primitives}")
        for key in ("num_clips", "shard_size", "num_frames"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key}={getattr(self, key)}: expected a positive integer")
        if self.num_frames < 3 or len(self.resolution) != 2 or min(self.resolution) < 16:
            raise ConfigError(
                f"resolution={self.resolution}, num_frames={self.num_frames}: expected H, W >= 16 and T >= 3"
            )
        if any(side % 2 for side in self.resolution):
            raise ConfigError(f"resolution={self.resolution}: the mp4v codec needs even H and W")

    @property
    def num_shards(self) -> int:
        return -(-self.num_clips // self.shard_size)


def clip_stem(index: int) -> str:
    """File stem of clip ``index``."""
    return f"clip_{index:07d}"


def generate_shard(options: DatagenOptions, shard_index: int) -> dict[str, bytes]:
    """Render and encode the clips of one shard; returns file name -> bytes."""
    rng = np.random.default_rng(np.random.SeedSequence([options.seed, shard_index]))
    primitives = split_primitives(options.split)
    start = shard_index * options.shard_size
    files: dict[str, bytes] = {}
    for index in range(start, min(start + options.shard_size, options.num_clips)):
        primitive = options.primitive or primitives[index % len(primitives)]
        spec = sample_spec(options.split, rng, primitive=primitive, resolution=tuple(options.resolution),
                           num_frames=options.num_frames)
        seed = int(rng.integers(2**31))
        files |= encode_clip(render_clip(spec, seed=seed), clip_stem(index), seed=seed,
                             lossless_video=options.lossless_video)
    return files


def _prepare_folder(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: exists and is not a directory")
    existing = list(out.iterdir()) if out.is_dir() else []
    if existing and not overwrite:
        raise InputError(f"{out}: not empty ({len(existing)} entries); choose a new --out or pass --overwrite")
    for path in existing:
        if path.is_file() and (path.name == MANIFEST or (path.name.startswith("clip_") and
                                                        path.suffix in (".mp4", ".json", ".npz"))):
            path.unlink()
    out.mkdir(parents=True, exist_ok=True)


def _count_clips(files: dict[str, bytes]) -> int:
    return sum(name.endswith(".json") for name in files)


def _run_in_process(options: DatagenOptions, out: Path, progress: Callable[[int], None]) -> None:
    for shard in range(options.num_shards):
        files = generate_shard(options, shard)
        write_files(files, out)
        progress(_count_clips(files))


def _run_ray(options: DatagenOptions, out: Path, workers: int, progress: Callable[[int], None]) -> None:
    import ray

    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
    try:
        task = ray.remote(num_cpus=1)(generate_shard)
        options_ref = ray.put(options)
        queue, pending = list(range(options.num_shards)), []
        while queue or pending:
            while queue and len(pending) < 2 * workers:  # bounded in flight: memory stays O(workers)
                pending.append(task.remote(options_ref, queue.pop(0)))
            done, pending = ray.wait(pending, num_returns=1)
            files = ray.get(done[0])
            write_files(files, out)
            progress(_count_clips(files))
    finally:
        if started:
            ray.shutdown()


def generate_dataset(out: str | Path, options: DatagenOptions, *, workers: int = 2, use_ray: bool = True,
                     overwrite: bool = False, progress: Callable[[int], None] | None = None) -> Path:
    """Generate ``options.num_clips`` clips into ``out``; returns the manifest path.

    ``workers``: Ray tasks in parallel (Ray is started locally with that many CPUs unless already initialised);
    ``use_ray=False`` runs in-process with identical output. ``progress(n)`` is called as n more clips are written.
    """
    options.validate()
    if workers < 1:
        raise ConfigError(f"workers={workers}: expected >= 1")
    out = Path(out)
    _prepare_folder(out, overwrite)
    report = progress or (lambda n: None)
    log.info("generating %d %s clips into %s (%s)", options.num_clips, options.split, out,
             f"ray, {workers} workers" if use_ray else "in-process")
    if use_ray:
        _run_ray(options, out, workers, report)
    else:
        _run_in_process(options, out, report)
    manifest = out / MANIFEST
    manifest.write_text(json.dumps({"generator": "newtonrl.datagen", **asdict(options)}, indent=2))
    return manifest

