"""Cart-pole: how the quadrature rule and sampling step of the cost integral change the learned controller.

A policy is trained by pathwise policy gradient (:mod:`pipeline.learners.neural_pg`) on the mean quadrature
return J_h from a fixed batch of initial states, for each rule x sampling step h (T = 0.4 s intervals, N = T/h + 1
nodes, states from RK4 at <= ``--max-step``, or Euler at h: the authors' Euler case). Its TRUE cost over the same
horizon and starts comes from solve_ivp (DOP853, running-cost state, rtol 1e-10). References: training on the exact
cost (running-cost state in the differentiable solver), the LQR gain K* (CARE of the linearisation) and the
pole-placement start K0. Linearised cart-pole: linear policy u = -Kx (|K - K*| reported); nonlinear: MLP policy.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import torch

from envs.control import make_system
from envs.control.analysis import linearize, mirrored_gain
from pipeline.bench import BenchResult
from pipeline.learners.neural_pg import NeuralPGSettings, train_neural_policy
from pipeline.plots import Series, panel_plot
from rollouts.neural_control import NeuralRolloutSpec, numpy_policy, true_cost

INTERVAL = 0.4  # T (s)
START_BOX = (0.5, 0.5, 0.5, 0.5)  # initial states uniform in +-box: p (m), theta (rad), p' (m/s), theta' (rad/s)
#: (row label, rule, simulator, time-dependent policy)
METHODS = (("trapezoid", "trapezoid", "rk4", False), ("simpson", "simpson", "rk4", False),
           ("bq-matern72", "bq-matern72", "rk4", False), ("euler states + trapezoid", "trapezoid", "euler", False),
           ("trapezoid, pi(x, t)", "trapezoid", "rk4", True))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--systems", default="cartpole_linear,cartpole")
    parser.add_argument("--steps-h", default="0.4,0.2,0.1", help="sampling steps h (s); T/h must be an integer")
    parser.add_argument("--intervals", type=int, default=10, help="K: horizon = K x 0.4 s")
    parser.add_argument("--starts", type=int, default=16, help="initial states (fixed batch)")
    parser.add_argument("--max-step", type=float, default=0.05, help="largest RK4 step (s)")
    parser.add_argument("--hidden", default="16,16", help="MLP widths for the nonlinear cart-pole")
    parser.add_argument("--linear-steps", type=int, default=40, help="L-BFGS steps, linear policy (<= 4 rollouts each)")
    parser.add_argument("--mlp-steps", type=int, default=20, help="L-BFGS steps, MLP policy (<= 3 rollouts each)")
    parser.add_argument("--workers", type=int, default=1, help="rollout workers (in-process)")
    parser.add_argument("--plot", default="bench_cartpole.png")


def train_and_score(system: str, spec: NeuralRolloutSpec, settings: NeuralPGSettings, starts: np.ndarray,
                    gain0: np.ndarray) -> dict[str, Any]:
    """Train one policy; its true cost, final quadrature return, linear gain and wall time."""
    out = train_neural_policy(spec, settings, starts, gain0=gain0)
    sys_obj = make_system(system)
    cost = float(true_cost(sys_obj, numpy_policy(out.policy), starts, spec.horizon).mean())
    gain = -out.policy.linear.weight.detach().numpy()
    return {"true": cost, "J_h": out.summary["final_return"], "gain": gain, "wall_s": out.summary["wall_s"]}


def reference_rows(system: str, starts: np.ndarray, horizon: float, gain0: np.ndarray) -> list[dict[str, Any]]:
    """True costs of the LQR gain of the linearisation and of the pole-placement start K0."""
    sys_obj = make_system(system)
    K_star = make_system("cartpole_linear").optimal_gain()
    rows = []
    for label, K in (("LQR K* (CARE of the linearisation)", K_star), ("start K0 (pole placement)", gain0)):
        cost = float(true_cost(sys_obj, lambda x, t, K=K: -K @ x, starts, horizon).mean())
        rows.append({"method": label, "any h": cost})
    return rows


def system_table(system: str, args: argparse.Namespace, starts: np.ndarray) -> tuple[list[dict[str, Any]], Series]:
    """Rows (references, then one per method with a cell per h) and plot series (true cost / exact-trained)."""
    steps_h = [float(v) for v in args.steps_h.split(",")]
    gain0 = mirrored_gain(*linearize(make_system(system)))
    linear = system == "cartpole_linear"
    hidden = () if linear else tuple(int(v) for v in args.hidden.split(",") if v)
    base = NeuralRolloutSpec(system=system, interval=INTERVAL, intervals=args.intervals)
    settings = NeuralPGSettings(hidden=hidden, steps=args.linear_steps if linear else args.mlp_steps,
                                max_evals=4 if linear else 3, num_workers=args.workers)
    rows = reference_rows(system, starts, base.horizon, gain0)
    exact_spec = dataclasses.replace(base, cost="exact", nodes=int(round(INTERVAL / args.max_step)) + 1, substeps=1)
    exact = train_and_score(system, exact_spec, settings, starts, gain0)
    K_star = make_system("cartpole_linear").optimal_gain()
    rows.append({"method": "exact cost (RK4 + cost state)", "any h": exact["true"]})
    if linear:
        rows[-1]["|K-K*|"] = float(np.linalg.norm(exact["gain"] - K_star))
    series: Series = {rows[0]["method"]: (steps_h, [rows[0]["any h"] / exact["true"]] * len(steps_h))}
    for label, rule, simulator, timed in METHODS:
        if timed and linear:
            continue
        row: dict[str, Any] = {"method": label}
        for h in steps_h:
            nodes = int(round(INTERVAL / h)) + 1
            if rule == "simpson" and nodes % 2 == 0:
                continue
            spec = dataclasses.replace(base, rule=rule, nodes=nodes, simulator=simulator,
                                       substeps=max(1, int(np.ceil(h / args.max_step - 1e-9))))
            out = train_and_score(system, spec, dataclasses.replace(settings, time_dependent=timed), starts, gain0)
            row.update({f"h={h:g}": out["true"], f"J_h h={h:g}": out["J_h"]})
            if linear:
                row[f"|K-K*| h={h:g}"] = float(np.linalg.norm(out["gain"] - K_star))
            xs, ys = series.setdefault(label, ([], []))
            xs.append(h)
            ys.append(out["true"] / exact["true"])
        rows.append(row)
    return rows, series


def run(args: argparse.Namespace) -> BenchResult:
    torch.set_num_threads(1)
    starts = np.random.default_rng(0).uniform(-1, 1, (args.starts, 4)) * np.asarray(START_BOX)
    result = BenchResult(title="Cart-pole: true cost of the policy learned on quadrature returns (rule x step h)")
    panels: dict[str, Series] = {}
    for system in args.systems.split(","):
        rows, panels[system] = system_table(system, args, starts)
        result.tables[f"{system}: true cost (solve_ivp, rtol 1e-10) of the learned policy; J_h = its training "
                      "return"] = rows
    plot = panel_plot(Path(args.plot), panels, xlabel="sampling step h (s)", ylabel="true cost / exact-cost-trained",
                      logx=True)
    result.notes.append(f"horizon {args.intervals * INTERVAL:g} s, {args.starts} initial states uniform in "
                        f"+-{START_BOX}, L-BFGS {args.linear_steps} (linear) / {args.mlp_steps} (MLP) steps, RK4 "
                        f"step <= {args.max_step} s; policy: linear (cartpole_linear), MLP {args.hidden} + linear "
                        "(cartpole); K* = CARE of the linearisation")
    result.notes.append(f"plot: {plot}")
    return result
