"""Forgetting-balance figures against hand computations."""

from __future__ import annotations

import math

import pytest

from baldro_ray.eval.balance import balance_report, forgetting_progress

TARGET = [0.9, 0.8, 0.9, 0.6, 0.5]
RETAIN = [0.1, 0.2, 0.1, 0.6, 0.3]
MODEL = [0.5, 0.2, 0.0, 0.4, 0.45]


def test_progress_is_the_fraction_of_the_gap_closed() -> None:
    progress = forgetting_progress(MODEL, TARGET, RETAIN)
    assert progress[0] == pytest.approx(0.5)  # halfway from 0.9 to 0.1
    assert progress[1] == pytest.approx(1.0)  # at the retain model
    assert progress[2] == pytest.approx(1.125)  # past it
    assert math.isnan(progress[3])  # target and retain agree: undefined
    assert progress[4] == pytest.approx(0.25)


def test_report_over_the_set_and_by_difficulty() -> None:
    report = balance_report(MODEL, TARGET, RETAIN, difficulty=["hard", "easy", "easy", "hard", "hard"])
    defined = [0.5, 1.0, 1.125, 0.25]
    mean = sum(defined) / 4
    assert report["progress_mean"] == pytest.approx(mean)
    assert report["progress_std"] == pytest.approx(math.sqrt(sum((p - mean) ** 2 for p in defined) / 4))
    # numpy's linear percentiles of [0.25, 0.5, 1.0, 1.125]: q75 = 1.03125, q25 = 0.4375
    assert report["progress_iqr"] == pytest.approx(1.03125 - 0.4375)
    # retain percentiles over [0.1, 0.1, 0.2, 0.3, 0.6]: p90 = 0.48, p10 = 0.1
    assert report["memorised_above"] == pytest.approx(0.48) and report[
        "over_forgotten_below"
    ] == pytest.approx(0.1)
    assert report["still_memorised"] == pytest.approx(1 / 5)  # only 0.5 > 0.48
    assert report["over_forgotten"] == pytest.approx(1 / 5)  # only 0.0 < 0.1
    hard, easy = report["by_difficulty"]["hard"], report["by_difficulty"]["easy"]
    assert hard["n"] == 3 and hard["progress_mean"] == pytest.approx((0.5 + 0.25) / 2)
    assert easy["progress_mean"] == pytest.approx((1.0 + 1.125) / 2) and easy[
        "over_forgotten"
    ] == pytest.approx(0.5)


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (([0.1], [0.2, 0.3], [0.1, 0.1]), "target values has 2 values; expected 1"),
        (([], [], []), "non-empty"),
        (([float("nan")], [0.2], [0.1]), "finite"),
    ],
)
def test_bad_inputs(args, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        forgetting_progress(*args)
    with pytest.raises(ValueError, match="difficulty has 1 labels"):
        balance_report(MODEL, TARGET, RETAIN, difficulty=["hard"])


def _muse_result(mean_nll: list[float]) -> dict:
    """A MUSE result as the evaluator writes it: the LOSS attack's member score is -mean NLL per forget text."""
    return {
        "mia_loss": {
            "agg_value": 0.5,
            "value_by_index": {str(i): {"score": -v} for i, v in enumerate(mean_nll)},
        }
    }


def test_muse_balance_follows_each_forget_text_per_token_probability() -> None:
    from baldro_ray.eval.evaluate import forget_values, forgetting_balance

    model, target, retain = [1.0, 2.5, 0.4, 3.0], [0.2, 0.3, 0.1, 0.5], [2.0, 3.0, 2.5, 2.9]
    assert forget_values(_muse_result(model)) == pytest.approx([math.exp(-v) for v in model], rel=1e-15)
    plan = type("Plan", (), {"difficulty": ("hard", "easy", "hard", "easy")})()
    report = forgetting_balance(plan, _muse_result(model), _muse_result(target), _muse_result(retain))
    progress = [
        (math.exp(-t) - math.exp(-m)) / (math.exp(-t) - math.exp(-r))
        for m, t, r in zip(model, target, retain)
    ]
    assert report["progress_mean"] == pytest.approx(sum(progress) / 4, rel=1e-12)
    assert report["by_difficulty"]["hard"]["progress_mean"] == pytest.approx((progress[0] + progress[2]) / 2)
    assert report["by_difficulty"]["easy"]["n"] == 2
    # TOFU's answer probabilities win when a result has both (its attacks score the forget questions too)
    tofu = {**_muse_result(model), "forget_Q_A_Prob": {"value_by_index": {"0": {"prob": 0.25}}}}
    assert forget_values(tofu) == [0.25]
    assert forget_values({}) is None
