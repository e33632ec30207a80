"""Cart-pole: how the quadrature rule and sampling step of the cost integral change the learned controller.

A policy is trained on the mean quadrature return J_h from a fixed batch of initial states, for each rule x sampling
step h (T = 0.4 s intervals, N = T/h + 1 nodes, states from RK4 at <= ``--max-step``, or Euler at h: the authors'
Euler case), by one of two estimators: ``pathwise`` (:mod:`pipeline.learners.neural_pg`: L-BFGS on the gradient
back-propagated through the solver) or ``likelihood_ratio`` (:mod:`pipeline.learners.neural_lr`: Gaussian
sample-and-hold exploration every ``--control-step`` s (Euler rows: every max(control step, h), a multiple of h),
group baselines, Adam on the learner group; ``--learners N`` runs N DDP replicas as Ray actors). The TRUE cost of
the learned (mean) policy over the same horizon and starts comes from solve_ivp (DOP853, running-cost state, rtol
1e-10). References: training on the exact cost (running-cost state in the solver), the LQR gain K* (CARE of the
linearisation) and the pole-placement start K0. Linearised cart-pole: linear policy u = -Kx (|K - K*| reported);
nonlinear: MLP policy. The likelihood-ratio cells are medians over ``--seeds`` runs.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from envs.control import make_system
from envs.control.analysis import linearize, mirrored_gain
from pipeline.bench import BenchResult
from pipeline.config import RuntimeSection
from pipeline.errors import InputError
from pipeline.learners.neural_lr import NeuralLRSettings, train_neural_policy_lr
from pipeline.learners.neural_pg import NeuralPGResult, NeuralPGSettings, train_neural_policy
from pipeline.plots import Series, panel_plot
from pipeline.runtime import ray_session
from rollouts.neural_control import NeuralRolloutSpec, numpy_policy, true_cost
from rollouts.neural_exploration import ExplorationSpec

INTERVAL = 0.4  # T (s)
START_BOX = (0.5, 0.5, 0.5, 0.5)  # initial states uniform in +-box: p (m), theta (rad), p' (m/s), theta' (rad/s)
#: --methods key -> (row label, rule, simulator, time-dependent policy)
METHODS = {"trapezoid": ("trapezoid", "trapezoid", "rk4", False), "simpson": ("simpson", "simpson", "rk4", False),
           "bq-matern72": ("bq-matern72", "bq-matern72", "rk4", False),
           "euler": ("euler states + trapezoid", "trapezoid", "euler", False),
           "trapezoid-t": ("trapezoid, pi(x, t)", "trapezoid", "rk4", True)}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--systems", default="cartpole_linear,cartpole")
    parser.add_argument("--steps-h", default="0.4,0.2,0.1", help="sampling steps h (s); T/h must be an integer")
    parser.add_argument("--intervals", type=int, default=10, help="K: horizon = K x 0.4 s")
    parser.add_argument("--starts", type=int, default=16, help="initial states (fixed batch)")
    parser.add_argument("--max-step", type=float, default=0.05, help="largest RK4 step (s)")
    parser.add_argument("--hidden", default="16,16", help="MLP widths for the nonlinear cart-pole")
    parser.add_argument("--linear-steps", type=int, default=40, help="L-BFGS steps, linear policy (<= 4 rollouts each)")
    parser.add_argument("--mlp-steps", type=int, default=20, help="L-BFGS steps, MLP policy (<= 3 rollouts each)")
    parser.add_argument("--workers", type=int, default=1, help="rollout workers (in-process unless --learners)")
    parser.add_argument("--methods", default=",".join(METHODS), help=f"rows, a subset of {','.join(METHODS)}")
    parser.add_argument("--estimator", choices=("pathwise", "likelihood_ratio"), default="pathwise")
    parser.add_argument("--learners", type=int, default=0,
                        help="likelihood_ratio: learner replicas (DDP, Ray actors, local Ray); 0: in-process")
    parser.add_argument("--iterations", type=int, default=150, help="likelihood_ratio: sample -> Adam step rounds")
    parser.add_argument("--group-size", type=int, default=8, help="likelihood_ratio: trajectories per start")
    parser.add_argument("--sigma", type=float, default=1.0, help="likelihood_ratio: initial exploration std (N)")
    parser.add_argument("--sigma-final", type=float, default=0.2, help="likelihood_ratio: final exploration std (N)")
    parser.add_argument("--control-step", type=float, default=0.025, help="likelihood_ratio: sample-and-hold step (s)")
    parser.add_argument("--seeds", type=int, default=1, help="likelihood_ratio: runs per cell (median reported)")
    parser.add_argument("--plot", default="bench_cartpole.png")


def lr_runtime(args: argparse.Namespace) -> RuntimeSection:
    """Roles of a likelihood-ratio run: ``--learners`` replicas and ``--workers`` rollout workers (Ray with
    learners; small CPU shares so that they fit on a laptop's local Ray)."""
    return RuntimeSection(use_ray=args.learners > 0, num_learners=args.learners, num_rollout_workers=args.workers,
                          cpus_per_learner=0.5, cpus_per_worker=0.25)


def train(spec: NeuralRolloutSpec, settings: NeuralPGSettings, starts: np.ndarray, gain0: np.ndarray,
          args: argparse.Namespace, seed: int) -> NeuralPGResult:
    """One training run by the chosen estimator (likelihood ratio: the policy part of ``settings`` carries over)."""
    if args.estimator == "pathwise":
        return train_neural_policy(spec, settings, starts, gain0=gain0, seed=seed)
    h = spec.step
    control_step = h * max(1, round(args.control_step / h)) if spec.simulator == "euler" else args.control_step
    lr_settings = NeuralLRSettings(hidden=settings.hidden, time_dependent=settings.time_dependent,
                                   iterations=args.iterations, group_size=args.group_size, sigma=args.sigma,
                                   sigma_final=args.sigma_final)
    return train_neural_policy_lr(ExplorationSpec(spec, control_step=control_step), lr_settings, starts,
                                  gain0=gain0, seed=seed, runtime=lr_runtime(args))


def train_and_score(system: str, spec: NeuralRolloutSpec, settings: NeuralPGSettings, starts: np.ndarray,
                    gain0: np.ndarray, args: argparse.Namespace) -> dict[str, Any]:
    """Train one policy (likelihood ratio: ``--seeds`` runs); true cost, final return, gain error, wall time."""
    sys_obj, K_star = make_system(system), make_system("cartpole_linear").optimal_gain()
    runs = []
    for seed in range(args.seeds if args.estimator == "likelihood_ratio" else 1):
        out = train(spec, settings, starts, gain0, args, seed)
        gain = -out.policy.linear.weight.detach().numpy()
        runs.append({"true": float(true_cost(sys_obj, numpy_policy(out.policy), starts, spec.horizon).mean()),
                     "J_h": out.summary["final_return"], "gain_error": float(np.linalg.norm(gain - K_star)),
                     "wall_s": out.summary["wall_s"]})
    return {key: float(np.median([r[key] for r in runs])) for key in runs[0]}


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
    exact = train_and_score(system, exact_spec, settings, starts, gain0, args)
    rows.append({"method": "exact cost (RK4 + cost state)", "any h": exact["true"]})
    if linear:
        rows[-1]["|K-K*|"] = exact["gain_error"]
    series: Series = {rows[0]["method"]: (steps_h, [rows[0]["any h"] / exact["true"]] * len(steps_h))}
    for key in args.methods.split(","):
        label, rule, simulator, timed = METHODS[key]
        if timed and linear:
            continue
        row: dict[str, Any] = {"method": label}
        for h in steps_h:
            nodes = int(round(INTERVAL / h)) + 1
            if rule == "simpson" and nodes % 2 == 0:
                continue
            spec = dataclasses.replace(base, rule=rule, nodes=nodes, simulator=simulator,
                                       substeps=max(1, int(np.ceil(h / args.max_step - 1e-9))))
            out = train_and_score(system, spec, dataclasses.replace(settings, time_dependent=timed), starts, gain0,
                                  args)
            row.update({f"h={h:g}": out["true"], f"J_h h={h:g}": out["J_h"]})
            if linear:
                row[f"|K-K*| h={h:g}"] = out["gain_error"]
            xs, ys = series.setdefault(label, ([], []))
            xs.append(h)
            ys.append(out["true"] / exact["true"])
        rows.append(row)
    return rows, series


def run(args: argparse.Namespace) -> BenchResult:
    torch.set_num_threads(1)
    unknown = sorted(set(args.methods.split(",")) - set(METHODS))
    if unknown:
        raise InputError(f"--methods {args.methods}: unknown {unknown}; choose from {','.join(METHODS)}")
    starts = np.random.default_rng(0).uniform(-1, 1, (args.starts, 4)) * np.asarray(START_BOX)
    result = BenchResult(title="Cart-pole: true cost of the policy learned on quadrature returns (rule x step h)")
    panels: dict[str, Series] = {}
    lr = args.estimator == "likelihood_ratio"
    t0 = time.perf_counter()
    with ray_session(lr_runtime(args)) if lr else contextlib.nullcontext():  # one local Ray for every run
        for system in args.systems.split(","):
            rows, panels[system] = system_table(system, args, starts)
            result.tables[f"{system} ({args.estimator}): true cost (solve_ivp, rtol 1e-10) of the learned policy; "
                          "J_h = its training return"] = rows
    plot = panel_plot(Path(args.plot), panels, xlabel="sampling step h (s)", ylabel="true cost / exact-cost-trained",
                      logx=True)
    result.notes.append(f"horizon {args.intervals * INTERVAL:g} s, {args.starts} initial states uniform in "
                        f"+-{START_BOX}, L-BFGS {args.linear_steps} (linear) / {args.mlp_steps} (MLP) steps, RK4 "
                        f"step <= {args.max_step} s; policy: linear (cartpole_linear), MLP {args.hidden} + linear "
                        "(cartpole); K* = CARE of the linearisation")
    if lr:
        result.notes.append(f"likelihood ratio: {args.iterations} Adam steps, {args.group_size} trajectories per "
                            f"start, sigma {args.sigma:g} -> {args.sigma_final:g} N, sample-and-hold every "
                            f"{args.control_step:g} s (Euler rows: max(that, h)), {args.learners} learner replicas "
                            f"({'Ray, DDP' if args.learners else 'in-process'}), {args.workers} rollout worker(s), "
                            f"median of {args.seeds} seed(s); the L-BFGS settings above do not apply; J_h = mean "
                            "sampled (noisy, sample-and-hold) return of the last batch")
    result.notes.append(f"wall time {time.perf_counter() - t0:.0f} s; plot: {plot}")
    return result
