"""Teacher-forced scoring of QA rows: per-sample summed answer NLL and token count, no gradients."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from baldro_ray.data.render import PromptTemplate, encode_qa, pad_batch
from baldro_ray.objectives import sequence_nll


@torch.no_grad()
def score_batch(
    model: torch.nn.Module, batch: Mapping[str, torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(nll_sum[B], n_tokens[B])`` of a padded batch (``input_ids``, ``attention_mask``, ``labels``)."""
    device = next(model.parameters()).device
    logits = model(
        input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device)
    ).logits
    nll_sum, n_tokens = sequence_nll(logits, batch["labels"].to(device))
    return nll_sum.cpu(), n_tokens.cpu()


def score_rows(
    model: torch.nn.Module,
    tokenizer: Any,
    rows: Sequence[Mapping[str, Any]],
    template: PromptTemplate,
    max_length: int,
    batch_size: int = 32,
) -> tuple[np.ndarray, np.ndarray]:
    """Summed answer NLL and answer-token count of every row (in order), in float64 / int64 arrays."""
    was_training = model.training
    model.eval()
    sums, counts = [], []
    try:
        for start in range(0, len(rows), batch_size):
            encoded = [
                encode_qa(tokenizer, row["question"], row["answer"], template, max_length)
                for row in rows[start : start + batch_size]
            ]
            batch = pad_batch(
                {"input_ids": [e["input_ids"] for e in encoded], "labels": [e["labels"] for e in encoded]},
                tokenizer.pad_token_id,
            )
            nll_sum, n_tokens = score_batch(model, batch)
            sums.append(nll_sum.double().numpy())
            counts.append(n_tokens.numpy())
    finally:
        model.train(was_training)
    return np.concatenate(sums), np.concatenate(counts)


def answer_probability(nll_sum: np.ndarray, n_tokens: np.ndarray) -> np.ndarray:
    """TOFU's per-sample answer probability ``exp(-average NLL)``."""
    return np.exp(-nll_sum / n_tokens)
