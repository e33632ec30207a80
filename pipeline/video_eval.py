"""Video track evaluation: the SFT base and the post-trained policy on the same held-out scenes and noise, the
NewtonBench metrics, their relative improvement, sample GIFs/PNGs, reward curves and the report section."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from envs.newton import render_clip, sample_spec
from pipeline.errors import InputError
from rewards.metrics import (
    ACCELERATION_RMSE,
    CENTROID_L2,
    CHAMFER,
    KINEMATIC_RESIDUAL,
    MASK_IOU,
    VELOCITY_RMSE,
    evaluate_clip,
)
from rewards.newton import REWARD_NAMES
from rewards.segment import mask_centroids, segment_object
from rollouts.models import VideoPolicy
from rollouts.samplers import sample_deterministic
from rollouts.video import SamplerConfig, clips_to_conditions, float_to_uint8, model_fn, sampler_levels

if TYPE_CHECKING:
    from pipeline.video_config import VideoSection

FIVE_METRICS = (CENTROID_L2, CHAMFER, MASK_IOU, VELOCITY_RMSE, ACCELERATION_RMSE)
DISPLACEMENT, MEAN_FIVE = "displacement_px", "mean_five_metrics"


def relative_improvement(base: dict[str, float], post: dict[str, float]) -> dict[str, float]:
    """Per metric (post better than base) / |base|: positive = better; IoU is higher-is-better, the rest lower."""
    out = {}
    for key in (*FIVE_METRICS, KINEMATIC_RESIDUAL):
        b, p = base.get(key, np.nan), post.get(key, np.nan)
        gain = (p - b) if key == MASK_IOU else (b - p)
        out[key] = float(gain / abs(b)) if b else float("nan")
    out[MEAN_FIVE] = float(np.nanmean([out[k] for k in FIVE_METRICS]))
    return out


def improvement_interval(base_rows: list[dict[str, float]], post_rows: list[dict[str, float]], *,
                         resamples: int = 2000, level: float = 0.95, seed: int = 0) -> dict[str, list[float]]:
    """Paired bootstrap interval of :func:`relative_improvement` over clips: ``[low, high]`` at ``level`` for the
    mean of the five metrics and the kinematic residual. ``base_rows[i]`` and ``post_rows[i]`` are one clip's
    metrics under the two policies (same scene, same noise); clips are resampled with replacement, in pairs."""
    if len(base_rows) != len(post_rows) or not base_rows:
        raise InputError(f"improvement_interval: need as many base as post-trained rows (> 0), got "
                         f"{len(base_rows)} and {len(post_rows)}")
    keys = (*FIVE_METRICS, KINEMATIC_RESIDUAL)
    base = np.array([[r.get(k, np.nan) for k in keys] for r in base_rows], dtype=np.float64)
    post = np.array([[r.get(k, np.nan) for k in keys] for r in post_rows], dtype=np.float64)
    picks = np.random.default_rng(seed).integers(0, len(base), size=(resamples, len(base)))
    with warnings.catch_warnings():  # a resample without any finite value of a metric gives NaN: ignored below
        warnings.simplefilter("ignore", RuntimeWarning)
        b, q = np.nanmean(base[picks], axis=1), np.nanmean(post[picks], axis=1)  # (resamples, metrics)
        gains = [relative_improvement(dict(zip(keys, rb, strict=True)), dict(zip(keys, rq, strict=True)))
                 for rb, rq in zip(b, q, strict=True)]
    tails = [50 * (1 - level), 100 - 50 * (1 - level)]
    return {key: [float(v) for v in np.nanpercentile([g[key] for g in gains], tails)]
            for key in (MEAN_FIVE, KINEMATIC_RESIDUAL)}


def displacement(video: np.ndarray, background: np.ndarray, context_frames: int) -> float:
    """Object displacement (px) between the last context frame and the last frame, from segmented masks."""
    cents = mask_centroids(segment_object(video, background=background))[context_frames - 1:]
    valid = cents[np.isfinite(cents).all(axis=1)]
    return float(np.linalg.norm(valid[-1] - valid[0])) if len(valid) >= 2 else 0.0


def evaluate_policies(policies: dict[str, VideoPolicy], split: str, cfg: VideoSection
                      ) -> tuple[dict[str, dict[str, float]], dict[str, np.ndarray], np.ndarray,
                                 dict[str, list[dict[str, float]]]]:
    """Generate the same held-out scenes with the same initial noise for each policy (Euler ODE,
    ``eval.num_steps``) and average the NewtonBench metrics, the kinematic residual and the displacement, over
    all clips and per primitive.

    Returns (name -> metric means, plus ``by_primitive``: primitive -> name -> metric means (and ``clips``);
    name -> videos (N, T, H, W, 3) uint8; references (N, T, H, W, 3) uint8; name -> per-clip metric rows).
    """
    rng = np.random.default_rng(cfg.eval.seed)
    res, frames = cfg.data.resolution, cfg.data.num_frames
    specs = [sample_spec(split, rng, resolution=(res, res), num_frames=frames) for _ in range(cfg.eval.clips)]
    clips = [render_clip(s, seed=int(rng.integers(1 << 31))) for s in specs]
    conditions = clips_to_conditions(clips)
    cond, tc = conditions.conditions(), conditions.context.shape[1]
    noise = torch.randn((len(clips), frames - tc, 3, res, res), generator=torch.Generator().manual_seed(cfg.eval.seed))
    sampler = SamplerConfig(num_steps=cfg.eval.num_steps)
    results, videos, by_primitive, per_clip = {}, {}, {}, {}
    primitives = np.array([s.primitive for s in specs])
    for name, policy in policies.items():
        policy.net.eval()
        levels = sampler_levels(policy, sampler)
        sample = sample_deterministic(model_fn(policy, cond), noise, levels)
        video = np.concatenate([conditions.context, float_to_uint8(policy.to_video(sample, cond))], axis=1)
        rows = []
        for clip, gen in zip(clips, video, strict=True):
            background = np.median(clip.video, axis=0).astype(np.uint8)
            row = evaluate_clip(gen, clip.video, reference_masks=clip.masks, background=background)
            row[DISPLACEMENT] = displacement(gen, background, tc)
            rows.append(row)
        results[name], per_clip[name] = _means(rows), rows
        for prim in sorted(set(primitives)):
            chosen = [r for r, p in zip(rows, primitives, strict=True) if p == prim]
            by_primitive.setdefault(prim, {"clips": len(chosen)})[name] = _means(chosen)
        videos[name] = video
    ref_disp = [displacement(c.video, np.median(c.video, axis=0).astype(np.uint8), tc) for c in clips]
    results["reference"] = {DISPLACEMENT: float(np.mean(ref_disp))}
    results["by_primitive"] = by_primitive
    return results, videos, conditions.reference, per_clip


def _means(rows: list[dict[str, float]]) -> dict[str, float]:
    """Per-metric mean over clips (NaN-aware: a clip whose object was not found does not count)."""
    return {k: float(np.nanmean([r[k] for r in rows])) for k in rows[0]}


def side_by_side(videos: dict[str, np.ndarray], reference: np.ndarray, rows: int = 6, scale: int = 4) -> np.ndarray:
    """Frames (T, rows * H * scale, (len(videos) + 1) * W * scale, 3) uint8: each row = one clip,
    columns = the given videos then the reference, separated by 1-px white lines."""
    cols = [*videos.values(), reference]
    n = min(rows, len(reference))
    pad = lambda v: np.pad(v, ((0, 0), (0, 1), (0, 1), (0, 0)), constant_values=255)  # noqa: E731
    grid = np.concatenate([np.concatenate([pad(c[i]) for c in cols], axis=2) for i in range(n)], axis=1)
    return grid.repeat(scale, axis=1).repeat(scale, axis=2)


def write_artifacts(out: Path, history: list[dict[str, float]], videos: dict[str, np.ndarray],
                    reference: np.ndarray, split: str) -> list[Path]:
    """samples_<split>.gif (base | post-trained | reference), its first/last-frame PNG strip, training curves."""
    import imageio.v3 as iio

    from pipeline.plots import line_plot

    out.mkdir(parents=True, exist_ok=True)
    frames = side_by_side(videos, reference)
    paths = [out / f"samples_{split}.gif", out / f"samples_{split}.png"]
    iio.imwrite(paths[0], frames, duration=250, loop=0)
    iio.imwrite(paths[1], np.concatenate(list(frames[3::4]), axis=1))
    steps = list(range(1, len(history) + 1))
    series = {k: (steps, [h[k] for h in history]) for k in history[0] if k.startswith("reward_")
              or k in REWARD_NAMES} if history else {}
    if series:
        paths.append(line_plot(out / "video_rewards.png", series, title="video post-training rewards",
                               xlabel="iteration", ylabel="mean reward", logy=False))
    return paths


def evaluate_run(cfg: VideoSection, base: VideoPolicy, post: VideoPolicy, split: str, out: Path | None = None,
                 history: list[dict[str, float]] | None = None) -> dict[str, dict[str, float]]:
    """Sections ``base``, ``post_trained``, ``reference`` (displacement), ``improvement`` and ``improvement_ci95``
    (paired bootstrap over the clips, :func:`improvement_interval`) for one split; writes the sample GIF/PNG (and
    curves when ``history`` is given) under ``out``."""
    results, videos, reference, rows = evaluate_policies({"base": base, "post_trained": post}, split, cfg)
    results["improvement"] = relative_improvement(results["base"], results["post_trained"])
    results["improvement_ci95"] = improvement_interval(rows["base"], rows["post_trained"])
    for section in results["by_primitive"].values():
        section["improvement"] = relative_improvement(section["base"], section["post_trained"])
    if out is not None:
        write_artifacts(out, history or [], videos, reference, split)
    return results


def report(summary: dict[str, Any]) -> str:
    lines = ["## Video track (NewtonRewards)", "",
             f"{summary['iterations']} iterations in {summary['train_s']:.0f} s "
             f"(median {summary['median_iteration_s']:.2f} s/iteration), peak RSS {summary['peak_rss_mb']:.0f} MB.", ""]
    for split, res in summary["eval"].items():
        lines += [f"### {split}", "", "| metric | SFT base | post-trained | improvement |", "|---|---|---|---|"]
        for key in (*FIVE_METRICS, KINEMATIC_RESIDUAL, DISPLACEMENT):
            gain = res["improvement"].get(key)
            lines.append(f"| {key} | {res['base'][key]:.4g} | {res['post_trained'][key]:.4g} | "
                         f"{'-' if gain is None else f'{gain:+.1%}'} |")
        lo, hi = res.get("improvement_ci95", {}).get(MEAN_FIVE, (np.nan, np.nan))
        lines += [f"| mean of the five | | | {res['improvement'][MEAN_FIVE]:+.1%} (95% CI {lo:+.1%} to {hi:+.1%}, "
                  f"{sum(sec['clips'] for sec in res.get('by_primitive', {}).values())} clips) |",
                  f"| reference {DISPLACEMENT} | {res['reference'][DISPLACEMENT]:.4g} | | |", "",
                  "| primitive | clips | kinematic residual base -> post | change | mean of the five |",
                  "|---|---|---|---|---|"]
        for prim, sec in res.get("by_primitive", {}).items():
            lines.append(f"| {prim} | {sec['clips']} | {sec['base'][KINEMATIC_RESIDUAL]:.4g} -> "
                         f"{sec['post_trained'][KINEMATIC_RESIDUAL]:.4g} | "
                         f"{-sec['improvement'][KINEMATIC_RESIDUAL]:+.1%} | {sec['improvement'][MEAN_FIVE]:+.1%} |")
        lines += ["",
                  f"![samples](video/samples_{split}.gif) (columns: base, post-trained, reference)", ""]
    return "\n".join(lines + ["![rewards](video/video_rewards.png)", ""])
