"""Homotopy continuation vs a CARE-free stabilising start, on open-loop-unstable systems (plain K0 = 0 refuses).

Per system: (1) plain IntRL from u0 = 0 (the admissibility check refuses it), (2) the homotopy initialiser from
u0 = 0, (3) plain IntRL from a pole-placement gain on the linearisation (open-loop eigenvalues mirrored into the
left half-plane, scipy.signal.place_poles). Reported: policy-iteration steps, simulated rollout seconds, wall
seconds (median of repeats) and |K - K*|_F with K* from the CARE (of the linearisation for the pendulum).
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import numpy as np
import scipy.linalg

from envs.control import analysis, make_system
from envs.control.analysis import jacobian, linearize
from pipeline.bench import BenchResult
from pipeline.config import Config, parse_config
from pipeline.control_track import run_control
from pipeline.errors import InputError
from rollouts.control import PolicySpec

#: open-loop-unstable test systems: the `linear` system (eigenvalues 0.946, -0.823 +- 0.616i) and the pendulum
SYSTEMS: dict[str, dict[str, Any]] = {
    "unstable_linear": {"name": "linear", "params": {"A": [[0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.5, -0.7]],
                                                     "B": [[0.0], [0.0], [1.0]], "x0": [1.0, -1.0, 0.5],
                                                     "basis": "triu"}},
    "pendulum": {"name": "pendulum", "params": {"x0": [0.2, 0.0]}},
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--systems", default=",".join(SYSTEMS), help="comma list of " + ", ".join(SYSTEMS))
    parser.add_argument("--stages", type=int, default=4, help="control.iteration.homotopy_stages")
    parser.add_argument("--margin", type=float, default=0.5, help="control.iteration.homotopy_margin (1/s)")
    parser.add_argument("--repeats", type=int, default=3, help="repeats for the median wall time")


def make_config(system: str, *, initializer: str = "given", gain: np.ndarray | None = None, stages: int = 4,
                margin: float = 0.5) -> Config:
    """Restart protocol, 3 initial states, M = 12, N = 11, Matérn-7/2 BQ, tol 1e-8 (the bench and tests' set-up)."""
    iteration: dict[str, Any] = {"tol": 1e-8, "max_iterations": 40, "initializer": initializer,
                                 "homotopy_stages": stages, "homotopy_margin": margin}
    if gain is not None:
        iteration["initial_gain"] = np.atleast_2d(gain).tolist()
    control = {"system": SYSTEMS[system], "iteration": iteration, "quadrature": {"rule": "bq-matern72"},
               "rollout": {"nodes": 11, "intervals": 12, "protocol": "restart", "num_initial_states": 3}}
    return parse_config({"control": control, "runtime": {"use_ray": False}})


def mirrored_gain(system_name: str) -> np.ndarray:
    """CARE-free stabilising gain K (m, n) on the linearisation (:func:`envs.control.analysis.mirrored_gain`)."""
    spec = SYSTEMS[system_name]
    return analysis.mirrored_gain(*linearize(make_system(spec["name"], spec["params"])))


def care_gain(system_name: str) -> np.ndarray:
    """K* = R^-1 B'P of the CARE of the linearisation at the origin (exact optimum for linear systems)."""
    spec = SYSTEMS[system_name]
    system = make_system(spec["name"], spec["params"])
    A, B = linearize(system)
    P = scipy.linalg.solve_continuous_are(A, B, system.Q, system.R)
    return np.linalg.solve(system.R, B.T @ P)


def gain_of(system_name: str, weights: list[float]) -> np.ndarray:
    """Linear gain of the improved policy at the origin, K = d(-u)/dx (m, n)."""
    spec = SYSTEMS[system_name]
    system = make_system(spec["name"], spec["params"])
    policy = PolicySpec(weights=np.asarray(weights))
    return -jacobian(lambda x: policy(system, x), np.zeros(system.state_dim))


def measure(system: str, cfg: Config, repeats: int) -> dict[str, Any]:
    """One method on one system: iterations, simulated and wall seconds, |K - K*|; or the refusal message."""
    walls, out = [], {}
    for _ in range(repeats):
        t0 = time.perf_counter()
        try:
            out = run_control(cfg.control, cfg.runtime, progress=False).summary
        except InputError as exc:
            return {"result": "refused: " + str(exc)[:70] + "..."}
        walls.append(time.perf_counter() - t0)
    ro = cfg.control.rollout
    sim = out["iterations"] * ro.intervals * ro.interval + out.get("homotopy_sim_s", 0.0)
    K_star = care_gain(system)
    err = float(np.linalg.norm(gain_of(system, out["weights"]) - K_star) / np.linalg.norm(K_star))
    return {"result": out["stop_reason"], "stages": out.get("homotopy_stages", 0),
            "PI steps": out["iterations"] + round(out.get("homotopy_sim_s", 0.0) / (ro.intervals * ro.interval)),
            "sim s": sim, "wall s (median)": statistics.median(walls), "|K - K*| / |K*|": err}


def run(args: argparse.Namespace) -> BenchResult:
    result = BenchResult(title="Admissible start: homotopy continuation vs pole placement (IntRL, restart protocol)")
    rows = []
    for system in args.systems.split(","):
        methods = {
            "plain, u0 = 0": make_config(system),
            "homotopy from u0 = 0": make_config(system, initializer="homotopy", stages=args.stages,
                                                margin=args.margin),
            "plain, K0 = place (mirror)": make_config(system, gain=mirrored_gain(system)),
        }
        for method, cfg in methods.items():
            rows.append({"system": system, "method": method, **measure(system, cfg, args.repeats)})
    result.tables["admissible start"] = rows
    result.notes.append("sim s = simulated rollout seconds of all stages (PI steps x M x T, M = 12, T = 0.1 s); "
                        "K* from the CARE (of the linearisation at the origin for the pendulum)")
    result.notes.append(f"homotopy: stages = {args.stages} planned, margin = {args.margin} 1/s; tol 1e-8, "
                        "Matérn-7/2 BQ, N = 11, 3 initial states")
    return result
