"""Pipeline efficiency of the Ray runtime: stage times, steps/s, sync vs async, Ray overhead, weight sync, scaling.

Synthetic roles with controlled stage costs (``--cost sleep``: the stage sleeps; ``busy``: it spins a core) stand
in for the video track's sampler / reward models / learner, so the figures measure the runtime, not the models.
The loop is the production one: :class:`pipeline.runtime.BatchStream` (sample -> score, ``max_staleness`` steps
ahead) and :class:`pipeline.weights.WeightSync` (versioned push of a real ``nn.Module`` state dict).
Efficiency = steps/s divided by 1 / (slowest stage); Ray overhead = step time minus the stage work on the critical
path, i.e. scheduling, transfers and the weight push. With S steps sampled ahead, step k + S starts when the learner
asks for step k, so the period of the work alone is max(slowest stage, (rollout + reward + learn) / (S + 1)): the
sum of the stages when synchronous (S = 0), the slowest stage once S is large enough to hide the sample -> score
latency.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import numpy as np
import torch
from torch import nn

from pipeline.bench import BenchResult
from pipeline.config import RuntimeSection
from pipeline.runtime import BatchStream, make_pool, ray_session
from pipeline.weights import WeightSync, apply_message, weights_message


def work(seconds: float, busy: bool) -> None:
    """Spend ``seconds``: sleep, or spin one core (a compute-bound stage)."""
    if not busy:
        time.sleep(seconds)
        return
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def mlp(params: int) -> nn.Module:
    """A stack of 512x512 linear layers with about ``params`` parameters (at least one layer)."""
    layers = max(1, round(params / (512 * 513)))
    return nn.Sequential(*[nn.Linear(512, 512) for _ in range(layers)])


class SynthRollout:
    """Rollout role with a fixed cost per step, split evenly over the workers; holds a versioned policy."""

    def __init__(self, cost_s: float, busy: bool, params: int, worker_index: int = 0) -> None:
        torch.set_num_threads(1)
        self.cost_s, self.busy, self.version = cost_s, busy, 0
        self.policy = mlp(params)

    def set_weights(self, message) -> int:  # noqa: ANN001 - WeightsMessage
        self.version = apply_message(self.policy, message, self.version)
        return self.version

    def rollout(self, share: float) -> dict[str, Any]:
        t0 = time.perf_counter()
        work(self.cost_s * share, self.busy)
        return {"version": self.version, "share": share, "rollout_s": time.perf_counter() - t0,
                "samples": np.zeros(4096)}


class SynthReward:
    """Reward role with a fixed cost per step, in proportion to the share of the step a batch part holds."""

    def __init__(self, cost_s: float, busy: bool, worker_index: int = 0) -> None:
        self.cost_s, self.busy = cost_s, busy

    def score(self, batch: dict[str, Any]) -> dict[str, Any]:
        t0 = time.perf_counter()
        work(self.cost_s * batch["share"], self.busy)
        return {**batch, "reward_s": time.perf_counter() - t0}


def run_loop(args: argparse.Namespace, runtime: RuntimeSection, *, workers: int, staleness: int) -> dict[str, Any]:
    """``args.steps`` steps of sample -> score -> learn -> push; per-step timings, medians over the last steps."""
    rollouts = make_pool(SynthRollout, workers, args.rollout_s, args.cost == "busy", args.params, runtime=runtime)
    rewards = make_pool(SynthReward, 1, args.reward_s, args.cost == "busy", runtime=runtime, kind="reward")
    policy = mlp(args.params)
    sync = WeightSync(rollouts)
    stream = BatchStream(rollouts, rewards, lambda _k: [(1.0 / workers,)] * workers, max_staleness=staleness)
    rows, version = [], 0
    try:
        stream.get(0, last=1)  # warm-up: actors started, first calls done
        stream = BatchStream(rollouts, rewards, lambda _k: [(1.0 / workers,)] * workers, max_staleness=staleness)
        for k in range(args.steps):
            t0 = time.perf_counter()
            scored = stream.get(k, last=args.steps)
            t1 = time.perf_counter()
            work(args.learn_s, args.cost == "busy")  # the learner's update on step k
            t2 = time.perf_counter()
            version += 1
            sync.push(weights_message(policy, version), wait=staleness == 0)
            t3 = time.perf_counter()
            rows.append({"step_s": t3 - t0, "wait_s": t1 - t0, "push_s": t3 - t2, "staleness": version - 1 -
                         min(b["version"] for b in scored), "rollout_s": max(b["rollout_s"] for b in scored),
                         "reward_s": sum(b["reward_s"] for b in scored)})
    finally:
        rollouts.close()
        rewards.close()
    keep = rows[len(rows) // 5:]  # drop the pipeline fill
    return {key: statistics.median(r[key] for r in keep) for key in keep[0]} | {"max_staleness": max(
        r["staleness"] for r in rows)}


def pipeline_table(args: argparse.Namespace, runtime: RuntimeSection) -> list[dict[str, Any]]:
    """Sync and async rows for 1 and 2 rollout workers."""
    rows = []
    for workers in (1, 2):
        for staleness in [0, *args.max_staleness]:
            m = run_loop(args, runtime, workers=workers, staleness=staleness)
            slowest = max(m["rollout_s"], m["reward_s"], args.learn_s)
            critical = max(slowest, (m["rollout_s"] + m["reward_s"] + args.learn_s) / (staleness + 1))
            rows.append({"mode": "sync" if staleness == 0 else "async", "max_staleness": staleness,
                         "rollout_workers": workers, "rollout_s": m["rollout_s"], "reward_s": m["reward_s"],
                         "learn_s": args.learn_s, "step_s": m["step_s"], "steps_per_s": 1.0 / m["step_s"],
                         "efficiency": slowest / m["step_s"], "push_s": m["push_s"],
                         "overhead_share": max(m["step_s"] - critical, 0.0) / m["step_s"],
                         "seen_staleness": m["max_staleness"]})
    return rows


class Receiver:
    """Holds a policy copy; applies pushed weights."""

    def __init__(self, params: int, worker_index: int = 0) -> None:
        torch.set_num_threads(1)
        self.policy, self.version = mlp(params), 0

    def set_weights(self, message) -> int:  # noqa: ANN001 - WeightsMessage
        self.version = apply_message(self.policy, message, self.version)
        return self.version


def sync_table(args: argparse.Namespace, runtime: RuntimeSection) -> list[dict[str, Any]]:
    """Median time of a versioned push (put + apply on every worker) against model size."""
    rows = []
    for params in args.sync_params:
        policy = mlp(int(params))
        for workers in (1, 2):
            pool = make_pool(Receiver, workers, int(params), runtime=runtime)
            sync, times = WeightSync(pool), []
            for version in range(1, args.sync_repeats + 2):
                message = weights_message(policy, version)
                t0 = time.perf_counter()
                sync.push(message)
                times.append(time.perf_counter() - t0)
            pool.close()
            mb = message.num_bytes / 1e6
            median = statistics.median(times[1:])
            rows.append({"params_M": sum(p.numel() for p in policy.parameters()) / 1e6, "MB": mb,
                         "workers": workers, "sync_s": median, "MB_per_s": mb * workers / median})
    return rows


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--steps", type=int, default=25, help="steps per configuration")
    parser.add_argument("--rollout-s", type=float, default=0.2, help="rollout cost per step (split over workers)")
    parser.add_argument("--reward-s", type=float, default=0.1, help="reward cost per step")
    parser.add_argument("--learn-s", type=float, default=0.1, help="learner cost per step")
    parser.add_argument("--cost", choices=["sleep", "busy"], default="sleep", help="how a stage spends its cost")
    parser.add_argument("--params", type=int, default=1_000_000, help="policy parameters pushed every step")
    parser.add_argument("--max-staleness", type=int, nargs="+", default=[1, 2, 3],
                        help="async modes to run: steps sampled ahead of the learner")
    parser.add_argument("--sync-params", type=float, nargs="*", default=[1e5, 1e6, 1e7, 5e7],
                        help="model sizes (parameters) for the weight-sync table")
    parser.add_argument("--sync-repeats", type=int, default=5)


def run(args: argparse.Namespace) -> BenchResult:
    runtime = RuntimeSection(num_cpus=2, cpus_per_worker=0.5, max_restarts=0)
    torch.set_num_threads(1)  # as every role: on 2 cores an idle OpenMP pool makes the driver's weight copy 5x slower
    with ray_session(runtime):
        pipeline = pipeline_table(args, runtime)
        sync = sync_table(args, runtime) if args.sync_params else []
    notes = [f"synthetic roles ({args.cost}): rollout {args.rollout_s} s per step split over the workers, reward "
             f"{args.reward_s} s per step, learn {args.learn_s} s; {args.params / 1e6:g}M-parameter policy pushed "
             "every step; medians over the steps after the first 20%",
             "efficiency = steps/s / (1 / slowest stage); overhead_share = (step - stage work on the critical path) / "
             "step, critical path = max(slowest stage, (rollout + reward + learn) / (max_staleness + 1)): "
             "scheduling + transfers + weight push",
             "async: BatchStream samples max_staleness steps ahead; the push is put and submitted by the rollout "
             "pool's sender thread, fetched by a busy rollout actor on its staging thread and applied before the next "
             "step's rollout; "
             "staleness = learner version - sampling version"]
    return BenchResult(title="newtonrl bench pipeline", tables={"pipeline": pipeline, "weight sync": sync},
                       notes=notes)
