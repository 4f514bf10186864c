"""Evaluating a run's epoch checkpoints after training, outside the training workers, and keeping the best.

Each epoch's model (saved by the workers when ``evaluation.every_epoch``) is evaluated as its own Ray Data replica
job against the cached retain and target references; the best by ``combined_score`` is kept as ``best_model``.
"""

from __future__ import annotations

import contextlib
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
    """Evaluate every kept epoch model (a Ray Train checkpoint with a ``model`` folder) outside the training
    workers, all in one Ray Data replica job, into ``staging/epochs/epoch_NN``; copy the best one by the combined
    score to ``staging/best_model`` when several were evaluated. Returns the per-epoch summaries and the best
    epoch (None without evaluation)."""
    if plan is None:
        return [], None
    refs = references(plan, target_model, log)
    with (
        contextlib.ExitStack() as stack
    ):  # remote storage downloads each checkpoint for as long as it is open
        models: dict[int, Path] = {}
        for checkpoint, metrics in sorted(checkpoints, key=lambda pair: pair[1]["epoch"]):
            model = Path(stack.enter_context(checkpoint.as_directory())) / MODEL_DIR
            if model.is_dir():
                models[int(metrics["epoch"])] = model
        if not models:
            return [], None
        log(f"evaluating the models of epochs {sorted(models)}")
        jobs = [(str(model), staging / EPOCHS_DIR / f"epoch_{epoch:02d}") for epoch, model in models.items()]
        summaries = evaluate_and_report(plan, jobs, refs)
        evaluations = [{"epoch": epoch, **summary} for epoch, summary in zip(models, summaries)]
        for evaluation in evaluations:
            log(eval_line(evaluation))
        best = max(evaluations, key=lambda e: -math.inf if math.isnan(e["eval/score"]) else e["eval/score"])
        best_epoch = int(best["epoch"])
        if len(evaluations) > 1:
            shutil.copytree(models[best_epoch], staging / BEST_MODEL_DIR)
    return evaluations, best_epoch


def eval_line(summary: dict[str, float]) -> str:
    """One line of an epoch's evaluation: forget quality, KS, model utility and the objective."""

    def get(key: str) -> float:
        return summary.get(key, float("nan"))

    return (
        f"epoch {summary['epoch']}: forget quality {get('eval/forget_quality'):.3g} (KS {get('eval/forget_ks_statistic'):.3f}), "
        f"model utility {get('eval/model_utility'):.3f}, score {get('eval/score'):.3f}"
    )
