"""MUSE end to end on the shared Ray cluster: the reduced embedded MUSE-format benchmark's tiny models memorise
their forget articles, and ``baldro-ray unlearn`` (2 workers, 2 epochs) writes every epoch's MUSE report, its
forgetting balance by difficulty, the best model and the MLflow run."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from mlflow import MlflowClient

from baldro_ray.cli import main
from baldro_ray.config import load_config
from baldro_ray.data.readers import read_records
from baldro_ray.embedded import memorisation_report
from baldro_ray.eval.evaluate import references
from baldro_ray.unlearn import resolve_run

pytestmark = [pytest.mark.ray]

MUSE_KEYS = {
    "forget_verbmem_ROUGE",
    "forget_knowmem_ROUGE",
    "retain_knowmem_ROUGE",
    "mia_loss",
    "mia_zlib",
    "mia_min_k",
    "mia_min_k_plus_plus",
    "privleak",
    "extraction_strength",
}


@pytest.mark.timeout(300)
def test_tiny_muse_models_memorise_their_forget_articles(embedded_muse_tiny: tuple[list[str], Any]) -> None:
    _, assets = embedded_muse_tiny
    assert assets.benchmark == "MUSE" and assets.trained == ("base", "target", "retain")
    report = memorisation_report(assets, max_length=64)
    target, retain = report["target"], report["retain"]
    # the target saw the forget articles (the hard ones four times), the retain model saw none of them
    assert target["raw/forget"] > 3 * retain["raw/forget"]
    assert target["raw/forget[hard]"] > target["raw/forget[easy]"]
    assert target["raw/forget"] > 3 * target["raw/holdout"]
    assert retain["raw/retain1"] > 3 * retain["raw/forget"]


@pytest.mark.timeout(600)
@pytest.mark.usefixtures("cli_console")
def test_unlearn_on_embedded_muse_writes_every_epoch_report(
    embedded_muse_tiny: tuple[list[str], Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base, assets = embedded_muse_tiny
    overrides = [*base, "trainer.epochs=2", "trainer.per_device_batch_size=2", f"output_dir={tmp_path}"]
    assert main(["unlearn", "--config", "embedded_muse_npo_dv", "--name", "muse", *overrides]) == 0
    out = capsys.readouterr().out
    assert "epoch 1: verbmem" in out and "epoch 2: verbmem" in out and "forget quality" not in out
    folder = tmp_path / "muse"
    summary = json.loads((folder / "summary.json").read_text())
    assert [e["epoch"] for e in summary["evaluations"]] == [1, 2] and summary["best_epoch"] in (1, 2)
    assert (folder / "best_model" / "config.json").is_file() and (
        folder / "plots" / "epoch_metrics.png"
    ).is_file()

    run = resolve_run(load_config("embedded_muse_npo_dv", overrides), "check", lambda _: None)
    plan = run.eval_plan
    assert plan is not None and plan.benchmark == "MUSE" and plan.difficulty is not None
    refs = references(plan, str(assets.target_model), log=lambda _: None)  # cached by the run
    difficulty = [row["difficulty"] for row in read_records(assets.data_dir / "forget_difficulty.json")]
    forget_texts = len(read_records(assets.data_dir / "privleak" / "forget.json"))
    for evaluation in summary["evaluations"]:
        report = folder / "epochs" / f"epoch_{evaluation['epoch']:02d}"
        result = json.loads((report / "MUSE_EVAL.json").read_text())
        assert set(result) == MUSE_KEYS
        assert (
            json.loads((report / "MUSE_SUMMARY.json").read_text())["privleak"]
            == result["privleak"]["agg_value"]
        )
        assert result["privleak"]["reference"] == "retain model"
        assert evaluation["eval/privleak"] == result["privleak"]["agg_value"]
        assert math.isfinite(evaluation["eval/score"])
        # balance: each forget article's per-token probability, from the target's toward the retain model's
        values = {
            name: [math.exp(entry["score"]) for entry in r["mia_loss"]["value_by_index"].values()]
            for name, r in (("model", result), ("target", refs.target), ("retain", refs.retain))
        }
        progress = [
            (t - m) / (t - r)
            for m, t, r in zip(values["model"], values["target"], values["retain"], strict=True)
        ]
        balance = json.loads((report / "BALANCE.json").read_text())
        assert balance["n"] == forget_texts == len(difficulty)
        assert balance["progress_mean"] == pytest.approx(sum(progress) / len(progress), rel=1e-9)
        for label in ("hard", "easy"):
            part = [p for p, d in zip(progress, difficulty) if d == label]
            assert balance["by_difficulty"][label]["progress_mean"] == pytest.approx(
                sum(part) / len(part), rel=1e-9
            )

    client = MlflowClient(summary["mlflow"]["tracking_uri"])
    run_id = summary["mlflow"]["run_id"]
    assert client.get_run(run_id).info.status == "FINISHED"
    for key in (
        "eval/forget_verbmem_ROUGE",
        "eval/retain_knowmem_ROUGE",
        "eval/privleak",
        "balance/hard/progress_mean",
    ):
        assert len(client.get_metric_history(run_id, key)) == 2, key
