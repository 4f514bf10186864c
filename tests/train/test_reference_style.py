"""The reference-style step of the benchmarks (benchmarks/reference_style.py) computes our objective at the
reference's cost: equal loss and gradient to ``run_step`` in float64 where the two aggregate the same rows (one
micro-batch in one process; several micro-batches under ``scope=local``), and the forward passes it is meant to
spend. No Ray."""

from __future__ import annotations

import copy
import dataclasses
import math

import pytest
import torch

from baldro_ray.models.tiny import TinyModelSpec, build_tiny_llama
from baldro_ray.objectives import Aggregation, dv_aggregate
from benchmarks.reference_style import (
    add_reference_nll,
    compare_with_run_step,
    count_forwards,
    our_step,
    reference_dv,
    reference_style_step,
)
from benchmarks.step_benchmark import Vocabulary, step_config, synthetic_batch

TOLERANCE = 1e-9
VOCAB = 80


@pytest.fixture(scope="module")
def models() -> tuple[torch.nn.Module, torch.nn.Module]:
    """A float64 tiny Llama and a reference model 1% away from it (so NPO's log-ratios are not zero)."""
    spec = TinyModelSpec(hidden_size=16, intermediate_size=32, num_layers=2, num_heads=2, num_kv_heads=2)
    model = build_tiny_llama(spec, Vocabulary(VOCAB), seed=0).double()
    ref = copy.deepcopy(model).eval().requires_grad_(False)
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        for p in ref.parameters():
            p.add_(0.01 * torch.randn_like(p) * p.abs().mean())
    return model, ref


def pair(seed: int, rows: int = 6, first_index: int = 0) -> tuple[dict, dict]:
    return (
        synthetic_batch(rows, 24, VOCAB, 2 * seed + 1, first_index),
        synthetic_batch(rows, 24, VOCAB, 2 * seed + 2, first_index),
    )


CASES = [
    (f, a, t)
    for f in ("NPO", "SimNPO", "SatImp", "GradDiff")
    for a in ("mean", "group", "dv")
    for t in ((-1.0, 2.0) if a == "dv" else (-1.0,))  # DV in the reference form and the textbook form
]


@pytest.mark.parametrize(
    ("forget_loss", "aggregation", "temperature"), CASES, ids=[f"{f}-{a}-t{t:+g}" for f, a, t in CASES]
)
def test_one_micro_batch_gives_our_loss_and_gradient(
    models, forget_loss: str, aggregation: str, temperature: float
) -> None:
    model, ref = models
    cfg = step_config(forget_loss, aggregation, temperature=temperature)
    a = compare_with_run_step(model, ref, [pair(0)], cfg, step_id=3)
    assert math.isfinite(a.loss_ours) and a.loss_ours != 0.0
    assert a.loss_difference <= TOLERANCE * max(1.0, abs(a.loss_ours))
    assert a.gradient_difference <= TOLERANCE


@pytest.mark.parametrize(
    "change",
    [
        {"retain_loss_type": "KL"},
        {"retain_reduction": "sequence_sum_mean"},
        {"retain_loss_type": None, "forget_loss": "GA"},
        {"aggregation": Aggregation.group(0.3)},
    ],
    ids=["kl-retain", "sequence-sum-retain", "ga-forget-only", "g-ratio-0.3"],
)
def test_retain_variants_and_g_ratio_agree(models, change: dict) -> None:
    model, ref = models
    cfg = dataclasses.replace(step_config("NPO", "dv"), **change)
    forget, retain = pair(1)
    a = compare_with_run_step(model, ref, [(forget, None if cfg.retain_loss_type is None else retain)], cfg)
    assert a.loss_difference <= TOLERANCE * max(1.0, abs(a.loss_ours))
    assert a.gradient_difference <= TOLERANCE


@pytest.mark.parametrize("aggregation", ["group", "dv"])
def test_several_micro_batches_agree_under_the_local_scope(models, aggregation: str) -> None:
    """The reference aggregates per micro-batch: so does ours with scope=local (with scope=global it does not,
    by design)."""
    model, ref = models
    cfg = dataclasses.replace(step_config("NPO", aggregation), scope="local")
    micro = [pair(2, rows=4), pair(3, rows=4, first_index=4)]
    a = compare_with_run_step(model, ref, micro, cfg, step_id=1)
    assert a.loss_difference <= TOLERANCE * max(1.0, abs(a.loss_ours))
    assert a.gradient_difference <= TOLERANCE
    global_scope = compare_with_run_step(
        model, ref, micro, dataclasses.replace(cfg, scope="global"), step_id=1
    )
    assert global_scope.loss_difference > 1e-6


@pytest.mark.parametrize(
    ("forget_loss", "aggregation", "ours", "reference_style"),
    [
        ("NPO", "mean", 1, 3),  # reference model forward; separate forget and retain forwards
        ("NPO", "dv", 1, 3),
        ("NPO", "group", 2, 4),  # G: hardness forward (ours without graph) + the selected rows
        ("SimNPO", "mean", 1, 2),
        ("SimNPO", "group", 2, 3),
        ("SatImp", "dv", 1, 2),
    ],
)
def test_forward_passes_per_step(
    models, forget_loss: str, aggregation: str, ours: int, reference_style: int
) -> None:
    model, ref = models
    cfg = step_config(forget_loss, aggregation)
    forget, retain = pair(4)
    add_reference_nll(ref, [forget])  # ours reads the score cached before training
    with count_forwards(model, ref) as counts:
        our_step(model, lambda loss: loss.backward(), [(forget, retain)], cfg, 0)
    assert sum(counts) == ours and counts[1] == 0  # ours never forwards the reference model (NLL retain)
    with count_forwards(model, ref) as counts:
        reference_style_step(model, lambda loss: loss.backward(), [(forget, retain)], cfg, 0, ref)
    assert sum(counts) == reference_style
    model.zero_grad(set_to_none=True)


def test_reference_dv_is_the_written_out_form_and_underflows() -> None:
    losses = torch.tensor([13.1, 12.7, 14.2, 9.3], dtype=torch.float64)
    assert float(reference_dv(losses, -1.0)) == pytest.approx(
        -math.log(sum(math.exp(-x) for x in losses) / 4)
    )
    assert float(reference_dv(losses, -1.0)) == pytest.approx(float(dv_aggregate(losses, -1.0)), rel=1e-12)
    far = torch.tensor([120.0, 150.0], dtype=torch.float32)  # exp(-l) underflows in float32
    assert math.isinf(float(reference_dv(far, -1.0)))
    assert math.isfinite(float(dv_aggregate(far, -1.0)))
