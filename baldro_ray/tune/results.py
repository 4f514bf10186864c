"""What a finished sweep leaves: one row per trial (best trials first), the table, the Pareto plot, the best trial's
model and config exported, and every trial's MLflow run closed.

Invariant: a trial's row comes from its own records (``trials/<id>/summary.json``, written after each evaluated
epoch), so the table, the plot and the export agree with the per-trial reports and with MLflow.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from baldro_ray.atomic import copy_dir, copy_file, write_json, write_text
from baldro_ray.config import RunConfig, dump_config
from baldro_ray.run_folder import BEST_MODEL_DIR, CONFIG_FILE, MODEL_DIR, SCORE_KEY, SUMMARY_FILE, RunSummary
from baldro_ray.tune.pareto import ParetoPoint, pareto_front, plot_pareto
from baldro_ray.tune.space import Sweep, trial_point
from baldro_ray.tune.trial import TRIALS_DIR

BEST_DIR = "best"  # <sweep>/best: the best trial's best-epoch model, its config and its run summary
PARETO_FILE = "pareto.png"
RESULTS_FILE = "results.json"
TRIAL_FILE = "trial.json"
TABLE_FILE = "results.md"


@dataclass(frozen=True)
class TrialRow:
    """One trial: its searched point, how it ended, and its best epoch's evaluation summary."""

    trial_id: str
    point: dict[str, Any]  # the trial's searched settings, dotted
    status: str  # finished | stopped (by the scheduler) | error
    epochs_run: int
    best_epoch: int | None
    best: dict[str, float]
    mlflow_run_id: str | None

    @property
    def score(self) -> float:
        value = self.best.get(SCORE_KEY, math.nan)
        return -math.inf if math.isnan(value) else value


def trial_rows(results: Sequence[Any], sweep: Sweep, folder: Path) -> list[TrialRow]:
    """A row per Tune result (``ray.tune.Result``), best objective first."""
    rows = []
    for result in results:
        trial_id = result.metrics.get("trial_id") or Path(result.path).name
        trial_folder = folder / TRIALS_DIR / str(trial_id)
        summary = RunSummary.read(trial_folder) if (trial_folder / SUMMARY_FILE).is_file() else None
        evaluations = [] if summary is None else summary.evaluations
        best_epoch = None if summary is None else summary.best_epoch
        best = next((e for e in evaluations if e["epoch"] == best_epoch), {})
        epochs = sweep.trial_config(result.config).trainer.epochs
        status = "error" if result.error else "finished" if len(evaluations) >= epochs else "stopped"
        rows.append(
            TrialRow(
                str(trial_id),
                trial_point(result.config),
                status,
                len(evaluations),
                best_epoch,
                best,
                None if summary is None or summary.mlflow is None else summary.mlflow["run_id"],
            )
        )
    return sorted(rows, key=lambda row: -row.score)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


COLUMNS = (  # (heading, summary key)
    ("score", SCORE_KEY),
    ("forget quality", "eval/forget_quality"),
    ("KS", "eval/forget_ks_statistic"),
    ("utility", "eval/model_utility"),
    ("verbmem", "eval/forget_verbmem_ROUGE"),
    ("knowmem forget", "eval/forget_knowmem_ROUGE"),
    ("knowmem retain", "eval/retain_knowmem_ROUGE"),
    ("privleak", "eval/privleak"),
    ("forget term", "eval/forget_term"),
    ("utility term", "eval/utility_term"),
)


def render_table(rows: Sequence[TrialRow]) -> str:
    """A Markdown table, best trials first: searched point, status, epochs, best epoch and its metrics."""
    keys = sorted({key for row in rows for key in row.point})
    columns = [c for c in COLUMNS if any(c[1] in row.best for row in rows)]
    head = ["trial", *keys, "status", "epochs", "best epoch", *(c[0] for c in columns)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [
            row.trial_id,
            *(_fmt(row.point.get(k, "")) for k in keys),
            row.status,
            str(row.epochs_run),
            str(row.best_epoch),
            *(_fmt(row.best.get(c[1], math.nan)) for c in columns),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


REFERENCE_DV_TEMPERATURES = (-0.5, -1.0, -2.0, -5.0, -10.0)  # the reference grid, tau in the reference form
REFERENCE_G_RATIO = 0.5


def on_reference_grid(config: RunConfig) -> bool:
    """Whether a run's aggregation is a point of the reference grid (BalDRO-DV with tau in {0.5, 1, 2, 5, 10} in
    the reference form; BalDRO-G with the reference ratio 0.5)."""
    dro = config.method.dro
    if dro.type == "dv" and dro.temperature is not None:
        return any(math.isclose(dro.temperature, t) for t in REFERENCE_DV_TEMPERATURES)
    return dro.type == "group" and math.isclose(dro.sampling_ratio, REFERENCE_G_RATIO)


def write_pareto(rows: Sequence[TrialRow], sweep: Sweep, out: Path) -> tuple[Path, list[str]]:
    """The Pareto PNG of the evaluated trials (TOFU: forget quality on a log axis; MUSE: the forget term); the
    ids of the trials on the front."""
    evaluated = [row for row in rows if row.best]
    tofu = all("eval/forget_quality" in row.best for row in evaluated)
    key = "eval/forget_quality" if tofu else "eval/forget_term"
    utility = "eval/model_utility" if tofu else "eval/utility_term"
    points = [
        ParetoPoint(
            row.trial_id[-5:],
            row.best.get(key, math.nan),
            row.best.get(utility, math.nan),
            on_reference_grid(sweep.config_with(row.point)),
        )
        for row in evaluated
    ]
    plot_pareto(points, "forget quality (KS p-value)" if tofu else "forget term", tofu, out)
    front = pareto_front([(p.forget, p.utility) for p in points])
    return out, [evaluated[i].trial_id for i in front]


def export_best(best: TrialRow, sweep: Sweep, folder: Path) -> Path:
    """``<sweep>/best``: the best trial's best-epoch model as ``model``, its run config, its run summary and
    ``trial.json`` (the trial id and its searched point)."""
    out = folder / BEST_DIR
    trial = folder / TRIALS_DIR / best.trial_id
    copy_dir(trial / BEST_MODEL_DIR, out / MODEL_DIR)
    write_text(out / CONFIG_FILE, dump_config(sweep.config_with(best.point)))
    copy_file(trial / SUMMARY_FILE, out / SUMMARY_FILE)
    write_json(out / TRIAL_FILE, {"trial_id": best.trial_id, "point": best.point})
    return out


def close_trial_runs(rows: Sequence[TrialRow], uri: str) -> None:
    """End the MLflow runs of trials the scheduler stopped (their function never returns): FINISHED, tagged
    ``early_stopped``; tag every trial run with its status."""
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    for row in rows:
        if row.mlflow_run_id is None:
            continue
        client.set_tag(row.mlflow_run_id, "tune_status", row.status)
        if row.status == "stopped":
            client.set_tag(row.mlflow_run_id, "early_stopped", "true")
        if client.get_run(row.mlflow_run_id).info.status == "RUNNING":
            client.set_terminated(row.mlflow_run_id, "FAILED" if row.status == "error" else "FINISHED")


def write_results(rows: Sequence[TrialRow], folder: Path) -> str:
    """``results.json`` (every row) and ``results.md`` (the table); returns the table."""
    table = render_table(rows)
    write_text(folder / RESULTS_FILE, json.dumps([row.__dict__ for row in rows], indent=2, default=str))
    write_text(folder / TABLE_FILE, table + "\n")
    return table
