"""BalDRO-DV and BalDRO-G against float64 hand implementations: values, gradients, weights, stability."""

from __future__ import annotations

import math

import pytest
import torch

from baldro_ray.objectives import (
    dro_weights,
    dv_aggregate,
    group_select,
    group_size,
    group_weights,
    weight_diagnostics,
)
from tests.objectives.reference_math import reference_dv, softmax, textbook_dv

LOSSES = [13.9, 6.9, 0.5, 2.25, 9.0]


@pytest.mark.parametrize("tau", [0.5, 1.0, 2.0, 5.0, 10.0])
def test_negative_temperature_is_the_reference_dv_form(tau: float) -> None:
    losses = torch.tensor(LOSSES, dtype=torch.float64)
    assert float(dv_aggregate(losses, -tau)) == pytest.approx(reference_dv(LOSSES, tau), rel=1e-12)


@pytest.mark.parametrize("tau", [0.5, 1.0, 10.0])
def test_positive_temperature_is_the_textbook_worst_case(tau: float) -> None:
    losses = torch.tensor(LOSSES, dtype=torch.float64)
    assert float(dv_aggregate(losses, tau)) == pytest.approx(textbook_dv(LOSSES, tau), rel=1e-12)


@pytest.mark.parametrize("t", [-0.5, -1.0, -10.0, 0.5, 3.0])
def test_dv_gradient_equals_dro_weights(t: float) -> None:
    losses = torch.tensor(LOSSES, dtype=torch.float64, requires_grad=True)
    dv_aggregate(losses, t).backward()
    want = softmax([x / t for x in LOSSES])
    assert losses.grad.tolist() == pytest.approx(want, rel=1e-12, abs=1e-300)
    assert dro_weights(losses, t).tolist() == pytest.approx(want, rel=1e-12, abs=1e-300)


def test_spec_example_weights_of_the_reference_form() -> None:
    weights = dro_weights(torch.tensor([13.9, 6.9, 0.5]), -1.0)
    assert [round(w, 3) for w in weights.tolist()] == [0.0, 0.002, 0.998]


def test_stable_for_huge_losses_in_float32() -> None:
    losses = torch.tensor([1e4, 1e4 + 1.0, 3.0, 5e3], dtype=torch.float32, requires_grad=True)
    for t in (0.5, -0.5):
        value = dv_aggregate(losses, t)
        (grad,) = torch.autograd.grad(value, losses)
        weights = dro_weights(losses, t)
        assert value.dtype == torch.float32 and weights.dtype == torch.float32
        assert torch.isfinite(value) and torch.isfinite(grad).all() and torch.isfinite(weights).all()
    # t = +0.5: dominated by the two largest; closed form 1e4 + 1 + 0.5 * (log(1 + e^-2) - log 4)
    assert float(dv_aggregate(losses.detach(), 0.5)) == pytest.approx(
        1e4 + 1 + 0.5 * (math.log1p(math.exp(-2)) - math.log(4))
    )
    # t = -0.5: the minimum 3.0 dominates: 3 - 0.5 * (-log 4)
    assert float(dv_aggregate(losses.detach(), -0.5)) == pytest.approx(3.0 + 0.5 * math.log(4), rel=1e-6)
    # the reference's own formula underflows to log(0) here: the reason to use logsumexp
    with pytest.raises(ValueError):
        reference_dv([1e4, 1e4 + 1.0, 5e3], 0.5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_large_temperature_approaches_the_mean(dtype: torch.dtype) -> None:
    losses = torch.tensor(LOSSES, dtype=dtype)
    values = losses.double().tolist()
    n = len(values)
    mean = sum(values) / n
    k2 = sum((x - mean) ** 2 for x in values) / n
    k3 = sum((x - mean) ** 3 for x in values) / n
    for magnitude in (1e5, 1e8, 1e12):
        for t in (magnitude, -magnitude):
            # cumulant expansion t*log E[exp(l/t)] = k1 + k2/(2t) + k3/(6t^2) + O(t^-3)
            want = mean + k2 / (2 * t) + k3 / (6 * t * t)
            rel = 1e-12 if dtype == torch.float64 else 1e-7
            assert float(dv_aggregate(losses, t)) == pytest.approx(want, rel=rel)
    assert float(dv_aggregate(losses, math.inf)) == pytest.approx(mean, rel=1e-7)
    assert float(dv_aggregate(losses, None)) == pytest.approx(mean, rel=1e-7)
    assert dro_weights(losses, None).tolist() == pytest.approx([0.2] * 5)


def test_dv_lies_between_min_and_max_and_is_monotone_in_t() -> None:
    losses = torch.tensor(LOSSES, dtype=torch.float64)
    values = [float(dv_aggregate(losses, t)) for t in (-0.1, -1.0, -10.0, None, 10.0, 1.0, 0.1)]
    assert min(LOSSES) <= values[0] and values[-1] <= max(LOSSES)
    assert values == sorted(values)


@pytest.mark.parametrize("bad", [0.0, math.nan])
def test_zero_or_nan_temperature_is_an_error(bad: float) -> None:
    with pytest.raises(ValueError, match="non-zero"):
        dv_aggregate(torch.ones(3), bad)
    with pytest.raises(ValueError, match="non-zero"):
        dro_weights(torch.ones(3), bad)


@pytest.mark.parametrize(
    ("losses", "match"),
    [(torch.ones(0), "empty batch"), (torch.ones(2, 2), "1-D"), (torch.tensor([1.0, math.inf]), "finite")],
)
def test_bad_loss_vectors(losses: torch.Tensor, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        dv_aggregate(losses, -1.0)


@pytest.mark.parametrize(
    ("batch", "ratio", "k"), [(8, 0.5, 4), (5, 0.5, 2), (3, 0.1, 1), (1, 0.5, 1), (7, 1.0, 7), (10, 0.29, 2)]
)
def test_group_size_is_max_one_floor(batch: int, ratio: float, k: int) -> None:
    assert group_size(batch, ratio) == k == max(1, math.floor(batch * ratio))


def test_group_select_takes_the_hardest_with_lowest_index_ties() -> None:
    # hardness = -average NLL: the lowest NLL samples are the hardest
    avg_nll = torch.tensor([0.9, 0.2, 0.5, 0.2, 3.0, 0.5, 0.2, 1.0])
    assert group_select(-avg_nll, 0.5).tolist() == [1, 2, 3, 6]  # 0.2 x3, then the first 0.5 (index 2, not 5)
    assert group_select(-avg_nll, 0.25).tolist() == [1, 3]  # three tied at 0.2: the lowest two indices
    assert group_select(torch.zeros(6), 0.5).tolist() == [0, 1, 2]
    assert group_select(-avg_nll, 1.0).tolist() == list(range(8))


def test_group_select_has_no_gradient_and_group_weights_are_uniform_on_the_subset() -> None:
    hardness = torch.tensor([1.0, 3.0, 2.0], requires_grad=True)
    picked = group_select(hardness, 0.67)
    assert not picked.requires_grad and picked.dtype == torch.long and picked.tolist() == [1, 2]
    assert group_weights(3, picked).tolist() == [0.0, 0.5, 0.5]


@pytest.mark.parametrize("ratio", [0.0, -0.5, 1.5])
def test_group_ratio_out_of_range(ratio: float) -> None:
    with pytest.raises(ValueError, match=r"sampling_ratio must be in \(0, 1\]"):
        group_select(torch.ones(4), ratio)


def test_weight_diagnostics_against_hand_values() -> None:
    w = [0.5, 0.25, 0.25, 0.0]
    diag = weight_diagnostics(torch.tensor(w))
    assert diag.effective_sample_size == pytest.approx(1 / (0.25 + 0.0625 + 0.0625))
    assert diag.entropy == pytest.approx(-(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25)))
    assert diag.max_weight == 0.5
    assert diag.top_indices == (0, 1, 2, 3)
    uniform = weight_diagnostics(torch.full((8,), 1 / 8), top=3)
    assert uniform.effective_sample_size == pytest.approx(8) and uniform.entropy == pytest.approx(math.log(8))
    assert uniform.top_indices == (0, 1, 2)
