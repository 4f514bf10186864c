"""sequence_nll / token_nll / retain losses against naive float64 loops."""

from __future__ import annotations

import math

import pytest
import torch

from baldro_ray.objectives import (
    IGNORE_INDEX,
    average_nll,
    reduce_retain_nll,
    retain_kl,
    retain_nll,
    sequence_nll,
    token_nll,
)
from tests.objectives.reference_math import log_softmax_row, naive_sequence_nll, naive_token_nll


def padded_batch(seed: int = 0, vocab: int = 11) -> tuple[torch.Tensor, torch.Tensor]:
    """Three rows: prompt tokens masked, answers of different lengths, right padding masked too."""
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(3, 7, vocab, generator=gen, dtype=torch.float64) * 3
    labels = torch.randint(0, vocab, (3, 7), generator=gen)
    labels[0, :3] = IGNORE_INDEX  # prompt of 3, answer of 4
    labels[1, :2] = IGNORE_INDEX
    labels[1, 5:] = IGNORE_INDEX  # padded row
    labels[2, :5] = IGNORE_INDEX  # answer of 2
    return logits, labels


def test_sequence_nll_matches_naive_loop_on_padded_batch() -> None:
    logits, labels = padded_batch()
    nll_sum, n_tokens = sequence_nll(logits, labels)
    want_sum, want_count = naive_sequence_nll(logits.tolist(), labels.tolist())
    assert n_tokens.tolist() == want_count == [4, 3, 2]
    assert nll_sum.dtype == torch.float64
    assert nll_sum.tolist() == pytest.approx(want_sum, rel=1e-12)


@pytest.mark.parametrize("chunk", [1, 2, 5, 1024])
def test_token_nll_is_independent_of_chunking(chunk: int) -> None:
    logits, labels = padded_batch(seed=1)
    tokens = token_nll(logits, labels, chunk_tokens=chunk)
    assert tokens.values.tolist() == pytest.approx(
        naive_token_nll(logits.tolist(), labels.tolist()), rel=1e-12
    )
    assert tokens.sample_index.tolist() == [0, 0, 0, 0, 1, 1, 1, 2, 2]


def test_sequence_nll_gradient_matches_softmax_minus_onehot() -> None:
    logits, labels = padded_batch(seed=2)
    logits.requires_grad_(True)
    nll_sum, _ = sequence_nll(logits, labels, chunk_tokens=2)
    nll_sum.sum().backward()
    want = torch.zeros_like(logits)
    for b in range(3):
        for t in range(6):
            target = int(labels[b, t + 1])
            if target == IGNORE_INDEX:
                continue
            probs = [math.exp(v) for v in log_softmax_row(logits[b, t].tolist())]
            for v, p in enumerate(probs):
                want[b, t, v] = p - (1.0 if v == target else 0.0)
    assert torch.allclose(logits.grad, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_logits_accumulate_in_float32(dtype: torch.dtype) -> None:
    logits64, labels = padded_batch(seed=3, vocab=50)
    logits = logits64.to(dtype)
    nll_sum, _ = sequence_nll(logits, labels)
    assert nll_sum.dtype == torch.float32
    # exact NLL of the rounded logits, in float64: only float32 accumulation error remains
    want, _ = naive_sequence_nll(logits.double().tolist(), labels.tolist())
    assert nll_sum.tolist() == pytest.approx(want, rel=1e-6)


def test_row_without_labels_has_zero_count_and_average_nll_names_it() -> None:
    logits, labels = padded_batch()
    labels[1, :] = IGNORE_INDEX
    nll_sum, n_tokens = sequence_nll(logits, labels)
    assert n_tokens.tolist() == [4, 0, 2] and float(nll_sum[1]) == 0.0
    with pytest.raises(ValueError, match=r"samples \[1\] have no labelled token"):
        average_nll(nll_sum, n_tokens)


@pytest.mark.parametrize(
    ("logits_shape", "labels_shape", "match"),
    [
        ((2, 5, 7), (2, 4), "does not match"),
        ((2, 5), (2, 5), "must have shape"),
        ((0, 5, 7), (0, 5), "empty batch"),
    ],
)
def test_shape_errors(logits_shape: tuple, labels_shape: tuple, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        sequence_nll(torch.zeros(logits_shape), torch.zeros(labels_shape, dtype=torch.long))


def test_label_outside_vocabulary_is_reported_with_position() -> None:
    logits, labels = padded_batch()
    labels[2, 6] = 11
    with pytest.raises(ValueError, match=r"labels\[2, 6\] = 11 is outside the vocabulary \[0, 11\)"):
        sequence_nll(logits, labels)


def test_retain_nll_reductions() -> None:
    logits, labels = padded_batch(seed=4)
    sums, counts = naive_sequence_nll(logits.tolist(), labels.tolist())
    assert float(retain_nll(logits, labels, "token_mean")) == pytest.approx(
        sum(sums) / sum(counts), rel=1e-12
    )
    assert float(retain_nll(logits, labels, "sequence_sum_mean")) == pytest.approx(sum(sums) / 3, rel=1e-12)
    with pytest.raises(ValueError, match="unknown retain reduction"):
        reduce_retain_nll(torch.ones(2), torch.ones(2), "sum")  # type: ignore[arg-type]


def test_token_mean_matches_huggingface_loss_definition() -> None:
    logits, labels = padded_batch(seed=5)
    hf = torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1), ignore_index=IGNORE_INDEX
    )
    assert float(retain_nll(logits, labels)) == pytest.approx(float(hf), rel=1e-12)


def naive_kl(cur: list[float], ref: list[float]) -> float:
    log_p, log_q = log_softmax_row(cur), log_softmax_row(ref)
    return sum(math.exp(q) * (q - p) for p, q in zip(log_p, log_q))


def test_retain_kl_over_answer_positions_and_over_all_positions() -> None:
    logits, labels = padded_batch(seed=6)
    ref = logits + torch.randn(logits.shape, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    answer_terms = [
        naive_kl(logits[b, t].tolist(), ref[b, t].tolist())
        for b in range(3)
        for t in range(6)
        if labels[b, t + 1] != IGNORE_INDEX
    ]
    all_terms = [naive_kl(logits[b, t].tolist(), ref[b, t].tolist()) for b in range(3) for t in range(7)]
    assert float(retain_kl(logits, ref, labels, chunk_tokens=4)) == pytest.approx(
        sum(answer_terms) / len(answer_terms), rel=1e-12
    )
    assert float(retain_kl(logits, ref)) == pytest.approx(sum(all_terms) / len(all_terms), rel=1e-12)
    assert float(retain_kl(logits, logits.clone(), labels)) == pytest.approx(0.0, abs=1e-12)
    # open-unlearning's definition: kl_div(log p_theta, log p_ref, batchmean, log_target) over flattened positions
    flat = torch.nn.functional.kl_div(
        torch.log_softmax(logits, -1).reshape(-1, 11),
        torch.log_softmax(ref, -1).reshape(-1, 11),
        reduction="batchmean",
        log_target=True,
    )
    assert float(retain_kl(logits, ref)) == pytest.approx(float(flat), rel=1e-12)
