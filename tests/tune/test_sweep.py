"""A real Ray Tune sweep on the reduced embedded benchmark, driven by ``baldro-ray tune`` in its own process: per-epoch
objectives, ASHA stopping a destructive trial, the driver killed mid-sweep and restored, nested MLflow runs, the
Pareto plot and the best trial's export."""

from __future__ import annotations

import dataclasses
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
from baldro_ray.run_folder import RunSummary

pytestmark = [pytest.mark.ray]

# Two epochs of two steps per trial, evaluated with one replica and short generations.
REDUCED = [
    "trainer.epochs=2",
    "trainer.per_device_batch_size=2",
    "trainer.warmup_epochs=0",
    "evaluation.max_new_tokens=16",
    "evaluation.replicas=1",
    "tracking.log_model=false",
]  # logging models is tested in tests/test_quickstart.py
# Run in this order, one at a time: a good trial, a destructive one, another good one. ASHA (rungs at epoch 1, keep
# the top half) lets the first through alone, stops the destructive one at its first rung (below the mean of the
# two scores there) and lets the third through (with three scores, only the lowest is cut).
SWEEP = """sweep:
  search: grid
  max_concurrent_trials: 1
  scheduler: asha
  asha: {grace_period: 1, reduction_factor: 2}
  space:
    trainer.lr: {type: grid, values: [1.0e-3, 30.0, 2.0e-3]}
"""
GOOD, DESTRUCTIVE, RESUMED = 1.0e-3, 30.0, 2.0e-3


@pytest.fixture(autouse=True)
def _no_global_tracking_uri(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def _driver(args: list[str], tmp_path: Path, log: str) -> subprocess.Popen:
    """``baldro-ray tune ...`` as its own driver process joined to the session's cluster (Tune's experiment state
    saved at every step, so a kill loses no report)."""
    import ray

    env = {
        **os.environ,
        "RAY_ADDRESS": ray.get_runtime_context().gcs_address,
        "RAY_AUTH_MODE": "token",
        "TUNE_GLOBAL_CHECKPOINT_S": "0",
    }
    out = (tmp_path / log).open("wb")
    return subprocess.Popen(
        [sys.executable, "-m", "baldro_ray.cli", "tune", *args], env=env, stdout=out, stderr=subprocess.STDOUT
    )


def _evaluated(folder: Path) -> dict[float, list[int]]:
    """Trial learning rate -> epochs evaluated so far (from each trial's config and summary)."""
    found = {}
    for summary in folder.glob("trials/*/summary.json"):
        lr = yaml.safe_load((summary.parent / "config.yaml").read_text())["trainer"]["lr"]
        found[lr] = [e["epoch"] for e in json.loads(summary.read_text())["evaluations"]]
    return found


def _kill_when(driver: subprocess.Popen, folder: Path, state: dict[float, list[int]], log: Path) -> None:
    deadline = time.monotonic() + 600
    while driver.poll() is None and time.monotonic() < deadline and _evaluated(folder) != state:
        time.sleep(0.2)
    time.sleep(1.0)  # the scheduler's decision on that report reaches the experiment state
    assert driver.poll() is None and _evaluated(folder) == state, log.read_text()[-3000:]
    driver.send_signal(signal.SIGKILL)
    driver.wait()


@pytest.mark.timeout(900)
def test_sweep_with_asha_survives_a_killed_driver(embedded_tiny, tmp_path: Path) -> None:
    base, _ = embedded_tiny
    path = tmp_path / "sweep.yaml"
    path.write_text(f"extends: {PRESETS_DIR / 'embedded_npo_dv.yaml'}\n{SWEEP}")
    folder = tmp_path / "out" / "sweep"
    driver = _driver(
        ["--config", str(path), "--name", "sweep", *base, *REDUCED, f"output_dir={folder.parent}"],
        tmp_path,
        "driver.log",
    )
    # The good trial finished, the destructive one stopped by ASHA, the third has reported its first epoch.
    _kill_when(driver, folder, {GOOD: [1, 2], DESTRUCTIVE: [1], RESUMED: [1]}, tmp_path / "driver.log")
    reports = {p: p.stat().st_mtime_ns for p in (folder / "trials").rglob("*_SUMMARY.json")}

    restore = _driver(["--restore", str(folder)], tmp_path, "restore.log")
    assert restore.wait(timeout=600) == 0, (tmp_path / "restore.log").read_text()[-3000:]
    # Restored: the third trial ran its second epoch only; nothing else was trained or evaluated again.
    assert _evaluated(folder) == {GOOD: [1, 2], DESTRUCTIVE: [1], RESUMED: [1, 2]}
    assert {p: p.stat().st_mtime_ns for p in reports} == reports

    rows = json.loads((folder / "results.json").read_text())
    by_lr = {row["point"]["trainer.lr"]: row for row in rows}
    assert {lr: (row["status"], row["epochs_run"]) for lr, row in by_lr.items()} == {
        GOOD: ("finished", 2),
        DESTRUCTIVE: ("stopped", 1),
        RESUMED: ("finished", 2),
    }
    scores = {row["trial_id"]: row["best"].get("eval/score", -math.inf) for row in rows}
    best = rows[0]
    assert best["trial_id"] != by_lr[DESTRUCTIVE]["trial_id"] and scores[best["trial_id"]] == max(
        scores.values()
    )
    exported = json.loads((folder / "best" / "trial.json").read_text())
    assert exported["trial_id"] == best["trial_id"] and (folder / "best" / "model" / "config.json").is_file()
    # A trial's folder is a run folder: the same summary schema as an unlearning run's (tests/test_quickstart.py).
    summary = json.loads((folder / "best" / "summary.json").read_text())
    assert (
        set(summary) == {f.name for f in dataclasses.fields(RunSummary)}
        and summary["best_epoch"] == best["best_epoch"]
    )
    assert summary["mlflow"]["run_id"] == best["mlflow_run_id"]
    assert (
        yaml.safe_load((folder / "best" / "config.yaml").read_text())["trainer"]["lr"]
        == best["point"]["trainer.lr"]
    )
    assert (folder / "pareto.png").read_bytes().startswith(b"\x89PNG")
    assert best["trial_id"] in (folder / "results.md").read_text().splitlines()[2]

    state = json.loads((folder / "sweep_state.json").read_text())
    client = MlflowClient(state["tracking_uri"])
    parent = client.get_run(state["parent_run_id"])
    assert parent.info.status == "FINISHED" and parent.data.tags["best_trial"] == best["trial_id"]
    assert {"pareto.png", "results.md", "sweep.yaml", "best"} <= {
        a.path for a in client.list_artifacts(parent.info.run_id)
    }
    children = client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
    )
    assert sorted(c.data.tags["tune_trial_id"] for c in children) == sorted(scores)  # one run per trial
    for child in children:
        row = next(r for r in rows if r["trial_id"] == child.data.tags["tune_trial_id"])
        assert child.info.status == "FINISHED" and child.data.tags["tune_status"] == row["status"]
        assert len(client.get_metric_history(child.info.run_id, "eval/score")) == row["epochs_run"]
        assert len(client.get_metric_history(child.info.run_id, "train/loss")) == 2 * row["epochs_run"]
        assert (child.data.tags.get("early_stopped") == "true") == (row["status"] == "stopped")


@pytest.mark.timeout(600)
def test_muse_sweep_ranks_trials_by_the_muse_objective(embedded_muse_tiny, tmp_path: Path) -> None:
    from baldro_ray.eval.objective import combined_score
    from baldro_ray.tune.space import load_sweep
    from baldro_ray.tune.sweep import run_sweep

    base, _ = embedded_muse_tiny
    path = tmp_path / "sweep.yaml"
    path.write_text(
        f"extends: {PRESETS_DIR / 'embedded_muse_npo_dv.yaml'}\n"
        "sweep:\n  search: grid\n  scheduler: fifo\n"
        "  space:\n    method.dro.temperature: {type: grid, values: [-1.0, 1.0]}\n"
    )
    overrides = [
        *base,
        *REDUCED[:3],
        "trainer.epochs=1",
        "tracking.log_model=false",
        f"output_dir={tmp_path}",
    ]
    sweep = load_sweep(path, overrides)
    outcome = run_sweep(sweep, "muse-sweep", log=lambda _: None)
    assert [row.status for row in outcome.rows] == ["finished", "finished"]
    scores = [row.score for row in outcome.rows]
    assert scores == sorted(scores, reverse=True) and all(math.isfinite(s) for s in scores)
    for row in outcome.rows:
        # the objective Tune ranked by is MUSE's, recomputed from the trial's own MUSE report
        report = outcome.folder / "trials" / row.trial_id / "epochs" / "epoch_01" / "MUSE_EVAL.json"
        result = json.loads(report.read_text())
        assert row.score == pytest.approx(combined_score(result, sweep.base_config().evaluation), rel=1e-12)
        privleak, knowmem = result["privleak"]["agg_value"], result["retain_knowmem_ROUGE"]["agg_value"]
        assert row.best["eval/forget_term"] == pytest.approx(1 - min(1.0, abs(privleak) / 100))
        assert row.best["eval/utility_term"] == pytest.approx(knowmem)
    header = outcome.table.splitlines()[0]
    assert "privleak" in header and "knowmem retain" in header and "forget quality" not in header
    assert outcome.pareto is not None and outcome.pareto.read_bytes().startswith(b"\x89PNG")
