"""The driver of an unlearning run: resolve and validate everything, score the reference once, run Ray Train.

Invariant: every problem a configuration can have (unknown method, bad ZeRO settings, batch larger than the forget
set, missing model, tokenizer/model vocabulary mismatch, bad data files, unknown split names, forget/retain overlap,
an unreachable tracking server) is raised by :func:`resolve_run` as a ``UserError`` before Ray starts (for the
embedded benchmark: before Ray fine-tunes its models) and before anything is written under ``output_dir``; the
run's output folder is complete or absent.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from baldro_ray.config import ConfigError, RunConfig, dump_config
from baldro_ray.data.render import PromptTemplate
from baldro_ray.hub import is_hub_id
from baldro_ray.objectives import get_forget_loss
from baldro_ray.run_folder import CONFIG_FILE, MODEL_DIR, TRAJECTORY_FILE, RunSummary, best_epoch


@dataclass(frozen=True)
class ResolvedRun:
    """Everything a run needs, checked."""

    config: RunConfig
    model_path: str
    template: PromptTemplate
    forget_rows: list[dict[str, Any]]
    retain_rows: list[dict[str, Any]]
    name: str
    eval_plan: Any = None  # an eval.evaluate.EvalPlan when evaluation.enabled

    @property
    def output_dir(self) -> Path:
        return Path(self.config.output_dir).expanduser().resolve() / self.name


@dataclass(frozen=True)
class UnlearnOutcome:
    """A finished run: its run folder and the summary written there."""

    output_dir: Path
    summary: RunSummary

    @property
    def model_dir(self) -> Path:
        return self.output_dir / MODEL_DIR

    @property
    def trajectory(self) -> Path:
        return self.output_dir / TRAJECTORY_FILE


def check_model(path: str, key: str = "model.name_or_path") -> None:
    """Raise ``ConfigError`` naming ``key`` unless ``path`` is a loadable model whose tokenizer fits its vocabulary.

    Config and tokenizer only (cheap even for a 7B model): the weights load in the workers.
    """
    from transformers import AutoConfig, AutoTokenizer

    from baldro_ray.models.tiny import check_vocabulary

    if not os.path.exists(path) and not is_hub_id(path):
        raise ConfigError(f"{key} {path!r} does not exist (and is not an 'owner/name' hub id)")
    try:
        vocab = AutoConfig.from_pretrained(path).vocab_size
        tokens = len(AutoTokenizer.from_pretrained(path))
    except (OSError, ValueError) as err:
        raise ConfigError(f"{key} {path!r} cannot be loaded: {err}") from err
    try:
        check_vocabulary(tokens, vocab, path)
    except ValueError as err:
        raise ConfigError(f"{key}: {err}") from None


def resolve_run(
    config: RunConfig, name: str | None = None, log: Callable[[str], None] = print
) -> ResolvedRun:
    """Load data and model references and validate the whole run, before Ray starts and before any worker.

    With an embedded source (``data.source`` synthetic or synthetic_muse) its benchmark is prepared here, which
    starts Ray only when its models have to be fine-tuned.
    """
    from baldro_ray.data.sources import SCHEMAS, check_disjoint, check_subset, training_schema
    from baldro_ray.inputs import EMBEDDED_MODEL, resolve_inputs
    from baldro_ray.tracking.store import check_reachable
    from baldro_ray.train.backend import BackendSpec, validate_deepspeed_config

    ds, trainer = config.trainer.deepspeed, config.trainer
    try:
        validate_deepspeed_config(BackendSpec(ds.zero_stage, ds.offload_optimizer, ds.offload_param, ds.bf16))
    except ValueError as err:
        raise ConfigError(f"trainer.deepspeed: {err}") from None
    check_reachable(config.tracking, Path(config.output_dir).expanduser().resolve())
    if config.model.name_or_path != EMBEDDED_MODEL:
        check_model(config.model.name_or_path)  # before the embedded benchmark's models may be fine-tuned
    inputs = resolve_inputs(config, log)
    source = inputs.source
    uses_retain = get_forget_loss(config.method.name).uses_retain
    for key in ("forget_split", "retain_split") if uses_retain else ("forget_split",):
        check_subset(source, getattr(config.data, key), f"data.{key}", inputs.location)
    forget = source.load(config.data.forget_split)
    retain = source.load(config.data.retain_split) if uses_retain else []
    for key, rows in (("forget_split", forget), ("retain_split", retain)):
        if rows and not set(SCHEMAS[training_schema(rows)]) <= set(rows[0]):
            raise ConfigError(
                f"data.{key} {getattr(config.data, key)!r} ({config.data.source}) holds rows with columns "
                f"{sorted(rows[0])}; unlearning trains on question/answer rows or text rows (MUSE's raw/*)"
            )
    if retain and training_schema(forget) == training_schema(retain):  # rows of two kinds never coincide
        keys = SCHEMAS[training_schema(forget)]
        check_disjoint(forget, retain, config.data.forget_split, config.data.retain_split, keys)
    per_step = trainer.per_device_batch_size * trainer.num_workers
    if per_step > len(forget):
        raise ConfigError(
            f"trainer.per_device_batch_size={trainer.per_device_batch_size} x trainer.num_workers="
            f"{trainer.num_workers} = {per_step} rows per micro-step, but the forget split "
            f"{config.data.forget_split!r} has only {len(forget)} rows"
        )
    plan = None
    if config.evaluation.enabled:
        from baldro_ray.eval.evaluate import plan_evaluation

        plan = plan_evaluation(config, inputs.location, inputs.retain_model)
    default_name = f"{config.method.name}-{config.method.dro.type}-{time.strftime('%Y%m%d-%H%M%S')}"
    return ResolvedRun(
        config, inputs.model_path, config.model.prompt_template(), forget, retain, name or default_name, plan
    )


def _forget_dataset(run: ResolvedRun) -> Any:
    from baldro_ray.data.pipeline import encoded_dataset
    from baldro_ray.eval.replicas import score_reference

    config = run.config
    dataset = encoded_dataset(
        run.forget_rows,
        run.model_path,
        run.template,
        config.trainer.max_length,
        config.data.forget_split,
    )
    if get_forget_loss(config.method.name).needs_reference:
        dataset = score_reference(dataset, run.model_path, config.trainer.dtype)
    return dataset


def run_unlearn(run: ResolvedRun, log: Callable[[str], None] = print, parent: Any = None) -> UnlearnOutcome:
    """Check the tracking store, score the reference once, train on Ray Train, evaluate the epoch models, and
    move the model and records into place; the MLflow run (a child of ``parent``, a ``RunRecorder``, when given)
    ends FAILED if anything here fails."""
    from baldro_ray.tracking.run_records import open_recorder

    out = run.output_dir
    if out.exists():
        raise ConfigError(f"output folder {out} already exists: choose another run name or remove it")
    out.parent.mkdir(parents=True, exist_ok=True)
    recorder = open_recorder(run.config, out.parent, run.name, parent)
    with recorder or contextlib.nullcontext():
        return _run(run, recorder, log)


def build_datasets(run: ResolvedRun) -> dict[str, Any]:
    """The run's Ray Datasets: ``forget`` (with the reference model's NLL, scored once, when the method needs it)
    and ``retain`` (when it is used)."""
    from baldro_ray.data.pipeline import encoded_dataset

    config = run.config
    datasets = {"forget": _forget_dataset(run)}
    if run.retain_rows:
        datasets["retain"] = encoded_dataset(
            run.retain_rows,
            run.model_path,
            run.template,
            config.trainer.max_length,
            config.data.retain_split,
        )
    return datasets


def build_trainer(
    run: ResolvedRun,
    datasets: dict[str, Any],
    storage_path: Path,
    tracking: dict[str, str] | None = None,
    stop_epoch: int | None = None,
    progress: Any = None,
) -> Any:
    """The run's ``TorchTrainer``. Fitting it again with the same ``storage_path`` resumes from the last epoch
    checkpoint there; ``stop_epoch`` ends the fit after that epoch (the learning-rate schedule stays the full
    run's), so a run can be trained one epoch per fit. ``tracking`` (``uri``, ``run_id``) is the MLflow run the
    workers log steps into; ``progress``, a :func:`baldro_ray.train.progress.watch_steps` mailbox, receives
    rank 0's steps."""
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, LoggingConfig, ScalingConfig
    from ray.train import RunConfig as RayRunConfig
    from ray.train.torch import TorchTrainer

    from baldro_ray import console
    from baldro_ray.cluster import worker_env
    from baldro_ray.train.unlearn import unlearn_loop

    config = run.config
    return TorchTrainer(
        unlearn_loop,
        train_loop_config={
            "run": config.model_dump(mode="json"),
            "model_path": run.model_path,
            "tracking": tracking,
            "stop_epoch": stop_epoch,
            "progress": progress,
        },
        scaling_config=ScalingConfig(
            num_workers=config.trainer.num_workers,
            use_gpu=config.trainer.use_gpu,
            resources_per_worker={"CPU": config.trainer.cpus_per_worker},
        ),
        run_config=RayRunConfig(
            name=storage_path.name,
            storage_path=str(storage_path.parent),
            failure_config=FailureConfig(max_failures=config.trainer.max_failures),
            # Every epoch's model is kept for evaluation after training when it is evaluated per epoch; one fit
            # per epoch evaluates it before the next, and only the latest is needed to resume.
            checkpoint_config=CheckpointConfig(
                num_to_keep=None if config.evaluation.per_epoch and stop_epoch is None else 2
            ),
            worker_runtime_env={"env_vars": worker_env()},
            logging_config=LoggingConfig(log_level=console.train_log_level()),
        ),
        datasets=datasets,
        dataset_config=DataConfig(datasets_to_split=[]),
    )


def _run(run: ResolvedRun, recorder: Any, log: Callable[[str], None]) -> UnlearnOutcome:
    from baldro_ray.atomic import staging_dir, write_text
    from baldro_ray.run_folder import collect_checkpoint
    from baldro_ray.tracking.run_records import record_run, write_plots
    from baldro_ray.train.progress import training_progress

    config, out = run.config, run.output_dir
    started = time.perf_counter()
    tracking = None if recorder is None else {"uri": recorder.uri, "run_id": recorder.run_id}
    storage = out.parent / ".ray" / run.name / run.name
    datasets = build_datasets(run)
    with training_progress() as progress:
        result = build_trainer(run, datasets, storage, tracking, progress=progress).fit()
    if result.checkpoint is None:
        raise RuntimeError(f"unlearning run {run.name} ended without a checkpoint: {result.error}")
    summary = RunSummary(
        run.name,
        run.model_path,
        time.perf_counter() - started,
        {k: v for k, v in result.metrics.items() if k.startswith("train/")},
        mlflow=tracking and {"tracking_uri": tracking["uri"], "run_id": tracking["run_id"]},
    )
    with staging_dir(out) as staging:
        with result.checkpoint.as_directory() as checkpoint:
            collect_checkpoint(Path(checkpoint), staging)
        summary.evaluations = _evaluate_epochs(run, result.best_checkpoints or [], staging, log)
        summary.best_epoch = best_epoch(summary.evaluations)
        plan = run.eval_plan
        # TOFU trains on the forget rows it evaluates; MUSE on text windows that cut across its labelled articles.
        labels = plan.difficulty if plan is not None and plan.benchmark == "TOFU" else None
        write_plots(staging, summary.evaluations, labels)
        write_text(staging / CONFIG_FILE, dump_config(config))
        summary.write(staging)
        if recorder is not None:
            record_run(
                recorder,
                staging,
                summary.evaluations,
                config.tracking.log_model,
                config.tracking.registered_model_name,
            )
    log(
        f"run {run.name}: model {out / MODEL_DIR}, trajectory {out / TRAJECTORY_FILE} ({summary.seconds:.1f} s)"
    )
    return UnlearnOutcome(out, summary)


def _evaluate_epochs(
    run: ResolvedRun, checkpoints: list[tuple[Any, dict[str, Any]]], folder: Path, log: Callable[[str], None]
) -> list[dict[str, float]]:
    """Evaluate every kept epoch model (a Ray Train checkpoint with a model folder) into ``folder``, all in one
    replica job outside the training workers; no evaluations without an evaluation plan."""
    if run.eval_plan is None:
        return []
    from baldro_ray.eval.epochs import evaluate_epochs
    from baldro_ray.eval.evaluate import references

    refs = references(run.eval_plan, run.model_path, log)
    with (
        contextlib.ExitStack() as stack
    ):  # remote storage downloads each checkpoint for as long as it is open
        models = {}
        for checkpoint, metrics in checkpoints:
            model = Path(stack.enter_context(checkpoint.as_directory())) / MODEL_DIR
            if model.is_dir():
                models[int(metrics["epoch"])] = model
        if not models:
            return []
        log(f"evaluating the models of epochs {sorted(models)}")
        return evaluate_epochs(run.eval_plan, refs, models, folder, log=log)
