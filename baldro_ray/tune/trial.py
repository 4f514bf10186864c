"""One Ray Tune trial: a full distributed unlearning run, trained one epoch per ``TorchTrainer.fit`` so that each
epoch's model is evaluated and its objective reported to Tune (ASHA stops trials between epochs).

Invariants:
- Each fit resumes from the last epoch checkpoint in ``.ray/<id>/train`` (Ray Train resumes a run of the same
  name and storage), with the full run's learning-rate schedule: the trial ends on the weights of one fit.
- A trial restored after the sweep's driver died continues after the last epoch it reported (its Tune checkpoint
  holds that epoch's evaluations and its MLflow run), never re-training a reported epoch.
- ``trials/<id>/`` is a run folder (:mod:`baldro_ray.run_folder`), refreshed after every epoch: ``model`` is the
  last trained epoch's model and ``best_model`` the best epoch's so far, each always complete.
"""

from __future__ import annotations

import dataclasses
import json
import math
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from baldro_ray.atomic import write_text
from baldro_ray.config import dump_config
from baldro_ray.run_folder import (
    CONFIG_FILE,
    MODEL_DIR,
    SCORE_KEY,
    RunSummary,
    best_epoch,
    collect_checkpoint,
)
from baldro_ray.unlearn import ResolvedRun, build_trainer

TRIALS_DIR = "trials"
STATE_FILE = "trial_state.json"
TRAIN_STORAGE = (
    ".ray"  # <sweep>/.ray/<trial id>/train: the trial's Ray Train run (resumable epoch checkpoints)
)
TUNE_METRIC = "objective"  # what Tune optimises: eval/score, or NAN_SCORE when it is NaN (e.g. NaN weights)
NAN_SCORE = -2.0  # below every objective's range, so schedulers and searchers rank such a model last


@dataclasses.dataclass(frozen=True)
class SweepContext:
    """What every trial shares: the sweep, the resolved base run, its (materialised) datasets, the sweep folder
    and the MLflow parent run (``uri``, ``run_id``, ``experiment``), or None without tracking."""

    sweep: Any  # a tune.space.Sweep
    base: ResolvedRun
    datasets: dict[str, Any]
    folder: Path
    tracking: dict[str, str] | None


def _restored_state() -> dict[str, Any]:
    from ray import tune

    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        return {"evaluations": [], "mlflow_run_id": None, "seconds": 0.0}
    with checkpoint.as_directory() as directory:
        return json.loads((Path(directory) / STATE_FILE).read_text())


def _recorder(context: SweepContext, state: Mapping[str, Any], name: str, run: ResolvedRun) -> Any:
    if context.tracking is None:
        return None
    from baldro_ray.tracking.recorder import RunRecorder

    uri = context.tracking["uri"]
    if state["mlflow_run_id"] is not None:
        return RunRecorder.attach(uri, state["mlflow_run_id"], owns_run=True)
    return RunRecorder.start(
        uri,
        context.tracking["experiment"],
        name,
        run.config,
        context.tracking["run_id"],
        {"tune_trial_id": name},
    )


def run_trial(params: dict[str, Any], context: SweepContext) -> None:
    """The Tune function trainable (bound to ``context`` with ``tune.with_parameters``)."""
    from ray import tune

    from baldro_ray.eval.evaluate import references

    trial_id = tune.get_context().get_trial_id()
    run = dataclasses.replace(context.base, config=context.sweep.trial_config(params), name=trial_id)
    folder = context.folder / TRIALS_DIR / trial_id
    folder.mkdir(parents=True, exist_ok=True)
    write_text(folder / CONFIG_FILE, dump_config(run.config))
    state = _restored_state()
    recorder = _recorder(context, state, trial_id, run)
    state["mlflow_run_id"] = None if recorder is None else recorder.run_id
    refs = references(run.eval_plan, run.model_path, log=lambda _: None)
    tracking = None if recorder is None else {"uri": recorder.uri, "run_id": recorder.run_id}
    epoch = state["evaluations"][-1]["epoch"] if state["evaluations"] else 0
    try:
        while epoch < run.config.trainer.epochs:
            storage = context.folder / TRAIN_STORAGE / trial_id / "train"
            started = time.perf_counter()
            result = build_trainer(run, context.datasets, storage, tracking, epoch + 1).fit()
            state["seconds"] += time.perf_counter() - started
            if result.checkpoint is None:
                raise RuntimeError(
                    f"trial {trial_id}: epoch {epoch + 1} ended without a checkpoint: {result.error}"
                )
            epoch = int(result.metrics["epoch"])
            metrics = _evaluate_epoch(run, refs, result, folder, epoch, state, recorder)
            _report(metrics, state)
    except SystemExit:  # Tune ends a trial its scheduler stopped (ASHA; also at max_t) inside tune.report
        if recorder is not None:
            if epoch < run.config.trainer.epochs:
                recorder.client.set_tag(recorder.run_id, "early_stopped", "true")
            recorder.end("FINISHED")
        raise
    except BaseException:
        if recorder is not None:
            recorder.end("FAILED")
        raise
    if recorder is not None:
        recorder.end("FINISHED")


def _evaluate_epoch(
    run: ResolvedRun, refs: Any, result: Any, folder: Path, epoch: int, state: dict[str, Any], recorder: Any
) -> dict[str, Any]:
    """Refresh the trial's run folder with the epoch's checkpoint (model, trajectory), evaluate the epoch's model
    into ``epochs/epoch_NN`` (keeping ``best_model``), rewrite the plots and the summary, record the epoch in
    MLflow; return the Tune result."""
    from baldro_ray.eval.epochs import evaluate_epochs
    from baldro_ray.tracking.run_records import write_plots

    plan = run.eval_plan
    with result.checkpoint.as_directory() as checkpoint:
        collect_checkpoint(Path(checkpoint), folder)
        models = {epoch: Path(checkpoint) / MODEL_DIR}
        state["evaluations"] = evaluate_epochs(plan, refs, models, folder, state["evaluations"], log=print)
    write_plots(folder, state["evaluations"], plan.difficulty)
    train = {k: v for k, v in result.metrics.items() if k.startswith("train/")}
    mlflow = None if recorder is None else {"tracking_uri": recorder.uri, "run_id": recorder.run_id}
    best = best_epoch(state["evaluations"])
    RunSummary(run.name, run.model_path, state["seconds"], train, state["evaluations"], best, mlflow).write(
        folder
    )
    if recorder is not None:
        from baldro_ray.tracking.run_records import record_run

        record_run(recorder, folder, state["evaluations"][-1:], log_model=False, registered_model_name=None)
    summary = state["evaluations"][-1]
    score = summary[SCORE_KEY] if math.isfinite(summary[SCORE_KEY]) else NAN_SCORE
    return {**train, **summary, TUNE_METRIC: score, "epoch": epoch, "best_epoch": best or 0}


def _report(metrics: dict[str, Any], state: dict[str, Any]) -> None:
    """``tune.report`` with a small checkpoint holding the trial state (the weights stay in the Train storage)."""
    from ray import tune

    with tempfile.TemporaryDirectory() as directory:
        (Path(directory) / STATE_FILE).write_text(json.dumps(state))
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(directory))
