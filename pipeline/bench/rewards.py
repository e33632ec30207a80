"""``newtonrl bench rewards``: throughput of the NewtonRewards stage on ONE core.

For each flow backend, frame count and frame size: median over ``--repeats`` of the wall time to score
``--clips`` rendered clips (parabolic throws) with (a) the kinematic reward alone (flow + residual) and (b) the
combined reward (plus appearance features of clip and reference), via :class:`rewards.newton.NewtonRewardRole`.
For ``lk`` also the differentiable path: combined reward forward + backward on a torch batch of the same clips.

Share of an RL step = reward time / (sampling time + reward time) per clip, with the sampling time per clip
given by ``--sample-seconds``. Its default, 0.2 s, is an ASSUMPTION derived from the measured tiny base model on
2 cores (ENVIRONMENT.md: UNet2D 4.5 M params, batch 16, ~0.4 s per forward+backward step at 32x32 x 12 frames,
so ~0.13 s per forward of the batch; 20 Euler steps / 16 clips ~ 0.17 s per clip). Measure yours and pass it.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from pipeline.bench import BenchResult
from rewards.features import make_features
from rewards.flow import make_flow
from rewards.newton import NewtonRewardConfig, NewtonRewardRole, combined_reward_torch
from rewards.video_io import to_unit


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--flows", default="dis,farneback,lk", help="comma-separated flow backends")
    parser.add_argument("--sizes", default="64,128", help="comma-separated frame sizes (H = W), px")
    parser.add_argument("--frames", default="16,32", help="comma-separated frame counts")
    parser.add_argument("--clips", type=int, default=4, help="clips per timed batch")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats (median reported)")
    parser.add_argument("--sample-seconds", type=float, default=0.2, help="assumed sampling time per clip, s")
    parser.add_argument("--seed", type=int, default=0)


def _median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up (lazy imports, allocator)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _clips(size: int, frames: int, count: int, seed: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    from envs.newton import render_clip, sample_spec

    rng = np.random.default_rng(seed)
    specs = [sample_spec("train", rng, primitive="parabolic_throw", resolution=(size, size), num_frames=frames)
             for _ in range(count)]
    return [render_clip(s, seed=i).video for i, s in enumerate(specs)], [render_clip(s, seed=99).video for s in specs]


def _row(flow_name: str, size: int, frames: int, args: argparse.Namespace) -> dict:
    videos, refs = _clips(size, frames, args.clips, args.seed)
    flow, features = make_flow(flow_name), make_features("appearance")
    kin_role = NewtonRewardRole(NewtonRewardConfig(mass_weight=0.0), flow=flow)
    role = NewtonRewardRole(NewtonRewardConfig(), flow=flow, features=features)
    kin = _median_seconds(lambda: kin_role.score(videos), args.repeats) / args.clips
    combined = _median_seconds(lambda: role.score(videos, refs), args.repeats) / args.clips
    row = {"flow": flow_name, "size": size, "frames": frames, "kinematic_clips_per_s": 1 / kin,
           "combined_clips_per_s": 1 / combined,
           "step_share": combined / (combined + args.sample_seconds)}
    if hasattr(flow, "flow_torch"):
        x, ref = torch.cat([to_unit(v) for v in videos]), torch.cat([to_unit(v) for v in refs])

        def grad_step() -> None:
            xg = x.clone().requires_grad_(True)
            combined_reward_torch(xg, ref, config=NewtonRewardConfig(), flow=flow, features=features).sum().backward()

        row["grad_clips_per_s"] = args.clips / _median_seconds(grad_step, args.repeats)
    return row


def run(args: argparse.Namespace) -> BenchResult:
    import cv2

    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    rows = [_row(name, int(size), int(frames), args)
            for name in args.flows.split(",") for frames in args.frames.split(",") for size in args.sizes.split(",")]
    notes = [
        f"one core (cv2.setNumThreads(1), torch.set_num_threads(1)); median of {args.repeats} repeats of "
        f"{args.clips} clips; combined = kinematic + appearance mass reward against a reference clip",
        f"step_share = combined time / (combined time + {args.sample_seconds} s assumed sampling per clip)",
        "grad_clips_per_s: combined reward forward + backward on a torch batch (differentiable backends only)",
    ]
    return BenchResult(title="rewards throughput", tables={"throughput": rows}, notes=notes)
