"""Retain losses: NLL with an explicit reduction, and KL to a frozen reference model."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from baldro_ray.objectives.nll import DEFAULT_CHUNK_TOKENS, IGNORE_INDEX, check_logits_labels, sequence_nll

RetainReduction = Literal["token_mean", "sequence_sum_mean"]
RETAIN_REDUCTIONS: tuple[str, ...] = ("token_mean", "sequence_sum_mean")


def reduce_retain_nll(nll_sum: Tensor, n_tokens: Tensor, reduction: RetainReduction = "token_mean") -> Tensor:
    """Reduce per-sequence NLL sums to the retain loss.

    ``token_mean``: ``sum s_i / sum n_i``, Hugging Face's ``outputs.loss`` (base NPO/SimNPO in the reference).
    ``sequence_sum_mean``: ``mean s_i``, the reference DrNPO/DrSatImp retain term (larger by the mean answer length).
    """
    if reduction == "token_mean":
        total = n_tokens.sum()
        if int(total) == 0:
            raise ValueError("the retain batch has no labelled token: token_mean retain NLL is undefined")
        return nll_sum.sum() / total.to(nll_sum.dtype)
    if reduction == "sequence_sum_mean":
        return nll_sum.mean()
    raise ValueError(f"unknown retain reduction {reduction!r}; expected one of {RETAIN_REDUCTIONS}")


def retain_nll(
    logits: Tensor,
    labels: Tensor,
    reduction: RetainReduction = "token_mean",
    chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
) -> Tensor:
    """Retain NLL of a batch under ``reduction`` (see :func:`reduce_retain_nll`)."""
    nll_sum, n_tokens = sequence_nll(logits, labels, chunk_tokens)
    return reduce_retain_nll(nll_sum, n_tokens, reduction)


def kl_per_position(
    logits: Tensor, ref_logits: Tensor, labels: Tensor | None = None, chunk_tokens: int = DEFAULT_CHUNK_TOKENS
) -> Tensor:
    """``KL(p_ref || p_theta)`` of the next-token distribution at each position, accumulated in float32.

    With ``labels``, the positions are those that predict a labelled token (the answer), in row-major order; with
    ``labels=None`` every position counts. ``ref_logits`` is treated as a constant.
    """
    if logits.shape != ref_logits.shape:
        raise ValueError(
            f"logits shape {tuple(logits.shape)} does not match ref_logits shape {tuple(ref_logits.shape)}"
        )
    if labels is None:
        if logits.dim() != 3 or logits.numel() == 0:
            raise ValueError(
                f"logits must be a non-empty [batch, seq_len, vocab] tensor; got {tuple(logits.shape)}"
            )
        rows, cols = torch.ones(logits.shape[:2], dtype=torch.bool, device=logits.device).nonzero(
            as_tuple=True
        )
    else:
        check_logits_labels(logits, labels)
        rows, cols = (labels[:, 1:] != IGNORE_INDEX).nonzero(as_tuple=True)
    acc_dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
    pieces = []
    for start in range(0, rows.numel(), chunk_tokens):
        r, c = rows[start : start + chunk_tokens], cols[start : start + chunk_tokens]
        log_p = torch.log_softmax(logits[r, c].to(acc_dtype), dim=-1)
        log_q = torch.log_softmax(ref_logits[r, c].detach().to(acc_dtype), dim=-1)
        pieces.append((log_q.exp() * (log_q - log_p)).sum(-1))
    return torch.cat(pieces) if pieces else logits.new_zeros(0, dtype=acc_dtype)


def retain_kl(
    logits: Tensor, ref_logits: Tensor, labels: Tensor | None = None, chunk_tokens: int = DEFAULT_CHUNK_TOKENS
) -> Tensor:
    """Mean over positions of :func:`kl_per_position`: over answer positions with ``labels``, over every position
    (padding and prompt included, as open-unlearning's ``compute_kl_divergence``) with ``labels=None``."""
    values = kl_per_position(logits, ref_logits, labels, chunk_tokens)
    if values.numel() == 0:
        raise ValueError("the retain batch has no labelled token: KL over answer positions is undefined")
    return values.mean()
