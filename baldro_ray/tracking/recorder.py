"""One unlearning run's MLflow records: params, tags, metrics, artifacts and the model (the store: ``store.py``).

Invariants: a run created here never stays RUNNING after an exception in our code (``RunRecorder.start`` ends it
FAILED if its set-up fails, the context manager if the body raises; an :meth:`RunRecorder.attach` recorder never ends
the run, its owner does). Only finite metric values are logged.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.metadata
import json
import math
import subprocess
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self

import pyarrow as pa
import pyarrow.parquet as pq
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking._tracking_service.utils import _use_tracking_uri
from packaging.version import Version

from baldro_ray.config import (
    RunConfig,
    dro_settings_in_use,
    dump_config,
    flatten_config,
)
from baldro_ray.tracking.store import ensure_experiment, scoped_environ

MODEL_NAME = "model"
# MLflow's limits (mlflow.utils.validation): values longer than this, or larger batches, are rejected.
_PARAM_VALUE_MAX, _KEY_MAX, _PARAMS_PER_BATCH, _METRICS_PER_BATCH = 6000, 250, 100, 1000


@functools.cache
def git_commit() -> str | None:
    """HEAD of the git checkout this package runs from, or None (not a checkout, no git, any error)."""
    root = Path(__file__).resolve().parents[2]
    if not (root / ".git").exists():
        return None  # an installed copy: an enclosing repository would not be ours
    try:
        done = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=9, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    sha = done.stdout.strip()
    return sha if done.returncode == 0 and len(sha) in (40, 64) else None


def _param_value(value: Any) -> str:
    text = json.dumps(value) if isinstance(value, (list, dict)) else str(value)
    return text if len(text) <= _PARAM_VALUE_MAX else text[: _PARAM_VALUE_MAX - 3] + "..."


def _pip_requirements() -> list[str]:
    # Explicit, because MLflow's default list pins torchvision and fails where it is not installed.
    pins = []
    for name in ("transformers", "torch", "accelerate", "tokenizers", "safetensors"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            pins.append(f"{name}=={Version(importlib.metadata.version(name)).public}")
    return pins


def _model_input(model_dir: Path) -> str | dict[str, Any]:
    """The folder itself where MLflow can log a local checkpoint, else the loaded model and tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, pipelines

    # MLflow 3.17 reads the pipeline class from check_task()["impl"], a dotted string in transformers 5.
    if hasattr(pipelines.check_task("text-generation")[1]["impl"], "__name__"):
        return str(model_dir)
    return {
        "model": AutoModelForCausalLM.from_pretrained(model_dir),
        "tokenizer": AutoTokenizer.from_pretrained(model_dir),
    }


class RunRecorder:
    """One MLflow run: params, tags, metrics, artifacts and the model; a context manager ending it FAILED on error."""

    def __init__(self, client: MlflowClient, run_id: str, experiment_id: str, owns_run: bool) -> None:
        self.client, self.experiment_id, self.owns_run = client, experiment_id, owns_run
        self._run_id, self._ended = run_id, False

    @property
    def run_id(self) -> str:
        return self._run_id

    @property
    def uri(self) -> str:
        return self.client.tracking_uri

    @classmethod
    def start(
        cls,
        uri: str,
        experiment: str,
        run_name: str,
        config: RunConfig | None = None,
        parent_run_id: str | None = None,
        tags: Mapping[str, Any] | None = None,
    ) -> RunRecorder:
        """Create a run (under ``parent_run_id`` if given; the experiment if missing) and log ``config``."""
        client = MlflowClient(uri)
        experiment_id = ensure_experiment(client, experiment)
        return cls._open(client, experiment_id, run_name, config, parent_run_id, tags)

    @classmethod
    def _open(cls, client, experiment_id, run_name, config, parent_run_id, tags) -> RunRecorder:
        run_tags = {key: str(value) for key, value in (tags or {}).items()}
        if parent_run_id is not None:
            run_tags["mlflow.parentRunId"] = parent_run_id
        run = client.create_run(experiment_id, run_name=run_name, tags=run_tags)
        recorder = cls(client, run.info.run_id, experiment_id, owns_run=True)
        try:
            if config is not None:
                recorder.log_config(config)
        except BaseException:
            with contextlib.suppress(Exception):  # the original error matters more than a failed end
                recorder.end("FAILED")
            raise
        return recorder

    @classmethod
    def attach(cls, uri: str, run_id: str, owns_run: bool = False) -> RunRecorder:
        """A recorder logging into the existing run ``run_id`` (e.g. from a Ray Train rank-0 worker).

        Unless it ``owns_run`` (a resumed Tune trial taking its run back), it never ends the run: ``end`` and
        leaving the context only close the recorder, and the run's owner (the driver's recorder, which sees a
        worker's failure) sets its final status. A sqlite store must be on a filesystem the worker's node shares.
        """
        client = MlflowClient(uri)
        return cls(client, run_id, client.get_run(run_id).info.experiment_id, owns_run=owns_run)

    def child(self, run_name: str, config: RunConfig | None = None) -> RunRecorder:
        """A nested run in the same experiment, tagged ``mlflow.parentRunId`` = this run."""
        return self._open(self.client, self.experiment_id, run_name, config, self.run_id, None)

    def log_config(self, config: RunConfig) -> None:
        """Flattened config as params, ``config.yaml`` as an artifact, and the method / DRO / git tags."""
        params = [Param(key[:_KEY_MAX], _param_value(v)) for key, v in flatten_config(config).items()]
        for begin in range(0, len(params), _PARAMS_PER_BATCH):
            self.client.log_batch(self.run_id, params=params[begin : begin + _PARAMS_PER_BATCH])
        self.client.log_text(self.run_id, dump_config(config), "config.yaml")
        dro = dro_settings_in_use(config.method.dro)
        tags = {"method": config.method.name, "dro": dro["type"]}
        tags |= {key: str(dro[key]) for key in ("temperature", "sampling_ratio") if key in dro}
        if commit := git_commit():
            tags |= {"git_commit": commit, "mlflow.source.git.commit": commit}
        self.client.log_batch(self.run_id, tags=[RunTag(k, v) for k, v in tags.items()])

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> int:
        """Log the finite values at ``step`` (NaN and inf are left out); return how many were logged."""
        now = int(time.time() * 1000)
        points = [Metric(k, float(v), now, int(step)) for k, v in metrics.items() if math.isfinite(float(v))]
        self._log_points(points)
        return len(points)

    def _log_points(self, points: Sequence[Metric]) -> None:
        for begin in range(0, len(points), _METRICS_PER_BATCH):
            self.client.log_batch(self.run_id, metrics=points[begin : begin + _METRICS_PER_BATCH])

    def log_step_table(self, steps_parquet: Path) -> int:
        """Log every numeric column of ``steps.parquet`` but ``step`` as a metric at step = its ``step`` value.

        Finite values only; (key, step) pairs already in the run (logged live) are skipped, so this never
        duplicates points. Returns how many points were logged.
        """
        table = pq.read_table(steps_parquet)
        if "step" not in table.column_names:
            raise ValueError(f"{steps_parquet} has no 'step' column (columns: {table.column_names})")
        steps = table.column("step").to_pylist()
        now, points = int(time.time() * 1000), []
        for key in table.column_names:
            column = table.column(key)
            if key == "step" or not (pa.types.is_integer(column.type) or pa.types.is_floating(column.type)):
                continue
            seen = {m.step for m in self.client.get_metric_history(self.run_id, key)}
            for step, value in zip(steps, column.to_pylist(), strict=True):
                if step is not None and value is not None and math.isfinite(value) and step not in seen:
                    points.append(Metric(key, float(value), now, int(step)))
        self._log_points(points)
        return len(points)

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_artifacts(self, directory: Path, artifact_path: str | None = None) -> None:
        self.client.log_artifacts(self.run_id, str(directory), artifact_path)

    def log_model(self, model_dir: Path, registered_model_name: str | None = None) -> str:
        """Log a ``save_pretrained`` folder (with tokenizer) as an MLflow transformers text-generation model.

        Returns the model URI (``models:/<id>``; ``runs:/<run>/model`` resolves to it too), loadable with
        ``mlflow.transformers.load_model``, and registers it under ``registered_model_name`` if given. Where
        MLflow cannot log the folder by path (MLflow 3.17 with transformers 5) the model is loaded in memory to
        log it. If the transformers flavour fails anyway, the folder is logged as plain artifacts under
        ``model/`` (with a warning, unregistered) and ``runs:/<run>/model`` is returned.
        """
        import mlflow.transformers
        from huggingface_hub import ModelCard

        model_dir = Path(model_dir).resolve()  # a relative path would look like a hub id to MLflow
        if not (model_dir / "config.json").is_file():
            raise FileNotFoundError(f"{model_dir} is not a saved Hugging Face model (no config.json)")
        try:
            source = _model_input(model_dir)
            # Model.log reaches store and registry through the global URI; MLflow's helper would then unset
            # $MLFLOW_TRACKING_URI even if it was set before, hence scoped_environ around it.
            with scoped_environ({"MLFLOW_TRACKING_URI": self.uri}), _use_tracking_uri(self.uri):
                model = self.client.create_logged_model(
                    self.experiment_id, MODEL_NAME, source_run_id=self.run_id
                )
                info = mlflow.transformers.log_model(
                    source,
                    name=MODEL_NAME,
                    task="text-generation",
                    run_id=self.run_id,
                    model_id=model.model_id,  # a model created by Model.log would land in the fluent experiment
                    registered_model_name=registered_model_name,
                    pip_requirements=_pip_requirements(),
                    # given, so that MLflow does not look the local folder up on the Hugging Face hub
                    model_card=ModelCard(f"Unlearned with baldro-ray, MLflow run {self.run_id}."),
                )
        except Exception as err:
            message = f"logging {model_dir} as an MLflow transformers model failed ({err!r}); logging it as "
            warnings.warn(message + f"plain artifacts under {MODEL_NAME}/, unregistered", RuntimeWarning, 2)
            self.log_artifacts(model_dir, MODEL_NAME)
            return f"runs:/{self.run_id}/{MODEL_NAME}"
        self.client.set_tag(self.run_id, "model_uri", info.model_uri)
        return info.model_uri

    def end(self, status: Literal["FINISHED", "FAILED", "KILLED"] = "FINISHED") -> None:
        """Set the run's final status (once); an attached recorder only closes itself."""
        if not self._ended and self.owns_run:
            self.client.set_terminated(self.run_id, status)
        self._ended = True

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            self.end("FINISHED")
            return
        with contextlib.suppress(Exception):  # the original error matters more than a failed end
            self.end("FAILED")
