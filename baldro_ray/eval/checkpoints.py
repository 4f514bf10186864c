"""Evaluating a run's epoch checkpoints after training, outside the training workers, and keeping the best.

Each epoch's model (saved by the workers when ``evaluation.every_epoch``) is evaluated as its own Ray Data replica
job against the cached retain and target references; the best by ``combined_score`` is kept as ``best_model``.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from baldro_ray.config import RunConfig
from baldro_ray.eval.evaluate import EvalPlan, evaluate_and_report, references
from baldro_ray.train.unlearn import BEST_MODEL_DIR, MODEL_DIR

EPOCHS_DIR = "epochs"  # epochs/epoch_NN/: that epoch's model's evaluation report


def evaluates_every_epoch(config: RunConfig) -> bool:
    """Whether every epoch's model is saved and evaluated."""
    return config.evaluation.enabled and config.evaluation.every_epoch


def evaluate_checkpoints(
    plan: EvalPlan | None,
    target_model: str,
    checkpoints: list[tuple[Any, dict[str, Any]]],
    staging: Path,
    log: Callable[[str], None] = print,
) -> tuple[list[dict[str, float]], int | None]:
    """Evaluate each kept epoch model (a Ray Train checkpoint with a ``model`` folder) outside the training
    workers, a Ray Data replica job each, into ``staging/epochs/epoch_NN``; copy the best one by the combined
    score to ``staging/best_model`` when several were evaluated. Returns the per-epoch summaries and the best
    epoch (None without evaluation)."""

    if plan is None:
        return [], None
    refs = references(plan, target_model, log)
    evaluations = []
    for checkpoint, metrics in sorted(checkpoints, key=lambda pair: pair[1]["epoch"]):
        epoch = int(metrics["epoch"])
        with checkpoint.as_directory() as directory:
            model = Path(directory) / MODEL_DIR
            if not model.is_dir():
                continue
            log(f"evaluating epoch {epoch}")
            summary = evaluate_and_report(
                plan, str(model), refs, staging / EPOCHS_DIR / f"epoch_{epoch:02d}"
            )
            evaluations.append({"epoch": epoch, **summary})
            log(_eval_line(epoch, summary))
    if not evaluations:
        return [], None
    best = max(evaluations, key=lambda e: -math.inf if math.isnan(e["eval/score"]) else e["eval/score"])
    best_epoch = int(best["epoch"])
    if len(evaluations) > 1:
        for checkpoint, metrics in checkpoints:
            if int(metrics["epoch"]) == best_epoch:
                with checkpoint.as_directory() as directory:
                    shutil.copytree(Path(directory) / MODEL_DIR, staging / BEST_MODEL_DIR)
    return evaluations, best_epoch


def _eval_line(epoch: int, summary: dict[str, float]) -> str:
    def get(key: str) -> float:
        return summary.get(key, float("nan"))

    return (
        f"epoch {epoch}: forget quality {get('eval/forget_quality'):.3g} (KS {get('eval/forget_ks_statistic'):.3f}), "
        f"model utility {get('eval/model_utility'):.3f}, score {get('eval/score'):.3f}"
    )
