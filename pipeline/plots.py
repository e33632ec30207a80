"""Matplotlib figures written to run directories and bench outputs (Agg backend, PNG)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

Series = Mapping[str, tuple[Sequence[float], Sequence[float]]]


def panel_plot(path: Path, panels: Mapping[str, Series], *, xlabel: str, ylabel: str, logx: bool = False,
               logy: bool = True, styles: Mapping[str, str] | None = None) -> Path:
    """One figure with a panel per title, each with a line per named (x, y) series; returns the PNG path.

    ``styles`` maps a series name to a matplotlib format string (default "o-").
    """
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.2), dpi=110, squeeze=False)
    for ax, (title, series) in zip(axes[0], panels.items()):
        for name, (x, y) in series.items():
            ax.plot(x, y, (styles or {}).get(name, "o-"), label=name, markersize=4)
        ax.set_xscale("log" if logx else "linear")
        ax.set_yscale("log" if logy else "linear")
        ax.set_title(title)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def line_plot(path: Path, series: Series, *, title: str, xlabel: str, ylabel: str, logx: bool = False,
              logy: bool = True, styles: Mapping[str, str] | None = None) -> Path:
    """A single-panel :func:`panel_plot`."""
    return panel_plot(path, {title: series}, xlabel=xlabel, ylabel=ylabel, logx=logx, logy=logy, styles=styles)
