"""TOFU and MUSE metrics as pure functions of per-sample numbers (docs/method.md#tofu-metrics, #muse-metrics).

Inputs are per-sample arrays (average answer NLLs, per-token log-probs, strings); outputs are numpy arrays or
floats. Nothing here touches a model. Each definition is open-unlearning's (``src/evals/metrics/``); which token
positions the per-token inputs cover is the caller's choice (:mod:`baldro_ray.eval.privacy`). Membership scores are
"higher = more likely a member": the negation of open-unlearning's per-sample scores, with the same AUC.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Mapping, Sequence

import numpy as np
from rouge_score import rouge_scorer
from scipy import stats
from scipy.special import logsumexp
from sklearn.metrics import roc_auc_score

UTILITY_KEYS: tuple[str, ...] = (
    "retain_Q_A_Prob",
    "retain_Q_A_ROUGE",
    "retain_Truth_Ratio",
    "ra_Q_A_Prob_normalised",
    "ra_Q_A_ROUGE",
    "ra_Truth_Ratio",
    "wf_Q_A_Prob_normalised",
    "wf_Q_A_ROUGE",
    "wf_Truth_Ratio",
)


def _array(name: str, x: object, ndim: int, allow_inf: bool = False) -> np.ndarray:
    """``x`` as a non-empty float64 array of ``ndim`` dimensions without NaN (or inf unless ``allow_inf``)."""
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {a.shape}")
    if a.size == 0:
        raise ValueError(f"{name} must not be empty")
    if np.isnan(a).any() or (not allow_inf and np.isinf(a).any()):
        raise ValueError(f"{name} contains {'NaN' if allow_inf else 'NaN or inf'}")
    return a


def _ragged(name: str, xs: Sequence[object], allow_empty: bool = False) -> list[np.ndarray]:
    """A non-empty list of finite 1-D float64 arrays (one per sample), each non-empty unless ``allow_empty``."""
    if len(xs) == 0:
        raise ValueError(f"{name} must not be empty")
    if allow_empty:
        return [np.zeros(0) if np.size(x) == 0 else _array(f"{name}[{i}]", x, 1) for i, x in enumerate(xs)]
    return [_array(f"{name}[{i}]", x, 1) for i, x in enumerate(xs)]


def _same_length(**arrays: Sequence[object]) -> None:
    lengths = {name: len(a) for name, a in arrays.items()}
    if len(set(lengths.values())) != 1:
        raise ValueError(f"length mismatch: {lengths}")


# ----------------------------------------------------------------------------------------------------- TOFU


def answer_probability(avg_nll: Sequence[float] | np.ndarray) -> np.ndarray:
    """TOFU "Prob" per sample: ``P = exp(-avg_nll)``."""
    return np.exp(-_array("avg_nll", avg_nll, 1))


def normalised_probability(
    correct_avg_nll: Sequence[float] | np.ndarray, wrong_avg_nll: Sequence[Sequence[float]] | np.ndarray
) -> np.ndarray:
    """Per sample ``P_c / (P_c + sum_k P_wrong_k)``, ``P = exp(-avg NLL)``; ``wrong_avg_nll`` is ``[N, K]``.

    Computed in log space: ``exp(-c - logsumexp([-c, -w_1, ..., -w_K]))``.
    """
    c = _array("correct_avg_nll", correct_avg_nll, 1)
    w = _array("wrong_avg_nll", wrong_avg_nll, 2)
    if w.shape[0] != c.shape[0]:
        raise ValueError(f"wrong_avg_nll has {w.shape[0]} rows, correct_avg_nll {c.shape[0]}")
    log_all = np.concatenate([-c[:, None], -w], axis=1)
    return np.exp(-c - logsumexp(log_all, axis=1))


def truth_ratio(
    paraphrased_avg_nll: Sequence[float] | np.ndarray,
    perturbed_avg_nll: Sequence[Sequence[float]] | np.ndarray,
) -> np.ndarray:
    """Per-sample truth ratio ``TR = P_wrong / P_correct = exp(c - mean_k w_k)``.

    ``P_wrong = exp(-mean_k w_k)`` uses the mean of the K perturbed answers' average NLLs ``w`` (``[N, K]``),
    as open-unlearning does; ``P_correct = exp(-c)`` with ``c`` the average NLL of the paraphrased answer
    (forget, retain) or of the answer itself (real authors, world facts). No epsilon is added; may overflow to
    ``inf``.
    """
    c = _array("paraphrased_avg_nll", paraphrased_avg_nll, 1)
    w = _array("perturbed_avg_nll", perturbed_avg_nll, 2)
    if w.shape[0] != c.shape[0]:
        raise ValueError(f"perturbed_avg_nll has {w.shape[0]} rows, paraphrased_avg_nll {c.shape[0]}")
    with np.errstate(over="ignore"):
        return np.exp(c - w.mean(axis=1))


def truth_ratio_score(tr: Sequence[float] | np.ndarray, kind: str) -> float:
    """Aggregate truth ratios: ``"forget"``: ``mean(min(TR, 1/TR))``; ``"utility"``: ``mean(max(0, 1 - TR))``.

    "utility" is the aggregation for retain, real authors and world facts.
    """
    t = _array("tr", tr, 1, allow_inf=True)
    if (t < 0).any():
        raise ValueError("truth ratios must be non-negative")
    if kind == "forget":
        with np.errstate(divide="ignore"):
            return float(np.mean(np.minimum(t, 1.0 / t)))
    if kind == "utility":
        return float(np.mean(np.maximum(0.0, 1.0 - t)))
    raise ValueError(f"kind must be 'forget' or 'utility', got {kind!r}")


def forget_quality(
    unlearned_forget_tr: Sequence[float] | np.ndarray, retain_model_forget_tr: Sequence[float] | np.ndarray
) -> dict[str, float]:
    """Two-sided two-sample KS test (``scipy.stats.ks_2samp``) between the two models' forget truth ratios.

    Returns ``pvalue`` (forget quality), ``statistic`` (KS D) and ``log10_pvalue``. When ``pvalue`` underflows
    to 0.0, ``log10_pvalue`` is the leading term of Kolmogorov's asymptotic tail ``p ~= 2 exp(-2 en D^2)``
    with ``en = n*m/(n+m)``, i.e. ``log10(2) - 2 en D^2 / ln(10)``: finite and increasing as D falls. (scipy's
    ``kstwo.logsf`` is no help here: it is ``log(sf)`` and is ``-inf`` wherever ks_2samp's p-value is 0.)
    """
    a = _array("unlearned_forget_tr", unlearned_forget_tr, 1, allow_inf=True)
    b = _array("retain_model_forget_tr", retain_model_forget_tr, 1, allow_inf=True)
    result = stats.ks_2samp(a, b, alternative="two-sided")
    d, p = float(result.statistic), float(result.pvalue)
    if p > 0.0:
        log10_p = math.log10(p)
    else:
        en = a.size * b.size / (a.size + b.size)
        log10_p = (math.log(2.0) - 2.0 * en * d * d) / math.log(10.0)
    return {"pvalue": p, "statistic": d, "log10_pvalue": log10_p}


def model_utility(values: Mapping[str, float]) -> float:
    """Harmonic mean (``scipy.stats.hmean``) of the nine ``UTILITY_KEYS`` numbers; 0.0 if any of them is 0."""
    missing = sorted(set(UTILITY_KEYS) - set(values))
    extra = sorted(set(values) - set(UTILITY_KEYS))
    if missing or extra:
        raise ValueError(f"model_utility needs exactly UTILITY_KEYS; missing {missing}, extra {extra}")
    v = _array("values", [values[k] for k in UTILITY_KEYS], 1)
    if (v < 0).any():
        raise ValueError(f"utility values must be non-negative: {dict(values)}")
    if (v == 0).any():
        return 0.0
    return float(stats.hmean(v))


def _rouge_l(predictions: Sequence[str], references: Sequence[str], field: str) -> np.ndarray:
    _same_length(predictions=predictions, references=references)
    if len(predictions) == 0:
        raise ValueError("predictions must not be empty")
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    # RougeScorer.score(target, prediction): the reference is the target.
    return np.array(
        [getattr(scorer.score(ref, pred)["rougeL"], field) for pred, ref in zip(predictions, references)],
        dtype=np.float64,
    )


def rouge_l_recall(predictions: Sequence[str], references: Sequence[str]) -> np.ndarray:
    """Per-sample ROUGE-L recall ``LCS(pred, ref) / len(ref)`` over stemmed tokens (TOFU "ROUGE")."""
    return _rouge_l(predictions, references, "recall")


def rouge_l_f1(predictions: Sequence[str], references: Sequence[str]) -> np.ndarray:
    """Per-sample ROUGE-L F1 ``2 P R / (P + R)``, ``P = LCS/len(pred)``, ``R = LCS/len(ref)`` (MUSE)."""
    return _rouge_l(predictions, references, "fmeasure")


# ------------------------------------------------------------------------------------- membership inference


def loss_score(avg_nll: Sequence[float] | np.ndarray) -> np.ndarray:
    """LOSS attack per sample: ``-avg_NLL`` over every labelled token (open-unlearning's ``mia/loss.py``)."""
    return -_array("avg_nll", avg_nll, 1)


def zlib_score(avg_nll: Sequence[float] | np.ndarray, text: Sequence[str]) -> np.ndarray:
    """zlib attack per sample: ``-avg_NLL / len(zlib.compress(text.encode("utf-8")))``, the *mean* token NLL
    over the zlib entropy of the text (Carlini et al. 2021; open-unlearning's ``mia/zlib.py``)."""
    a = _array("avg_nll", avg_nll, 1)
    _same_length(avg_nll=a, text=text)
    sizes = np.array([len(zlib.compress(t.encode("utf-8"))) for t in text], dtype=np.float64)
    return -a / sizes


def _lowest_k_mean(values: np.ndarray, k: float) -> float:
    """Mean of the ``max(1, floor(k * n))`` smallest values; 0.0 for no value (open-unlearning's score then)."""
    if values.size == 0:
        return 0.0
    n_k = max(1, int(k * values.size))
    return float(np.sort(values)[:n_k].mean())


def _check_k(k: float) -> None:
    if not 0.0 < k <= 1.0:
        raise ValueError(f"k must be in (0, 1], got {k}")


def min_k_score(token_log_probs: Sequence[np.ndarray], k: float = 0.4) -> np.ndarray:
    """Min-K% per sample: mean of the lowest ``max(1, floor(k * n))`` token log-probs (0.0 for a sample with no
    token; open-unlearning's ``mia/min_k.py``)."""
    _check_k(k)
    lps = _ragged("token_log_probs", token_log_probs, allow_empty=True)
    return np.array([_lowest_k_mean(x, k) for x in lps])


# open-unlearning's floor on the vocabulary variance (mia/min_k_plus_plus.py).
MIN_K_PLUS_PLUS_MIN_VARIANCE = 1e-6


def min_k_plus_plus_score(
    token_log_probs: Sequence[np.ndarray],
    token_mu: Sequence[np.ndarray],
    token_sigma: Sequence[np.ndarray],
    k: float = 0.4,
) -> np.ndarray:
    """Min-K%++ per sample: Min-K% of ``(log p(x_t) - mu_t) / sqrt(max(sigma_t^2, 1e-6))``.

    ``mu_t = E_{z~p_t}[log p_t(z)]`` and ``sigma_t`` its standard deviation (not variance) over the vocabulary
    at position t. The variance is floored at ``MIN_K_PLUS_PLUS_MIN_VARIANCE`` as open-unlearning does, so a
    position where the model is certain still has a (large) z-score. Negative sigma is an error.
    """
    _check_k(k)
    lps = _ragged("token_log_probs", token_log_probs, allow_empty=True)
    mus = _ragged("token_mu", token_mu, allow_empty=True)
    sigmas = _ragged("token_sigma", token_sigma, allow_empty=True)
    _same_length(token_log_probs=lps, token_mu=mus, token_sigma=sigmas)
    scores = []
    for i, (lp, mu, sigma) in enumerate(zip(lps, mus, sigmas)):
        if not lp.shape == mu.shape == sigma.shape:
            raise ValueError(f"sample {i}: shapes {lp.shape}, {mu.shape}, {sigma.shape} differ")
        if (sigma < 0).any():
            raise ValueError(f"sample {i}: token_sigma must be >= 0")
        floored = np.sqrt(np.maximum(sigma * sigma, MIN_K_PLUS_PLUS_MIN_VARIANCE))
        scores.append(_lowest_k_mean((lp - mu) / floored, k))
    return np.array(scores)


def mia_auc(
    member_scores: Sequence[float] | np.ndarray, nonmember_scores: Sequence[float] | np.ndarray
) -> float:
    """ROC AUC (``sklearn.metrics.roc_auc_score``) of the scores, members labelled 1, non-members 0."""
    m = _array("member_scores", member_scores, 1)
    n = _array("nonmember_scores", nonmember_scores, 1)
    labels = np.concatenate([np.ones(m.size), np.zeros(n.size)])
    return float(roc_auc_score(labels, np.concatenate([m, n])))


def privleak(auc_unlearned: float, auc_retain: float) -> float:
    """``((1 - AUC_u) - (1 - AUC_r)) / (1 - AUC_r) * 100`` (MUSE PrivLeak; 0 = like the retrained model)."""
    for name, auc in (("auc_unlearned", auc_unlearned), ("auc_retain", auc_retain)):
        if not 0.0 <= auc <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {auc}")
    if auc_retain == 1.0:
        raise ValueError("privleak is undefined for auc_retain == 1")
    return ((1.0 - auc_unlearned) - (1.0 - auc_retain)) / (1.0 - auc_retain) * 100.0


# ------------------------------------------------------------------------------------------- memorisation


def extraction_strength(token_correct: Sequence[np.ndarray], cap: bool = True) -> np.ndarray:
    """Per-sample extraction strength ``ES = 1 - k/n`` from teacher-forced per-position correctness.

    ``token_correct[i][t]`` says whether the argmax at answer position t equals the target token (n
    positions). ``k*`` is the smallest prefix length such that every position ``>= k*`` is correct (so the greedy
    continuation of that prefix reproduces the suffix): ``k* = 0`` (ES = 1) when all are correct, ``k* = n`` when
    the last position is wrong. ``cap``: ``k = min(k*, n - 1)``, as open-unlearning's loop over ``k < n`` leaves
    it (``memorization.py``), so ES >= 1/n; else ``k = k*`` (ES = 0 when the last position is wrong). A sample
    with no position scores 0, as there.
    """
    if len(token_correct) == 0:
        raise ValueError("token_correct must not be empty")
    out = []
    for i, x in enumerate(token_correct):
        c = np.asarray(x)
        if c.ndim != 1:
            raise ValueError(f"token_correct[{i}] must be a 1-D array, got shape {c.shape}")
        if c.size == 0:
            out.append(0.0)
            continue
        if c.dtype != np.bool_:
            raise ValueError(f"token_correct[{i}] must be boolean, got {c.dtype}")
        wrong = np.flatnonzero(~c)
        k_star = 0 if wrong.size == 0 else int(wrong[-1]) + 1
        out.append(1.0 - (min(k_star, c.size - 1) if cap else k_star) / c.size)
    return np.array(out)
