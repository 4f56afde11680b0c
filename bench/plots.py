"""PNG plots of the simulations: backlog and nodes over time, one line per policy."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")  # files only: no display on a build machine
import matplotlib.pyplot as plt
import numpy as np

if TYPE_CHECKING:
    from bench.simulate import Result
    from bench.traces import Trace

COLOURS = {"framescale": "#1f77b4", "one-minute-visible": "#d62728", "one-minute-visible-15min-in": "#ff9f1c"}


def _window_mean(values: np.ndarray, window: int) -> np.ndarray:
    """Means over windows of ``window`` seconds: a day has 86,400 points, far more than a plot can show."""
    if window <= 1:
        return values.astype(float)
    usable = len(values) - len(values) % window
    return values[:usable].reshape(-1, window).mean(axis=1)


def plot_simulation(trace: Trace, results: dict[str, Result], out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    horizon = trace.horizon_seconds
    hours = horizon > 3 * 3600
    # One point per second up to 3 hours; five-minute means beyond.
    window = 300 if hours else 1
    scale = 3600.0 if hours else 60.0
    figure, (backlog_axis, nodes_axis) = plt.subplots(2, 1, figsize=(11, 6.5), sharex=True)
    for name, result in results.items():
        series = result.series
        seconds = np.arange(len(series.nodes))
        x = _window_mean(seconds, window) / scale
        colour = COLOURS.get(name, "#7f7f7f")
        backlog = series.visible + series.in_flight
        backlog_axis.plot(x, _window_mean(backlog, window), label=f"{name}: visible + in flight", color=colour, lw=1.2)
        backlog_axis.plot(x, _window_mean(series.visible, window), color=colour, lw=0.8, ls=":", alpha=0.8)
        nodes_axis.step(x, _window_mean(series.nodes, window), where="post", label=name, color=colour, lw=1.2)
    backlog_axis.set_ylabel("messages (dotted: visible only)")
    averaged = " (five-minute means)" if window > 1 else ""
    backlog_axis.set_title(f"{trace.name}: {len(trace.jobs)} videos{averaged}")
    backlog_axis.legend(loc="upper right", fontsize=8)
    backlog_axis.grid(alpha=0.3)
    nodes_axis.set_ylabel("nodes (billed)")
    nodes_axis.set_xlabel("hours" if hours else "minutes")
    nodes_axis.legend(loc="upper right", fontsize=8)
    nodes_axis.grid(alpha=0.3)
    figure.tight_layout()
    path = out_dir / f"sim-{trace.name}.png"
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
