"""Video track: post-train a video diffusion policy with NewtonRewards, then evaluate it against the SFT base.

Phases per iteration (:func:`post_train`): conditions (train-split scenes) -> sample (rollout role, k clips per
scene) -> score (reward role: kinematic residual + mass vs the reference clip) -> advantages (group-relative) ->
update (learner role) -> sync weights -> log. With ``learner.algorithm = reward_grad`` the learner samples with
gradients itself and the sample/score/advantage phases collapse into its update.

Roles are passed in as objects with plain-data methods, so in-process objects and Ray actor proxies work alike:
``rollout.sample(conditions, version) -> RolloutBatch``, ``rollout.set_weights(weights, version)``,
``scorer.score(videos, references) -> {name: (B,)}``, ``learner.update(batch) -> metrics``,
``learner.get_weights()``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field, ValidationError, model_validator

from envs.newton import render_clip, sample_spec
from pipeline.config import RuntimeSection, Strict
from pipeline.errors import ConfigError, InputError
from pipeline.learners.advantages import AdvantageConfig, compute_advantages
from pipeline.learners.grpo import GRPOConfig, GRPOLearner
from pipeline.learners.reward_grad import RewardGradConfig, RewardGradLearner
from pipeline.runtime import make_pool
from rewards.features import make_features
from rewards.flow import make_flow
from rewards.metrics import (
    ACCELERATION_RMSE,
    CENTROID_L2,
    CHAMFER,
    KINEMATIC_RESIDUAL,
    MASK_IOU,
    VELOCITY_RMSE,
    evaluate_clip,
)
from rewards.newton import (
    NewtonRewardConfig,
    NewtonRewardRole,
    kinematic_residual_torch,
    kinematic_reward,
    mass_distance_torch,
)
from rewards.segment import mask_centroids, segment_object
from rollouts.models import VideoPolicy, load_tiny_policy, load_transformer_policy
from rollouts.samplers import sample_deterministic
from rollouts.video import (
    ConditionBatch,
    RolloutBatch,
    SamplerConfig,
    VideoRolloutWorker,
    clips_to_conditions,
    float_to_uint8,
    model_fn,
    sampler_levels,
    shard_by_group,
)

log = logging.getLogger(__name__)
ITERATION_S, SAMPLE_S, SCORE_S, UPDATE_S = "iteration_s", "sample_s", "score_s", "update_s"
FIVE_METRICS = (CENTROID_L2, CHAMFER, MASK_IOU, VELOCITY_RMSE, ACCELERATION_RMSE)
DISPLACEMENT, MEAN_FIVE = "displacement_px", "mean_five_metrics"
POLICY_FILE = "policy_weights.safetensors"


class ModelSection(Strict):
    kind: Literal["tiny", "transformer"] = "tiny"  # tiny: embedded UNet checkpoint; transformer: diffusers + LoRA
    path: str = "assets/sft_base"  # tiny: folder with model.safetensors + config.json; transformer: model folder
    lora_rank: int = Field(8, ge=1)  # transformer only: LoRA rank on to_q/to_k/to_v/to_out.0


class SamplerSection(Strict):
    kind: Literal["sde", "cps", "ddim"] = "sde"  # sde/cps: flow models (Flow-GRPO); ddim: epsilon models (DDPO)
    num_steps: int = Field(10, ge=2)  # sampling steps during training
    window: tuple[int, int] | None = (0, 4)  # [start, end) stochastic steps with log-probs; None: all
    noise_level: float = Field(0.7, gt=0)  # Flow-GRPO a, or DDIM eta
    shift: float = Field(1.0, gt=0)  # flow time shift of the sigma grid
    shared_noise: bool = True  # one initial noise per group (DanceGRPO): reward differences within a group
    # then come from the window's SDE noise only


class DataSection(Strict):
    split: str = "train"  # scenes the policy is post-trained on
    resolution: int = Field(32, ge=8)  # square frame size, px (must match the model)
    num_frames: int = Field(16, ge=6)  # total frames per clip = context frames + generated frames
    conditions_per_iteration: int = Field(2, ge=1)  # scenes per iteration
    group_size: int = Field(8, ge=1)  # clips per scene (GRPO group); >= 2 for grpo/ddpo


class RewardSection(Strict):
    flow: str = "dis"  # flow backend of the kinematic reward for scoring (reward_grad always uses 'lk')
    features: str = "appearance"  # feature backend of the mass reward
    weights: dict[str, float] = Field(default_factory=lambda: {"kinematic": 1.0, "mass": 1.0})  # reward -> weight
    # (kinematic, mass). With reward_grad use kinematic alone: the appearance-feature mass reward is gamed by
    # reward gradients (objects stop moving; measured)
    advantage_mode: Literal["weighted_sum", "per_reward"] = "weighted_sum"  # see pipeline.learners.advantages;
    # per_reward turns the near-constant mass reward of a group into pure noise
    advantage_clip: float = Field(5.0, gt=0)  # |A| bound


class LearnerSection(Strict):
    algorithm: Literal["grpo", "ddpo", "reward_grad"] = "grpo"  # measured on the shipped SFT base (see
    # configs/video/*.yaml for the numbers): grpo +4..6 % on the five metrics, reward_grad -1..-2 %
    lr: float = Field(1e-5, gt=0)  # AdamW learning rate
    clip_range: float = Field(1e-3, gt=0)  # PPO ratio clip (grpo/ddpo)
    kl_beta: float = Field(1.0, ge=0)  # KL-to-reference weight (grpo/ddpo)
    timestep_fraction: float = Field(1.0, gt=0, le=1)  # share of window steps trained per minibatch
    minibatch: int = Field(16, ge=1)  # clips per forward/backward pass
    grad_accum: int = Field(1, ge=1)  # minibatches per optimizer step
    epochs: int = Field(1, ge=1)  # passes over each batch
    objective: Literal["clipped", "weighted_fm"] = "clipped"  # grpo/ddpo: PPO surrogate on stored transitions, or
    # advantage-weighted flow matching on the rollouts' clean samples (RAFT/AWR style; less gradient noise)
    grad_steps: int = Field(1, ge=1)  # reward_grad: last K sampling steps that keep gradients
    checkpointing: bool = False  # reward_grad: recompute those steps in backward (less memory)


class EvalSection(Strict):
    splits: list[str] = Field(default_factory=lambda: ["test"])  # held-out splits evaluated after training
    clips: int = Field(48, ge=1)  # clips per split
    num_steps: int = Field(20, ge=2)  # Euler ODE steps for evaluation samples
    seed: int = 1234  # scenes and initial noise (same for base and post-trained)


class VideoSection(Strict):
    model: ModelSection = ModelSection()
    sampler: SamplerSection = SamplerSection()
    data: DataSection = DataSection()
    reward: RewardSection = RewardSection()
    learner: LearnerSection = LearnerSection()
    eval: EvalSection = EvalSection()
    iterations: int = Field(40, ge=1)  # post-training iterations (upper bound; ~1.5 s each for the defaults)
    time_budget_s: float = Field(420.0, gt=0)  # stop post-training after this many seconds
    threads: int = Field(2, ge=1)  # torch CPU threads of the in-process roles

    @model_validator(mode="after")
    def _check(self) -> VideoSection:
        if self.learner.algorithm != "reward_grad" and self.data.group_size < 2:
            raise ValueError(f"data.group_size = {self.data.group_size}: grpo/ddpo need >= 2 clips per scene")
        wanted = "ddim" if self.learner.algorithm == "ddpo" else None
        if wanted and self.sampler.kind != wanted:
            raise ValueError(f"sampler.kind = {self.sampler.kind!r}: learner.algorithm = ddpo needs 'ddim'")
        return self


def parse_video_section(data: dict[str, Any] | None) -> VideoSection:
    """Validate the ``video:`` config dict; ConfigError names the key."""
    try:
        return VideoSection.model_validate(data or {})
    except ValidationError as exc:
        msgs = [f"config key '{'.'.join(['video', *map(str, e['loc'])])}': {e['msg'].removeprefix('Value error, ')}"
                for e in exc.errors()]
        raise ConfigError("; ".join(msgs)) from None


def preflight(data: dict[str, Any]) -> None:
    """Checks that need the model, run before any work starts: the model path loads as the expected class and the
    sampler fits its parametrisation (raises ConfigError / InputError)."""
    cfg = parse_video_section(data)
    sampler_config(cfg.sampler).check(load_policy(cfg.model))


def sampler_config(section: SamplerSection) -> SamplerConfig:
    return SamplerConfig(kind=section.kind, num_steps=section.num_steps,
                         window=tuple(section.window) if section.window else None,
                         noise_level=section.noise_level, shift=section.shift, shared_noise=section.shared_noise)


def load_policy(section: ModelSection) -> VideoPolicy:
    """The policy named by ``video.model`` (errors for a missing path / wrong class come before any work)."""
    if section.kind == "tiny":
        return load_tiny_policy(section.path)
    return load_transformer_policy(section.path, lora_rank=section.lora_rank)


def make_conditions(split: str, n: int, rng: np.random.Generator, *, resolution: int, num_frames: int
                    ) -> ConditionBatch:
    """Render ``n`` scenes of ``split`` (context = first 4 frames, reference = the whole clip)."""
    specs = [sample_spec(split, rng, resolution=(resolution, resolution), num_frames=num_frames) for _ in range(n)]
    return clips_to_conditions([render_clip(s, seed=int(rng.integers(1 << 31))) for s in specs])


def post_train(cfg: VideoSection, *, rollout, scorer, learner, rng: np.random.Generator,
               log_fn: Callable[[int, dict[str, float]], None] | None = None) -> list[dict[str, float]]:
    """The post-training loop over role objects; returns one metrics dict per iteration."""
    adv_cfg = AdvantageConfig(weights=cfg.reward.weights, mode=cfg.reward.advantage_mode,
                              clip=cfg.reward.advantage_clip)
    history: list[dict[str, float]] = []
    start, version = time.perf_counter(), 0
    for it in range(cfg.iterations):
        t0 = time.perf_counter()
        conditions = make_conditions(cfg.data.split, cfg.data.conditions_per_iteration, rng,
                                     resolution=cfg.data.resolution, num_frames=cfg.data.num_frames)
        if cfg.learner.algorithm == "reward_grad":
            t1 = t2 = time.perf_counter()
            metrics = learner.update(conditions.repeat(cfg.data.group_size))
        else:
            batch: RolloutBatch = rollout.sample(conditions.repeat(cfg.data.group_size), version)
            t1 = time.perf_counter()
            batch.rewards = scorer.score(batch.videos, batch.conditions.reference)
            batch.advantages = compute_advantages(batch.rewards, batch.groups, adv_cfg)
            t2 = time.perf_counter()
            metrics = learner.update(batch)
            metrics.update({f"reward_{k}": float(np.mean(v)) for k, v in batch.rewards.items()})
        version += 1
        rollout.set_weights(learner.get_weights(), version)
        t3 = time.perf_counter()
        metrics.update({SAMPLE_S: t1 - t0, SCORE_S: t2 - t1, UPDATE_S: t3 - t2, ITERATION_S: t3 - t0})
        history.append(metrics)
        if log_fn is not None:
            log_fn(it, metrics)
        if time.perf_counter() - start > cfg.time_budget_s:
            log.info("video post-training: time budget %.0f s reached after %d iterations", cfg.time_budget_s, it + 1)
            break
    return history


class NewtonScorer:
    """Reward role adapter: ``score(videos, references) -> {'kinematic': r_kin, 'mass': r_mass}``, each (B,).

    Wraps :class:`rewards.newton.NewtonRewardRole`; a sample it flags invalid gets the batch minimum of each
    reward (it is never preferred)."""

    def __init__(self, section: RewardSection, *, worker_index: int = 0) -> None:
        self.role = NewtonRewardRole(NewtonRewardConfig(flow=section.flow, features=section.features))
        self.config = self.role.config

    def score(self, videos: np.ndarray, references: np.ndarray) -> dict[str, np.ndarray]:
        scored = self.role.score(list(videos), list(references))
        kin = np.array([kinematic_reward(r, self.config.kinematic) if np.isfinite(r) else np.nan
                        for r in scored.residual])
        out = {"kinematic": kin, "mass": scored.mass.astype(np.float64)}
        for key, values in out.items():
            bad = ~np.isfinite(values)
            if bad.all():
                raise InputError(f"reward {key}: no sample could be scored ({scored.reasons[:1]})")
            values[bad] = np.nanmin(values)
        return out


def newton_reward_fn(section: RewardSection):
    """Differentiable named rewards for :class:`RewardGradLearner` (only those with a weight are computed):
    'kinematic' through the Lucas-Kanade flow, 'mass' through the configured feature backend."""
    unknown = sorted(set(section.weights) - {"kinematic", "mass"})
    if unknown:
        raise ConfigError(f"config key 'video.reward.weights': unknown rewards {unknown}; expected kinematic, mass")
    kin_cfg = NewtonRewardConfig().kinematic
    flow = make_flow("lk") if "kinematic" in section.weights else None
    features = make_features(section.features) if "mass" in section.weights else None

    def reward_fn(video: torch.Tensor, reference: torch.Tensor) -> dict[str, torch.Tensor]:
        out = {}
        if flow is not None:
            out["kinematic"] = kinematic_reward(kinematic_residual_torch(video, flow=flow, config=kin_cfg), kin_cfg)
        if features is not None:
            out["mass"] = -mass_distance_torch(video, reference, features=features)
        return out
    return reward_fn


@dataclass
class PooledRollout:
    """The rollout interface of :func:`post_train` over a pool (Ray actors or in-process): whole groups are
    sharded over the workers and the shards stacked back in order; weights go to every worker."""

    pool: Any

    def sample(self, conditions: ConditionBatch, weights_version: int) -> RolloutBatch:
        groups = conditions.groups if conditions.groups is not None else np.arange(len(conditions))
        shards = shard_by_group(groups, len(self.pool.workers))
        parts = self.pool.map("sample", [(conditions.take(idx), weights_version) for idx in shards])
        return RolloutBatch.concat(parts)

    def set_weights(self, weights: dict[str, torch.Tensor], version: int) -> None:
        self.pool.broadcast("set_weights", weights, version)


@dataclass
class PooledScorer:
    """The scorer interface of :func:`post_train` over a pool of :class:`NewtonScorer` workers."""

    pool: Any

    def score(self, videos: np.ndarray, references: np.ndarray) -> dict[str, np.ndarray]:
        return self.pool.call("score", videos, references)


def build_roles(cfg: VideoSection, *, seed: int = 0, runtime: RuntimeSection | None = None):
    """(rollout, scorer, learner) for ``cfg``; the learner and the rollout hold separate copies. With ``runtime``
    the rollout and reward roles run in pools (Ray actors when ``runtime.use_ray``), else in-process."""
    sampler = sampler_config(cfg.sampler)
    if runtime is None:
        rollout = VideoRolloutWorker(load_policy(cfg.model), sampler, seed=seed)
    else:
        rollout = PooledRollout(make_pool(VideoRolloutWorker, runtime.num_rollout_workers, load_policy(cfg.model),
                                          sampler, seed=seed, runtime=runtime, kind="rollout"))
    learner_policy = load_policy(cfg.model)
    lc = cfg.learner
    if lc.algorithm == "reward_grad":
        rg = RewardGradConfig(weights=cfg.reward.weights, lr=lc.lr, num_steps=cfg.sampler.num_steps,
                              grad_steps=lc.grad_steps, checkpointing=lc.checkpointing, minibatch=lc.minibatch,
                              seed=seed)
        return rollout, None, RewardGradLearner(learner_policy, newton_reward_fn(cfg.reward), rg)
    grpo = GRPOConfig(lr=lc.lr, clip_range=lc.clip_range, kl_beta=lc.kl_beta, timestep_fraction=lc.timestep_fraction,
                      minibatch=lc.minibatch, grad_accum=lc.grad_accum, epochs=lc.epochs, objective=lc.objective,
                      seed=seed)
    scorer = NewtonScorer(cfg.reward) if runtime is None else PooledScorer(
        make_pool(NewtonScorer, 1, cfg.reward, runtime=runtime, kind="reward"))
    return rollout, scorer, GRPOLearner(learner_policy, grpo)


def relative_improvement(base: dict[str, float], post: dict[str, float]) -> dict[str, float]:
    """Per metric (post better than base) / |base|: positive = better; IoU is higher-is-better, the rest lower."""
    out = {}
    for key in (*FIVE_METRICS, KINEMATIC_RESIDUAL):
        b, p = base.get(key, np.nan), post.get(key, np.nan)
        gain = (p - b) if key == MASK_IOU else (b - p)
        out[key] = float(gain / abs(b)) if b else float("nan")
    out[MEAN_FIVE] = float(np.nanmean([out[k] for k in FIVE_METRICS]))
    return out


def displacement(video: np.ndarray, background: np.ndarray, context_frames: int) -> float:
    """Object displacement (px) between the last context frame and the last frame, from segmented masks."""
    cents = mask_centroids(segment_object(video, background=background))[context_frames - 1:]
    valid = cents[np.isfinite(cents).all(axis=1)]
    return float(np.linalg.norm(valid[-1] - valid[0])) if len(valid) >= 2 else 0.0


def evaluate_policies(policies: dict[str, VideoPolicy], split: str, cfg: VideoSection
                      ) -> tuple[dict[str, dict[str, float]], dict[str, np.ndarray], np.ndarray]:
    """Generate the same held-out scenes with the same initial noise for each policy (Euler ODE,
    ``eval.num_steps``) and average the NewtonBench metrics, the kinematic residual and the displacement.

    Returns (name -> metric means, name -> videos (N, T, H, W, 3) uint8, references (N, T, H, W, 3) uint8).
    """
    rng = np.random.default_rng(cfg.eval.seed)
    res, frames = cfg.data.resolution, cfg.data.num_frames
    specs = [sample_spec(split, rng, resolution=(res, res), num_frames=frames) for _ in range(cfg.eval.clips)]
    clips = [render_clip(s, seed=int(rng.integers(1 << 31))) for s in specs]
    conditions = clips_to_conditions(clips)
    cond, tc = conditions.conditions(), conditions.context.shape[1]
    noise = torch.randn((len(clips), frames - tc, 3, res, res), generator=torch.Generator().manual_seed(cfg.eval.seed))
    sampler = SamplerConfig(num_steps=cfg.eval.num_steps)
    results, videos = {}, {}
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
        results[name] = {k: float(np.nanmean([r[k] for r in rows])) for k in rows[0]}
        videos[name] = video
    ref_disp = [displacement(c.video, np.median(c.video, axis=0).astype(np.uint8), tc) for c in clips]
    results["reference"] = {DISPLACEMENT: float(np.mean(ref_disp))}
    return results, videos, conditions.reference


def save_post_trained(policy: VideoPolicy, directory: Path) -> Path:
    """Trainable weights (all of the tiny model, LoRA adapters of a transformer) as safetensors."""
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    path = directory / POLICY_FILE
    save_file({k: v.contiguous() for k, v in policy.get_weights().items()}, str(path))
    return path


def load_post_trained(cfg: VideoSection, run_dir: Path) -> VideoPolicy:
    """The base policy of ``cfg`` with the weights saved by :func:`save_post_trained` in ``run_dir/video``."""
    from safetensors.torch import load_file

    path = Path(run_dir) / "video" / POLICY_FILE
    if not path.is_file():
        raise InputError(f"{path}: no post-trained video policy in this run directory (was video post-training run?)")
    policy = load_policy(cfg.model)
    policy.set_weights(load_file(str(path)))
    return policy


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
    series = {k: (steps, [h[k] for h in history]) for k in history[0] if k.startswith("reward_") or k == "kinematic"
              or k == "mass"} if history else {}
    if series:
        paths.append(line_plot(out / "video_rewards.png", series, title="video post-training rewards",
                               xlabel="iteration", ylabel="mean reward", logy=False))
    return paths


def evaluate_run(cfg: VideoSection, base: VideoPolicy, post: VideoPolicy, split: str, out: Path | None = None,
                 history: list[dict[str, float]] | None = None) -> dict[str, dict[str, float]]:
    """Sections ``base``, ``post_trained``, ``reference`` (displacement) and ``improvement`` for one split;
    writes the sample GIF/PNG (and curves when ``history`` is given) under ``out``."""
    results, videos, reference = evaluate_policies({"base": base, "post_trained": post}, split, cfg)
    results["improvement"] = relative_improvement(results["base"], results["post_trained"])
    if out is not None:
        write_artifacts(out, history or [], videos, reference, split)
    return results


def _report(summary: dict[str, Any]) -> str:
    lines = ["## Video track (NewtonRewards)", "",
             f"{summary['iterations']} iterations in {summary['train_s']:.0f} s "
             f"(median {summary['median_iteration_s']:.2f} s/iteration), peak RSS {summary['peak_rss_mb']:.0f} MB.", ""]
    for split, res in summary["eval"].items():
        lines += [f"### {split}", "", "| metric | SFT base | post-trained | improvement |", "|---|---|---|---|"]
        for key in (*FIVE_METRICS, KINEMATIC_RESIDUAL, DISPLACEMENT):
            gain = res["improvement"].get(key)
            lines.append(f"| {key} | {res['base'][key]:.4g} | {res['post_trained'][key]:.4g} | "
                         f"{'-' if gain is None else f'{gain:+.1%}'} |")
        lines += [f"| mean of the five | | | {res['improvement'][MEAN_FIVE]:+.1%} |",
                  f"| reference {DISPLACEMENT} | {res['reference'][DISPLACEMENT]:.4g} | | |", "",
                  f"![samples](video/samples_{split}.gif) (columns: base, post-trained, reference)", ""]
    return "\n".join(lines + ["![rewards](video/video_rewards.png)", ""])


def run_video(config, run, *, progress: bool = True) -> tuple[dict[str, Any], str]:
    """Entry point of the controller: post-train, save, evaluate; returns (summary, markdown report)."""
    import resource

    cfg = parse_video_section(config.video)
    torch.set_num_threads(cfg.threads)
    seed = config.run.seed
    rollout, scorer, learner = build_roles(cfg, seed=seed, runtime=config.runtime)
    start = time.perf_counter()
    history = post_train(cfg, rollout=rollout, scorer=scorer, learner=learner, rng=np.random.default_rng(seed),
                         log_fn=lambda i, m: run.log(i, m, prefix="video"))
    train_s = time.perf_counter() - start
    out = Path(run.path) / "video"
    save_post_trained(learner.policy, out)
    base = load_policy(cfg.model)
    evals = {split: evaluate_run(cfg, base, learner.policy, split, out, history if i == 0 else None)
             for i, split in enumerate(cfg.eval.splits)}
    summary = {"iterations": len(history), "train_s": train_s,
               "median_iteration_s": float(np.median([h[ITERATION_S] for h in history])),
               "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "eval": evals}
    return summary, _report(summary)
