"""Evaluating a run's epoch models into its run folder, and keeping the best one as ``best_model/``.

The unlearning driver evaluates every epoch's model at once after training; a Tune trial evaluates one epoch at a
time between fits. Both go through :func:`evaluate_epochs`, so both leave the same ``epochs/epoch_NN`` reports and
the same ``best_model/``, picked by the one rule of :func:`baldro_ray.run_folder.best_epoch`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from baldro_ray.atomic import copy_dir
from baldro_ray.eval.evaluate import EvalPlan, References, evaluate_and_report
from baldro_ray.run_folder import BEST_MODEL_DIR, best_epoch, epoch_dir


def evaluate_epochs(
    plan: EvalPlan,
    refs: References,
    models: Mapping[int, Path],
    folder: Path,
    previous: Sequence[dict[str, float]] = (),
    log: Callable[[str], None] = print,
) -> list[dict[str, float]]:
    """Evaluate each epoch's model (``epoch -> model folder``) in one replica job into ``folder/epochs/epoch_NN``
    and return the ``previous`` evaluations followed by the new ones (each with its ``epoch``). When the best
    epoch of them all is one of ``models``, its model is copied to ``folder/best_model``; otherwise
    ``best_model`` already holds it from an earlier call."""
    epochs = sorted(models)
    summaries = evaluate_and_report(plan, [(str(models[e]), epoch_dir(folder, e)) for e in epochs], refs)
    evaluations = [*previous]
    for epoch, summary in zip(epochs, summaries):
        evaluations.append({"epoch": epoch, **summary})
        log(eval_line(evaluations[-1]))
    best = best_epoch(evaluations)
    if best in models:
        copy_dir(models[best], folder / BEST_MODEL_DIR)
    return evaluations


def eval_line(summary: Mapping[str, Any]) -> str:
    """One line of an epoch's evaluation: the benchmark's headline metrics (TOFU: forget quality, KS, model
    utility; MUSE: verbmem, knowmem on forget and retain, privleak) and the objective."""

    def get(key: str) -> float:
        return summary.get(key, float("nan"))

    if "eval/forget_verbmem_ROUGE" in summary:
        metrics = (
            f"verbmem {get('eval/forget_verbmem_ROUGE'):.3f}, knowmem forget "
            f"{get('eval/forget_knowmem_ROUGE'):.3f} / retain {get('eval/retain_knowmem_ROUGE'):.3f}, "
            f"privleak {get('eval/privleak'):.1f}"
        )
    else:
        metrics = (
            f"forget quality {get('eval/forget_quality'):.3g} (KS {get('eval/forget_ks_statistic'):.3f}), "
            f"model utility {get('eval/model_utility'):.3f}"
        )
    return f"epoch {summary['epoch']}: {metrics}, score {get('eval/score'):.3f}"
