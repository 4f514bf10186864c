"""The Pareto front of a sweep: forget quality against model utility, both higher is better.

A trial is on the front when no other trial is at least as good on both axes and better on one. Each trial is one
point: its best epoch (the model the sweep exports for it).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from matplotlib.figure import Figure

from baldro_ray.tracking.plots import save_figure


@dataclass(frozen=True)
class ParetoPoint:
    """One trial on the plot: its label, forget axis value, utility, and whether it is a reference-grid point."""

    label: str
    forget: float
    utility: float
    reference: bool = False


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the non-dominated points (maximising both coordinates; NaN points never on the front), sorted
    by the first coordinate."""
    finite = [i for i, (x, y) in enumerate(points) if not (math.isnan(x) or math.isnan(y))]
    front = [
        i
        for i in finite
        if not any(
            points[j][0] >= points[i][0]
            and points[j][1] >= points[i][1]
            and (points[j][0] > points[i][0] or points[j][1] > points[i][1])
            for j in finite
        )
    ]
    return sorted(front, key=lambda i: points[i])


def plot_pareto(points: Sequence[ParetoPoint], forget_label: str, log_forget: bool, out: Path) -> Path:
    """All trials, the front highlighted and joined, reference-grid points marked; written atomically to ``out``."""
    front = set(pareto_front([(p.forget, p.utility) for p in points]))
    figure = Figure(figsize=(7, 5))
    ax = figure.subplots()
    for index, point in enumerate(points):
        on_front = index in front
        ax.scatter(
            point.forget,
            point.utility,
            s=80 if on_front else 40,
            marker="*" if point.reference else "o",
            color="tab:red" if on_front else "tab:gray",
            edgecolors="black" if point.reference else "none",
            zorder=3,
        )
        ax.annotate(
            point.label, (point.forget, point.utility), fontsize=7, xytext=(4, 3), textcoords="offset points"
        )
    ordered = sorted(front, key=lambda i: points[i].forget)
    if ordered:
        ax.plot(
            [points[i].forget for i in ordered], [points[i].utility for i in ordered], color="tab:red", lw=1
        )
    if log_forget and any(p.forget > 0 for p in points):
        ax.set_xscale("log")
    ax.set_xlabel(forget_label)
    ax.set_ylabel("model utility")
    ax.set_title("Sweep: forget quality vs model utility (red: Pareto front, star: reference grid)")
    ax.grid(alpha=0.3)
    return save_figure(figure, out)
