"""Aggregation objects: one parameter per type, weights and values against float64 formulas."""

from __future__ import annotations

import math

import pytest
import torch

from baldro_ray.config import load_config
from baldro_ray.objectives import Aggregation

LOSSES = [0.3, 1.7, -0.4, 2.5]


def test_each_type_keeps_only_its_own_parameter() -> None:
    assert Aggregation.of("mean", -1.0, 0.5) == Aggregation.mean()
    assert Aggregation.of("group", -1.0, 0.25) == Aggregation("group", sampling_ratio=0.25)
    assert Aggregation.of("dv", -2.0, 0.25) == Aggregation("dv", temperature=-2.0)
    assert Aggregation.mean().params() == {"type": "mean"}
    assert Aggregation.group(0.25).params() == {"type": "group", "sampling_ratio": 0.25}
    assert Aggregation.dv(-2.0).params() == {"type": "dv", "temperature": -2.0}
    assert [a.selects for a in (Aggregation.mean(), Aggregation.group(0.5), Aggregation.dv(1.0))] == [
        False,
        True,
        False,
    ]


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda: Aggregation("mean", temperature=-1.0), "has no temperature"),
        (lambda: Aggregation("dv", temperature=-1.0, sampling_ratio=0.5), "BalDRO-G's alone"),
        (lambda: Aggregation("group"), "BalDRO-G's alone"),
        (lambda: Aggregation.group(1.5), r"must be in \(0, 1\]"),
        (lambda: Aggregation.dv(0.0), "non-zero"),
        (lambda: Aggregation("worst"), "unknown aggregation"),  # type: ignore[arg-type]
    ],
)
def test_inconsistent_aggregations_are_rejected(build, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        build()


@pytest.mark.parametrize("temperature", [-1.0, 0.5, 3.0])
def test_dv_value_and_weights_are_the_signed_log_mean_exp(temperature: float) -> None:
    units = torch.tensor(LOSSES, dtype=torch.float64)
    z = [x / temperature for x in LOSSES]
    value = temperature * (math.log(sum(math.exp(v) for v in z)) - math.log(len(z)))
    weights = [math.exp(v) / sum(math.exp(u) for u in z) for v in z]
    aggregation = Aggregation.dv(temperature)
    assert float(aggregation.value(units)) == pytest.approx(value, rel=1e-12)
    assert aggregation.weights(units).tolist() == pytest.approx(weights, rel=1e-12)


@pytest.mark.parametrize("aggregation", [Aggregation.mean(), Aggregation.group(0.5), Aggregation.dv(None)])
def test_mean_and_group_weigh_their_units_uniformly(aggregation: Aggregation) -> None:
    units = torch.tensor(LOSSES, dtype=torch.float64)
    assert float(aggregation.value(units)) == pytest.approx(sum(LOSSES) / 4, rel=1e-15)
    assert aggregation.weights(units).tolist() == [0.25] * 4


def test_only_dv_weighs_by_a_softmax_of_values() -> None:
    """What the step reads to pick its pass: uniform weights need no values, softmax ones accumulate online."""
    kinds = [Aggregation.mean(), Aggregation.group(0.5), Aggregation.dv(-1.0), Aggregation.dv(2.0)]
    assert [(a.uniform, a.softmax, a.selects) for a in kinds] == [
        (True, False, False),
        (True, False, True),
        (False, True, False),
        (False, True, False),
    ]


def test_the_config_builds_the_aggregations_it_names() -> None:
    dro = load_config(None, ["method.dro.type=group", "method.dro.sampling_ratio=0.3"]).method.dro
    assert dro.aggregation() == Aggregation.group(0.3) and dro.retain_aggregation() is None
    dro = load_config(None, ["method.dro.type=dv", "method.dro.retain_dro=true"]).method.dro
    assert dro.aggregation() == Aggregation.dv(-1.0) == dro.retain_aggregation()
