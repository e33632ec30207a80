"""Homotopy continuation for an admissible initial policy (HomoODE's idea in its classical form).

IntRL needs a stabilising start. On the shifted system f(x) - s x (:class:`envs.control.shifted.ShiftedSystem`)
every closed-loop eigenvalue at the origin moves by -s, so the given policy (w0 / K0, often u = 0) is admissible
once s > a0, its closed-loop stability abscissa. Stages: policy iteration to convergence at s, then s -> s - step,
warm-started from the last weights. A warm start is admissible for s' iff abscissa(base, u_w) - s' < 0
(eigenvalues of the closed-loop Jacobian); otherwise the step is halved. The last stage (s = 0) is the real run,
left to the caller.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from envs.control import ControlSystem, make_system
from envs.control.analysis import stability_abscissa
from pipeline.config import ControlSection, RuntimeSection, SystemSection
from pipeline.errors import InputError
from pipeline.learners.intrl import IntRLLearner
from rollouts.control import PolicySpec

log = logging.getLogger(__name__)

MAX_HALVINGS = 20  # step halvings per stage before giving up (the step is then ~1e-6 of the planned one)


@dataclass
class HomotopyResult:
    """The control section to run (warm-started at s = 0) and one record per continuation stage."""

    control: ControlSection
    stages: list[dict[str, Any]] = field(default_factory=list)

    @property
    def sim_s(self) -> float:
        """Simulated rollout time of all stages (s)."""
        return float(sum(stage["sim_s"] for stage in self.stages))

    @property
    def wall_s(self) -> float:
        return float(sum(stage["wall_s"] for stage in self.stages))


def policy_abscissa(system: ControlSystem, policy: PolicySpec) -> float:
    """Closed-loop stability abscissa of ``policy`` on ``system`` at the origin (1/s; < 0: admissible)."""
    return stability_abscissa(system, lambda x: policy(system, x))


def stage_control(control: ControlSection, shift: float, policy: PolicySpec | None) -> ControlSection:
    """``control`` on the system shifted by ``shift`` (none when 0), started from ``policy`` (None: as given)."""
    system = control.system
    if shift > 0:
        params = {"base": system.name, "base_params": dict(system.params), "shift": float(shift)}
        system = SystemSection(name="shifted", params=params)
    it = control.iteration.model_copy(update={"initializer": "given"})
    if shift > 0:
        it = it.model_copy(update={"tol": max(it.tol, it.homotopy_stage_tol)})
    if policy is not None:
        it = it.model_copy(update={"initial_weights": policy.weights.tolist(), "initial_gain": None})
    return control.model_copy(update={"system": system, "iteration": it})


def next_shift(abscissa: float, shift: float, step: float) -> tuple[float, float]:
    """Next shift: 0 when the warm start already stabilises the real system (abscissa < 0), else the largest
    s' = shift - step * 2^-k (k >= 0, s' >= 0) with abscissa - s' < 0; returns (s', step used)."""
    if abscissa < 0:
        return 0.0, shift
    for _ in range(MAX_HALVINGS):
        candidate = max(shift - step, 0.0)
        if abscissa - candidate < 0:
            return candidate, step
        step *= 0.5
    raise InputError(f"homotopy stalled at shift s = {shift:.4g}: the warm-started policy has closed-loop abscissa "
                     f"{abscissa:.4g} and no step down to {step:.3g} keeps it admissible; raise "
                     "control.iteration.homotopy_margin or homotopy_stages")


def homotopy_start(control: ControlSection, runtime: RuntimeSection, *, seed: int = 0,
                   progress: bool = False) -> HomotopyResult:
    """Walk the shift from s0 = max(0, a0 + margin) to 0; returns the control section warm-started at s = 0."""
    from pipeline.control_track import run_control

    it = control.iteration
    base = make_system(control.system.name, control.system.params)
    if np.linalg.norm(base.f(np.zeros(base.state_dim))) > 1e-12:
        raise InputError(f"control.iteration.initializer = 'homotopy' needs the origin to be an equilibrium of "
                         f"{base.name} (f(0) = 0); give an admissible initial policy instead")
    policy = IntRLLearner(base, control, seed=seed).policy()
    a0 = policy_abscissa(base, policy)
    result = HomotopyResult(control=stage_control(control, 0.0, None))
    if a0 < 0:
        log.info("homotopy: the initial policy is already admissible (abscissa %.3g); no continuation", a0)
        return result
    shift = a0 + it.homotopy_margin
    planned = shift / it.homotopy_stages
    step, warm = planned, None
    while shift > 0:
        t0 = time.perf_counter()
        run = run_control(stage_control(control, shift, warm), runtime, seed=seed, progress=progress)
        warm = PolicySpec(weights=run.weights, version=0)
        abscissa = policy_abscissa(base, warm)
        sim_s = run.summary["iterations"] * control.rollout.intervals * control.rollout.interval
        result.stages.append({"shift": shift, "iterations": run.summary["iterations"], "stop": run.summary[
            "stop_reason"], "abscissa": abscissa, "sim_s": sim_s, "wall_s": time.perf_counter() - t0})
        log.info("homotopy stage s = %.4g: %d iterations (%s), abscissa on the real system %.4g", shift,
                 run.summary["iterations"], run.summary["stop_reason"], abscissa)
        shift, step = next_shift(abscissa, shift, step)
        step = min(2.0 * step, planned)  # regrow after a halving
    result.control = stage_control(control, 0.0, warm)
    return result
