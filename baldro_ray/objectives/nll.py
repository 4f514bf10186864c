"""Per-token and per-sequence negative log-likelihood: the one place that turns logits into NLL.

Convention (Hugging Face causal LM): ``logits[:, t]`` predicts ``labels[:, t + 1]``; positions whose label is
``IGNORE_INDEX`` (-100) do not count. Everything is accumulated in float32 (float64 if the logits are float64),
whatever the logits dtype, and the logits are read in chunks of labelled positions, so no second full-size copy of
the logits is ever made.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

IGNORE_INDEX = -100
DEFAULT_CHUNK_TOKENS = 1024


@dataclass(frozen=True)
class TokenNLL:
    """Cross-entropy of every labelled (shifted) token of a batch.

    Invariants: ``values[j]`` is the NLL of the j-th labelled token in row-major order, ``sample_index[j]`` the row
    it belongs to; ``batch_size`` counts every row, including rows with no labelled token.
    """

    values: Tensor  # [N] float32/float64, differentiable
    sample_index: Tensor  # [N] long
    batch_size: int

    def per_sequence(self) -> tuple[Tensor, Tensor]:
        """``(nll_sum[B], n_tokens[B])``: summed NLL and labelled-token count of each row."""
        nll_sum = self.values.new_zeros(self.batch_size).index_add(0, self.sample_index, self.values)
        n_tokens = torch.bincount(self.sample_index, minlength=self.batch_size)
        return nll_sum, n_tokens


def _accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def check_logits_labels(logits: Tensor, labels: Tensor) -> None:
    """Raise ``ValueError`` unless ``logits`` is ``[B, T, V]`` and ``labels`` is ``[B, T]`` with valid ids."""
    if logits.dim() != 3:
        raise ValueError(f"logits must have shape [batch, seq_len, vocab]; got shape {tuple(logits.shape)}")
    if labels.shape != logits.shape[:2]:
        raise ValueError(
            f"labels shape {tuple(labels.shape)} does not match logits shape {tuple(logits.shape)}: "
            f"expected labels of shape {tuple(logits.shape[:2])}"
        )
    if labels.numel() == 0:
        raise ValueError(f"empty batch: logits shape {tuple(logits.shape)}")
    if labels.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"labels must be an integer tensor; got dtype {labels.dtype}")
    vocab = logits.shape[-1]
    bad = (labels != IGNORE_INDEX) & ((labels < 0) | (labels >= vocab))
    if bool(bad.any()):
        row, col = (int(i) for i in bad.nonzero()[0])
        raise ValueError(
            f"labels[{row}, {col}] = {int(labels[row, col])} is outside the vocabulary [0, {vocab}) "
            f"and is not the ignore index {IGNORE_INDEX}"
        )


def token_nll(logits: Tensor, labels: Tensor, chunk_tokens: int = DEFAULT_CHUNK_TOKENS) -> TokenNLL:
    """NLL of each labelled next token; see the module docstring for the shift and dtype conventions."""
    check_logits_labels(logits, labels)
    targets = labels[:, 1:]
    rows, cols = (targets != IGNORE_INDEX).nonzero(as_tuple=True)
    acc_dtype = _accumulation_dtype(logits.dtype)
    pieces = []
    for start in range(0, rows.numel(), chunk_tokens):
        r, c = rows[start : start + chunk_tokens], cols[start : start + chunk_tokens]
        chunk = logits[r, c].to(acc_dtype)  # [chunk, V]: the only copy, bounded by chunk_tokens
        picked = chunk.gather(1, targets[r, c].long().unsqueeze(1)).squeeze(1)
        pieces.append(torch.logsumexp(chunk, dim=-1) - picked)
    values = torch.cat(pieces) if pieces else logits.new_zeros(0, dtype=acc_dtype)
    return TokenNLL(values=values, sample_index=rows, batch_size=labels.shape[0])


def sequence_nll(
    logits: Tensor, labels: Tensor, chunk_tokens: int = DEFAULT_CHUNK_TOKENS
) -> tuple[Tensor, Tensor]:
    """``(nll_sum[B], n_tokens[B])``: summed next-token NLL over each row's labelled positions and their count.

    A row with no labelled token gets ``nll_sum = 0`` and ``n_tokens = 0``; functions that divide by ``n_tokens``
    reject such rows.
    """
    return token_nll(logits, labels, chunk_tokens).per_sequence()


def average_nll(nll_sum: Tensor, n_tokens: Tensor) -> Tensor:
    """``a_i = s_i / n_i`` per sample; raises ``ValueError`` naming the rows that have no labelled token."""
    if nll_sum.shape != n_tokens.shape or nll_sum.dim() != 1:
        raise ValueError(
            f"nll_sum and n_tokens must be 1-D of equal length; got {tuple(nll_sum.shape)} and {tuple(n_tokens.shape)}"
        )
    if nll_sum.numel() == 0:
        raise ValueError("empty batch: nll_sum has no element")
    empty = (n_tokens <= 0).nonzero().flatten().tolist()
    if empty:
        raise ValueError(
            f"samples {empty} have no labelled token (every label is {IGNORE_INDEX}): their average NLL is undefined; "
            "check the answer is not empty and not cut off by max_length"
        )
    return nll_sum / n_tokens.to(nll_sum.dtype)
