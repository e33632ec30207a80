"""``newtonrl eval RUN_DIR``: SFT base vs post-trained video policy on held-out scenes.

Prints a table and, with ``--json PATH``, writes ``{"split", "base": {...}, "post_trained": {...},
"reference": {...}, "improvement": {...}, "improvement_ci95": {...}}``; ``base``/``post_trained`` hold
``kinematic_residual``, the five NewtonBench metrics by name and ``displacement_px`` (mean object travel, to spot
motionless collapse); ``improvement_ci95`` the paired-bootstrap 95% interval of the mean-of-five and residual gains.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import torch

from envs.newton import SPLITS
from pipeline.config import load_config
from pipeline.errors import ConfigError, InputError
from pipeline.video_eval import DISPLACEMENT, FIVE_METRICS, MEAN_FIVE, evaluate_run
from pipeline.video_track import load_policy, load_post_trained, parse_video_section
from rewards.metrics import KINEMATIC_RESIDUAL

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", help="run directory of a video post-training run")
    parser.add_argument("--split", default="test", choices=[s for s in SPLITS if s != "train"],
                        help="held-out split")
    parser.add_argument("--clips", type=int, default=None, help="clips to evaluate (default: the run's eval.clips)")
    parser.add_argument("--json", default=None, help="write the results as JSON here")
    parser.add_argument("--out", default=None, help="also write sample GIF/PNG into this folder")


def main(args: argparse.Namespace) -> int:
    run_dir = Path(args.run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise InputError(f"{run_dir}: not a run directory (no config.yaml)")
    config = load_config(run_dir / "config.yaml")
    cfg = parse_video_section(config.video)
    if args.clips is not None:
        if args.clips < 1:
            raise ConfigError(f"--clips = {args.clips}: expected at least 1 clip")
        cfg = cfg.model_copy(update={"eval": cfg.eval.model_copy(update={"clips": args.clips})})
    torch.set_num_threads(cfg.threads)
    post = load_post_trained(cfg, run_dir)
    results = evaluate_run(cfg, load_policy(cfg.model), post, args.split, Path(args.out) if args.out else None)
    rows = [f"{'metric':<20}{'base':>12}{'post':>12}{'gain':>9}"]
    for key in (*FIVE_METRICS, KINEMATIC_RESIDUAL, DISPLACEMENT):
        rows.append(f"{key:<20}{results['base'][key]:>12.4g}{results['post_trained'][key]:>12.4g}"
                    f"{results['improvement'].get(key, float('nan')):>+9.1%}")
    lo, hi = results["improvement_ci95"][MEAN_FIVE]
    rows.append(f"{MEAN_FIVE:<44}{results['improvement'][MEAN_FIVE]:>+9.1%}  (95% CI {lo:+.1%} to {hi:+.1%}, paired "
                f"bootstrap over {cfg.eval.clips} clips)")
    print("\n".join(rows))  # noqa: T201 - CLI output
    if args.json:
        Path(args.json).write_text(json.dumps({"split": args.split, **results}, indent=2))
    return 0
