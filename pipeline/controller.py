"""The training entry point: one run directory, a Ray session, then each configured track in turn."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from pipeline.config import Config
from pipeline.control_track import ControlResult, run_control
from pipeline.plots import line_plot
from pipeline.rundir import RunDir
from pipeline.runtime import ray_session

log = logging.getLogger(__name__)


def _control_report(run: RunDir, result: ControlResult) -> str:
    """Write the control plots and return the markdown section of the report."""
    hist, s = result.history, result.summary
    steps = list(range(1, len(hist) + 1))
    series = {"|w_i - w_{i-1}|": (steps, [h["weight_change"] for h in hist])}
    for key in ("weight_error", "gain_error", "policy_error"):
        if hist and key in hist[0]:
            series[key] = (steps, [h[key] for h in hist])
    plot = line_plot(run.path / "plots" / "control_convergence.png", series, title=f"IntRL on {s['system']} "
                     f"({s['rule']}, N={s['N']})", xlabel="policy iteration", ylabel="error")
    rows = [f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in s.items() if k != "weights"]
    return "\n".join(["## Control track (IntRL)", "", "| figure | value |", "|---|---|", *rows, "",
                      f"![convergence](plots/{plot.name})", ""])


def train(config: Config, *, out_dir: str | None = None, progress: bool = True) -> Path:
    """Run every track of ``config``; returns the run directory (summary.json, report.md, plots, metrics)."""
    run = RunDir.create(config, out_dir)
    log.info("run directory %s", run.path)
    summary: dict[str, Any] = {}
    report = [f"# newtonrl run `{run.path.name}`", ""]
    try:
        with ray_session(config.runtime):
            if config.control is not None:
                result = run_control(config.control, config.runtime, seed=config.run.seed, run=run, progress=progress)
                summary["control"] = result.summary
                report.append(_control_report(run, result))
            if config.video is not None:
                from pipeline.video_track import run_video

                video_summary, video_report = run_video(config, run, progress=progress)
                summary["video"] = video_summary
                report.append(video_report)
    finally:
        run.close()
    run.write_summary(summary)
    run.write_report("\n".join(report))
    return run.path
