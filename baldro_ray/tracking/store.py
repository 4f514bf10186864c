"""Where MLflow records go: the configured store or the sqlite default, checked before anything runs.

Invariants: a configured server that does not answer within seconds fails the run before any compute
(``on_unreachable=fail``), or, with ``on_unreachable=local``, the records go to the sqlite store under
``output_dir`` and ``mlflow_pending_sync.json`` there names both stores, so none is dropped silently. A sqlite
store keeps its artifacts in ``mlartifacts`` beside the database.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from mlflow import MlflowClient

from baldro_ray.atomic import write_json
from baldro_ray.config import ConfigError, TrackingConfig

LOCAL_DB = "mlflow.db"
LOCAL_ARTIFACTS = "mlartifacts"
PENDING_SYNC_FILE = "mlflow_pending_sync.json"
_CHECK_ENV = {  # the pre-training check must fail in seconds, not after MLflow's ~4 minutes of retries
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "5",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "0",
}


def _local_uri(output_dir: Path) -> str:
    return f"sqlite:///{Path(output_dir).resolve() / LOCAL_DB}"


def local_tracking_uri(output_dir: Path) -> str:
    """``sqlite:///<absolute output_dir>/mlflow.db``; creates ``output_dir``."""
    Path(output_dir).resolve().mkdir(parents=True, exist_ok=True)
    return _local_uri(output_dir)


def _configured_uri(tracking: TrackingConfig) -> str | None:
    return tracking.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")


def resolve_tracking_uri(tracking: TrackingConfig, output_dir: Path) -> str:
    """``tracking.tracking_uri``, else ``$MLFLOW_TRACKING_URI``, else :func:`local_tracking_uri`."""
    return _configured_uri(tracking) or local_tracking_uri(output_dir)


def _redact(uri: str) -> str:
    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))


def ensure_experiment(client: MlflowClient, name: str) -> str:
    """The id of experiment ``name``, created if absent; ConfigError if it is deleted.

    A new experiment of a sqlite store keeps its artifacts in ``mlartifacts`` next to the database file (so
    ``<output_dir>/mlartifacts`` for the default store), not in MLflow's default, ``./mlruns`` of the cwd.
    """
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        db = client.tracking_uri.removeprefix("sqlite:///")
        location = (
            (Path(db).resolve().parent / LOCAL_ARTIFACTS).as_uri() if db != client.tracking_uri else None
        )
        try:
            return client.create_experiment(name, artifact_location=location)
        except Exception:
            experiment = client.get_experiment_by_name(name)  # another process created it meanwhile
            if experiment is None:
                raise
    if experiment.lifecycle_stage == "deleted":
        raise ConfigError(
            f"MLflow experiment {name!r} in {_redact(client.tracking_uri)} is deleted: restore it "
            "(mlflow experiments restore) or choose another tracking.experiment"
        )
    return experiment.experiment_id


@contextlib.contextmanager
def scoped_environ(values: Mapping[str, str]) -> Iterator[None]:
    """Set ``values`` in ``os.environ`` for the block; afterwards each key is as it was before (set or unset)."""
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _probe(uri: str, experiment: str) -> str | None:
    """None when the store at ``uri`` answers within seconds (``experiment`` exists afterwards), else the first
    line of what went wrong; a deleted experiment raises its own ``ConfigError``."""
    try:
        with scoped_environ(_CHECK_ENV):
            ensure_experiment(MlflowClient(uri), experiment)
        return None
    except ConfigError:
        raise
    except Exception as err:
        return (str(err).strip().splitlines() or [type(err).__name__])[0][:600]


def _unusable(tracking: TrackingConfig, uri: str, problem: str, output_dir: Path) -> ConfigError:
    if tracking.tracking_uri:
        key = "tracking.tracking_uri"
    else:
        key = "$MLFLOW_TRACKING_URI" if os.environ.get("MLFLOW_TRACKING_URI") else "output_dir"
    return ConfigError(
        f"{key}={_redact(uri)}: MLflow tracking store not usable (get or create experiment "
        f"{tracking.experiment!r} failed: {problem}); start the tracking server or fix {key}, "
        f"or set tracking.on_unreachable=local to record into {_local_uri(output_dir)} and sync later"
    )


def check_reachable(tracking: TrackingConfig, output_dir: Path) -> None:
    """Raise :class:`ConfigError` when a tracking server is configured, does not answer within seconds and
    ``on_unreachable=fail``; writes nothing under ``output_dir``, so it can run before anything starts.

    Local stores (the embedded sqlite default, ``sqlite:``/``file:`` URIs) and the ``on_unreachable=local``
    fallback are left to :func:`check_tracking`, which creates them when the run starts.
    """
    uri = _configured_uri(tracking)
    if not tracking.enabled or uri is None or tracking.on_unreachable == "local":
        return
    if urlsplit(uri).scheme in ("", "file", "sqlite"):
        return
    problem = _probe(uri, tracking.experiment)
    if problem is not None:
        raise _unusable(tracking, uri, problem, output_dir)


def check_tracking(tracking: TrackingConfig, output_dir: Path) -> str:
    """The tracking URI to record into, verified before any compute (the experiment exists afterwards).

    An unusable store raises :class:`ConfigError` (``on_unreachable=fail``) or, with ``local``, falls back to the
    sqlite store under ``output_dir`` and writes ``mlflow_pending_sync.json`` naming the intended store.
    """
    uri = resolve_tracking_uri(tracking, output_dir)
    problem = _probe(uri, tracking.experiment)
    if problem is None:
        return uri
    if tracking.on_unreachable == "fail" or uri == _local_uri(output_dir):
        raise _unusable(tracking, uri, problem, output_dir)
    local = local_tracking_uri(output_dir)
    ensure_experiment(MlflowClient(local), tracking.experiment)
    marker = write_json(
        Path(output_dir) / PENDING_SYNC_FILE,
        {
            "intended_tracking_uri": _redact(uri),
            "local_tracking_uri": local,
            "experiment": tracking.experiment,
            "error": problem,
            "created_at": datetime.now(UTC).isoformat(),
            "note": "these runs were recorded locally; copy them to the intended store (e.g. mlflow-export-import)",
        },
    )
    message = f"MLflow tracking store {_redact(uri)} is unreachable ({problem}); recording into {local}"
    warnings.warn(f"{message} instead, see {marker} to sync later", RuntimeWarning, stacklevel=2)
    return local
