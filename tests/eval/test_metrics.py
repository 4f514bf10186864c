"""Metrics against hand-computed values and independent scipy/sklearn computations."""

from __future__ import annotations

import math
import zlib

import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import roc_auc_score

from baldro_ray.eval import metrics as M


def test_answer_probability() -> None:
    np.testing.assert_allclose(M.answer_probability([0.0, math.log(2)]), [1.0, 0.5])
    with pytest.raises(ValueError, match="NaN"):
        M.answer_probability([0.1, float("nan")])
    with pytest.raises(ValueError, match="empty"):
        M.answer_probability([])
    with pytest.raises(ValueError, match="1-D"):
        M.answer_probability([[0.1]])


def test_normalised_probability_by_hand_and_stable() -> None:
    # P_c = 0.5, P_wrong = 0.25, 0.25 -> 0.5 / 1.0
    got = M.normalised_probability([math.log(2)], [[math.log(4), math.log(4)]])
    np.testing.assert_allclose(got, [0.5])
    # P_c = e^-1000, P_w = e^-1001: 1 / (1 + e^-1) although every P underflows
    got = M.normalised_probability([1000.0], [[1001.0]])
    np.testing.assert_allclose(got, [1 / (1 + math.exp(-1))])
    with pytest.raises(ValueError, match="rows"):
        M.normalised_probability([1.0, 2.0], [[1.0]])
    with pytest.raises(ValueError, match="2-D"):
        M.normalised_probability([1.0], [1.0])


def test_truth_ratio_uses_mean_of_avg_nlls() -> None:
    # P_wrong = exp(-mean(1, 3)) = e^-2, P_correct = e^-1 -> TR = e^-1
    np.testing.assert_allclose(M.truth_ratio([1.0, 0.5], [[1.0, 3.0], [0.5, 0.5]]), [math.exp(-1), 1.0])
    with pytest.raises(ValueError, match="rows"):
        M.truth_ratio([1.0], [[1.0], [2.0]])


def test_truth_ratio_score() -> None:
    tr = [0.5, 2.0, 1.0, 4.0]
    assert M.truth_ratio_score(tr, "forget") == pytest.approx((0.5 + 0.5 + 1.0 + 0.25) / 4)
    assert M.truth_ratio_score(tr, "utility") == pytest.approx((0.5 + 0 + 0 + 0) / 4)
    assert M.truth_ratio_score([0.0, math.inf], "forget") == 0.0
    with pytest.raises(ValueError, match="kind"):
        M.truth_ratio_score(tr, "retain")
    with pytest.raises(ValueError, match="non-negative"):
        M.truth_ratio_score([-1.0], "forget")


def test_forget_quality_matches_ks_2samp() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.lognormal(size=50), rng.lognormal(0.3, size=40)
    ref = stats.ks_2samp(a, b)
    fq = M.forget_quality(a, b)
    assert fq["pvalue"] == pytest.approx(ref.pvalue, rel=1e-12)
    assert fq["statistic"] == pytest.approx(ref.statistic)
    assert fq["log10_pvalue"] == pytest.approx(math.log10(ref.pvalue))


def test_forget_quality_log10_finite_for_separated_samples() -> None:
    a = np.linspace(0.0, 1.0, 400)
    fq = M.forget_quality(a, a + 2.0)
    assert fq["statistic"] == 1.0
    assert math.isfinite(fq["log10_pvalue"])
    if fq["pvalue"] > 1e-300:
        assert fq["log10_pvalue"] == pytest.approx(math.log10(fq["pvalue"]))
    # 4000 vs 4000: the p-value underflows to 0; log10 stays finite and keeps ranking by D
    a = np.random.default_rng(1).normal(size=4000)
    results = [M.forget_quality(a, a + s) for s in (1.5, 2.0, 3.0)]
    assert all(r["pvalue"] == 0.0 for r in results)
    logs = [r["log10_pvalue"] for r in results]
    assert all(math.isfinite(x) and x < -300 for x in logs)
    assert logs[0] > logs[1] > logs[2]
    en = 2000
    d = results[0]["statistic"]
    assert logs[0] == pytest.approx((math.log(2) - 2 * en * d * d) / math.log(10))


def _utility(**overrides: float) -> dict[str, float]:
    values = {k: 0.1 * (i + 1) for i, k in enumerate(M.UTILITY_KEYS)}
    values.update(overrides)
    return values


def test_model_utility() -> None:
    values = _utility()
    assert M.model_utility(values) == pytest.approx(stats.hmean(list(values.values())))
    assert M.model_utility(values) == pytest.approx(9 / sum(1 / v for v in values.values()))
    assert M.model_utility(_utility(ra_Q_A_ROUGE=0.0)) == 0.0
    missing = _utility()
    del missing["wf_Truth_Ratio"]
    with pytest.raises(ValueError, match="wf_Truth_Ratio"):
        M.model_utility(missing)
    with pytest.raises(ValueError, match="forget_quality"):
        M.model_utility(_utility(forget_quality=0.5))
    with pytest.raises(ValueError, match="non-negative"):
        M.model_utility(_utility(ra_Q_A_ROUGE=-0.1))


def test_rouge_l_recall_and_f1_by_hand() -> None:
    # reference tokens: the cat sat on the mat (6); prediction: the cat on a mat (5); LCS = the cat on mat = 4
    pred, ref = "the cat on a mat", "the cat sat on the mat"
    np.testing.assert_allclose(M.rouge_l_recall([pred], [ref]), [4 / 6])
    p, r = 4 / 5, 4 / 6
    np.testing.assert_allclose(M.rouge_l_f1([pred], [ref]), [2 * p * r / (p + r)])
    # argument order matters for recall: swapping gives LCS / len(pred)
    np.testing.assert_allclose(M.rouge_l_recall([ref], [pred]), [4 / 5])
    # stemming: "cats" ~ "cat"
    np.testing.assert_allclose(M.rouge_l_recall(["cats"], ["cat"]), [1.0])
    with pytest.raises(ValueError, match="length mismatch"):
        M.rouge_l_recall(["a"], ["a", "b"])
    with pytest.raises(ValueError, match="empty"):
        M.rouge_l_recall([], [])


def test_loss_and_zlib_scores() -> None:
    np.testing.assert_allclose(M.loss_score([2.0, 0.5]), [-2.0, -0.5])
    text = ["hello hello hello", "abc"]
    sizes = [len(zlib.compress(t.encode())) for t in text]
    # The mean NLL (not the sum) over the zlib size: 3 tokens of NLL 2 give 2 / size, not 6 / size.
    np.testing.assert_allclose(M.zlib_score([2.0, 0.5], text), [-2.0 / sizes[0], -0.5 / sizes[1]])
    with pytest.raises(ValueError, match="empty"):
        M.loss_score([])
    with pytest.raises(ValueError, match="length mismatch"):
        M.zlib_score([1.0], text)


def test_min_k_by_hand() -> None:
    lp = np.array([-0.1, -2.0, -0.5, -3.0, -1.0])
    # k = 0.4 of 5 tokens -> 2 lowest: -3, -2
    np.testing.assert_allclose(M.min_k_score([lp]), [-2.5])
    # at least one token: 0.4 * 2 = 0.8 -> 1 token
    np.testing.assert_allclose(M.min_k_score([np.array([-1.0, -4.0])]), [-4.0])
    np.testing.assert_allclose(M.min_k_score([lp], k=1.0), [lp.mean()])
    # no position (a one-token answer once its last position is left out): open-unlearning's 0
    np.testing.assert_allclose(M.min_k_score([np.array([])]), [0.0])
    with pytest.raises(ValueError, match="k must"):
        M.min_k_score([lp], k=0.0)


def test_min_k_plus_plus_by_hand() -> None:
    lp = np.array([-1.0, -2.0, -0.5])
    mu = np.array([-1.0, -1.0, -1.5])
    sigma = np.array([1.0, 0.5, 2.0])
    # z = [0, -2, 0.5]; k = 0.4 of 3 -> 1 lowest: -2; k = 1.0 -> mean = -0.5
    np.testing.assert_allclose(M.min_k_plus_plus_score([lp], [mu], [sigma]), [-2.0])
    np.testing.assert_allclose(M.min_k_plus_plus_score([lp], [mu], [sigma], k=1.0), [-0.5])
    # sigma 0 at the second position (a certain model): the variance floor 1e-6 gives sigma 1e-3,
    # z = (-2 + 1) / 1e-3 = -1000, the lowest; earlier this position was left out (score 0).
    np.testing.assert_allclose(M.min_k_plus_plus_score([lp], [mu], [np.array([1.0, 0.0, 2.0])]), [-1000.0])
    # every position certain: finite z = [0, -1000, 1000], not NaN
    np.testing.assert_allclose(M.min_k_plus_plus_score([lp], [mu], [np.zeros(3)], k=0.7), [-500.0])
    np.testing.assert_allclose(M.min_k_plus_plus_score([np.array([])], [np.array([])], [np.array([])]), [0.0])
    with pytest.raises(ValueError, match=">= 0"):
        M.min_k_plus_plus_score([lp], [mu], [-sigma])
    with pytest.raises(ValueError, match="differ"):
        M.min_k_plus_plus_score([lp], [mu[:2]], [sigma])


def test_mia_auc_matches_sklearn() -> None:
    rng = np.random.default_rng(2)
    members, nonmembers = rng.normal(0.5, size=30), rng.normal(size=25)
    expected = roc_auc_score(np.r_[np.ones(30), np.zeros(25)], np.r_[members, nonmembers])
    assert M.mia_auc(members, nonmembers) == pytest.approx(expected)
    assert M.mia_auc([2.0, 3.0], [0.0, 1.0]) == 1.0
    assert M.mia_auc([0.0], [1.0]) == 0.0


def test_privleak_by_hand() -> None:
    # ((1 - 0.7) - (1 - 0.5)) / (1 - 0.5) * 100 = (0.3 - 0.5) / 0.5 * 100 = -40
    assert M.privleak(0.7, 0.5) == pytest.approx(-40.0)
    assert M.privleak(0.5, 0.5) == 0.0
    with pytest.raises(ValueError, match="undefined"):
        M.privleak(0.5, 1.0)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        M.privleak(1.2, 0.5)


def test_extraction_strength_by_hand() -> None:
    t, f = True, False
    rows = [
        np.array([t, t, t, t]),  # k* = 0 -> 1
        np.array([f, t, t, t]),  # k* = 1 -> 0.75
        np.array([t, f, t, f]),  # k* = 4: capped at n - 1 = 3 -> 0.25; uncapped -> 0
        np.array([f, t, f, t, t]),  # k* = 3 -> 0.4
        np.array([f, f, t]),  # k* = 2 -> 1/3 either way: the cap gives a wrong last token the same score
        np.array([], dtype=bool),  # no position -> 0
    ]
    np.testing.assert_allclose(M.extraction_strength(rows), [1.0, 0.75, 0.25, 0.4, 1 / 3, 0.0])
    np.testing.assert_allclose(M.extraction_strength(rows, cap=False), [1.0, 0.75, 0.0, 0.4, 1 / 3, 0.0])
    with pytest.raises(ValueError, match="boolean"):
        M.extraction_strength([np.array([1, 0])])
    with pytest.raises(ValueError, match="1-D"):
        M.extraction_strength([np.zeros((2, 2), dtype=bool)])
