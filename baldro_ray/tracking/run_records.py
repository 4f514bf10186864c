"""What an unlearning run leaves in MLflow: the run (nested under a parent when given), per-step training metrics,
per-epoch evaluation metrics, the report files, the plots and the final model.

Invariant: the tracking store is checked (:func:`open_recorder`) before any training starts; everything recorded
here is also in the run's output folder, so a run's records never exist only in MLflow.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import pyarrow.parquet as pq

from baldro_ray.config import RunConfig
from baldro_ray.run_folder import MODEL_DIR, PLOTS_DIR, STEPS_FILE, TRAJECTORY_FILE
from baldro_ray.tracking import plots
from baldro_ray.tracking.recorder import RunRecorder
from baldro_ray.tracking.store import check_tracking

_ARTIFACT_SUFFIXES = (".json", ".yaml", ".parquet")
_EPOCH_PLOT_KEYS = (
    "forget_quality",
    "forget_ks_statistic",
    "model_utility",
    "privleak",
    "retain_knowmem_ROUGE",
    "score",
)


def open_recorder(
    config: RunConfig, output_root: Path, run_name: str, parent: RunRecorder | None = None
) -> RunRecorder | None:
    """The run's recorder (a child of ``parent`` when given), after checking the store; None when tracking is
    off. Raises ``ConfigError`` for an unreachable store unless ``tracking.on_unreachable=local``."""
    tracking = config.tracking
    if not tracking.enabled:
        return None
    if parent is not None:
        return parent.child(run_name, config)
    uri = check_tracking(tracking, output_root)
    return RunRecorder.start(uri, tracking.experiment, run_name, config)


def write_plots(
    folder: Path, evaluations: Sequence[Mapping[str, float]], difficulty: Sequence[str] | None
) -> Path:
    """The run's PNG plots into ``folder/plots``: forgetting curves by difficulty, DRO weights over time,
    and (when evaluated) the forget and utility metrics per epoch."""
    out = folder / PLOTS_DIR
    out.mkdir(exist_ok=True)
    trajectory = folder / TRAJECTORY_FILE
    labels = None if difficulty is None else dict(enumerate(difficulty))
    plots.plot_forgetting_curves(trajectory, labels, out / "forgetting_curves.png")
    plots.plot_dro_weights(trajectory, out / "dro_weights.png")
    if evaluations:
        rows = [
            {"epoch": e["epoch"], **{key: e[f"eval/{key}"] for key in _EPOCH_PLOT_KEYS if f"eval/{key}" in e}}
            for e in evaluations
        ]
        plots.plot_epoch_metrics(rows, out / "epoch_metrics.png")
    return out


def _last_step_of_epochs(steps_parquet: Path) -> dict[int, int]:
    table = pq.read_table(steps_parquet, columns=["epoch", "step"]).to_pydict()
    last: dict[int, int] = {}
    for epoch, step in zip(table["epoch"], table["step"]):
        last[int(epoch)] = max(last.get(int(epoch), 0), int(step))
    return last


def record_run(
    recorder: RunRecorder,
    folder: Path,
    evaluations: Sequence[Mapping[str, float]],
    log_model: bool,
    registered_model_name: str | None,
) -> None:
    """Log a finished run's folder: step metrics (those not logged live), each epoch's ``eval/*`` and
    ``balance/*`` at that epoch's last optimizer step, report files and plots as artifacts, and the model."""
    steps = folder / STEPS_FILE
    recorder.log_step_table(steps)
    last_step = _last_step_of_epochs(steps)
    for evaluation in evaluations:
        epoch = int(evaluation["epoch"])
        values = {k: v for k, v in evaluation.items() if k != "epoch" and not math.isnan(v)}
        recorder.log_metrics(values, last_step.get(epoch, epoch))
    for path in sorted(folder.rglob("*")):
        if (
            path.is_file()
            and path.suffix in _ARTIFACT_SUFFIXES
            and "model" not in path.relative_to(folder).parts[0]
        ):
            recorder.log_artifact(
                path, str(path.parent.relative_to(folder)) if path.parent != folder else None
            )
    if (folder / PLOTS_DIR).is_dir():
        recorder.log_artifacts(folder / PLOTS_DIR, PLOTS_DIR)
    if log_model:
        recorder.log_model(folder / MODEL_DIR, registered_model_name)
