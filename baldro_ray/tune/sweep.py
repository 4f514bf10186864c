"""``baldro-ray tune``: a Ray Tune sweep of unlearning runs, and its restoration after the driver died.

Layout of ``<output_dir>/<sweep name>/``:
- ``sweep.yaml`` (the sweep as run), ``sweep_state.json`` (its MLflow parent run);
- ``tune/``: Tune's experiment (state for ``Tuner.restore``, per-trial result files and TensorBoard events);
- ``trials/<trial id>/``: config, ``epochs/epoch_NN`` reports, ``best_model``, trajectory, plots, summary;
- ``.ray/<trial id>/train``: each trial's Ray Train checkpoints;
- ``results.md`` / ``results.json``, ``pareto.png``, ``best/`` (the best trial's model, config and summary).

Invariant: everything that can be checked (the sweep, the base run, the tracking store, the references) is checked
before the first trial starts, and the references are evaluated once here, not per trial.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from baldro_ray.atomic import write_json, write_text
from baldro_ray.cluster import ensure_ray
from baldro_ray.config import ConfigError, RunConfig
from baldro_ray.run_folder import MODEL_DIR, SCORE_KEY
from baldro_ray.tune.results import (
    PARETO_FILE,
    TrialRow,
    close_trial_runs,
    export_best,
    trial_rows,
    write_pareto,
    write_results,
)
from baldro_ray.tune.space import Sweep, SweepSettings, load_sweep, param_space, tune_parameters
from baldro_ray.tune.trial import TUNE_METRIC, SweepContext, run_trial
from baldro_ray.unlearn import ResolvedRun, build_datasets, resolve_run

SWEEP_FILE = "sweep.yaml"
STATE_FILE = "sweep_state.json"
TUNE_DIR = "tune"
NSGA2_METRICS = ["eval/forget_term", "eval/utility_term"]
# The trial function only drives Ray Train and evaluation, whose workers hold their own CPUs; it asks for memory
# alone so that a cluster whose CPUs are all taken by one trial's workers still fits the trial.
TRIAL_RESOURCES = {"CPU": 0, "memory": 256 * 2**20}


@dataclass(frozen=True)
class SweepOutcome:
    """A finished sweep: its folder, trial rows (best first), table, Pareto PNG and front, and best export."""

    folder: Path
    rows: list[TrialRow]
    table: str
    pareto: Path | None
    front: list[str]
    best_dir: Path | None
    tracking_uri: str | None
    parent_run_id: str | None


def max_concurrent_trials(config: RunConfig, resources: dict[str, float]) -> int:
    """How many trials the cluster's ``resources`` hold at once: a trial needs its training workers' CPUs and GPUs,
    or its evaluation replicas', whichever is more (it runs one, then the other). At least 1: an autoscaling
    cluster adds nodes when the first trial asks."""
    trainer, evaluation = config.trainer, config.evaluation
    cpus = max(
        trainer.num_workers * trainer.cpus_per_worker, evaluation.replicas * evaluation.cpus_per_replica
    )
    gpus = max(trainer.num_workers * trainer.use_gpu, evaluation.replicas * evaluation.use_gpu)
    fits = resources.get("CPU", 0.0) // cpus
    if gpus:
        fits = min(fits, resources.get("GPU", 0.0) // gpus)
    return max(1, int(fits))


def _search(settings: SweepSettings, limit: int) -> tuple[Any, dict[str, Any]]:
    """The search algorithm, running at most ``limit`` trials at once, and the Tuner's param space (empty when
    the searcher holds the space itself)."""
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.basic_variant import BasicVariantGenerator

    space = param_space(settings.space)
    points = [tune_parameters(p, settings.space) for p in settings.points_to_evaluate]
    if settings.search in ("grid", "random"):
        generator = BasicVariantGenerator(
            points_to_evaluate=points or None, max_concurrent=limit, random_state=settings.seed
        )
        return generator, space
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    if settings.search == "tpe":
        sampler, metric, mode = optuna.samplers.TPESampler(seed=settings.seed), TUNE_METRIC, "max"
    else:
        sampler, metric, mode = (
            optuna.samplers.NSGAIISampler(seed=settings.seed),
            NSGA2_METRICS,
            ["max", "max"],
        )
    searcher = OptunaSearch(
        OptunaSearch.convert_search_space(space),
        metric,
        mode,
        points_to_evaluate=points or None,
        sampler=sampler,
    )
    return ConcurrencyLimiter(searcher, limit), {}


def _scheduler(sweep: Sweep) -> Any:
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    settings = sweep.settings
    if settings.scheduler == "fifo":
        return FIFOScheduler()
    epochs = settings.space.get("trainer.epochs")
    max_t = max(epochs.corners()) if epochs is not None else sweep.base_config().trainer.epochs
    return ASHAScheduler(
        time_attr="epoch",
        max_t=int(max_t),
        grace_period=settings.asha.grace_period,
        reduction_factor=settings.asha.reduction_factor,
    )


def _tuner(sweep: Sweep, trainable: Any, folder: Path, restore: bool, log: Callable[[str], None]) -> Any:
    import ray
    from ray import tune

    path = folder / TUNE_DIR
    if restore:
        return tune.Tuner.restore(str(path), trainable, resume_unfinished=True, resume_errored=True)
    base = sweep.base_config()
    limit = sweep.settings.max_concurrent_trials or max_concurrent_trials(base, ray.cluster_resources())
    log(f"sweep {folder.name}: up to {limit} trial(s) at once")
    searcher, space = _search(sweep.settings, limit)
    return tune.Tuner(
        trainable,
        param_space=space,
        tune_config=tune.TuneConfig(
            metric=TUNE_METRIC,
            mode="max",
            search_alg=searcher,
            scheduler=_scheduler(sweep),
            num_samples=sweep.settings.num_samples,
        ),
        run_config=tune.RunConfig(name=TUNE_DIR, storage_path=str(folder), verbose=1),
    )


def _prepare(sweep: Sweep, name: str, log: Callable[[str], None]) -> ResolvedRun:
    base = resolve_run(sweep.base_config(), name, log)
    if base.eval_plan is None:
        raise ConfigError(
            f"{sweep.source}: a sweep needs evaluation.enabled=true (its objective is {SCORE_KEY})"
        )
    return base


def run_sweep(sweep: Sweep, name: str | None = None, log: Callable[[str], None] = print) -> SweepOutcome:
    """Validate (before Ray starts), record the sweep, and run it on the cluster :func:`ensure_ray` joins."""
    from baldro_ray.tracking.run_records import open_recorder

    config = sweep.base_config()
    name = name or f"{sweep.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    folder = Path(config.output_dir).expanduser().resolve() / name
    if folder.exists():
        raise ConfigError(
            f"sweep folder {folder} already exists: restore it (baldro-ray tune --restore {folder})"
        )
    base = _prepare(sweep, name, log)
    ensure_ray()
    parent = open_recorder(config, folder.parent, name)
    folder.mkdir(parents=True)
    write_text(
        folder / SWEEP_FILE,
        yaml.safe_dump({**sweep.base, "sweep": sweep.settings.model_dump(mode="json")}, sort_keys=False),
    )
    state = None if parent is None else {"tracking_uri": parent.uri, "parent_run_id": parent.run_id}
    write_json(folder / STATE_FILE, state)
    return _fit(sweep, base, folder, parent, False, log)


def restore_sweep(folder: str | Path, log: Callable[[str], None] = print) -> SweepOutcome:
    """Continue the sweep in ``folder`` after its driver died: finished trials are kept, unfinished ones resume
    after their last reported epoch."""
    from ray import tune

    from baldro_ray.tracking.recorder import RunRecorder

    folder = Path(folder).expanduser().resolve()
    if not (folder / SWEEP_FILE).is_file() or not tune.Tuner.can_restore(str(folder / TUNE_DIR)):
        raise ConfigError(f"{folder} is not a sweep folder with a Tune experiment to restore")
    sweep = load_sweep(folder / SWEEP_FILE)
    base = _prepare(sweep, folder.name, log)
    ensure_ray()
    state = json.loads((folder / STATE_FILE).read_text())
    parent = (
        None if state is None else RunRecorder.attach(state["tracking_uri"], state["parent_run_id"], True)
    )
    return _fit(sweep, base, folder, parent, True, log)


def _fit(
    sweep: Sweep, base: ResolvedRun, folder: Path, parent: Any, restore: bool, log: Callable[[str], None]
) -> SweepOutcome:
    from ray import tune

    from baldro_ray.eval.evaluate import references

    with parent or contextlib.nullcontext():
        references(base.eval_plan, base.model_path, log)  # once, cached: every trial reads them
        datasets = {key: dataset.materialize() for key, dataset in build_datasets(base).items()}
        tracking = None
        if parent is not None:
            tracking = {
                "uri": parent.uri,
                "run_id": parent.run_id,
                "experiment": base.config.tracking.experiment,
            }
        context = SweepContext(sweep, base, datasets, folder, tracking)
        trainable = tune.with_resources(tune.with_parameters(run_trial, context=context), TRIAL_RESOURCES)
        grid = _tuner(sweep, trainable, folder, restore, log).fit()
        return _finish(sweep, grid, folder, parent, log)


def _finish(sweep: Sweep, grid: Any, folder: Path, parent: Any, log: Callable[[str], None]) -> SweepOutcome:
    rows = trial_rows(list(grid), sweep, folder)
    table = write_results(rows, folder)
    pareto, front, best_dir = None, [], None
    if any(row.best for row in rows):
        pareto, front = write_pareto(rows, sweep, folder / PARETO_FILE)
    best = rows[0] if rows and math.isfinite(rows[0].score) else None
    if best is not None:
        best_dir = export_best(best, sweep, folder)
    if parent is not None:
        close_trial_runs(rows, parent.uri)
        _record_sweep(parent, folder, best, best_dir, sweep.base_config())
    for row in rows:
        if row.status == "error":
            log(f"trial {row.trial_id} failed: see {folder / TUNE_DIR}")
    return SweepOutcome(
        folder,
        rows,
        table,
        pareto,
        front,
        best_dir,
        None if parent is None else parent.uri,
        None if parent is None else parent.run_id,
    )


def _record_sweep(
    parent: Any, folder: Path, best: TrialRow | None, best_dir: Path | None, config: RunConfig
) -> None:
    """The parent run's records: the table, the Pareto plot, the best trial (metrics, tag, config, model)."""
    from baldro_ray.tune.results import RESULTS_FILE, TABLE_FILE

    for name in (SWEEP_FILE, RESULTS_FILE, TABLE_FILE, PARETO_FILE):
        if (folder / name).is_file():
            parent.log_artifact(folder / name)
    if best is None or best_dir is None:
        return
    parent.client.set_tag(parent.run_id, "best_trial", best.trial_id)
    parent.log_metrics(
        {f"best/{k.removeprefix('eval/')}": v for k, v in best.best.items() if k.startswith("eval/")}, 0
    )
    for path in sorted(best_dir.iterdir()):
        if path.is_file():
            parent.log_artifact(path, "best")
    if config.tracking.log_model:
        parent.log_model(best_dir / MODEL_DIR, config.tracking.registered_model_name)
