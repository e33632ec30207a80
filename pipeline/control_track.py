"""Control-track controller: rollouts -> policy evaluation (rewards) -> policy improvement (learner), repeated.

Phases per iteration: sample (rollout pool) -> score (reward pool: quadrature + Bellman rows) -> solve (reward
worker 0: least squares) -> improve (learner) -> log -> checkpoint. A run resumed from a checkpoint (weights,
iteration, stream states, RNG) continues with the same numbers as an uninterrupted one. The pools are Ray actors
or in-process objects (:mod:`pipeline.runtime`); the numbers are the same either way.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from envs.control import ControlSystem, make_system
from pipeline.checkpoint import Checkpoint, rng_state, save_checkpoint, set_rng_state, truncate_metrics
from pipeline.config import CheckpointSection, ControlSection, RuntimeSection
from pipeline.learners.intrl import IntRLLearner, IterationState
from pipeline.rundir import RunDir, read_metrics
from pipeline.runtime import LocalPool, Placement, RayPool, make_pool
from rewards.policy_eval import ExcitationLost, PolicyEvaluator, check_solver
from rollouts.control import ControlRolloutWorker

log = logging.getLogger(__name__)


@dataclass
class ControlResult:
    """Outcome of one policy-iteration run: final weights, per-iteration metrics and the summary figures."""

    weights: np.ndarray
    history: list[dict[str, float]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)


def initial_states(system: ControlSystem, control: ControlSection, seed: int) -> np.ndarray:
    """(S, n) stream start states: explicit ones, or x0 followed by random states on the sphere of radius r |x0|."""
    ro = control.rollout
    if ro.initial_states is not None:
        states = np.asarray(ro.initial_states, dtype=float)
        if states.ndim != 2 or states.shape[1] != system.state_dim:
            from pipeline.errors import ConfigError

            raise ConfigError(f"config key 'control.rollout.initial_states': expected a list of {system.state_dim}-"
                              f"vectors, got shape {states.shape}")
        return states
    x0 = np.asarray(system.x0, dtype=float)
    rng = np.random.default_rng(seed)
    extra = rng.standard_normal((ro.num_initial_states - 1, system.state_dim))
    radius = ro.initial_state_radius * (np.linalg.norm(x0) or 1.0)
    extra *= radius / np.linalg.norm(extra, axis=1, keepdims=True)
    return np.vstack([x0[None], extra])


def split_counts(total: int, parts: int) -> list[int]:
    """Split ``total`` intervals into ``parts`` near-equal counts (larger ones first)."""
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def checkpoint_state(learner: IntRLLearner, starts: np.ndarray, stop_reason: str | None) -> dict[str, Any]:
    """What a control checkpoint holds: iteration, weights, convergence, stream states, terminal stop, RNG."""
    st = learner.state
    return {"track": "control", "iteration": st.iteration, "weights": st.weights, "converged": st.converged,
            "starts": starts, "stop_reason": stop_reason, "rng": rng_state()}


def _restore(ckpt: Checkpoint, learner: IntRLLearner, run: RunDir | None, prefix: str) -> tuple[np.ndarray, list]:
    """Put a checkpoint back into ``learner``; drop metrics logged after it; return (stream states, history)."""
    st = ckpt.state
    learner.state = IterationState(int(st["iteration"]), np.asarray(st["weights"]), bool(st["converged"]))
    set_rng_state(st["rng"])
    if run is None:
        return np.asarray(st["starts"]), []
    truncate_metrics(run.path, prefix=prefix, step=learner.state.iteration)
    history = [{k: v for k, v in r.items() if k not in ("step", "prefix")} for r in read_metrics(run.path, prefix)]
    log.info("resumed %s at iteration %d from %s", prefix, learner.state.iteration, ckpt.path)
    return np.asarray(st["starts"]), history


def save_control(folder: Path | None, learner: IntRLLearner, starts: np.ndarray, stop_reason: str | None,
                 checkpoint: CheckpointSection) -> None:
    """Checkpoint the control run into ``folder`` (nothing when None)."""
    if folder is not None:
        save_checkpoint(folder, learner.state.iteration, checkpoint_state(learner, starts, stop_reason),
                        keep_last=checkpoint.keep_last)


@contextlib.contextmanager
def control_pools(control: ControlSection, runtime: RuntimeSection) -> Iterator[tuple[LocalPool | RayPool, ...]]:
    """Rollout and reward pools in one placement group (Ray) or in-process; closed on exit."""
    placement = Placement.reserve(runtime)  # None in-process
    rollouts = make_pool(ControlRolloutWorker, runtime.num_rollout_workers, control, runtime=runtime,
                         kind="rollout", placement=placement)
    rewards = make_pool(PolicyEvaluator, runtime.num_reward_workers, control, runtime=runtime, kind="reward",
                        placement=placement)
    try:
        yield rollouts, rewards
    finally:
        rollouts.close()
        rewards.close()
        if placement is not None:
            placement.close()


def run_control(control: ControlSection, runtime: RuntimeSection, *, seed: int = 0, run: RunDir | None = None,
                progress: bool = True, checkpoint: CheckpointSection | None = None,
                resume: Checkpoint | None = None) -> ControlResult:
    """Policy iteration to convergence (or the cap / loss of excitation). Raises InputError on bad set-ups.

    With ``run`` and ``checkpoint``, checkpoints go to ``<run>/checkpoints/control``; ``resume`` continues one.
    """
    start = None
    if control.iteration.initializer == "homotopy":
        from pipeline.homotopy import homotopy_start

        start = homotopy_start(control, runtime, seed=seed, progress=progress)
        control = start.control  # warm-started at the real system (initializer "given")
    system = make_system(control.system.name, control.system.params)
    learner = IntRLLearner(system, control, seed=seed)
    learner.check_admissible()
    check_solver(system, control.iteration.solver)
    starts0 = initial_states(system, control, seed)
    if control.rollout.intervals < len(starts0):
        from pipeline.errors import ConfigError

        raise ConfigError(f"config key 'control.rollout.intervals': {control.rollout.intervals} intervals cannot be "
                          f"split over {len(starts0)} initial states; expected >= {len(starts0)}")
    counts = split_counts(control.rollout.intervals, len(starts0))
    prefix, done = f"control/{system.name}", None
    result = ControlResult(weights=learner.state.weights)
    starts = starts0.copy()
    if resume is not None:
        starts, result.history = _restore(resume, learner, run, prefix)
        done = resume.state["stop_reason"] or ("converged" if learner.state.converged else None)
    save_dir = run.path / "checkpoints" / "control" if run is not None and checkpoint is not None else None
    stop_reason = done or "max_iterations"
    todo = range(learner.state.iteration, control.iteration.max_iterations) if done is None else range(0)
    bar = tqdm(todo, desc=f"IntRL {system.name}", disable=not progress, leave=False)
    t_begin = time.perf_counter()
    with control_pools(control, runtime) as (rollouts, rewards):
        for _ in bar:
            policy = learner.policy()
            t0 = time.perf_counter()
            # one call per stream, spread over the workers: rows keep stream order whatever the worker count
            batches = rollouts.map("rollout", [(policy, starts[i : i + 1], [counts[i]]) for i in range(len(starts))])
            t1 = time.perf_counter()
            rows = rewards.map("score", [(b,) for b in batches])
            try:
                evaluation = rewards.call("solve", rows)
            except ExcitationLost as exc:
                stop_reason = "excitation_lost"
                log.warning("%s", exc)
                break
            metrics = learner.update(evaluation)
            metrics.update(rollout_s=t1 - t0, reward_s=time.perf_counter() - t1)
            result.history.append(metrics)
            if run is not None:
                run.log(learner.state.iteration, metrics, prefix=prefix)
            bar.set_postfix(change=f"{metrics['weight_change']:.2e}")
            if control.rollout.protocol == "continuing":
                starts = np.concatenate([batch.end_states for batch in batches])
            if save_dir is not None and checkpoint.every and learner.state.iteration % checkpoint.every == 0:
                save_control(save_dir, learner, starts, None, checkpoint)
            if learner.state.converged:
                stop_reason = "converged"
                break
    # final checkpoint; converged / excitation_lost are terminal, the iteration cap is not
    save_control(save_dir, learner, starts, stop_reason if stop_reason != "max_iterations" else None, checkpoint)
    result.weights = learner.state.weights
    result.summary = {
        "system": system.name,
        "rule": control.quadrature.rule,
        "N": control.rollout.nodes,
        "M": control.rollout.intervals,
        "protocol": control.rollout.protocol,
        "initial_states": len(starts0),
        "iterations": learner.state.iteration,
        "converged": learner.state.converged,
        "stop_reason": stop_reason,
        "weights": learner.state.weights.tolist(),
        "wall_s": time.perf_counter() - t_begin,
        **learner.errors(),
    }
    if start is not None:
        result.summary.update(homotopy_stages=len(start.stages), homotopy_sim_s=start.sim_s,
                              homotopy_wall_s=start.wall_s)
    return result
