"""Run directory: resolved config, metrics.jsonl, TensorBoard events, plots, summary.json and report.md."""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

from pipeline.config import Config, dump_config


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temp file + rename, so readers never see a half-written file."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


class RunDir:
    """One run's output folder; ``log`` appends a metrics record and TensorBoard scalars."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        (self.path / "plots").mkdir(exist_ok=True)
        self._writer = None
        #: on resume: TensorBoard events at or after this step (written before a crash) are purged
        self.purge_step: int | None = None

    @classmethod
    def create(cls, config: Config, out_dir: str | None = None) -> RunDir:
        """A new folder ``<out_dir>/<run.name>-<UTC time>`` holding ``config.yaml`` (the resolved config)."""
        parent = Path(out_dir or config.run.out_dir)
        stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
        path = parent / f"{config.run.name}-{stamp}"
        suffix = 1
        while path.exists():
            suffix += 1
            path = parent / f"{config.run.name}-{stamp}-{suffix}"
        run = cls(path)
        atomic_write_text(path / "config.yaml", dump_config(config))
        return run

    @property
    def writer(self):  # noqa: ANN201 - torch's SummaryWriter, imported lazily
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(log_dir=str(self.path / "tensorboard"), purge_step=self.purge_step)
        return self._writer

    def log(self, step: int, metrics: dict[str, Any], *, prefix: str = "") -> None:
        """Append ``{"step", "prefix", **metrics}`` to metrics.jsonl and write numeric values as scalars."""
        record = {"step": step, "prefix": prefix, **metrics}
        with open(self.path / "metrics.jsonl", "a") as fh:
            fh.write(json.dumps(record, default=float) + "\n")
        for key, value in metrics.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                self.writer.add_scalar(f"{prefix}/{key}" if prefix else key, value, step)

    def write_summary(self, summary: dict[str, Any]) -> None:
        atomic_write_text(self.path / "summary.json", json.dumps(summary, indent=2, default=float))

    def write_report(self, text: str) -> None:
        atomic_write_text(self.path / "report.md", text)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def read_metrics(path: Path, prefix: str | None = None) -> list[dict[str, Any]]:
    """Records of a run's metrics.jsonl, optionally only those with ``prefix``."""
    records = [json.loads(line) for line in (Path(path) / "metrics.jsonl").read_text().splitlines() if line]
    return [r for r in records if prefix is None or r.get("prefix") == prefix]
