"""End to end on the shared Ray cluster: a reduced quickstart read back through MLflow's own client (sqlite store),
one unlearning run against a real ``mlflow server`` over HTTP, and an unreachable server failing before training."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient

from baldro_ray.config import ConfigError, load_config
from baldro_ray.quickstart import TABLE_FILE, run_quickstart
from baldro_ray.run_folder import RunSummary
from baldro_ray.unlearn import resolve_run, run_unlearn

pytestmark = [pytest.mark.ray]

REDUCED = ["trainer.epochs=2", "trainer.per_device_batch_size=2", "evaluation.max_new_tokens=16"]
ARTIFACTS = {
    "config.yaml",
    "summary.json",
    "trajectory.parquet",
    "steps.parquet",
    "plots/forgetting_curves.png",
    "plots/dro_weights.png",
    "plots/epoch_metrics.png",
}
EPOCH_REPORT = ("TOFU_EVAL.json", "TOFU_SUMMARY.json", "BALANCE.json")


@pytest.fixture(autouse=True)
def _quiet_mlflow(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def _artifacts(client: MlflowClient, run_id: str, path: str | None = None) -> set[str]:
    found = set()
    for item in client.list_artifacts(run_id, path):
        found |= _artifacts(client, run_id, item.path) if item.is_dir else {item.path}
    return found


def _check_child(
    client: MlflowClient, run_id: str, steps: int, epochs: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["method/name"] == "NPO" and run.data.tags["method"] == "NPO"
    for key in ("train/forget_loss", "train/dro_ess", "train/loss"):
        history = client.get_metric_history(run_id, key)
        assert sorted(m.step for m in history) == list(range(1, steps + 1)), key
    for key in ("eval/forget_quality", "eval/model_utility", "eval/forget_ks_statistic"):
        assert len(client.get_metric_history(run_id, key)) == epochs, key
    assert (
        ARTIFACTS <= _artifacts(client, run_id)
        if epochs > 1
        else {"config.yaml"} <= _artifacts(client, run_id)
    )
    monkeypatch.setenv("MLFLOW_TRACKING_URI", client.tracking_uri)  # runs:/ URIs resolve through it
    pipeline = mlflow.transformers.load_model(f"runs:/{run_id}/model")
    text = pipeline("Who is", max_new_tokens=4, do_sample=False)[0]["generated_text"]
    assert text.startswith("Who is") and len(text) > len("Who is")


@pytest.mark.timeout(600)
def test_quickstart_records_in_mlflow(embedded_tiny, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    base, _ = embedded_tiny
    lines: list[str] = []
    result = run_quickstart(overrides=[*base, *REDUCED, f"output_dir={tmp_path}"], log=lines.append)
    assert [line.split("]")[0] for line in lines[::2]] == [f"[{i}/5" for i in range(1, 6)]
    assert list(result.rows) == [
        "target (before unlearning)",
        "retain (never saw forget)",
        "NPO + BalDRO-DV",
        "NPO (baseline)",
    ]
    assert (result.folder / TABLE_FILE).read_text().count("\n") == 6
    runs = sorted(p for p in tmp_path.iterdir() if p.name.startswith("quickstart-") and p != result.folder)
    assert len(runs) == 2
    for folder in runs:
        summary = RunSummary.read(folder)  # the schema Tune trials write too (tests/tune/test_sweep.py)
        assert [e["epoch"] for e in summary.evaluations] == [1, 2] and summary.best_epoch in (1, 2)
        assert (folder / "best_model" / "config.json").is_file()
    client = MlflowClient(result.tracking_uri)
    parent = client.get_run(result.parent_run_id)
    assert parent.info.status == "FINISHED" and TABLE_FILE in _artifacts(client, parent.info.run_id)
    children = client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{result.parent_run_id}'"
    )
    assert sorted(c.data.params["method/dro/type"] for c in children) == ["dv", "mean"]
    for child in children:
        history = client.get_metric_history(child.info.run_id, "train/loss")
        _check_child(client, child.info.run_id, max(m.step for m in history), 2, monkeypatch)


@pytest.mark.timeout(600)
def test_unlearn_over_http_tracking_server(
    embedded_tiny, mlflow_server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base, _ = embedded_tiny
    config = load_config(
        "embedded_npo_dv",
        [
            *base,
            *REDUCED,
            f"output_dir={tmp_path}",
            f"tracking.tracking_uri={mlflow_server}",
            "trainer.epochs=1",
        ],
    )
    outcome = run_unlearn(resolve_run(config, "over-http", lambda _: None), log=lambda _: None)
    summary = json.loads((outcome.output_dir / "summary.json").read_text())
    assert summary["mlflow"]["tracking_uri"] == mlflow_server
    client = MlflowClient(mlflow_server)
    assert client.get_run(summary["mlflow"]["run_id"]).info.artifact_uri.startswith("mlflow-artifacts:/")
    steps = max(m.step for m in client.get_metric_history(summary["mlflow"]["run_id"], "train/loss"))
    _check_child(client, summary["mlflow"]["run_id"], steps, 1, monkeypatch)
    assert not (tmp_path / "mlflow.db").exists()  # nothing recorded locally instead


def test_unreachable_tracking_server_fails_before_training(embedded_tiny, tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    base, _ = embedded_tiny
    uri = f"http://127.0.0.1:{port}"
    config = load_config(
        "embedded_npo_dv", [*base, *REDUCED, f"output_dir={tmp_path}", f"tracking.tracking_uri={uri}"]
    )
    with pytest.raises(ConfigError, match=f"{uri}.*tracking.on_unreachable=local"):
        resolve_run(config, "unreachable", lambda _: None)
    assert not any(tmp_path.iterdir())
