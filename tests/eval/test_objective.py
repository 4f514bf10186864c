"""The combined forget/utility objective against values worked out by hand."""

from __future__ import annotations

import math

import pytest

from baldro_ray.config import ConfigError, EvaluationConfig, load_config
from baldro_ray.eval.objective import combined_score, objective_terms

TOFU = {"forget_quality": {"agg_value": 0.01, "statistic": 0.36}, "model_utility": {"agg_value": 0.49}}
MUSE = {"privleak": {"agg_value": -25.0}, "retain_knowmem_ROUGE": {"agg_value": 0.4}}


def evaluation(**values: object) -> EvaluationConfig:
    return EvaluationConfig(**values)


def test_terms_of_tofu_and_muse_results() -> None:
    assert objective_terms(TOFU) == pytest.approx((0.64, 0.49))
    assert objective_terms(MUSE) == pytest.approx((0.75, 0.4))
    assert objective_terms({"privleak": {"agg_value": 250.0}})[0] == 0.0
    assert all(math.isnan(t) for t in objective_terms({}))


def test_geometric_mean_is_the_default_and_weighted() -> None:
    assert combined_score(TOFU, evaluation()) == pytest.approx(math.sqrt(0.64 * 0.49))  # 0.56
    weighted = combined_score(TOFU, evaluation(forget_weight=3.0, utility_weight=1.0))
    assert weighted == pytest.approx((0.64**3 * 0.49) ** 0.25)
    destroyed = {**TOFU, "model_utility": {"agg_value": 0.0}}
    assert combined_score(destroyed, evaluation()) == 0.0
    assert combined_score(destroyed, evaluation(utility_weight=0.0)) == pytest.approx(0.64)
    assert combined_score(MUSE, evaluation()) == pytest.approx(math.sqrt(0.75 * 0.4))


def test_arithmetic_mean() -> None:
    assert combined_score(
        TOFU, evaluation(objective="arithmetic", forget_weight=1.0, utility_weight=3.0)
    ) == (pytest.approx((0.64 + 3 * 0.49) / 4))


def test_utility_at_fq_floor_ranks_every_passing_model_first() -> None:
    floor = evaluation(objective="utility_at_fq_floor", fq_floor=0.05)
    failing = combined_score(TOFU, floor)
    assert failing == pytest.approx(-0.36)
    passing = combined_score({**TOFU, "forget_quality": {"agg_value": 0.2, "statistic": 0.1}}, floor)
    assert passing == pytest.approx(1.49)
    assert combined_score(TOFU, evaluation(objective="utility_at_fq_floor", fq_floor=0.01)) == pytest.approx(
        1.49
    )
    assert math.isnan(combined_score(MUSE, floor))


def test_missing_terms_give_nan() -> None:
    assert math.isnan(combined_score({"model_utility": {"agg_value": 0.5}}, evaluation()))


def test_objective_settings_are_validated() -> None:
    with pytest.raises(ConfigError, match="evaluation.objective"):
        load_config(overrides=["evaluation.objective=harmonic"])
    with pytest.raises(ConfigError, match="cannot both be 0"):
        load_config(overrides=["evaluation.forget_weight=0", "evaluation.utility_weight=0"])
