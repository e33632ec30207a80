"""``newtonrl bench newton-truth``: do the NewtonRewards proxies measure what they claim on rendered scenes?

For each of the five primitives, ``--pairs`` scenes of ``--split`` are rendered at ``--resolution`` with
``--frames`` frames and scored with the ``--flow`` backend:

1. velocity: the mean flow inside the true object mask of each frame pair vs the simulator's displacement over
   that pair (centroid[t+1] - centroid[t], the exact mean velocity over the frame interval); relative error
   |v_flow - v_true| / |v_true| over pairs with |v_true| >= 0.5 px/frame, median per primitive.
2. perturbed twins (same object, scene and seed; :func:`envs.newton.render_trajectory`): ``accel`` (from a frame
   in the middle third on, the acceleration changes by ``--accel-change`` x g in a random direction), ``jitter``
   (i.i.d. Gaussian offsets of std ``--jitter`` x min(H, W) per frame and axis), ``teleport`` (from a frame in the
   middle half on, the path is shifted by ``--teleport`` x min(H, W) in a random direction). Pairwise accuracy =
   share of pairs whose physical clip has the lower kinematic residual.
3. frozen clip: the object held at its first position. Combined reward (weights 1, 1; appearance features)
   against a reference rendered with another seed (another texture draw of the same scene), vs the physical clip's.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from pipeline.bench import BenchResult
from pipeline.errors import ConfigError
from rewards.features import make_features
from rewards.flow import make_flow
from rewards.newton import REDUCTIONS, KinematicConfig, NewtonRewardConfig, NewtonRewardRole

PERTURBATIONS = ("accel", "jitter", "teleport")
MIN_TRUE_SPEED = 0.5  # px/frame: slower frame pairs are left out of the relative velocity error


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pairs", type=int, default=200, help="scenes (physical/twin pairs) per primitive")
    parser.add_argument("--resolution", type=int, default=64, help="frame height = width, px")
    parser.add_argument("--frames", type=int, default=16, help="frames per clip")
    parser.add_argument("--flow", default="dis", help="flow backend name (rewards.flow)")
    parser.add_argument("--features", default="appearance", help="feature backend of the mass reward")
    parser.add_argument("--reduction", default=KinematicConfig().reduction, choices=REDUCTIONS,
                        help="temporal statistic of the kinematic residual")
    parser.add_argument("--split", default="train", help="scene split to sample")
    parser.add_argument("--accel-change", type=float, default=1.0, help="acceleration change, multiples of g")
    parser.add_argument("--jitter", type=float, default=0.02, help="jitter std, fraction of the frame size")
    parser.add_argument("--teleport", type=float, default=0.1, help="teleport distance, fraction of the frame size")
    parser.add_argument("--primitives", default="all", help="comma-separated primitives, or 'all'")
    parser.add_argument("--seed", type=int, default=0)


def perturb(positions: np.ndarray, kind: str, rng: np.random.Generator, *, gravity: float, size: int,
            accel_change: float, jitter: float, teleport: float) -> np.ndarray:
    """A non-Newtonian twin of a centroid path (T, 2) px; ``size`` = min(H, W) px, ``gravity`` px/frame^2."""
    t = len(positions)
    direction = rng.normal(size=2)
    direction /= np.linalg.norm(direction)
    if kind == "accel":
        start = rng.integers(t // 3, 2 * t // 3 + 1)
        lag = np.clip(np.arange(t) - start, 0, None)[:, None]
        return positions + 0.5 * accel_change * gravity * direction * lag**2
    if kind == "jitter":
        return positions + rng.normal(0.0, jitter * size, positions.shape)
    if kind == "teleport":
        start = rng.integers(t // 4, 3 * t // 4 + 1)
        shifted = positions.copy()
        shifted[start:] += teleport * size * direction
        return shifted
    raise ValueError(f"unknown perturbation {kind!r}")


def velocity_errors(flow: np.ndarray, masks: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Relative errors of the in-mask mean flow (T-1, H, W, 2) vs centroid displacements, fast pairs only."""
    measured = np.stack([f[m].mean(0) if m.any() else np.zeros(2) for f, m in zip(flow, masks[:-1], strict=True)])
    true = np.diff(centroids, axis=0)
    speed = np.linalg.norm(true, axis=1)
    keep = speed >= MIN_TRUE_SPEED
    return np.linalg.norm(measured - true, axis=1)[keep] / speed[keep]


def _primitive_row(primitive: str, args: argparse.Namespace, role: NewtonRewardRole, rng: np.random.Generator,
                   ) -> dict:
    from envs.newton import render_clip, render_trajectory, sample_spec

    res = (args.resolution, args.resolution)
    errors, residuals, combined = [], {k: [] for k in ("physical", *PERTURBATIONS)}, {"physical": [], "frozen": []}
    for _ in range(args.pairs):
        spec = sample_spec(args.split, rng, primitive=primitive, resolution=res, num_frames=args.frames)
        seed = int(rng.integers(2**31))
        clip = render_clip(spec, seed=seed)
        errors.append(velocity_errors(role.flow.flow(clip.video), clip.masks, clip.centroids))
        twins = [render_trajectory(spec, perturb(clip.centroids, kind, rng, gravity=spec.gravity,
                                                 size=args.resolution, accel_change=args.accel_change,
                                                 jitter=args.jitter, teleport=args.teleport), seed=seed).video
                 for kind in PERTURBATIONS]
        frozen = render_trajectory(spec, np.repeat(clip.centroids[:1], args.frames, axis=0), seed=seed).video
        reference = render_clip(spec, seed=seed + 1).video
        scored = role.score([clip.video, *twins, frozen], [reference] * 5)
        for name, value in zip(residuals, scored.residual[:4], strict=True):
            residuals[name].append(value)
        combined["physical"].append(scored.rewards[0])
        combined["frozen"].append(scored.rewards[4])
    r = {k: np.array(v) for k, v in residuals.items()}
    row = {"primitive": primitive, "vel_rel_err_median": float(np.median(np.concatenate(errors)))}
    row |= {f"acc_{k}": float(np.mean(r["physical"] < r[k])) for k in PERTURBATIONS}
    row |= {f"R_{k}_median": float(np.median(v)) for k, v in r.items()}
    row |= {f"reward_{k}_median": float(np.median(v)) for k, v in combined.items()}
    row["acc_frozen"] = float(np.mean(np.array(combined["physical"]) > np.array(combined["frozen"])))
    return row


def run(args: argparse.Namespace) -> BenchResult:
    from envs.newton import PRIMITIVES

    config = NewtonRewardConfig(flow=args.flow, features=args.features,
                                kinematic=KinematicConfig(reduction=args.reduction))
    role = NewtonRewardRole(config, flow=make_flow(args.flow), features=make_features(args.features))
    rng = np.random.default_rng(args.seed)
    start = time.perf_counter()
    chosen = PRIMITIVES if args.primitives == "all" else tuple(args.primitives.split(","))
    unknown = sorted(set(chosen) - set(PRIMITIVES))
    if unknown:
        raise ConfigError(f"--primitives: unknown {unknown}; expected a subset of {PRIMITIVES} or 'all'")
    rows = [_primitive_row(p, args, role, rng) for p in chosen]
    keys = ("vel_rel_err_median", "acc_accel", "acc_jitter", "acc_teleport", "acc_frozen")
    acc = [{k: r[k] for k in ("primitive", *keys)} for r in rows]
    levels = [{k: v for k, v in r.items() if k not in keys} for r in rows]
    notes = [
        f"{args.pairs} pairs per primitive and perturbation, {args.resolution}x{args.resolution} px, "
        f"{args.frames} frames, split {args.split}, flow {args.flow}, reduction {args.reduction}, "
        f"features {args.features}; {time.perf_counter() - start:.0f} s",
        f"perturbations: accel change {args.accel_change} g, jitter std {args.jitter} x size, teleport "
        f"{args.teleport} x size; targets: velocity error <= 0.10, pairwise accuracy >= 0.95",
        "acc_frozen: share of scenes whose physical clip gets a higher combined reward than the frozen clip",
    ]
    return BenchResult(title="newton-truth", tables={"accuracy": acc, "medians": levels}, notes=notes)
