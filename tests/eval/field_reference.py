"""The field's evaluation definitions, computed directly in float64 from a model and rows, for parity tests.

Written from open-unlearning's definitions (locuslab/open-unlearning: ``src/data/utils.py`` for how a sample is
tokenised, ``src/evals/metrics/utils.py`` for which positions count, ``src/evals/metrics/mia/*.py`` and
``memorization.py`` for the scores), independently of ``baldro_ray.eval``: one unbatched, unpadded forward pass per
sample, so no padding, masking or batching of ours can leak in. Scores carry open-unlearning's sign (lower = more
likely a member for every attack here) and AUCs its labels (forget 0, holdout 1).
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

IGNORE = -100


@dataclass(frozen=True)
class Instance:
    """A tokenised sample: ``ids`` and ``labels`` (IGNORE where no loss is taken)."""

    ids: list[int]
    labels: list[int]


def qa_instance(tokenizer: Any, tags: Any, question: str, answer: str, max_length: int) -> Instance:
    """A QA sample with tags: prompt + answer, truncated to ``max_length``, then eos unless it ends with one;
    the prompt's tokens unlabelled."""
    prompt = tags.user_start + question + tags.user_end + tags.assistant_start
    ids = tokenizer(prompt + answer, max_length=max_length, truncation=True)["input_ids"]
    n_prompt = len(tokenizer(prompt, max_length=max_length, truncation=True)["input_ids"])
    if ids[-1] != tokenizer.eos_token_id:
        ids = [*ids, tokenizer.eos_token_id]
    return Instance(ids, [IGNORE] * n_prompt + ids[n_prompt:])


def text_instance(tokenizer: Any, prefix: str, text: str, max_length: int) -> Instance:
    """A raw text: at most ``max_length`` tokens after the prefix, no eos, the prefix (at least token 0)
    unlabelled."""
    n_prefix = len(tokenizer(prefix)["input_ids"])
    ids = tokenizer(prefix + text)["input_ids"][: n_prefix + max_length]
    n_skip = max(1, n_prefix)
    return Instance(ids, [IGNORE] * n_skip + ids[n_skip:])


@dataclass(frozen=True)
class Scored:
    """One forward pass of an instance: float64 log-softmax rows predicting each labelled token."""

    vocab_log_probs: torch.Tensor  # [n, V], row j predicts target j
    targets: torch.Tensor  # [n]

    @property
    def token_log_probs(self) -> torch.Tensor:
        return self.vocab_log_probs.gather(1, self.targets[:, None])[:, 0]

    def without_last(self) -> Scored:
        """The positions open-unlearning's tokenwise log-probs keep: every labelled one but the last."""
        return Scored(self.vocab_log_probs[:-1], self.targets[:-1])


@torch.no_grad()
def score(model: Any, instance: Instance) -> Scored:
    logits = model(input_ids=torch.tensor([instance.ids])).logits[0].double()
    log_probs = torch.log_softmax(logits, dim=-1)
    positions = [t for t, label in enumerate(instance.labels) if label != IGNORE]
    rows = torch.tensor([t - 1 for t in positions])
    return Scored(log_probs[rows], torch.tensor([instance.ids[t] for t in positions]))


def avg_loss(s: Scored) -> float:
    return float(-s.token_log_probs.mean())


def zlib_attack(s: Scored, tokenizer: Any) -> float:
    """Mean NLL over the zlib size of the labelled tokens' text, decoded without special tokens."""
    text = tokenizer.decode(s.targets.tolist(), skip_special_tokens=True)
    return avg_loss(s) / len(zlib.compress(text.encode("utf-8")))


def min_k_attack(s: Scored, k: float = 0.4) -> float:
    """``-mean`` of the lowest ``max(1, int(n k))`` log-probs of the tokenwise positions; 0 with none."""
    lp = np.sort(s.without_last().token_log_probs.numpy())
    return 0.0 if lp.size == 0 else float(-lp[: max(1, int(lp.size * k))].mean())


def min_k_plus_plus_attack(s: Scored, k: float = 0.4) -> float:
    """Min-K% of ``(log p - mu) / sqrt(max(var, 1e-6))`` over the tokenwise positions."""
    t = s.without_last()
    if t.targets.numel() == 0:
        return 0.0
    p = t.vocab_log_probs.exp()
    mu = (p * t.vocab_log_probs).sum(-1)
    var = (p * t.vocab_log_probs.square()).sum(-1) - mu.square()
    z = np.sort(((t.token_log_probs - mu) / var.clamp(min=1e-6).sqrt()).numpy())
    return float(-z[: max(1, int(z.size * k))].mean())


def extraction_strength(s: Scored) -> float:
    """``1 - k / n`` for the first ``k`` in ``0..n-1`` whose suffix the argmax reproduces, else ``k = n - 1``."""
    t = s.without_last()
    n = t.targets.numel()
    if n == 0:
        return 0.0
    predicted = t.vocab_log_probs.argmax(-1)
    k = next((k for k in range(n) if torch.equal(predicted[k:], t.targets[k:])), n - 1)
    return 1.0 - k / n


def attacks(tokenizer: Any) -> dict[str, Any]:
    """The four membership attacks by their entry names, each ``Scored -> float``."""
    return {
        "mia_loss": avg_loss,
        "mia_zlib": lambda s: zlib_attack(s, tokenizer),
        "mia_min_k": min_k_attack,
        "mia_min_k_plus_plus": min_k_plus_plus_attack,
    }


def auc(forget: Sequence[float], holdout: Sequence[float]) -> float:
    """AUC with forget labelled 0 and holdout 1 (lower scores = members)."""
    return float(roc_auc_score([0] * len(forget) + [1] * len(holdout), [*forget, *holdout]))
