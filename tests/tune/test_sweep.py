"""Real Ray Tune sweeps on the reduced embedded benchmark: per-epoch objectives, ASHA stopping a destructive trial,
nested MLflow runs, the Pareto plot and the best trial's export."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

from baldro_ray.config import PRESETS_DIR
from baldro_ray.tune.space import load_sweep
from baldro_ray.tune.sweep import run_sweep

pytestmark = [pytest.mark.ray]

# Two epochs of two steps per trial, evaluated with one replica and short generations.
REDUCED = ["trainer.epochs=2", "trainer.per_device_batch_size=2", "trainer.warmup_epochs=0",
           "evaluation.max_new_tokens=16", "evaluation.replicas=1"]  # fmt: skip


def write_sweep(folder: Path, sweep: str) -> Path:
    path = folder / "sweep.yaml"
    path.write_text(f"extends: {PRESETS_DIR / 'embedded_npo_dv.yaml'}\nsweep:\n{sweep}")
    return path


@pytest.fixture(autouse=True)
def _no_global_tracking_uri(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


@pytest.mark.timeout(900)
def test_three_trial_sweep_with_asha_stopping_the_destructive_trial(embedded_tiny, tmp_path: Path) -> None:
    base, _ = embedded_tiny
    path = write_sweep(
        tmp_path,
        "  search: grid\n  scheduler: asha\n  asha: {grace_period: 1, reduction_factor: 2}\n"
        "  space:\n    trainer.lr: {type: grid, values: [1.0e-3, 3.0e-3, 30.0]}\n"
        "  points_to_evaluate: []\n",
    )
    sweep = load_sweep(path, [*base, *REDUCED, f"output_dir={tmp_path / 'out'}"])
    outcome = run_sweep(sweep, "sweep", log=lambda _: None)

    assert len(outcome.rows) == 3
    by_lr = {row.settings["trainer.lr"]: row for row in outcome.rows}
    destructive = by_lr[30.0]
    assert destructive.status == "stopped" and destructive.epochs_run == 1, destructive
    assert by_lr[1.0e-3].status == "finished" and by_lr[1.0e-3].epochs_run == 2
    for row in outcome.rows:  # every trial reported an objective per epoch it ran
        summary = json.loads((outcome.folder / "trials" / row.trial_id / "summary.json").read_text())
        assert [e["epoch"] for e in summary["evaluations"]] == list(range(1, row.epochs_run + 1))
        assert all(math.isfinite(e["eval/score"]) for e in summary["evaluations"] if row is not destructive)
    scores = {row.trial_id: row.score for row in outcome.rows}
    best = outcome.rows[0]
    assert best.score == max(scores.values()) and best.trial_id != destructive.trial_id
    assert (outcome.best_dir / "model" / "config.json").is_file()
    exported = json.loads((outcome.best_dir / "summary.json").read_text())
    assert exported["trial_id"] == best.trial_id and exported["evaluation"]["eval/score"] == best.score
    assert "trainer:\n  lr: " in (outcome.best_dir / "config.yaml").read_text()
    assert outcome.pareto.read_bytes().startswith(b"\x89PNG") and outcome.front
    assert best.trial_id in (outcome.folder / "results.md").read_text().splitlines()[2]

    client = MlflowClient(outcome.tracking_uri)
    parent = client.get_run(outcome.parent_run_id)
    assert parent.info.status == "FINISHED" and parent.data.tags["best_trial"] == best.trial_id
    artifacts = {a.path for a in client.list_artifacts(outcome.parent_run_id)}
    assert {"pareto.png", "results.md", "sweep.yaml", "best"} <= artifacts
    children = client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{outcome.parent_run_id}'"
    )
    assert sorted(c.data.tags["tune_trial_id"] for c in children) == sorted(scores)
    for child in children:
        row = next(r for r in outcome.rows if r.trial_id == child.data.tags["tune_trial_id"])
        assert child.info.status == "FINISHED" and child.data.tags["tune_status"] == row.status
        history = client.get_metric_history(child.info.run_id, "eval/score")
        assert len(history) == row.epochs_run
    assert (
        next(c for c in children if c.data.tags["tune_trial_id"] == destructive.trial_id).data.tags[
            "early_stopped"
        ]
        == "true"
    )


def _driver(args: list[str], tmp_path: Path, log: str) -> subprocess.Popen:
    """``baldro-ray tune ...`` as its own driver process joined to the session's cluster."""
    import ray

    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address, "RAY_AUTH_MODE": "token",
           "TUNE_GLOBAL_CHECKPOINT_S": "0"}  # fmt: skip
    out = (tmp_path / log).open("wb")
    return subprocess.Popen([sys.executable, "-m", "baldro_ray.cli", "tune", *args], env=env, stdout=out,
                            stderr=subprocess.STDOUT)  # fmt: skip


def _evaluated(folder: Path) -> dict[str, list[int]]:
    """Trial id -> epochs evaluated so far (from each trial's summary)."""
    found = {}
    for summary in folder.glob("trials/*/summary.json"):
        found[summary.parent.name] = [e["epoch"] for e in json.loads(summary.read_text())["evaluations"]]
    return found


@pytest.mark.timeout(900)
def test_killed_driver_restores_without_rerunning_finished_trials_or_epochs(
    embedded_tiny, tmp_path: Path
) -> None:
    """SIGKILL the sweep's driver once the first trial (1 epoch) has finished and the second (2 epochs) has
    reported its first epoch; ``tune --restore`` finishes the second trial from its second epoch and leaves the
    first one alone."""
    base, _ = embedded_tiny
    path = write_sweep(
        tmp_path,
        "  search: grid\n  scheduler: fifo\n  space:\n    trainer.epochs: {type: grid, values: [1, 2]}\n"
        "  points_to_evaluate: []\n",
    )
    folder = tmp_path / "out" / "sweep"
    driver = _driver(["--config", str(path), "--name", "sweep", *base, *REDUCED, f"output_dir={folder.parent}"],
                     tmp_path, "driver.log")  # fmt: skip
    deadline = time.monotonic() + 600
    while driver.poll() is None and time.monotonic() < deadline:
        if sorted(_evaluated(folder).values()) == [[1], [1]]:  # the 1-epoch trial, then epoch 1 of 2
            break
        time.sleep(0.2)
    time.sleep(1.0)  # the report of that epoch reaches Tune's experiment state
    assert driver.poll() is None, (tmp_path / "driver.log").read_text()[-3000:]
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    trials = {json.loads((p / "summary.json").read_text())["name"]: p for p in (folder / "trials").iterdir()}
    epochs = {
        t: yaml.safe_load((p / "config.yaml").read_text())["trainer"]["epochs"] for t, p in trials.items()
    }
    finished, running = sorted(trials, key=epochs.get)
    stamps = {p: p.stat().st_mtime_ns for p in (folder / "trials").rglob("*_SUMMARY.json")}

    restore = _driver(["--restore", str(folder)], tmp_path, "restore.log")
    assert restore.wait(timeout=600) == 0, (tmp_path / "restore.log").read_text()[-3000:]
    assert _evaluated(folder) == {finished: [1], running: [1, 2]}
    assert {
        p: p.stat().st_mtime_ns for p in stamps
    } == stamps  # no reported epoch evaluated (or trained) again
    rows = json.loads((folder / "results.json").read_text())
    assert sorted((r["trial_id"], r["status"]) for r in rows) == sorted(
        [(finished, "finished"), (running, "finished")]
    )
    client = MlflowClient(json.loads((folder / "sweep_state.json").read_text())["tracking_uri"])
    parent_id = json.loads((folder / "sweep_state.json").read_text())["parent_run_id"]
    children = client.search_runs(
        [client.get_run(parent_id).info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{parent_id}'",
    )
    assert sorted(c.data.tags["tune_trial_id"] for c in children) == sorted([finished, running])
    assert client.get_run(parent_id).info.status == "FINISHED"
