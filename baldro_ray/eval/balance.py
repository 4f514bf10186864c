"""Forgetting balance: how evenly unlearning moved the forget samples from the target model toward the retain model.

Per sample ``i`` with a value ``v`` (answer probability by default) under the unlearned model ``m``, the target
model ``t`` (before unlearning) and the retain model ``r`` (never saw the forget set):

* progress ``p_i = (v_t - v_m) / (v_t - v_r)``: 0 = untouched, 1 = where the retain model is, > 1 = past it;
  undefined (NaN, left out of the summaries) where the target and retain values coincide;
* still memorised: ``v_m`` above the retain model's 90th percentile of ``v`` over the forget set;
* over-forgotten: ``v_m`` below the retain model's 10th percentile.

Over the forget set: mean, standard deviation and interquartile range of the progress, and the two fractions, also
per ground-truth difficulty label (hard/easy) when the benchmark records one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

_SAME = 1e-12


def _vector(name: str, values: Any, size: int | None = None) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D array; got shape {array.shape}")
    if size is not None and array.size != size:
        raise ValueError(f"{name} has {array.size} values; expected {size} (one per forget sample)")
    if not np.isfinite(array).all():
        raise ValueError(f"{name} must be finite")
    return array


def forgetting_progress(
    model: Sequence[float], target: Sequence[float], retain: Sequence[float]
) -> np.ndarray:
    """``(v_t - v_m) / (v_t - v_r)`` per sample; NaN where ``v_t`` and ``v_r`` coincide."""
    m = _vector("model values", model)
    t = _vector("target values", target, m.size)
    r = _vector("retain values", retain, m.size)
    gap = t - r
    out = np.full(m.size, np.nan)
    defined = np.abs(gap) > _SAME
    out[defined] = (t[defined] - m[defined]) / gap[defined]
    return out


def _summary(progress: np.ndarray, model: np.ndarray, high: float, low: float) -> dict[str, float]:
    defined = progress[~np.isnan(progress)]
    q75, q25 = np.percentile(defined, [75, 25]) if defined.size else (np.nan, np.nan)
    return {
        "n": int(model.size),
        "progress_mean": float(defined.mean()) if defined.size else float("nan"),
        "progress_std": float(defined.std()) if defined.size else float("nan"),
        "progress_iqr": float(q75 - q25),
        "still_memorised": float((model > high).mean()),
        "over_forgotten": float((model < low).mean()),
    }


def balance_report(
    model: Sequence[float],
    target: Sequence[float],
    retain: Sequence[float],
    difficulty: Sequence[str] | None = None,
) -> dict[str, Any]:
    """The balance summary over the forget set and, with ``difficulty`` labels, per label (``by_difficulty``)."""
    progress = forgetting_progress(model, target, retain)
    m, r = np.asarray(model, dtype=np.float64), np.asarray(retain, dtype=np.float64)
    high, low = np.percentile(r, 90), np.percentile(r, 10)
    report: dict[str, Any] = {
        **_summary(progress, m, high, low),
        "memorised_above": high,
        "over_forgotten_below": low,
    }
    if difficulty is not None:
        labels = np.asarray(difficulty, dtype=object)
        if labels.size != m.size:
            raise ValueError(
                f"difficulty has {labels.size} labels; expected {m.size} (one per forget sample)"
            )
        report["by_difficulty"] = {
            str(d): _summary(progress[labels == d], m[labels == d], high, low)
            for d in sorted(set(labels.tolist()))
        }
    return report
