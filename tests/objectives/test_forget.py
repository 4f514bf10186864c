"""GA / NPO / SimNPO / SatImp against hand formulas in float64, values and gradients."""

from __future__ import annotations

import math

import pytest
import torch

from baldro_ray.objectives import average_nll, npo_loss, satimp_token_losses, simnpo_loss
from tests.objectives.reference_math import log_sigmoid, naive_token_nll
from tests.objectives.test_nll import padded_batch

NLL_SUM = [12.0, 3.5, 40.0, 0.25]
REF_NLL_SUM = [12.0, 10.0, 20.0, 0.5]
N_TOKENS = [6, 7, 8, 5]


def tensors(requires_grad: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    s = torch.tensor(NLL_SUM, dtype=torch.float64, requires_grad=requires_grad)
    return s, torch.tensor(REF_NLL_SUM, dtype=torch.float64), torch.tensor(N_TOKENS)


@pytest.mark.parametrize("beta", [0.1, 1.0, 2.5])
def test_npo_loss_values_and_gradient(beta: float) -> None:
    s, ref, _ = tensors(requires_grad=True)
    loss = npo_loss(s, ref, beta)
    want = [-(2 / beta) * log_sigmoid(-beta * (r - x)) for x, r in zip(NLL_SUM, REF_NLL_SUM)]
    assert loss.tolist() == pytest.approx(want, rel=1e-12)
    loss.sum().backward()
    # d/ds [-(2/b) log sigmoid(-b (r - s))] = -(2/b) * (1 - sigmoid(b (s - r))) * b = -2 sigmoid(-b (s - r))
    want_grad = [-2.0 / (1.0 + math.exp(beta * (x - r))) for x, r in zip(NLL_SUM, REF_NLL_SUM)]
    assert s.grad.tolist() == pytest.approx(want_grad, rel=1e-12)


def test_npo_loss_at_the_start_is_two_over_beta_log_two() -> None:
    s = torch.tensor([7.0, 3.0])
    assert npo_loss(s, s.clone(), 0.1).tolist() == pytest.approx([20 * math.log(2)] * 2, rel=1e-6)
    assert 20 * math.log(2) == pytest.approx(13.8629, abs=1e-4)


@pytest.mark.parametrize(("beta", "delta"), [(4.5, 0.0), (3.5, 1.0)])
def test_simnpo_loss_values_and_gradient(beta: float, delta: float) -> None:
    s, _, n = tensors(requires_grad=True)
    loss = simnpo_loss(s, n, beta, delta)
    want = [-(2 / beta) * log_sigmoid(beta * (x / k - delta)) for x, k in zip(NLL_SUM, N_TOKENS)]
    assert loss.tolist() == pytest.approx(want, rel=1e-12)
    loss.sum().backward()
    want_grad = [-(2 / k) / (1.0 + math.exp(beta * (x / k - delta))) for x, k in zip(NLL_SUM, N_TOKENS)]
    assert s.grad.tolist() == pytest.approx(want_grad, rel=1e-12)


@pytest.mark.parametrize(("beta1", "beta2"), [(5.0, 1.0), (0.0, 0.0), (1.0, 3.0)])
def test_satimp_token_losses_and_detached_weights(beta1: float, beta2: float) -> None:
    logits, labels = padded_batch(seed=7)
    logits.requires_grad_(True)
    losses = satimp_token_losses(logits, labels, beta1, beta2, chunk_tokens=3)
    ce = naive_token_nll(logits.tolist(), labels.tolist())
    weights = [math.exp(-c) ** beta1 * (1 - math.exp(-c)) ** beta2 for c in ce]
    assert losses.tolist() == pytest.approx([-w * c for w, c in zip(weights, ce)], rel=1e-12)
    # weights are constants: the gradient is the weighted gradient of -CE
    losses.sum().backward()
    ref_logits = logits.detach().clone().requires_grad_(True)
    plain = satimp_token_losses(ref_logits, labels, 0.0, 0.0)  # = -CE per token
    (plain * torch.tensor(weights, dtype=torch.float64)).sum().backward()
    assert torch.allclose(logits.grad, ref_logits.grad, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: npo_loss(torch.ones(2), torch.ones(3), 0.1), "does not match"),
        (lambda: npo_loss(torch.ones(2), torch.ones(2), 0.0), "beta must be > 0"),
        (
            lambda: simnpo_loss(torch.ones(2), torch.tensor([3, 0]), 4.5, 0.0),
            r"samples \[1\] have no labelled",
        ),
        (lambda: average_nll(torch.ones(0), torch.ones(0, dtype=torch.long)), "empty batch"),
        (
            lambda: satimp_token_losses(torch.zeros(1, 3, 4), torch.full((1, 3), -100), 5.0, 1.0),
            "no labelled token",
        ),
    ],
)
def test_invalid_inputs_raise_clear_errors(call, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        call()
