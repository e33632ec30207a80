"""Run a post-training job from a YAML config (control track, video track, or both)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from pipeline.config import load_config
from pipeline.errors import ConfigError

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", nargs="?", help="YAML config (see configs/); omit with --resume")
    parser.add_argument("--resume", metavar="RUN_DIR",
                        help="continue RUN_DIR from its newest checkpoint (its config.yaml, plus any --set)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, e.g. --set control.rollout.nodes=15 (repeatable)")
    parser.add_argument("--no-ray", action="store_true",
                        help="run every role in-process (same as runtime.use_ray=false)")
    parser.add_argument("--out-dir", help="parent folder of the run directory (default: run.out_dir)")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


def main(args: argparse.Namespace) -> int:
    from pipeline.controller import train

    overrides = list(args.overrides) + (["runtime.use_ray=false"] if args.no_ray else [])
    if (args.config is None) == (args.resume is None):
        raise ConfigError("give either a CONFIG or --resume RUN_DIR (the run's own config.yaml is used)")
    config = load_config(args.config or Path(args.resume) / "config.yaml", overrides)
    run = train(config, out_dir=args.out_dir, progress=not args.no_progress, resume=args.resume)
    print(f"run directory: {run}")
    return 0
