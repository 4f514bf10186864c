"""The on-disk contract of a run: every file and folder name, the best-epoch rule and the ``summary.json`` schema.

A run folder (``<output_dir>/<run>/``; a Tune trial's ``<sweep>/trials/<id>/`` is one too) holds:

- ``config.yaml``: the resolved run configuration;
- ``summary.json``: :class:`RunSummary`, one schema for unlearning runs and Tune trials;
- ``model/``: the weights after the last trained epoch;
- ``best_model/`` (every evaluated run): the epoch model the best-epoch rule (:func:`best_epoch`) picks;
- ``epochs/epoch_NN/``: that epoch's evaluation report (``TOFU_EVAL.json``, ``TOFU_SUMMARY.json``,
  ``BALANCE.json``, or the ``MUSE_*`` files);
- ``plots/``: PNG figures; ``trajectory.parquet`` and ``steps.parquet``: the per-sample and per-step records.

A Ray Train checkpoint of an unlearning run holds ``state/`` (the resumable training state), ``model/`` (when that
epoch's model is saved) and the two parquet tables. Every file is written through :mod:`baldro_ray.atomic`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from baldro_ray.atomic import copy_dir, copy_file, write_json

CONFIG_FILE = "config.yaml"
SUMMARY_FILE = "summary.json"
MODEL_DIR = "model"
BEST_MODEL_DIR = "best_model"
EPOCHS_DIR = "epochs"
PLOTS_DIR = "plots"
TRAJECTORY_FILE = "trajectory.parquet"  # one row per forget sample per optimizer step
STEPS_FILE = "steps.parquet"  # one row per optimizer step: epoch, step and the train/* metrics
STATE_DIR = "state"  # in a Ray Train checkpoint: model, optimizer, scheduler, epoch and RNG state
BALANCE_FILE = "BALANCE.json"  # in an epoch's report folder, beside the benchmark's own files
SCORE_KEY = "eval/score"  # the combined objective (evaluation.objective) in an epoch's evaluation summary


def epoch_dir(folder: Path, epoch: int) -> Path:
    """The report folder of ``epoch`` (1-based) in the run folder ``folder``."""
    return folder / EPOCHS_DIR / f"epoch_{epoch:02d}"


def best_epoch(evaluations: Sequence[Mapping[str, Any]]) -> int | None:
    """The best epoch of a run's per-epoch evaluations: the highest ``eval/score``, the earliest on ties; a NaN
    score (e.g. NaN weights) never wins. None when no epoch has a score."""
    scored = [e for e in evaluations if not math.isnan(float(e.get(SCORE_KEY, math.nan)))]
    if not scored:
        return None
    return int(max(scored, key=lambda e: (float(e[SCORE_KEY]), -int(e["epoch"])))["epoch"])


@dataclass
class RunSummary:
    """``summary.json``: what a run is, how long its training took, its last training metrics, one evaluation
    summary per evaluated epoch (each with its ``epoch``), the best epoch by :func:`best_epoch`, and its MLflow
    run (``tracking_uri``, ``run_id``) or None."""

    name: str
    model_path: str
    seconds: float = 0.0
    metrics: dict[str, float] = field(default_factory=dict)
    evaluations: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int | None = None
    mlflow: dict[str, str] | None = None

    def write(self, folder: Path) -> Path:
        return write_json(folder / SUMMARY_FILE, asdict(self))

    @classmethod
    def read(cls, folder: Path) -> RunSummary:
        return cls(**json.loads((folder / SUMMARY_FILE).read_text()))


def collect_checkpoint(checkpoint: Path, folder: Path) -> None:
    """Copy what a run folder keeps of a Ray Train checkpoint into ``folder``: the model (when the checkpoint has
    one) and the trajectory and step tables."""
    if (checkpoint / MODEL_DIR).is_dir():
        copy_dir(checkpoint / MODEL_DIR, folder / MODEL_DIR)
    for name in (TRAJECTORY_FILE, STEPS_FILE):
        copy_file(checkpoint / name, folder / name)
