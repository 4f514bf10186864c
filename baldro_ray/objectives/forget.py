"""Forget losses of the base methods NPO, SimNPO and SatImp, one value per sample or per token.

GA (token-level ascent) needs no formula of its own: the registry negates the token NLL.

Lower is more forgotten: the optimiser minimises every function here. The formulas are those of
``docs/method.md#forget-losses``; the per-sample ones take the output of
:func:`~baldro_ray.objectives.nll.sequence_nll`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from baldro_ray.objectives.nll import DEFAULT_CHUNK_TOKENS, average_nll, token_nll


def _check_positive(name: str, value: float) -> None:
    if not value > 0:
        raise ValueError(f"{name} must be > 0; got {value}")


def npo_loss(nll_sum: Tensor, ref_nll_sum: Tensor, beta: float) -> Tensor:
    """NPO per sample: ``-(2/beta) * log sigmoid(-beta * (s_ref_i - s_i))`` (``[B]``).

    Equals ``(2/beta) * log 2`` where the model still equals the reference and falls to 0 as the sample is forgotten.
    """
    _check_positive("beta", beta)
    if nll_sum.shape != ref_nll_sum.shape:
        raise ValueError(
            f"nll_sum shape {tuple(nll_sum.shape)} does not match ref_nll_sum shape {tuple(ref_nll_sum.shape)}"
        )
    if nll_sum.numel() == 0:
        raise ValueError("empty batch: nll_sum has no element")
    log_ratio = ref_nll_sum.to(nll_sum.dtype) - nll_sum  # log p_theta - log p_ref of the answer
    return -(2.0 / beta) * F.logsigmoid(-beta * log_ratio)


def simnpo_loss(nll_sum: Tensor, n_tokens: Tensor, beta: float, delta: float) -> Tensor:
    """SimNPO per sample: ``-(2/beta) * log sigmoid(beta * (a_i - delta))`` (``[B]``); no reference model."""
    _check_positive("beta", beta)
    return -(2.0 / beta) * F.logsigmoid(beta * (average_nll(nll_sum, n_tokens) - delta))


def satimp_from_token_nll(token_values: Tensor, beta1: float, beta2: float) -> Tensor:
    """SatImp token losses ``-w_t * c_t`` with ``w_t = p_t^beta1 * (1 - p_t)^beta2``, ``p_t = exp(-c_t)`` detached."""
    if beta1 < 0 or beta2 < 0:
        raise ValueError(f"beta1 and beta2 must be >= 0; got beta1={beta1}, beta2={beta2}")
    p = torch.exp(-token_values.detach())
    weights = p.pow(beta1) * (1.0 - p).pow(beta2)
    return -weights * token_values


def satimp_token_losses(
    logits: Tensor, labels: Tensor, beta1: float, beta2: float, chunk_tokens: int = DEFAULT_CHUNK_TOKENS
) -> Tensor:
    """SatImp loss of every labelled token of the batch (``[N]``, row-major); the base method takes their mean."""
    tokens = token_nll(logits, labels, chunk_tokens)
    if tokens.values.numel() == 0:
        raise ValueError("the batch has no labelled token: SatImp needs at least one answer token")
    return satimp_from_token_nll(tokens.values, beta1, beta2)
