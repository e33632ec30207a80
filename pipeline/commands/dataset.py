"""``newtonrl dataset``: generate a NewtonBench-style dataset, or inspect a folder of clips.

    newtonrl dataset generate --out DIR --split train --num-clips N [--primitive P] [--resolution 64 | HxW]
                              [--frames 16] [--workers 2] [--no-ray] [--seed 0] [--shard-size 16]
                              [--lossless] [--overwrite]
    newtonrl dataset inspect DIR [--check]
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

from envs.newton.dataset import load_record, metadata_paths
from envs.newton.spec import PRIMITIVES, SPLITS
from pipeline.bench import format_table
from pipeline.datagen import DatagenOptions, generate_dataset
from pipeline.errors import ConfigError, InputError


def parse_resolution(text: str) -> tuple[int, int]:
    """'64' -> (64, 64); '48x64' -> (48, 64) as (H, W)."""
    try:
        parts = [int(p) for p in text.lower().split("x")]
    except ValueError as exc:
        raise ConfigError(f"--resolution={text!r}: expected N or HxW (integers)") from exc
    if len(parts) not in (1, 2):
        raise ConfigError(f"--resolution={text!r}: expected N or HxW")
    return (parts[0], parts[-1])


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="dataset_command", required=True)
    gen = sub.add_parser("generate", help="render a dataset of clips (mp4 + json + npz per clip)")
    gen.add_argument("--out", required=True, type=Path, help="output folder (must be empty unless --overwrite)")
    gen.add_argument("--split", default="train", choices=SPLITS)
    gen.add_argument("--num-clips", type=int, required=True)
    gen.add_argument("--primitive", choices=PRIMITIVES, default=None, help="default: all of the split, balanced")
    gen.add_argument("--resolution", default="64", help="N (square) or HxW, px (default 64)")
    gen.add_argument("--frames", type=int, default=16, help="frames per clip (default 16)")
    gen.add_argument("--workers", type=int, default=2, help="parallel Ray tasks (default 2)")
    gen.add_argument("--no-ray", action="store_true", help="generate in-process (same output)")
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--shard-size", type=int, default=16, help="clips per task; part of the data's identity")
    gen.add_argument("--lossless", action="store_true", help="also store raw frames in each npz")
    gen.add_argument("--overwrite", action="store_true", help="replace clips already in --out")
    ins = sub.add_parser("inspect", help="count the clips of a folder per primitive / split / asset")
    ins.add_argument("folder", type=Path)
    ins.add_argument("--check", action="store_true", help="also decode every video and check the arrays")


def _generate(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    options = DatagenOptions(
        split=args.split, num_clips=args.num_clips, primitive=args.primitive,
        resolution=parse_resolution(args.resolution), num_frames=args.frames, seed=args.seed,
        shard_size=args.shard_size, lossless_video=args.lossless,
    )
    with tqdm(total=args.num_clips, unit="clip", desc=f"{args.split} clips") as bar:
        manifest = generate_dataset(args.out, options, workers=args.workers, use_ray=not args.no_ray,
                                    overwrite=args.overwrite, progress=bar.update)
    print(f"wrote {args.num_clips} clips to {args.out} (manifest {manifest.name})")
    return 0


def _spec_dict(path: Path, check: bool) -> dict:
    """The ``spec`` object of a clip's metadata ({} for user clips); ``check`` also decodes and validates it."""
    if check:
        load_record(path)
    try:
        meta = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: unreadable metadata JSON ({exc})") from exc
    return (meta.get("spec") or {}) if isinstance(meta, dict) else {}


def _inspect(args: argparse.Namespace) -> int:
    specs = [_spec_dict(path, args.check) for path in metadata_paths(args.folder)]
    counts = Counter(spec.get("primitive", "unknown") for spec in specs)
    rows = [{"primitive": name, "clips": counts[name]} for name in (*PRIMITIVES, "unknown") if counts[name]]
    print(format_table(rows + [{"primitive": "total", "clips": len(specs)}]))
    for key in ("shape", "background", "resolution", "num_frames"):
        values = Counter(str(spec.get(key, "?")) for spec in specs)
        print(f"{key}: " + ", ".join(f"{value} x{count}" for value, count in sorted(values.items())))
    manifest = args.folder / "manifest.json"
    if manifest.is_file():
        print(f"manifest: {json.dumps(json.loads(manifest.read_text()))}")
    return 0


def main(args: argparse.Namespace) -> int:
    if args.dataset_command == "generate":
        return _generate(args)
    return _inspect(args)
