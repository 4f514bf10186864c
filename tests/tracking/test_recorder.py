"""MLflow recorder against real stores: a sqlite file per test and, once, a real ``mlflow server`` over HTTP."""

from __future__ import annotations

import json
import math
import socket
import time
from pathlib import Path

import mlflow.transformers
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from mlflow import MlflowClient

from baldro_ray.config import ConfigError, RunConfig, TrackingConfig, load_config
from baldro_ray.models.tiny import TinyModelSpec, build_tiny_llama, save_model, train_tokenizer
from baldro_ray.tracking.recorder import RunRecorder, git_commit
from baldro_ray.tracking.store import (
    PENDING_SYNC_FILE,
    check_reachable,
    check_tracking,
    local_tracking_uri,
    resolve_tracking_uri,
)

STEP_KEYS = ("train/loss", "train/forget_loss", "train/retain_loss", "train/lr", "train/dro_ess")


@pytest.fixture(autouse=True)
def _quiet_mlflow(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def _config(tmp_path: Path) -> RunConfig:
    return load_config(None, [f"output_dir={tmp_path}", "method.dro.type=dv", "method.dro.temperature=-0.5"])


def _steps_parquet(path: Path, steps: int = 6) -> Path:
    rows = [
        {
            "epoch": 1 + (s - 1) // 3,
            "step": s,
            "train/loss": 2.0 - 0.1 * s,
            "train/forget_loss": 1.0 + 0.01 * s,
            # NaN (no retain batch) at even steps: must not reach MLflow
            "train/retain_loss": float("nan") if s % 2 == 0 else 0.5 * s,
            "train/lr": 1e-5,
            "train/dro_ess": 3.5,
        }
        for s in range(1, steps + 1)
    ]
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def _history(client: MlflowClient, run_id: str, key: str) -> dict[int, float]:
    return {m.step: m.value for m in client.get_metric_history(run_id, key)}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _tiny_model(path: Path) -> Path:
    tokenizer = train_tokenizer([f"Author {i} wrote the book number {i * 7}." for i in range(200)], 300)
    spec = TinyModelSpec(hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=2, intermediate_size=64)
    return save_model(build_tiny_llama(spec, tokenizer, seed=0), tokenizer, path)


def test_resolve_tracking_uri(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "new" / "out"
    assert resolve_tracking_uri(TrackingConfig(), out) == f"sqlite:///{out.resolve()}/mlflow.db"
    assert out.is_dir()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://env.example:5000")
    assert resolve_tracking_uri(TrackingConfig(), out) == "http://env.example:5000"
    explicit = TrackingConfig(tracking_uri="http://cfg.example:5000")
    assert resolve_tracking_uri(explicit, out) == "http://cfg.example:5000"


def _round_trip(uri: str, tmp_path: Path) -> tuple[str, str]:
    """Log a run with config, metrics, the step table, artifacts and a child; return (run id, child id)."""
    config = _config(tmp_path)
    (tmp_path / "plots").mkdir(parents=True)
    (tmp_path / "plots" / "a.png").write_bytes(b"\x89PNG fake")
    (tmp_path / "summary.json").write_text('{"score": 1.5}')
    with RunRecorder.start(uri, "exp-x", "unlearn", config, tags={"stage": "test"}) as run:
        assert run.log_metrics({"eval/score": 1.5, "eval/nan": math.nan, "eval/inf": math.inf}, step=2) == 1
        assert run.log_step_table(_steps_parquet(tmp_path / "steps.parquet")) == 6 * 6 - 3
        assert run.log_step_table(tmp_path / "steps.parquet") == 0  # idempotent: no duplicate points
        run.log_artifact(tmp_path / "summary.json")
        run.log_artifacts(tmp_path / "plots", "plots")
        with run.child("epoch-1", config) as child:
            child.log_metrics({"eval/score": 0.7}, step=1)
        assert run.uri == uri
    return run.run_id, child.run_id


def _check_round_trip(client: MlflowClient, run_id: str, child_id: str) -> None:
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    params = run.data.params
    assert params["method/dro/type"] == "dv" and params["method/dro/temperature"] == "-0.5"
    assert params["trainer/lr"] == "1e-05" and params["model/tokenizer"] == "None"
    tags = run.data.tags
    assert (tags["method"], tags["dro"], tags["temperature"]) == ("NPO", "dv", "-0.5")
    assert "sampling_ratio" not in tags and "method/dro/sampling_ratio" not in params  # BalDRO-G's only
    assert tags["stage"] == "test" and tags["mlflow.runName"] == "unlearn"
    assert tags.get("git_commit") == git_commit()
    assert _history(client, run_id, "eval/score") == {2: 1.5}
    assert "eval/nan" not in run.data.metrics and "eval/inf" not in run.data.metrics
    assert _history(client, run_id, "train/loss") == pytest.approx({s: 2.0 - 0.1 * s for s in range(1, 7)})
    assert _history(client, run_id, "train/retain_loss") == pytest.approx({1: 0.5, 3: 1.5, 5: 2.5})
    assert _history(client, run_id, "epoch") == {1: 1, 2: 1, 3: 1, 4: 2, 5: 2, 6: 2}
    assert all(_history(client, run_id, key) for key in STEP_KEYS)
    top = {a.path for a in client.list_artifacts(run_id)}
    assert {"config.yaml", "summary.json", "plots"} <= top
    assert [a.path for a in client.list_artifacts(run_id, "plots")] == ["plots/a.png"]
    config_text = Path(client.download_artifacts(run_id, "config.yaml")).read_text()
    assert "temperature: -0.5" in config_text
    child = client.get_run(child_id)
    assert child.data.tags["mlflow.parentRunId"] == run_id and child.info.status == "FINISHED"
    assert child.info.experiment_id == run.info.experiment_id
    assert _history(client, child_id, "eval/score") == {1: 0.7}


def test_run_round_trip_sqlite(tmp_path: Path) -> None:
    uri = local_tracking_uri(tmp_path / "store")
    run_id, child_id = _round_trip(uri, tmp_path)
    client = MlflowClient(uri)
    _check_round_trip(client, run_id, child_id)
    # artifacts of a sqlite store live next to it, not in ./mlruns of the working directory
    assert client.get_run(run_id).info.artifact_uri.startswith((tmp_path / "store" / "mlartifacts").as_uri())


def test_failure_ends_run_failed_and_attach_does_not_end(tmp_path: Path) -> None:
    uri = local_tracking_uri(tmp_path)
    client = MlflowClient(uri)
    with pytest.raises(RuntimeError, match="boom"), RunRecorder.start(uri, "exp-x", "doomed", None) as run:
        raise RuntimeError("boom")
    assert client.get_run(run.run_id).info.status == "FAILED"

    owner = RunRecorder.start(uri, "exp-x", "owner")
    with pytest.raises(ValueError), RunRecorder.attach(uri, owner.run_id) as worker:
        worker.log_metrics({"train/loss": 1.25}, step=7)
        raise ValueError("worker failed")
    assert client.get_run(owner.run_id).info.status == "RUNNING"  # the owner decides
    assert _history(client, owner.run_id, "train/loss") == {7: 1.25}
    owner.end("FAILED")
    owner.end("FINISHED")  # only the first end counts
    assert client.get_run(owner.run_id).info.status == "FAILED"


def test_check_tracking_local_store(tmp_path: Path) -> None:
    uri = check_tracking(TrackingConfig(experiment="exp-y"), tmp_path / "out")
    assert uri == local_tracking_uri(tmp_path / "out")
    experiment = MlflowClient(uri).get_experiment_by_name("exp-y")
    assert experiment.artifact_location == (tmp_path / "out" / "mlartifacts").resolve().as_uri()


def test_check_tracking_unreachable(tmp_path: Path) -> None:
    remote = f"http://127.0.0.1:{_free_port()}"  # nothing listens there
    began = time.monotonic()
    with pytest.raises(ConfigError) as caught:
        check_tracking(TrackingConfig(tracking_uri=remote), tmp_path / "a")
    assert time.monotonic() - began < 10
    assert remote in str(caught.value) and "on_unreachable=local" in str(caught.value)
    assert not (tmp_path / "a").exists()  # failing writes nothing, not even the folder its message names

    settings = TrackingConfig(tracking_uri=remote, on_unreachable="local", experiment="exp-z")
    with pytest.warns(RuntimeWarning, match="unreachable"):
        uri = check_tracking(settings, tmp_path / "b")
    assert uri == local_tracking_uri(tmp_path / "b")
    marker = json.loads((tmp_path / "b" / PENDING_SYNC_FILE).read_text())
    assert marker["intended_tracking_uri"] == remote and marker["local_tracking_uri"] == uri
    assert marker["experiment"] == "exp-z"
    assert MlflowClient(uri).get_experiment_by_name("exp-z") is not None


def test_check_reachable_writes_nothing(tmp_path: Path) -> None:
    remote = f"http://127.0.0.1:{_free_port()}"
    with pytest.raises(ConfigError, match=f"tracking.tracking_uri={remote}: .*on_unreachable=local"):
        check_reachable(TrackingConfig(tracking_uri=remote), tmp_path / "out")
    # Left to check_tracking, which creates them when the run starts: the local default and the local fallback.
    check_reachable(TrackingConfig(), tmp_path / "out")
    check_reachable(TrackingConfig(tracking_uri=remote, on_unreachable="local"), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def _log_and_load_model(uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    model_dir = _tiny_model(tmp_path / "tiny")
    with RunRecorder.start(uri, "exp-m", "with-model") as run:
        model_uri = run.log_model(model_dir, registered_model_name=name)
    client = MlflowClient(uri)
    assert model_uri.startswith("models:/")
    assert client.get_run(run.run_id).data.tags["model_uri"] == model_uri
    assert [str(v.version) for v in client.search_model_versions(f"name='{name}'")] == ["1"]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)  # models:/ and runs:/ URIs resolve through it
    for where in (model_uri, f"runs:/{run.run_id}/model", f"models:/{name}/1"):
        pipeline = mlflow.transformers.load_model(where)
        out = pipeline("Author 3 wrote", max_new_tokens=4, do_sample=False)
        assert out[0]["generated_text"].startswith("Author 3 wrote")


def test_log_model_round_trip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _log_and_load_model(local_tracking_uri(tmp_path / "store"), tmp_path, monkeypatch, "tiny-unlearned")


@pytest.mark.timeout(180)
def test_http_server_round_trip(mlflow_server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert (
        check_tracking(TrackingConfig(tracking_uri=mlflow_server, experiment="exp-x"), tmp_path)
        == mlflow_server
    )
    run_id, child_id = _round_trip(mlflow_server, tmp_path / "run")
    client = MlflowClient(mlflow_server)
    _check_round_trip(client, run_id, child_id)
    assert client.get_run(run_id).info.artifact_uri.startswith("mlflow-artifacts:/")
    _log_and_load_model(mlflow_server, tmp_path, monkeypatch, "tiny-over-http")
