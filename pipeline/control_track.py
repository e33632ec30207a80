"""Control-track controller: rollouts -> policy evaluation (rewards) -> policy improvement (learner), repeated.

Phases per iteration: sample (rollout pool) -> score (reward pool: quadrature + Bellman rows) -> solve (reward
worker 0: least squares) -> improve (learner) -> log. The pools are Ray actors or in-process objects
(:mod:`pipeline.runtime`); the numbers are the same either way.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from tqdm import tqdm

from envs.control import ControlSystem, make_system
from pipeline.config import ControlSection, RuntimeSection
from pipeline.learners.intrl import IntRLLearner
from pipeline.rundir import RunDir
from pipeline.runtime import make_pool
from rewards.policy_eval import ExcitationLost, PolicyEvaluator
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


def run_control(control: ControlSection, runtime: RuntimeSection, *, seed: int = 0, run: RunDir | None = None,
                progress: bool = True) -> ControlResult:
    """Policy iteration to convergence (or the cap / loss of excitation). Raises InputError on bad set-ups."""
    system = make_system(control.system.name, control.system.params)
    learner = IntRLLearner(system, control, seed=seed)
    learner.check_admissible()
    starts0 = initial_states(system, control, seed)
    if control.rollout.intervals < len(starts0):
        from pipeline.errors import ConfigError

        raise ConfigError(f"config key 'control.rollout.intervals': {control.rollout.intervals} intervals cannot be "
                          f"split over {len(starts0)} initial states; expected >= {len(starts0)}")
    counts = split_counts(control.rollout.intervals, len(starts0))
    rollouts = make_pool(ControlRolloutWorker, runtime.num_rollout_workers, control, runtime=runtime)
    rewards = make_pool(PolicyEvaluator, runtime.num_reward_workers, control, runtime=runtime)
    result = ControlResult(weights=learner.state.weights)
    starts, stop_reason = starts0.copy(), "max_iterations"
    bar = tqdm(range(control.iteration.max_iterations), desc=f"IntRL {system.name}", disable=not progress,
               leave=False)
    t_begin = time.perf_counter()
    try:
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
                run.log(learner.state.iteration, metrics, prefix=f"control/{system.name}")
            bar.set_postfix(change=f"{metrics['weight_change']:.2e}")
            if control.rollout.protocol == "continuing":
                starts = np.concatenate([batch.end_states for batch in batches])
            if learner.state.converged:
                stop_reason = "converged"
                break
    finally:
        rollouts.close()
        rewards.close()
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
    return result
