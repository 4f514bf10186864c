"""Independent float64 re-implementations of the spec formulas, written as plain Python loops over numbers.

They share no code with ``baldro_ray.objectives``: every test compares the library against these.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

IGNORE = -100


def log_softmax_row(row: Sequence[float]) -> list[float]:
    top = max(row)
    log_z = top + math.log(sum(math.exp(x - top) for x in row))
    return [x - log_z for x in row]


def naive_sequence_nll(
    logits: list[list[list[float]]], labels: list[list[int]]
) -> tuple[list[float], list[int]]:
    sums, counts = [], []
    for row_logits, row_labels in zip(logits, labels):
        total, count = 0.0, 0
        for t in range(len(row_labels) - 1):
            target = row_labels[t + 1]
            if target == IGNORE:
                continue
            total -= log_softmax_row(row_logits[t])[target]
            count += 1
        sums.append(total)
        counts.append(count)
    return sums, counts


def naive_token_nll(logits: list[list[list[float]]], labels: list[list[int]]) -> list[float]:
    out = []
    for row_logits, row_labels in zip(logits, labels):
        for t in range(len(row_labels) - 1):
            if row_labels[t + 1] != IGNORE:
                out.append(-log_softmax_row(row_logits[t])[row_labels[t + 1]])
    return out


def log_sigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))


def reference_dv(losses: Sequence[float], tau: float) -> float:
    """The reference BalDRO-DV exactly as it is coded there: ``-tau * log(mean(exp(-l / tau)))``."""
    return -tau * math.log(sum(math.exp(-x / tau) for x in losses) / len(losses))


def textbook_dv(losses: Sequence[float], tau: float) -> float:
    return tau * math.log(sum(math.exp(x / tau) for x in losses) / len(losses))


def softmax(values: Sequence[float]) -> list[float]:
    top = max(values)
    exps = [math.exp(v - top) for v in values]
    total = sum(exps)
    return [e / total for e in exps]
