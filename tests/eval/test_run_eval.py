"""Run-level evaluation on the reduced embedded benchmark, on the shared Ray cluster: cached retain and target
references, forget quality of the target against the retain model, 1 vs 2 replicas, open-unlearning retain logs,
and ``baldro-ray eval``."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from scipy import stats

from baldro_ray.cli import main
from baldro_ray.config import ConfigError, load_config
from baldro_ray.eval.evaluate import (
    evaluate_models,
    plan_evaluation,
    references,
    relative_to_retain,
)
from baldro_ray.eval.tofu import forget_truth_ratios
from baldro_ray.run_folder import BALANCE_FILE

pytestmark = [pytest.mark.ray]


def _plan(embedded_tiny: tuple[list[str], Any], *overrides: str) -> Any:
    base, assets = embedded_tiny
    config = load_config(overrides=[*base, "evaluation.max_new_tokens=16", *overrides])
    return plan_evaluation(config, str(assets.data_dir), str(assets.retain_model))


@pytest.fixture(scope="module")
def refs(embedded_tiny: tuple[list[str], Any]) -> Any:
    return references(_plan(embedded_tiny), str(embedded_tiny[1].target_model), log=lambda _: None)


@pytest.mark.timeout(300)
def test_target_against_retain(refs: Any, embedded_tiny: tuple[list[str], Any]) -> None:
    itself = relative_to_retain(refs.retain, refs.retain)["forget_quality"]
    assert itself == {"agg_value": 1.0, "statistic": 0.0, "log10_pvalue": 0.0}
    fq = refs.target["forget_quality"]
    expected = stats.ks_2samp(forget_truth_ratios(refs.target), forget_truth_ratios(refs.retain))
    assert fq["agg_value"] == pytest.approx(expected.pvalue) and fq["statistic"] == pytest.approx(
        expected.statistic
    )
    # The target memorised the forget authors, the retain model never saw them. (With 6 forget rows the KS test
    # cannot reach 0.05 here; on the default embedded benchmark, 80 rows, it gives 1.8e-11: docs/evaluation.md.)
    assert fq["agg_value"] < 1.0
    prob = {
        name: r["forget_Q_A_Prob"]["agg_value"]
        for name, r in (("target", refs.target), ("retain", refs.retain))
    }
    assert prob["target"] > 2 * prob["retain"]
    # Model utility of target and retain is close on the default benchmark (0.720 and 0.682); this reduced one
    # trains the retain model on fewer steps, so only the forget side is compared here.
    # Cached: a second call evaluates nothing.
    logs: list[str] = []
    again = references(_plan(embedded_tiny), str(embedded_tiny[1].target_model), log=logs.append)
    assert len(logs) == 2 and all("cached" in line for line in logs)
    assert json.dumps(again.target, sort_keys=True) == json.dumps(refs.target, sort_keys=True)


@pytest.mark.timeout(300)
def test_two_replicas_give_identical_results(refs: Any, embedded_tiny: tuple[list[str], Any]) -> None:
    (two,) = evaluate_models(
        _plan(embedded_tiny, "evaluation.replicas=2"), [str(embedded_tiny[1].target_model)]
    )
    two = relative_to_retain(two, refs.retain)
    assert json.dumps(two, sort_keys=True) == json.dumps(refs.target, sort_keys=True)


def _open_unlearning_logs(truth_ratios: list[float], auc: float) -> dict[str, Any]:
    """A retain model's TOFU_EVAL.json as open-unlearning writes it (only the entries we read, plus one more)."""
    return {
        "forget_truth_ratio": {
            "agg_value": sum(min(t, 1 / t) for t in truth_ratios) / len(truth_ratios),
            "value_by_index": {str(i): {"score": t} for i, t in enumerate(truth_ratios)},
        },
        "mia_min_k": {"agg_value": auc},
        "forget_Q_A_Prob": {"agg_value": 0.1, "value_by_index": {"0": {"prob": 0.1, "avg_loss": 2.3}}},
    }


@pytest.mark.timeout(300)
def test_open_unlearning_retain_logs(refs: Any, embedded_tiny: tuple[list[str], Any], tmp_path: Path) -> None:
    ratios = [0.5 + 0.1 * i for i in range(12)]
    logs = tmp_path / "TOFU_EVAL.json"
    logs.write_text(json.dumps(_open_unlearning_logs(ratios, 0.6)))
    plan = _plan(embedded_tiny, f"evaluation.retain_logs_path={logs}")
    result = relative_to_retain(refs.target, references(plan, None).retain)
    expected = stats.ks_2samp(forget_truth_ratios(refs.target), ratios)
    assert result["forget_quality"]["agg_value"] == pytest.approx(expected.pvalue)
    auc = refs.target["mia_min_k"]["agg_value"]
    assert result["privleak"]["agg_value"] == pytest.approx(((1 - auc) - 0.4) / 0.4 * 100)

    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"forget_truth_ratio": {"value_by_index": {"0": {"score": "high"}}}}))
    with pytest.raises(ConfigError, match=r"evaluation.retain_logs_path: .*bad.json.*value_by_index.0.score"):
        _plan(embedded_tiny, f"evaluation.retain_logs_path={bad}")


def test_missing_benchmark_subset_fails_before_evaluating(tmp_path: Path) -> None:
    for split in (
        "forget10",
        "holdout10",
    ):  # the configured splits exist; the benchmark's other subsets do not
        (tmp_path / f"{split}.json").write_text('{"question": "q?", "answer": "a."}\n')
    config = load_config(overrides=["data.source=tofu", f"data.location={tmp_path}"])
    with pytest.raises(ConfigError, match=r"(?s)forget10_perturbed.*evaluation.enabled=false"):
        plan_evaluation(config, config.data.location)


def test_missing_retain_model_fails_before_evaluating(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model"
    config = load_config(
        overrides=["data.source=tofu", f"data.location={tmp_path}", f"evaluation.retain_model={missing}"]
    )
    with pytest.raises(ConfigError, match=f"evaluation.retain_model '{missing}' does not exist"):
        plan_evaluation(config, config.data.location)


@pytest.mark.timeout(300)
@pytest.mark.usefixtures("cli_console")
def test_cli_eval_writes_the_report(refs: Any, embedded_tiny: tuple[list[str], Any], tmp_path: Path) -> None:
    base, assets = embedded_tiny
    out = tmp_path / "report"
    args = [
        "eval",
        "--model",
        str(assets.target_model),
        "--out",
        str(out),
        *base,
        "evaluation.max_new_tokens=16",
    ]
    assert main(args) == 0
    written = json.loads((out / "TOFU_EVAL.json").read_text())
    assert json.dumps(written, sort_keys=True) == json.dumps(
        json.loads(json.dumps(refs.target)), sort_keys=True
    )
    summary = json.loads((out / "TOFU_SUMMARY.json").read_text())
    assert summary["forget_quality"] == refs.target["forget_quality"]["agg_value"]
    balance = json.loads((out / BALANCE_FILE).read_text())
    assert balance["progress_mean"] == 0.0  # the target against itself has not moved
    assert set(balance["by_difficulty"]) == set(_plan(embedded_tiny).difficulty)
    assert not math.isnan(balance["still_memorised"])
