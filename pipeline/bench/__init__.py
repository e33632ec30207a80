"""Benchmarks (not tests): each ``newtonrl bench VERB`` lives in ``pipeline/bench/VERB.py``.

A bench module defines ``add_arguments(parser: argparse.ArgumentParser) -> None`` and
``run(args: argparse.Namespace) -> BenchResult``. The CLI prints the result as a table and, with
``--json PATH``, writes the same figures as JSON.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class BenchResult:
    """Figures of one benchmark: one or more named tables (lists of flat rows) plus free-form notes."""

    title: str
    tables: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"title": self.title, "tables": self.tables, "notes": self.notes, **self.extra}


def _cell(value: Any) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if value != 0 and (abs(value) < 1e-2 or abs(value) >= 1e5):
            return f"{value:.3e}"
        return f"{value:.4g}"
    return str(value)


def format_table(rows: list[dict[str, Any]]) -> str:
    """Render rows (dicts with the same keys) as an aligned plain-text table."""
    if not rows:
        return "(no rows)"
    keys = list(rows[0].keys())
    for row in rows[1:]:
        keys += [k for k in row if k not in keys]
    cells = [[_cell(row.get(k, "")) for k in keys] for row in rows]
    widths = [max(len(k), *(len(c[i]) for c in cells)) for i, k in enumerate(keys)]
    lines = ["  ".join(k.rjust(w) for k, w in zip(keys, widths))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)


def render(result: BenchResult) -> str:
    """Text shown on stdout for a bench result."""
    parts = [f"== {result.title} =="]
    for name, rows in result.tables.items():
        parts += [f"-- {name} --", format_table(rows)]
    parts += [f"* {note}" for note in result.notes]
    return "\n".join(parts)


def write_json(result: BenchResult, path: str | Path) -> None:
    """Write the bench figures to ``path`` as JSON."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(result.to_json(), indent=2, default=float))
