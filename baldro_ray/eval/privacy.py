"""Membership-inference entries (LOSS, zlib, Min-K%, Min-K%++ AUCs), privleak and extraction strength from
token-level :class:`~baldro_ray.eval.inference.Score` results of members (forget) and non-members (holdout).

Entry layout (open-unlearning style): ``{"agg_value": AUC, "value_by_index": {"0": {"score": s}, ...}}`` over
the members, with the non-members' scores under ``holdout_value_by_index``. Every attack score is "higher = more
likely a member", so AUC 0.5 means the attack cannot tell forget from holdout.

Positions (``TOKEN_POSITIONS``): LOSS and zlib use every labelled token (open-unlearning's
``evaluate_probability``); Min-K%, Min-K%++ and extraction strength use, by default (``"open_unlearning"``), every
labelled position but the last, as open-unlearning's ``tokenwise_logprobs`` does (the eos of a QA sample, the last
token of a raw text), with extraction strength's ``k`` capped at ``n - 1``; ``"all"`` keeps every position,
uncapped (this project's earlier definition).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from baldro_ray.eval import metrics as M
from baldro_ray.eval.inference import stats_arrays

MIN_K = 0.4
PRIVLEAK_DEFAULT_REFERENCE = 0.5  # open-unlearning's reference AUC when no retain model logs are given
TOKEN_POSITIONS = ("open_unlearning", "all")


def _by_index(scores: np.ndarray) -> dict[str, dict[str, float]]:
    return {str(i): {"score": float(s)} for i, s in enumerate(scores)}


def _check_positions(positions: str) -> None:
    if positions not in TOKEN_POSITIONS:
        raise ValueError(f"token positions must be one of {TOKEN_POSITIONS}, got {positions!r}")


def token_arrays(results: Sequence[Mapping[str, Any]], key: str, positions: str) -> list[np.ndarray]:
    """``stats_arrays(results, key)`` over the positions the Min-K% family and extraction strength use."""
    _check_positions(positions)
    arrays = stats_arrays(results, key)
    return [a[:-1] for a in arrays] if positions == "open_unlearning" else arrays


def attack_scores(
    results: Sequence[Mapping[str, Any]], positions: str = "open_unlearning"
) -> dict[str, np.ndarray]:
    """Per-sample scores of every attack from token-stat Score results (zlib compresses their ``target_text``)."""
    avg_nll = np.array([r["nll_sum"] / r["n_tokens"] for r in results])
    log_probs = token_arrays(results, "log_probs", positions)
    return {
        "mia_loss": M.loss_score(avg_nll),
        "mia_zlib": M.zlib_score(avg_nll, [r["target_text"] for r in results]),
        "mia_min_k": M.min_k_score(log_probs, MIN_K),
        "mia_min_k_plus_plus": M.min_k_plus_plus_score(
            log_probs,
            token_arrays(results, "mu", positions),
            token_arrays(results, "sigma", positions),
            MIN_K,
        ),
    }


def mia_entries(
    members: Sequence[Mapping[str, Any]],
    nonmembers: Sequence[Mapping[str, Any]],
    positions: str = "open_unlearning",
) -> dict[str, dict[str, Any]]:
    """One entry per attack: AUC of members against non-members, with the per-sample scores; the AUC is NaN when
    a score is not finite (a model with NaN weights)."""
    inside, outside = attack_scores(members, positions), attack_scores(nonmembers, positions)

    def auc(name: str) -> float:
        finite = np.isfinite(inside[name]).all() and np.isfinite(outside[name]).all()
        return M.mia_auc(inside[name], outside[name]) if finite else float("nan")

    return {
        name: {
            "agg_value": auc(name),
            "value_by_index": _by_index(inside[name]),
            "holdout_value_by_index": _by_index(outside[name]),
        }
        for name in inside
    }


def privleak_entry(auc: float, retain_eval: Mapping[str, Any] | None) -> dict[str, Any]:
    """privleak of a Min-K% AUC relative to the retain model's (``retain_eval["mia_min_k"]``), else to 0.5."""
    reference = (retain_eval or {}).get("mia_min_k", {}).get("agg_value")
    source = "retain model" if reference is not None else "default 0.5 (no retain model mia_min_k)"
    reference = PRIVLEAK_DEFAULT_REFERENCE if reference is None else float(reference)
    if reference == 1.0:  # the retain model separates forget from holdout perfectly: privleak is undefined
        return {
            "agg_value": float("nan"),
            "reference_auc": reference,
            "reference": f"{source}; undefined at AUC 1",
        }
    return {"agg_value": M.privleak(auc, reference), "reference_auc": reference, "reference": source}


def extraction_entry(
    members: Sequence[Mapping[str, Any]], positions: str = "open_unlearning"
) -> dict[str, Any]:
    """Extraction strength per member sample and its mean."""
    correct = token_arrays(members, "correct", positions)
    strength = M.extraction_strength(correct, cap=positions == "open_unlearning")
    return {"agg_value": float(strength.mean()), "value_by_index": _by_index(strength)}
