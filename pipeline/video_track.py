"""Video track: post-train a video diffusion policy with NewtonRewards, then evaluate it against the SFT base.

Phases per iteration (:func:`post_train`): conditions (train-split scenes) -> sample (rollout role, k clips per
scene) -> score (reward role: kinematic residual + mass vs the reference clip) -> advantages (group-relative) ->
update (learner role) -> sync weights -> log -> checkpoint. With ``learner.algorithm = reward_grad`` the learner
samples with gradients itself and the sample/score/advantage phases collapse into its update.

Roles are passed in as objects with plain-data methods, so in-process objects and Ray actor proxies work alike:
``rollout.sample(conditions, version) -> RolloutBatch``, ``rollout.set_weights(message)`` (a versioned
:class:`pipeline.weights.WeightsMessage`), ``scorer.score(videos, references) -> {name: (B,)}``,
``learner.update(batch) -> metrics``, ``learner.weights(version) -> WeightsMessage``. The learner runs in-process
(``runtime.num_learners: 0``) or as data-parallel replicas (:class:`pipeline.learners.group.GroupLearner`).

Checkpoints (``<run>/checkpoints/video``, every ``checkpoint_every`` iterations and at the end) hold the learner's
model and optimizer, every generator (scenes, rollout workers' sampling noise, the learner's planner, global RNGs)
and the iteration, so ``newtonrl train --resume RUN_DIR`` continues with the numbers of an uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from envs.newton import render_clip, sample_spec
from pipeline.checkpoint import Checkpoint, rng_state, save_checkpoint, set_rng_state, truncate_metrics
from pipeline.commands.export import video_model_spec
from pipeline.config import RuntimeSection
from pipeline.errors import InputError
from pipeline.learner_group import LearnerGroup, LearnerSettings
from pipeline.learners.advantages import AdvantageConfig, compute_advantages
from pipeline.learners.group import GroupLearner
from pipeline.learners.grpo import GRPOConfig, GRPOLearner, GRPOPlanner
from pipeline.learners.reward_grad import RewardGradConfig, RewardGradLearner, RewardGradPlanner
from pipeline.rundir import read_metrics
from pipeline.runtime import BatchStream, make_pool
from pipeline.video_config import (
    ModelSection,
    RewardSection,
    SamplerSection,
    VideoSection,
    check_runtime,
    parse_video_section,
    replica_shares,
)
from pipeline.video_eval import evaluate_run, report
from pipeline.weights import WeightsMessage, WeightSync
from rewards.features import make_features
from rewards.flow import make_flow
from rewards.newton import (
    NewtonRewardConfig,
    NewtonRewardRole,
    kinematic_residual_torch,
    kinematic_reward,
    mass_distance_torch,
    trajectory_residual_torch,
)
from rollouts.models import VideoPolicy, load_tiny_policy, load_transformer_policy
from rollouts.samplers import default_window
from rollouts.video import (
    ConditionBatch,
    RolloutBatch,
    SamplerConfig,
    VideoRolloutWorker,
    clips_to_conditions,
    shard_by_group,
)

log = logging.getLogger(__name__)
TRACK = "video"  # metrics prefix and checkpoint folder <run>/checkpoints/video
ITERATION_S, SAMPLE_S, SCORE_S, UPDATE_S = "iteration_s", "sample_s", "score_s", "update_s"
TIMINGS = (ITERATION_S, SAMPLE_S, SCORE_S, UPDATE_S)
STALENESS = "staleness"  # policy versions between sampling a batch and learning from it
POLICY_FILE = "policy_weights.safetensors"


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


@dataclass
class LoopState:
    """Where post-training stands: completed ``iteration``s (= the weights version the rollouts hold) and the
    seconds spent so far (``train_s``, checked against ``time_budget_s``)."""

    iteration: int = 0
    train_s: float = 0.0


def draw_conditions(cfg: VideoSection, rng: np.random.Generator) -> ConditionBatch:
    """One iteration's scenes, each repeated ``group_size`` times (its GRPO group)."""
    return make_conditions(cfg.data.split, cfg.data.conditions_per_iteration, rng, resolution=cfg.data.resolution,
                           num_frames=cfg.data.num_frames).repeat(cfg.data.group_size)


class AheadBatches:
    """Scored batches sampled ahead of the learner (``runtime.async_rollouts``): a
    :class:`pipeline.runtime.BatchStream` over the rollout and reward pools, so the rollouts of iteration k + 1
    overlap the update of k, from a policy at most ``max_staleness`` versions old. No step past the next checkpoint
    is started, so a checkpoint holds every generator as a run resumed from it needs them."""

    def __init__(self, cfg: VideoSection, rollout: PooledRollout, scorer: PooledScorer, rng: np.random.Generator, *,
                 first: int, max_staleness: int) -> None:
        self.cfg, self.first = cfg, first
        self.stream = BatchStream(rollout.pool, scorer.pool,
                                  lambda _step: rollout.calls(draw_conditions(cfg, rng), rollout.sync.version),
                                  max_staleness=max_staleness, sample="sample", score="score_rollout",
                                  sync=rollout.sync)

    def get(self, iteration: int) -> RolloutBatch:
        every, total = self.cfg.checkpoint_every, self.cfg.iterations
        stop = min(total, (iteration // every + 1) * every) if every else total
        return RolloutBatch.concat(self.stream.get(iteration - self.first, last=stop - self.first))


def post_train(cfg: VideoSection, *, rollout, scorer, learner, rng: np.random.Generator,
               log_fn: Callable[[int, dict[str, float]], None] | None = None,
               save_fn: Callable[[LoopState], None] | None = None, state: LoopState | None = None,
               max_staleness: int | None = None) -> list[dict[str, float]]:
    """The post-training loop over role objects, from ``state`` (None: the start); returns one metrics dict per
    iteration run here. ``log_fn(iteration index, metrics)``; ``save_fn(state)`` every ``checkpoint_every``
    iterations and at the end. ``max_staleness`` (pooled roles only): sample ahead (:class:`AheadBatches`);
    None: synchronous. ``staleness`` = learner version - the version a batch was sampled with."""
    adv_cfg = AdvantageConfig(weights=cfg.reward.weights, mode=cfg.reward.advantage_mode,
                              clip=cfg.reward.advantage_clip)
    state = state or LoopState()
    ahead = None if max_staleness is None else AheadBatches(cfg, rollout, scorer, rng, first=state.iteration,
                                                              max_staleness=max_staleness)
    history: list[dict[str, float]] = []
    start, saved = time.perf_counter() - state.train_s, state.iteration
    while state.iteration < cfg.iterations:
        if state.train_s > cfg.time_budget_s:
            log.info("video post-training: time budget %.0f s reached after %d iterations", cfg.time_budget_s,
                     state.iteration)
            break
        t0 = time.perf_counter()
        if cfg.learner.algorithm == "reward_grad":
            t1 = t2 = time.perf_counter()
            metrics = learner.update(draw_conditions(cfg, rng))
        else:
            if ahead is None:
                batch: RolloutBatch = rollout.sample(draw_conditions(cfg, rng), state.iteration)
                t1 = time.perf_counter()
                batch.rewards = scorer.score(batch.videos, batch.conditions.reference)
            else:
                batch = ahead.get(state.iteration)
                t1 = time.perf_counter()  # sampling and scoring overlap: sample_s is the wait for both
            batch.rewards = fill_invalid(batch.rewards)
            batch.advantages = compute_advantages(batch.rewards, batch.groups, adv_cfg)
            t2 = time.perf_counter()
            metrics = learner.update(batch)
            metrics.update({f"reward_{k}": float(np.mean(v)) for k, v in batch.rewards.items()})
            metrics[STALENESS] = state.iteration - batch.weights_version
        state.iteration += 1
        rollout.set_weights(learner.weights(state.iteration))
        t3 = time.perf_counter()
        metrics.update({SAMPLE_S: t1 - t0, SCORE_S: t2 - t1, UPDATE_S: t3 - t2, ITERATION_S: t3 - t0})
        history.append(metrics)
        if log_fn is not None:
            log_fn(state.iteration - 1, metrics)
        state.train_s = time.perf_counter() - start
        if save_fn is not None and cfg.checkpoint_every and state.iteration % cfg.checkpoint_every == 0:
            save_fn(state)
            saved = state.iteration
    if save_fn is not None and saved != state.iteration:
        save_fn(state)
    return history


class NewtonScorer:
    """Reward role adapter: ``score(videos, references) -> {'kinematic': r_kin, 'mass': r_mass}``, each (B,), plus
    ``'trajectory': r_traj`` when ``video.reward.weights`` names it.

    Wraps :class:`rewards.newton.NewtonRewardRole`; a sample it flags invalid scores NaN (:func:`fill_invalid`
    then gives it the batch minimum, once the shards of a batch are together)."""

    def __init__(self, section: RewardSection, *, worker_index: int = 0) -> None:
        self.role = NewtonRewardRole(NewtonRewardConfig(flow=section.flow, features=section.features,
                                                        trajectory_weight=section.weights.get("trajectory", 0.0)))
        self.config = self.role.config

    def score(self, videos: np.ndarray, references: np.ndarray) -> dict[str, np.ndarray]:
        scored = self.role.score(list(videos), list(references))
        out = {"kinematic": self._reward(scored.residual), "mass": scored.mass.astype(np.float64)}
        if self.config.trajectory_weight > 0:
            out["trajectory"] = self._reward(scored.trajectory)
        return out

    def _reward(self, residuals: np.ndarray) -> np.ndarray:
        """log10(cap / R) per residual (NaN stays NaN: a flagged sample)."""
        return np.array([kinematic_reward(r, self.config.kinematic) if np.isfinite(r) else np.nan for r in residuals])

    def score_rollout(self, batch: RolloutBatch) -> RolloutBatch:
        """``batch`` with its rewards (the reward step of :class:`pipeline.runtime.BatchStream`)."""
        batch.rewards = self.score(batch.videos, batch.conditions.reference)
        return batch


def fill_invalid(rewards: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Rewards with each unscored (NaN) sample at the batch minimum of that reward: it is never preferred."""
    out = {}
    for key, values in rewards.items():
        bad = ~np.isfinite(values)
        if bad.all():
            raise InputError(f"reward {key}: no sample of the batch could be scored (see the logged reasons)")
        out[key] = np.where(bad, np.nanmin(values), values)
    return out


def newton_reward_fn(section: RewardSection):
    """Differentiable named rewards for :class:`RewardGradLearner` (only those with a weight are computed):
    'kinematic' through the Lucas-Kanade flow, 'mass' through the configured feature backend, 'trajectory'
    through the soft object masks (background: the reference clip's temporal median)."""
    kin_cfg = NewtonRewardConfig().kinematic
    flow = make_flow("lk") if "kinematic" in section.weights else None
    features = make_features(section.features) if "mass" in section.weights else None

    def reward_fn(video: torch.Tensor, reference: torch.Tensor) -> dict[str, torch.Tensor]:
        out = {}
        if flow is not None:
            out["kinematic"] = kinematic_reward(kinematic_residual_torch(video, flow=flow, config=kin_cfg), kin_cfg)
        if features is not None:
            out["mass"] = -mass_distance_torch(video, reference, features=features)
        if "trajectory" in section.weights:
            background = reference.detach().median(dim=1).values
            out["trajectory"] = kinematic_reward(trajectory_residual_torch(video, background, config=kin_cfg), kin_cfg)
        return out
    return reward_fn


@dataclass
class PooledRollout:
    """The rollout interface of :func:`post_train` over a pool (Ray actors or in-process): whole groups are
    sharded over the workers and the shards stacked back in order; weights go to every worker through a
    :class:`pipeline.weights.WeightSync` (a restarted worker gets them again). ``wait=False``: a weight push
    returns at once and the workers apply it after the calls already queued on them (asynchronous rollouts)."""

    pool: Any
    wait: bool = True

    def __post_init__(self) -> None:
        self.sync = WeightSync(self.pool)

    def calls(self, conditions: ConditionBatch, weights_version: int) -> list[tuple[ConditionBatch, int]]:
        """``sample`` arguments per worker: whole groups, in row order."""
        groups = conditions.groups if conditions.groups is not None else np.arange(len(conditions))
        return [(conditions.take(idx), weights_version) for idx in shard_by_group(groups, len(self.pool.workers))]

    def sample(self, conditions: ConditionBatch, weights_version: int) -> RolloutBatch:
        return RolloutBatch.concat(self.pool.map("sample", self.calls(conditions, weights_version)))

    def set_weights(self, message: WeightsMessage) -> None:
        self.sync.push(message, wait=self.wait)

    def state(self) -> list[dict[str, Any]]:
        """Every worker's sampler state, in worker order."""
        return self.pool.broadcast("state")

    def load_state(self, states: list[dict[str, Any]]) -> None:
        if len(states) != len(self.pool.workers):
            raise InputError(f"the checkpoint holds {len(states)} rollout worker states, this run has "
                             f"{len(self.pool.workers)} workers: resume with runtime.num_rollout_workers={len(states)}")
        self.pool.map("load_state", [(s,) for s in states])  # call i runs on worker i

    def close(self) -> None:
        self.pool.close()


@dataclass
class PooledScorer:
    """The scorer interface of :func:`post_train` over a pool of :class:`NewtonScorer` workers."""

    pool: Any

    def score(self, videos: np.ndarray, references: np.ndarray) -> dict[str, np.ndarray]:
        return self.pool.call("score", videos, references)

    def close(self) -> None:
        self.pool.close()


def grpo_config(cfg: VideoSection, seed: int = 0) -> GRPOConfig:
    lc = cfg.learner
    return GRPOConfig(lr=lc.lr, clip_range=lc.clip_range, kl_beta=lc.kl_beta, timestep_fraction=lc.timestep_fraction,
                      minibatch=lc.minibatch, grad_accum=lc.grad_accum, epochs=lc.epochs, objective=lc.objective,
                      seed=seed)


def reward_grad_config(cfg: VideoSection, seed: int = 0) -> RewardGradConfig:
    lc = cfg.learner
    return RewardGradConfig(weights=cfg.reward.weights, lr=lc.lr, num_steps=cfg.sampler.num_steps,
                            grad_steps=lc.grad_steps, checkpointing=lc.checkpointing, minibatch=lc.minibatch, seed=seed)


def make_learner(cfg: VideoSection, seed: int = 0) -> GRPOLearner | RewardGradLearner:
    """The learner of ``cfg`` on its own copy of the policy: the in-process learner role, or one replica of a
    learner group (picklable as ``functools.partial(make_learner, cfg, seed)``)."""
    policy = load_policy(cfg.model)
    if cfg.learner.algorithm == "reward_grad":
        return RewardGradLearner(policy, newton_reward_fn(cfg.reward), reward_grad_config(cfg, seed))
    return GRPOLearner(policy, grpo_config(cfg, seed))


def group_learner(cfg: VideoSection, runtime: RuntimeSection, *, seed: int = 0) -> GroupLearner:
    """The learner as ``runtime.num_learners`` data-parallel replicas (0: one, in-process). Gradients accumulate
    over an update's micro-batches as the in-process learner's do: grpo/ddpo steps every trained steps per
    minibatch x ``grad_accum`` of them, reward_grad once per update."""
    check_runtime(cfg, runtime)
    rows, minibatch = replica_shares(cfg, runtime)
    if cfg.learner.algorithm == "reward_grad":
        rg = reward_grad_config(cfg, seed)
        planner, accumulation, max_grad_norm = RewardGradPlanner(rg), math.ceil(rows / minibatch), rg.max_grad_norm
    else:
        sampler = sampler_config(cfg.sampler)
        start, end = sampler.window or default_window(sampler.num_steps, sampler.kind)
        planner = GRPOPlanner(grpo_config(cfg, seed))
        accumulation = planner.steps_per_minibatch(end - start) * cfg.learner.grad_accum
        max_grad_norm = planner.config.max_grad_norm
    settings = dataclasses.replace(LearnerSettings.from_runtime(runtime), threads=cfg.threads,
                                   grad_accumulation=accumulation, max_grad_norm=max_grad_norm)
    group = LearnerGroup(functools.partial(make_learner, cfg, seed), runtime, settings=settings)
    return GroupLearner(group, planner, policy=load_policy(cfg.model), minibatch=minibatch)


def build_roles(cfg: VideoSection, *, seed: int = 0, runtime: RuntimeSection | None = None):
    """(rollout, scorer, learner) for ``cfg``; the learner and the rollout hold separate copies. With ``runtime``
    the rollout and reward roles run in pools (Ray actors when ``runtime.use_ray``), else in-process, and the
    learner as a group of ``runtime.num_learners`` replicas (0: in-process)."""
    sampler = sampler_config(cfg.sampler)
    if runtime is None:
        rollout = VideoRolloutWorker(load_policy(cfg.model), sampler, seed=seed)
    else:
        rollout = PooledRollout(make_pool(VideoRolloutWorker, runtime.num_rollout_workers, load_policy(cfg.model),
                                          sampler, seed=seed, runtime=runtime, kind="rollout"),
                                wait=not runtime.async_rollouts)
    if runtime is not None and runtime.num_learners:
        learner = group_learner(cfg, runtime, seed=seed)
    else:
        learner = make_learner(cfg, seed)
    if cfg.learner.algorithm == "reward_grad":
        return rollout, None, learner
    scorer = NewtonScorer(cfg.reward) if runtime is None else PooledScorer(
        make_pool(NewtonScorer, 1, cfg.reward, runtime=runtime, kind="reward"))
    return rollout, scorer, learner


def close_roles(*roles: Any) -> None:
    """Release the pools and learner processes behind ``roles`` (in-process roles need nothing)."""
    for role in roles:
        if hasattr(role, "close"):
            role.close()


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


def checkpoint_state(loop: LoopState, *, learner, rollout, rng: np.random.Generator,
                     model_spec: dict[str, Any] | None) -> dict[str, Any]:
    """What a video checkpoint holds: the learner's ``model`` / ``optimizer`` / generators, the rollout workers'
    samplers, the scene generator, global RNGs, the loop state and (when known) the ``model_spec`` for export."""
    state = {"track": TRACK, "iteration": loop.iteration, "train_s": loop.train_s, "rollout": rollout.state(),
             "scenes": rng.bit_generator.state, "rng": rng_state(), **learner.state()}
    if model_spec is not None:
        state["model_spec"] = model_spec
    return state


def restore(ckpt: Checkpoint, *, learner, rollout, rng: np.random.Generator) -> LoopState:
    """Put a video checkpoint back into the roles and generators; the rollouts get the learner's weights."""
    st = ckpt.state
    learner.load_state(st)
    rollout.load_state(st["rollout"])
    rng.bit_generator.state = st["scenes"]
    set_rng_state(st["rng"])
    loop = LoopState(iteration=int(st["iteration"]), train_s=float(st["train_s"]))
    rollout.set_weights(learner.weights(loop.iteration))
    log.info("resumed video post-training at iteration %d from %s", loop.iteration, ckpt.path)
    return loop


def run_video(config, run, *, progress: bool = True, resume: Checkpoint | None = None) -> tuple[dict[str, Any], str]:
    """Entry point of the controller: post-train (from ``resume`` when given), checkpoint, save, evaluate;
    returns (summary, markdown report)."""
    import resource

    cfg, runtime = parse_video_section(config.video), config.runtime
    torch.set_num_threads(cfg.threads)
    seed = config.run.seed
    base = load_policy(cfg.model)
    rollout, scorer, learner = build_roles(cfg, seed=seed, runtime=runtime)
    try:
        rng, loop = np.random.default_rng(seed), LoopState()
        if resume is not None:
            loop = restore(resume, learner=learner, rollout=rollout, rng=rng)
        truncate_metrics(run.path, prefix=TRACK, step=loop.iteration - 1)  # logged after the checkpoint: redone
        history = [{k: v for k, v in r.items() if k not in ("step", "prefix")}
                   for r in (read_metrics(run.path, TRACK) if loop.iteration else [])]
        save = functools.partial(_save, folder=Path(run.path) / "checkpoints" / TRACK,
                                 keep_last=config.checkpoint.keep_last, learner=learner, rollout=rollout, rng=rng,
                                 model_spec=video_model_spec(base))
        history += post_train(cfg, rollout=rollout, scorer=scorer, learner=learner, rng=rng, state=loop, save_fn=save,
                              log_fn=lambda i, m: run.log(i, m, prefix=TRACK),
                              max_staleness=runtime.max_staleness if runtime.async_rollouts else None)
        out = Path(run.path) / "video"
        policy = learner.policy
        save_post_trained(policy, out)
        evals = {split: evaluate_run(cfg, base, policy, split, out, history if i == 0 else None)
                 for i, split in enumerate(cfg.eval.splits)}
    finally:
        close_roles(rollout, scorer, learner)
    summary = {"iterations": len(history), "train_s": loop.train_s,
               "median_iteration_s": float(np.median([h[ITERATION_S] for h in history])),
               "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "eval": evals}
    return summary, report(summary)


def _save(loop: LoopState, *, folder: Path, keep_last: int, **parts: Any) -> None:
    save_checkpoint(folder, loop.iteration, checkpoint_state(loop, **parts), keep_last=keep_last)
