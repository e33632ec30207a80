"""IntRL: |w - w*| vs quadrature nodes N on Examples 1 and 2, the authors' protocol and a robust one."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.bench import BenchResult
from pipeline.config import Config, parse_config
from pipeline.control_track import run_control
from pipeline.plots import panel_plot
from pipeline.runtime import ray_session

#: the authors' |w - w*| at N = 5 / 10 / 15 (papers.md section 2)
AUTHORS = {
    ("example1", "trapezoid"): (1.18e-3, 2.32e-4, 9.61e-5),
    ("example1", "bq-matern72"): (5.71e-5, 6.15e-6, 3.31e-6),
    ("example2", "trapezoid"): (1.29e-4, 2.54e-5, 1.05e-5),
    ("example2", "bq-matern72"): (8.53e-6, 9.40e-7, 4.98e-7),
}
#: intervals M per run: the authors used 10 for trapezoid and 20 for BQ on Example 1; 20 reproduces Example 2
AUTHORS_M = {("example1", "trapezoid"): 10}
RULES = ("trapezoid", "bq-matern72", "bsq-matern72", "bq-matern72/float64")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--nodes", default="5-15", help="N range 'a-b' or comma list (default 5-15)")
    parser.add_argument("--examples", default="example1,example2")
    parser.add_argument("--rules", default=",".join(RULES),
                        help="rules; 'bq-matern72/float64' is BQ with the authors' float64 solve + jitter 1e-8")
    parser.add_argument("--protocols", default="authors,robust")
    parser.add_argument("--robust-states", type=int, default=4, help="initial states of the robust protocol")
    parser.add_argument("--workers", type=int, default=2, help="rollout workers of the robust protocol")
    parser.add_argument("--ray", action="store_true", help="run the robust protocol's roles as Ray actors")
    parser.add_argument("--plot", default="bench_intrl.png", help="log-log plot path")


def parse_nodes(text: str) -> list[int]:
    if "-" in text:
        lo, hi = (int(v) for v in text.split("-"))
        return list(range(lo, hi + 1))
    return [int(v) for v in text.split(",")]


def make_config(example: str, rule: str, nodes: int, protocol: str, args: argparse.Namespace) -> Config:
    rule_name, _, precision = rule.partition("/")
    quad: dict[str, Any] = {"rule": rule_name}
    if precision:
        quad["precision"] = precision
    rollout: dict[str, Any] = {"nodes": nodes, "intervals": AUTHORS_M.get((example, rule_name), 20)}
    iteration: dict[str, Any] = {"tol": 1e-3, "max_iterations": 120}
    runtime: dict[str, Any] = {"use_ray": False}
    if protocol == "robust":
        rollout.update(protocol="restart", num_initial_states=args.robust_states, intervals=40)
        iteration.update(tol=1e-9, max_iterations=40)
        runtime.update(use_ray=args.ray, num_rollout_workers=args.workers)
    return parse_config({"control": {"system": {"name": example}, "rollout": rollout, "quadrature": quad,
                                     "iteration": iteration}, "runtime": runtime})


def loglog_slope(nodes: list[int], errors: list[float]) -> float:
    """Least-squares slope of log(error) against log(N - 1) (i.e. against the node spacing T/(N-1))."""
    x, y = np.log(np.asarray(nodes) - 1.0), np.log(np.asarray(errors))
    return float(np.polyfit(x, y, 1)[0])


def run(args: argparse.Namespace) -> BenchResult:
    nodes = parse_nodes(args.nodes)
    result = BenchResult(title="IntRL |w - w*| vs N (slope = d log err / d log(N-1))")
    panels: dict[str, dict[str, tuple[list[float], list[float]]]] = {}
    styles: dict[str, str] = {}
    for protocol in args.protocols.split(","):
        rows = []
        for example in args.examples.split(","):
            for rule in args.rules.split(","):
                errors, iters = [], []
                for n in nodes:
                    cfg = make_config(example, rule, n, protocol, args)
                    with ray_session(cfg.runtime):
                        out = run_control(cfg.control, cfg.runtime, seed=0, progress=False).summary
                    errors.append(out["weight_error"])
                    iters.append(out["iterations"])
                row: dict[str, Any] = {"example": example, "rule": rule, "M": cfg.control.rollout.intervals}
                row.update({f"N={n}": e for n, e in zip(nodes, errors)})
                row["slope"] = loglog_slope(nodes, errors)
                row["iters"] = f"{min(iters)}-{max(iters)}"
                ref = AUTHORS.get((example, rule)) if protocol == "authors" else None
                if ref:
                    row["authors N=5/10/15"] = "/".join(f"{v:.2e}" for v in ref)
                    ours = [errors[nodes.index(n)] for n in (5, 10, 15) if n in nodes]
                    if len(ours) == 3:
                        row["ratio to authors"] = "/".join(f"{o / r:.3f}" for o, r in zip(ours, ref))
                rows.append(row)
                series = panels.setdefault(example, {})
                series[f"{rule} ({protocol} protocol)"] = ([n - 1 for n in nodes], errors)
                styles[f"{rule} ({protocol} protocol)"] = "o-" if protocol == "authors" else "s:"
                if ref:
                    series[f"{rule} (paper)"] = ([4, 9, 14], list(ref))
                    styles[f"{rule} (paper)"] = "kx--" if rule == "trapezoid" else "k^--"
        result.tables[f"{protocol} protocol"] = rows
    plot = panel_plot(Path(args.plot), panels, xlabel="N - 1", ylabel="|w - w*|", logx=True, styles=styles)
    result.notes.append(f"authors' protocol: one trajectory continuing across iterations, tol 1e-3; robust: "
                        f"{args.robust_states} initial states restarted every iteration, M=40, tol 1e-9")
    result.notes.append(f"log-log plot: {plot}")
    return result
