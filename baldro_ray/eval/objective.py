"""The combined forget/utility objective (``evaluation.objective``): one number per evaluated model, higher is
better, that picks a run's best epoch and drives Ray Tune.

Every objective is built from two terms in [0, 1], higher is better:
- forget term: TOFU ``1 - KS statistic`` of the forget truth ratios against the retain model's (forget quality is
  that KS test's p-value, so within one benchmark split the two rank models identically, but the statistic does
  not underflow to 0 and is comparable across forget01/05/10); MUSE ``1 - min(1, |privleak| / 100)`` (privleak 0
  is the retain model's membership signal).
- utility term: TOFU model utility; MUSE the retain set's knowledge-memorisation ROUGE.

``geometric`` (the default) is the weighted geometric mean, 0 as soon as either term is 0: a run cannot buy
forgetting with a destroyed model or keep utility by not forgetting, and the ranking does not depend on the scale
of either term. ``arithmetic`` is the weighted mean. ``utility_at_fq_floor`` ranks every model whose forget quality
reaches ``fq_floor`` above every model that does not (score ``1 + utility``), and the rest by ``-KS statistic``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from baldro_ray.config import EvaluationConfig


def _value(result: Mapping[str, Any], key: str, field: str = "agg_value") -> float | None:
    value = result.get(key, {}).get(field)
    return None if value is None else float(value)


def objective_terms(result: Mapping[str, Any]) -> tuple[float, float]:
    """``(forget term, utility term)`` of a benchmark result; NaN for a term the result lacks."""
    statistic = _value(result, "forget_quality", "statistic")
    if statistic is not None:
        forget = 1.0 - statistic
    else:
        privleak = _value(result, "privleak")
        forget = math.nan if privleak is None else 1.0 - min(1.0, abs(privleak) / 100.0)
    utility = _value(result, "model_utility")
    if utility is None:
        utility = _value(result, "retain_knowmem_ROUGE")
    return forget, math.nan if utility is None else utility


def combined_score(result: Mapping[str, Any], evaluation: EvaluationConfig) -> float:
    """``evaluation.objective`` of ``result`` (see the module docstring); NaN when a term it needs is missing."""
    forget, utility = objective_terms(result)
    if evaluation.objective == "utility_at_fq_floor":
        quality = _value(result, "forget_quality")
        if quality is None or math.isnan(utility):
            return math.nan
        return 1.0 + utility if quality >= evaluation.fq_floor else forget - 1.0
    if math.isnan(forget) or math.isnan(utility):
        return math.nan
    wf, wu = evaluation.forget_weight, evaluation.utility_weight
    if evaluation.objective == "arithmetic":
        return (wf * forget + wu * utility) / (wf + wu)
    weighted = [(weight, term) for weight, term in ((wf, forget), (wu, utility)) if weight > 0]
    if min(term for _, term in weighted) <= 0:
        return 0.0
    return math.exp(sum(weight * math.log(term) for weight, term in weighted) / (wf + wu))
