"""The method registry: forget loss x aggregation x retain loss, against the reference's batch formulas."""

from __future__ import annotations

import math

import pytest
import torch

from baldro_ray.objectives import (
    FORGET_LOSSES,
    Aggregation,
    ForgetBatch,
    g_hardness,
    get_forget_loss,
    register_forget_loss,
    token_nll,
)
from tests.objectives.reference_math import log_sigmoid, naive_sequence_nll, naive_token_nll, reference_dv
from tests.objectives.test_nll import padded_batch

HP = {"beta": 0.1, "delta": 0.0, "beta1": 5.0, "beta2": 1.0}


def batch(seed: int = 0) -> tuple[ForgetBatch, list[float], list[int], list[float]]:
    logits, labels = padded_batch(seed)
    sums, counts = naive_sequence_nll(logits.tolist(), labels.tolist())
    ref = [s + d for s, d in zip(sums, (-2.0, 1.0, 4.0))]
    forget = ForgetBatch(token_nll(logits, labels), torch.tensor(ref, dtype=torch.float64))
    return forget, sums, counts, ref


def test_ga_mean_is_the_reference_batch_token_mean() -> None:
    forget, sums, counts, _ = batch()
    units = get_forget_loss("GA").units(forget, HP)
    assert float(Aggregation.mean().value(units)) == pytest.approx(-sum(sums) / sum(counts), rel=1e-12)
    assert get_forget_loss("GA").uses_retain is False and get_forget_loss("GradDiff").uses_retain is True


def test_npo_dv_equals_reference_drnpo() -> None:
    forget, sums, _, ref = batch(1)
    units = get_forget_loss("NPO").units(forget, HP)
    per_sample = [-(2 / 0.1) * log_sigmoid(-0.1 * (r - s)) for s, r in zip(sums, ref)]
    assert units.tolist() == pytest.approx(per_sample, rel=1e-12)
    assert float(Aggregation.dv(-1.0).value(units)) == pytest.approx(reference_dv(per_sample, 1.0), rel=1e-12)
    assert float(Aggregation.mean().value(units)) == pytest.approx(sum(per_sample) / 3, rel=1e-12)


def test_simnpo_units_use_average_nll() -> None:
    forget, sums, counts, _ = batch(2)
    units = get_forget_loss("SimNPO").units(forget, {**HP, "beta": 4.5, "delta": 1.0})
    want = [-(2 / 4.5) * log_sigmoid(4.5 * (s / n - 1.0)) for s, n in zip(sums, counts)]
    assert units.tolist() == pytest.approx(want, rel=1e-12)


def test_satimp_is_token_level_and_drsatimp_applies_dv_to_tokens() -> None:
    logits, labels = padded_batch(3)
    forget = ForgetBatch(token_nll(logits, labels))
    ce = naive_token_nll(logits.tolist(), labels.tolist())
    tokens = [-(math.exp(-c) ** 5) * (1 - math.exp(-c)) * c for c in ce]
    units = get_forget_loss("SatImp").units(forget, HP)
    assert float(Aggregation.mean().value(units)) == pytest.approx(sum(tokens) / len(tokens), rel=1e-12)
    assert float(Aggregation.dv(-2.0).value(units)) == pytest.approx(reference_dv(tokens, 2.0), rel=1e-12)
    weights = Aggregation.dv(-2.0).weights(units)
    want = [math.exp(-t / 2.0) for t in tokens]
    assert weights.tolist() == pytest.approx([w / sum(want) for w in want], rel=1e-12)


def test_g_hardness_is_minus_average_nll() -> None:
    forget, sums, counts, _ = batch(4)
    assert g_hardness(forget.tokens).tolist() == pytest.approx(
        [-s / n for s, n in zip(sums, counts)], rel=1e-12
    )


def test_npo_without_reference_and_missing_hyperparameter_are_errors() -> None:
    forget, *_ = batch()
    with pytest.raises(ValueError, match="needs the reference NLL"):
        get_forget_loss("NPO").units(ForgetBatch(forget.tokens), HP)
    with pytest.raises(ValueError, match=r"needs hyperparameters \['delta'\]"):
        get_forget_loss("SimNPO").units(forget, {"beta": 4.5})


def test_unknown_method_suggests_the_closest() -> None:
    with pytest.raises(ValueError, match="did you mean 'SimNPO'"):
        get_forget_loss("SimNPo")
    with pytest.raises(ValueError, match="unknown aggregation"):
        Aggregation("worst")  # type: ignore[arg-type]


def test_users_can_register_a_forget_loss() -> None:
    name = "SquaredAscent_test"
    try:

        @register_forget_loss(name, granularity="sample", hyperparameters=("beta",), defaults={"beta": 2.0})
        def squared(batch: ForgetBatch, beta: float) -> torch.Tensor:
            nll_sum, n_tokens = batch.tokens.per_sequence()
            return -beta * (nll_sum / n_tokens) ** 2

        forget, sums, counts, _ = batch()
        units = get_forget_loss(name).units(forget, {"beta": 2.0})
        assert units.tolist() == pytest.approx([-2.0 * (s / n) ** 2 for s, n in zip(sums, counts)], rel=1e-12)
        with pytest.raises(ValueError, match="already registered"):
            register_forget_loss(name, granularity="sample")(squared)
    finally:
        FORGET_LOSSES.pop(name, None)
