"""Membership-inference entries (LOSS, zlib, Min-K%, Min-K%++ AUCs), privleak and extraction strength from
token-level :class:`~baldro_ray.eval.inference.Score` results of members (forget) and non-members (holdout).

Entry layout (open-unlearning style): ``{"agg_value": AUC, "value_by_index": {"0": {"score": s}, ...}}`` over
the members, with the non-members' scores under ``holdout_value_by_index``. Every attack score is "higher = more
likely a member", so AUC 0.5 means the attack cannot tell forget from holdout.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from baldro_ray.eval import metrics as M
from baldro_ray.eval.inference import stats_arrays

MIN_K = 0.4
PRIVLEAK_DEFAULT_REFERENCE = 0.5  # open-unlearning's reference AUC when no retain model logs are given


def _by_index(scores: np.ndarray) -> dict[str, dict[str, float]]:
    return {str(i): {"score": float(s)} for i, s in enumerate(scores)}


def attack_scores(results: Sequence[Mapping[str, Any]], texts: Sequence[str]) -> dict[str, np.ndarray]:
    """Per-sample scores of every attack, from token-stat Score results and the scored texts."""
    log_probs = stats_arrays(results, "log_probs")
    return {
        "mia_loss": M.loss_score([-lp for lp in log_probs]),
        "mia_zlib": M.zlib_score(np.array([r["nll_sum"] for r in results]), texts),
        "mia_min_k": M.min_k_score(log_probs, MIN_K),
        "mia_min_k_plus_plus": M.min_k_plus_plus_score(
            log_probs, stats_arrays(results, "mu"), stats_arrays(results, "sigma"), MIN_K
        ),
    }


def mia_entries(
    members: Sequence[Mapping[str, Any]],
    member_texts: Sequence[str],
    nonmembers: Sequence[Mapping[str, Any]],
    nonmember_texts: Sequence[str],
) -> dict[str, dict[str, Any]]:
    """One entry per attack: AUC of members against non-members, with the per-sample scores; the AUC is NaN when
    a score is not finite (a model with NaN weights, or Min-K%++ on a model certain of every token)."""
    inside, outside = attack_scores(members, member_texts), attack_scores(nonmembers, nonmember_texts)

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


def extraction_entry(members: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Extraction strength per member sample and its mean."""
    strength = M.extraction_strength(stats_arrays(members, "correct"))
    return {"agg_value": float(strength.mean()), "value_by_index": _by_index(strength)}
