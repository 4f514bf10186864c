"""Per-step metrics and the per-sample trajectory table (rank 0), the raw material of forgetting-balance analysis."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import torch

from baldro_ray.atomic import atomic_path
from baldro_ray.objectives import weight_diagnostics
from baldro_ray.run_folder import STEPS_FILE, TRAJECTORY_FILE
from baldro_ray.train.step import StepResult

TRAJECTORY_COLUMNS = ("sample_id", "epoch", "step", "loss", "avg_nll", "dro_weight")


class Telemetry:
    """Accumulates step metrics and trajectory rows; ``write`` saves both tables atomically as parquet."""

    def __init__(
        self, rows: dict[str, list[Any]] | None = None, steps: list[dict[str, float]] | None = None
    ) -> None:
        self.rows: dict[str, list[Any]] = {c: list(rows[c]) if rows else [] for c in TRAJECTORY_COLUMNS}
        self.steps: list[dict[str, float]] = list(steps or [])

    def record(self, result: StepResult, epoch: int, step: int, lr: float) -> dict[str, float]:
        """Add the step's per-sample rows; return its metrics (namespaced as the trackers log them)."""
        positions = sorted(result.sample_weights)
        weights = torch.tensor([result.sample_weights[p] for p in positions], dtype=torch.float64)
        diag = weight_diagnostics(weights)
        for position in positions:
            sample = result.samples[position]
            self.rows["sample_id"].append(-1 if sample["row"] is None else int(sample["row"]))
            self.rows["epoch"].append(epoch)
            self.rows["step"].append(step)
            self.rows["loss"].append(sample["loss"])
            self.rows["avg_nll"].append(sample["avg_nll"])
            self.rows["dro_weight"].append(result.sample_weights[position])
        metrics = {
            "train/loss": result.loss,
            "train/forget_loss": result.forget_loss,
            "train/retain_loss": result.retain_loss,
            "train/lr": lr,
            "train/dro_ess": diag.effective_sample_size,
            "train/dro_entropy": diag.entropy,
            "train/dro_max_weight": diag.max_weight,
        }
        self.steps.append({"epoch": epoch, "step": step, **metrics})
        return metrics

    def table(self) -> pa.Table:
        return pa.table(
            {
                "sample_id": pa.array(self.rows["sample_id"], pa.int64()),
                "epoch": pa.array(self.rows["epoch"], pa.int32()),
                "step": pa.array(self.rows["step"], pa.int64()),
                "loss": pa.array(self.rows["loss"], pa.float64()),
                "avg_nll": pa.array(self.rows["avg_nll"], pa.float64()),
                "dro_weight": pa.array(self.rows["dro_weight"], pa.float64()),
            }
        )

    def write(self, directory: Path) -> None:
        """Write ``trajectory.parquet`` and ``steps.parquet`` into ``directory``, each atomically."""
        _write_atomic(self.table(), directory / TRAJECTORY_FILE)
        _write_atomic(pa.Table.from_pylist(self.steps), directory / STEPS_FILE)

    @classmethod
    def read(cls, directory: Path) -> Telemetry:
        return cls(
            pq.read_table(directory / TRAJECTORY_FILE).to_pydict(),
            pq.read_table(directory / STEPS_FILE).to_pylist(),
        )


def _write_atomic(table: pa.Table, path: Path) -> None:
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def format_metrics(metrics: dict[str, float]) -> str:
    """A step's loss parts, DRO effective sample size and lr (no retain part for a method without one)."""
    retain = metrics["train/retain_loss"]
    retain_text = "" if math.isnan(retain) else f" retain {retain:.4f}"
    return (
        f"loss {metrics['train/loss']:.4f} forget {metrics['train/forget_loss']:.4f}{retain_text} "
        f"ess {metrics['train/dro_ess']:.2f} lr {metrics['train/lr']:.2e}"
    )


def format_progress(epoch: int, epochs: int, step: int, steps: int, metrics: dict[str, float]) -> str:
    """One progress line: epoch, step and :func:`format_metrics`."""
    return f"epoch {epoch}/{epochs} step {step}/{steps} {format_metrics(metrics)}"
