"""Video track on the embedded default: sampling frames/s, reward clips/s, learner samples/s, peak memory."""

from __future__ import annotations

import argparse
import resource
import time
from typing import Any

import numpy as np

from pipeline.bench import BenchResult
from pipeline.learners.advantages import AdvantageConfig, compute_advantages
from pipeline.video_track import build_roles, fill_invalid, make_conditions, parse_video_section


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--repeats", type=int, default=5, help="timed iterations per learner (median reported)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--model", default="assets/sft_base", help="tiny SFT checkpoint folder")


def _median_time(fn, repeats: int) -> tuple[float, Any]:
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times)), out


def measure(algorithm: str, args: argparse.Namespace) -> dict[str, Any]:
    """Median stage times of one learner on the default video config -> one table row."""
    weights = {"kinematic": 1.0, "mass": 1.0} if algorithm == "grpo" else {"kinematic": 1.0}
    cfg = parse_video_section({"model": {"path": args.model}, "learner": {"algorithm": algorithm},
                               "reward": {"weights": weights}})
    rollout, scorer, learner = build_roles(cfg, seed=0)
    rng = np.random.default_rng(0)
    conditions = make_conditions("train", cfg.data.conditions_per_iteration, rng, resolution=cfg.data.resolution,
                                 num_frames=cfg.data.num_frames).repeat(cfg.data.group_size)
    clips = len(conditions.labels)
    frames = clips * (cfg.data.num_frames - conditions.context.shape[1])
    row: dict[str, Any] = {"learner": algorithm, "clips/iter": clips}
    if algorithm == "grpo":
        sample_s, batch = _median_time(lambda: rollout.sample(conditions, 0), args.repeats)
        score_s, rewards = _median_time(lambda: scorer.score(batch.videos, batch.conditions.reference), args.repeats)
        batch.rewards = fill_invalid(rewards)
        batch.advantages = compute_advantages(rewards, batch.groups, AdvantageConfig(weights=weights))
        update_s, _ = _median_time(lambda: learner.update(batch), args.repeats)
        row.update({"sample frames/s": frames / sample_s, "reward clips/s": clips / score_s})
    else:
        update_s, _ = _median_time(lambda: learner.update(conditions), args.repeats)
    row.update({"learner samples/s": clips / update_s, "update s": update_s})
    return row


def run(args: argparse.Namespace) -> BenchResult:
    import torch

    torch.set_num_threads(args.threads)
    result = BenchResult(title=f"video track, embedded default ({args.threads} threads, medians)")
    result.tables["throughput"] = [measure(algorithm, args) for algorithm in ("grpo", "reward_grad")]
    result.notes.append(f"peak RSS of this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")
    result.notes.append("reward_grad's update includes its own differentiable sampling of the last K steps")
    return result
