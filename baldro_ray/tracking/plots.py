"""PNG figures of an unlearning run: per-sample forgetting curves, DRO weight spread, per-epoch evaluation.

Invariant: each function writes one complete PNG (``baldro_ray.atomic.atomic_path``, so a reader never sees a partial
image) and returns its path; a table lacking a column the figure needs raises ``ValueError`` naming the column.
Figures are drawn on the Agg canvas directly, so importing this module leaves pyplot's backend alone.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from baldro_ray.atomic import atomic_path

UNLABELLED = "unlabelled"
PADDING_ID = -1  # trajectory rows of padding dummies, not real forget samples
_PALETTE = (
    "tab:red",
    "tab:blue",
    "tab:green",
    "tab:purple",
    "tab:orange",
    "tab:brown",
    "tab:pink",
    "tab:olive",
)


def _columns(trajectory: pa.Table | Path | str, needed: Sequence[str]) -> dict[str, np.ndarray]:
    """The ``needed`` columns as numpy arrays, padding rows (sample_id -1) dropped."""
    table = trajectory if isinstance(trajectory, pa.Table) else pq.read_table(trajectory)
    for name in ("sample_id", *needed):
        if name not in table.column_names:
            raise ValueError(f"trajectory table has no column {name!r} (columns: {table.column_names})")
    data = {name: table.column(name).to_numpy(zero_copy_only=False) for name in ("sample_id", *needed)}
    keep = data["sample_id"] != PADDING_ID
    return {name: values[keep] for name, values in data.items()}


def save_figure(figure: Figure, out: Path) -> Path:
    """Write ``figure`` as a PNG to ``out`` atomically (a temporary file renamed into place)."""
    FigureCanvasAgg(figure)
    with atomic_path(out, suffix=".png") as tmp:
        figure.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    return Path(out)


def _no_data(ax: Axes, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="grey")


def plot_forgetting_curves(
    trajectory: pa.Table | Path, difficulty: Mapping[int, str] | None, out: Path
) -> Path:
    """Each forget sample's answer probability ``exp(-avg_nll)`` against the optimizer step, coloured by difficulty.

    One thin line per sample through the steps it was scored at (a sample is in one batch per epoch), and per
    label a thick line through its per-epoch medians. Samples missing from ``difficulty`` are ``unlabelled``;
    rows with a non-finite ``avg_nll`` are left out.
    """
    data = _columns(trajectory, ("epoch", "step", "avg_nll"))
    finite = np.isfinite(data["avg_nll"])
    ids, epochs, steps = data["sample_id"][finite], data["epoch"][finite], data["step"][finite]
    prob = np.exp(-data["avg_nll"][finite])
    labels = np.array([(difficulty or {}).get(int(i)) or UNLABELLED for i in ids], dtype=object)
    names = sorted(set(labels), key=lambda g: (g == UNLABELLED, g))
    colours = {g: "grey" if g == UNLABELLED else _PALETTE[k % len(_PALETTE)] for k, g in enumerate(names)}

    figure = Figure(figsize=(9, 5.5))
    ax = figure.add_subplot()
    handles = []
    for name in names:
        mine = labels == name
        curves = []
        for sample in np.unique(ids[mine]):
            rows = np.flatnonzero(ids == sample)
            rows = rows[np.argsort(steps[rows], kind="stable")]
            curves.append(np.column_stack([steps[rows], prob[rows]]))
        ax.add_collection(LineCollection(curves, colors=colours[name], linewidths=0.6, alpha=0.35))
        ax.scatter(steps[mine], prob[mine], s=4, color=colours[name], alpha=0.5, linewidths=0)
        # Per epoch, not per step: every sample is scored once an epoch, so each median covers the whole label.
        medians = [
            (np.median(steps[mine & (epochs == e)]), np.median(prob[mine & (epochs == e)]))
            for e in np.unique(epochs[mine])
        ]
        if medians:
            x, y = zip(*medians, strict=True)
            ax.plot(x, y, color=colours[name], linewidth=2.8, marker="o", markersize=4)
        count = len(np.unique(ids[mine]))
        handles.append(
            Line2D([], [], color=colours[name], linewidth=2.8, label=f"{name} (n={count}, median)")
        )
    if handles:
        ax.legend(handles=handles, loc="upper right", fontsize=8)
        ax.autoscale_view()
    else:
        _no_data(ax, "no scored forget samples")
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("answer probability exp(-avg NLL)")
    ax.set_title("Forgetting per sample")
    ax.grid(alpha=0.3)
    return save_figure(figure, out)


def plot_dro_weights(trajectory: pa.Table | Path, out: Path) -> Path:
    """Per epoch, box plots of ``dro_weight * batch size`` (1.0 = uniform): box 25-75 %, whiskers 10-90 %.

    The batch size at a step is the number of real samples (sample_id != -1) with that step.
    """
    data = _columns(trajectory, ("epoch", "step", "dro_weight"))
    _, inverse, counts = np.unique(data["step"], return_inverse=True, return_counts=True)
    scaled = data["dro_weight"].astype(float) * counts[inverse]
    finite = np.isfinite(scaled)
    epochs = data["epoch"][finite]
    scaled = scaled[finite]

    figure = Figure(figsize=(9, 5))
    ax = figure.add_subplot()
    epoch_ids = np.unique(epochs)
    if len(epoch_ids):
        ax.boxplot(
            [scaled[epochs == e] for e in epoch_ids],
            positions=list(range(len(epoch_ids))),
            whis=(10, 90),
            widths=0.6,
            flierprops={"markersize": 2, "alpha": 0.4},
            medianprops={"color": "tab:red", "linewidth": 2},
        )
        ax.set_xticks(range(len(epoch_ids)), [str(int(e)) for e in epoch_ids])
    else:
        _no_data(ax, "no DRO weights")
    ax.axhline(1.0, color="black", linestyle="--", linewidth=1, label="uniform (1.0)")
    ax.legend(loc="upper right", fontsize=8)
    ax.set_xlabel("epoch")
    ax.set_ylabel("DRO weight x batch size")
    ax.set_title("DRO weight spread (box 25-75 %, whiskers 10-90 %)")
    ax.grid(alpha=0.3, axis="y")
    return save_figure(figure, out)


def _series(rows: Sequence[Mapping[str, float]], key: str, log: bool = False) -> tuple[list, list]:
    points = []
    for row in rows:
        value = row.get(key)
        if value is None or not math.isfinite(value) or (log and value <= 0):
            continue  # not evaluated (or, on the log axis, zero) at this epoch
        points.append((row["epoch"], math.log10(value) if log else value))
    return [p[0] for p in points], [p[1] for p in points]


def plot_epoch_metrics(rows: Sequence[Mapping[str, float]], out: Path) -> Path:
    """Two panels against the epoch: log10 ``forget_quality`` and ``model_utility`` (TOFU), or ``privleak`` and
    ``retain_knowmem_ROUGE`` (MUSE: rows without forget quality); best ``score`` marked.

    Every row needs ``epoch``; a missing or non-finite metric is skipped (a panel without any says so).
    """
    for index, row in enumerate(rows):
        if "epoch" not in row:
            raise ValueError(f"epoch metrics row {index} has no column 'epoch' (keys: {sorted(row)})")
    figure = Figure(figsize=(10, 4.2))
    left, right = figure.subplots(1, 2)
    if any("forget_quality" in row for row in rows) or not any("privleak" in row for row in rows):
        panels = (
            (left, "forget_quality", True, "log10 forget quality", "tab:red"),
            (right, "model_utility", False, "model utility", "tab:blue"),
        )
    else:
        panels = (
            (left, "privleak", False, "privleak (0: as the retain model)", "tab:red"),
            (right, "retain_knowmem_ROUGE", False, "knowmem ROUGE on retain", "tab:blue"),
        )
    x_best, y_best = _series(rows, "score")
    for ax, key, log, label, colour in panels:
        x, y = _series(rows, key, log)
        if x:
            ax.plot(x, y, marker="o", color=colour)
        else:
            _no_data(ax, f"no {key}")
        if x_best:
            ax.axvline(x_best[int(np.argmax(y_best))], color="grey", linestyle=":", label="best score")
            ax.legend(loc="best", fontsize=8)
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    figure.suptitle("Evaluation per epoch")
    return save_figure(figure, out)
