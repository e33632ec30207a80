"""The training entry point: one run directory, a Ray session, then each configured track in turn.

``resume=RUN_DIR`` reopens a run directory and continues each track from its newest checkpoint.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from pipeline.checkpoint import list_checkpoints, load_checkpoint
from pipeline.config import Config, dump_config
from pipeline.control_track import ControlResult, run_control
from pipeline.errors import InputError
from pipeline.plots import line_plot
from pipeline.rundir import RunDir, atomic_write_text
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


def open_run(config: Config, out_dir: str | None, resume: str | Path | None) -> RunDir:
    """A new run directory, or the existing one to resume (its config.yaml rewritten with ``config``)."""
    if resume is None:
        return RunDir.create(config, out_dir)
    path = Path(resume)
    if not (path / "config.yaml").is_file():
        raise InputError(f"--resume {path}: not a run directory (no config.yaml)")
    atomic_write_text(path / "config.yaml", dump_config(config))
    return RunDir(path)


def latest_checkpoint(run: RunDir, track: str):  # noqa: ANN201 - Checkpoint | None
    """The newest checkpoint of ``track`` in ``run`` (None: start that track from scratch)."""
    folder = run.path / "checkpoints" / track
    return load_checkpoint(folder) if list_checkpoints(folder) else None


def train(config: Config, *, out_dir: str | None = None, progress: bool = True,
          resume: str | Path | None = None) -> Path:
    """Run every track of ``config``; returns the run directory (summary.json, report.md, plots, metrics)."""
    if config.video is not None:
        from pipeline.video_track import preflight

        preflight(config.video)
    run = open_run(config, out_dir, resume)
    log.info("run directory %s%s", run.path, " (resumed)" if resume is not None else "")
    summary: dict[str, Any] = {}
    report = [f"# newtonrl run `{run.path.name}`", ""]
    try:
        with ray_session(config.runtime):
            if config.control is not None:
                ckpt = latest_checkpoint(run, "control") if resume is not None else None
                if ckpt is not None:
                    run.purge_step = ckpt.step + 1
                result = run_control(config.control, config.runtime, seed=config.run.seed, run=run, progress=progress,
                                     checkpoint=config.checkpoint, resume=ckpt)
                summary["control"] = result.summary
                report.append(_control_report(run, result))
            if config.video is not None:
                from pipeline.video_track import TRACK, run_video

                ckpt = latest_checkpoint(run, TRACK) if resume is not None else None
                if ckpt is not None and config.control is None:  # the TensorBoard purge applies to every track
                    run.purge_step = ckpt.step
                video_summary, video_report = run_video(config, run, progress=progress, resume=ckpt)
                summary["video"] = video_summary
                report.append(video_report)
    finally:
        run.close()
    run.write_summary(summary)
    run.write_report("\n".join(report))
    return run.path
