"""Single-process TOFU evaluation in open-unlearning's ``TOFU_EVAL.json`` layout (docs/method.md#tofu-metrics).

Each split becomes a list of inference requests (:func:`split_requests`: teacher-forced scores of the answer,
the correct answer and every perturbed answer, and a greedy generation per question); the whole evaluation is
one call of an :class:`~baldro_ray.eval.inference.Inference` (in process or a Ray Data replica pool), and
:func:`split_metrics` turns a split's per-sample arrays into metric entries without touching a model.

Result layout (open-unlearning's): ``{metric: {"agg_value": float, "value_by_index": {"0": {...}, ...}}}``,
``value_by_index`` keyed by the row's 0-based position in the split as a string. Per-sample entries:

* ``*_Q_A_Prob``: ``{"prob": exp(-a), "avg_loss": a}``; ``*_Q_A_Prob_normalised``:
  ``{"prob": P_c / (P_c + sum P_w)}`` with ``P_c`` the answer's probability; agg = mean.
* ``*_Q_A_ROUGE``: ``{"rougeL_recall", "input" (question), "ground_truth" (answer), "generation"}``;
  agg = mean. The generation is greedy, up to ``max_new_tokens``, cut at eos.
* truth ratios: ``{"score": TR}`` (``metrics.truth_ratio``; no epsilon, so TR may be ``inf``); agg =
  ``truth_ratio_score(kind="forget")`` on forget, ``kind="utility"`` elsewhere.
* ``model_utility`` and ``forget_quality`` are aggregates only (no ``value_by_index``), as in open-unlearning;
  ``forget_quality`` carries ``statistic`` and ``log10_pvalue`` beside ``agg_value`` (the p-value).

Every perturbed split must give each row the same number of perturbed answers (TOFU does), so wrong-answer
NLLs form an ``[N, K]`` array.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from baldro_ray.atomic import write_json
from baldro_ray.data.sources import TofuSource
from baldro_ray.eval import metrics as M
from baldro_ray.eval.inference import Evaluation, Generate, Inference, Request, Result, Score
from baldro_ray.eval.privacy import extraction_entry, mia_entries, privleak_entry

EVAL_FILE = "TOFU_EVAL.json"
SUMMARY_FILE = "TOFU_SUMMARY.json"


@dataclass(frozen=True)
class SplitScoring:
    """How one TOFU split is scored: metric names, subset, correct-answer column, truth-ratio aggregation."""

    prefix: str
    subset: str  # "{forget_split}" is replaced by the forget split's name
    correct_column: str  # P_correct of the truth ratio
    normalised: bool  # Prob is normalised over the perturbed answers (real authors, world facts)
    truth_ratio_name: str
    truth_ratio_kind: str

    @property
    def prob_name(self) -> str:
        return f"{self.prefix}_Q_A_Prob" + ("_normalised" if self.normalised else "")

    @property
    def rouge_name(self) -> str:
        return f"{self.prefix}_Q_A_ROUGE"


SPLITS: tuple[SplitScoring, ...] = (
    SplitScoring(
        "forget", "{forget_split}_perturbed", "paraphrased_answer", False, "forget_truth_ratio", "forget"
    ),
    SplitScoring("retain", "retain_perturbed", "paraphrased_answer", False, "retain_Truth_Ratio", "utility"),
    SplitScoring("ra", "real_authors_perturbed", "answer", True, "ra_Truth_Ratio", "utility"),
    SplitScoring("wf", "world_facts_perturbed", "answer", True, "wf_Truth_Ratio", "utility"),
)


def split_requests(
    rows: Sequence[Mapping[str, Any]], correct_column: str, max_new_tokens: int
) -> list[Request]:
    """One split's requests: the answer, the correct answer (``correct_column``) and every perturbed answer
    scored, then one generation per question. ``split_results`` reads the results back in this order."""
    counts = {len(row["perturbed_answer"]) for row in rows}
    if len(counts) != 1:
        raise ValueError(f"rows have differing numbers of perturbed answers {sorted(counts)}; expected one K")
    requests: list[Request] = [Score(row["question"], row["answer"]) for row in rows]
    requests += [Score(row["question"], row[correct_column]) for row in rows]
    requests += [Score(row["question"], wrong) for row in rows for wrong in row["perturbed_answer"]]
    return requests + [Generate(row["question"], max_new_tokens) for row in rows]


def split_results(
    rows: Sequence[Mapping[str, Any]], results: Sequence[Result]
) -> tuple[dict[str, np.ndarray], list[str]]:
    """``({"answer" [N], "correct" [N], "perturbed" [N, K]} average NLLs, generations)`` of ``split_requests``."""
    n, k = len(rows), len(rows[0]["perturbed_answer"])
    scores, generations = results[: n * (2 + k)], list(results[n * (2 + k) :])
    avg = np.array([r["nll_sum"] / r["n_tokens"] for r in scores])
    nlls = {"answer": avg[:n], "correct": avg[n : 2 * n], "perturbed": avg[2 * n :].reshape(n, k)}
    return nlls, generations


def _entry(agg_value: float, per_sample: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    return {
        "agg_value": float(agg_value),
        "value_by_index": {str(i): dict(v) for i, v in enumerate(per_sample)},
    }


def split_metrics(
    scoring: SplitScoring,
    rows: Sequence[Mapping[str, Any]],
    nlls: Mapping[str, np.ndarray],
    generations: Sequence[str],
) -> dict[str, dict[str, Any]]:
    """The split's Prob (or normalised Prob), ROUGE and truth-ratio entries from the average-NLL arrays and the
    greedy generations of :func:`split_results`, all aligned with ``rows``."""
    answers = [row["answer"] for row in rows]
    if scoring.normalised:
        probs = M.normalised_probability(nlls["answer"], nlls["perturbed"])
        prob_values = [{"prob": float(p)} for p in probs]
    else:
        probs = M.answer_probability(nlls["answer"])
        prob_values = [{"prob": float(p), "avg_loss": float(a)} for p, a in zip(probs, nlls["answer"])]
    rouge = M.rouge_l_recall(generations, answers)
    rouge_values = [
        {"rougeL_recall": float(r), "input": row["question"], "ground_truth": gt, "generation": gen}
        for r, row, gt, gen in zip(rouge, rows, answers, generations)
    ]
    tr = M.truth_ratio(nlls["correct"], nlls["perturbed"])
    return {
        scoring.prob_name: _entry(probs.mean(), prob_values),
        scoring.rouge_name: _entry(rouge.mean(), rouge_values),
        scoring.truth_ratio_name: _entry(
            M.truth_ratio_score(tr, scoring.truth_ratio_kind), [{"score": float(t)} for t in tr]
        ),
    }


def forget_truth_ratios(result: Mapping[str, Any], source: str = "evaluation") -> np.ndarray:
    """Per-sample ``forget_truth_ratio`` scores of a TOFU_EVAL dict, in index order.

    Raises one ``ValueError`` naming ``source`` and the key path that is missing or not numeric.
    """
    node: Any = result
    path = ""
    for key in ("forget_truth_ratio", "value_by_index"):
        path = f"{path}.{key}" if path else key
        if not isinstance(node, Mapping) or key not in node:
            raise ValueError(f"{source}: missing key {path}")
        node = node[key]
    if not isinstance(node, Mapping) or not node:
        raise ValueError(f"{source}: {path} must be a non-empty mapping of index -> {{'score': number}}")
    scores = []
    for index in sorted(node, key=lambda i: (len(str(i)), str(i))):
        value = node[index].get("score") if isinstance(node[index], Mapping) else None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
            raise ValueError(f"{source}: {path}.{index}.score is {value!r}; expected a number")
        scores.append(float(value))
    return np.array(scores)


class TofuEvaluation(Evaluation):
    """The TOFU requests of one benchmark (see :func:`evaluate_tofu`) and their assembly into entries."""

    def __init__(
        self,
        source: TofuSource,
        forget_split: str,
        holdout_split: str | None = None,
        max_new_tokens: int = 200,
        token_positions: str = "open_unlearning",
    ) -> None:
        self.token_positions = token_positions
        self.splits = [
            (scoring, source.load(scoring.subset.format(forget_split=forget_split))) for scoring in SPLITS
        ]
        self.segments = [
            split_requests(rows, scoring.correct_column, max_new_tokens) for scoring, rows in self.splits
        ]
        self.members = source.load(forget_split) if holdout_split else []
        self.nonmembers = source.load(holdout_split) if holdout_split else []
        for rows in (self.members, self.nonmembers):
            self.segments.append([Score(row["question"], row["answer"], token_stats=True) for row in rows])

    def assemble(
        self, results: Sequence[Result], retain_eval: Mapping[str, Any] | None = None
    ) -> dict[str, dict[str, Any]]:
        parts = self.parts(results)
        result: dict[str, dict[str, Any]] = {}
        for (scoring, rows), part in zip(self.splits, parts):
            nlls, generations = split_results(rows, part)
            result.update(split_metrics(scoring, rows, nlls, generations))
        result["model_utility"] = {
            "agg_value": M.model_utility({key: result[key]["agg_value"] for key in M.UTILITY_KEYS})
        }
        if self.members:
            inside, outside = parts[-2], parts[-1]
            result.update(mia_entries(inside, outside, self.token_positions))
            result["extraction_strength"] = extraction_entry(inside, self.token_positions)
            result["privleak"] = privleak_entry(result["mia_min_k"]["agg_value"], retain_eval)
        if retain_eval is not None:
            result["forget_quality"] = forget_quality_entry(result, retain_eval)
        return result


def evaluate_tofu(
    inference: Inference,
    source: TofuSource,
    forget_split: str,
    holdout_split: str | None = None,
    max_new_tokens: int = 200,
    retain_eval: Mapping[str, Any] | None = None,
    token_positions: str = "open_unlearning",
) -> dict[str, dict[str, Any]]:
    """Every split's entries (see module docstring), ``model_utility`` (``metrics.model_utility`` of the nine
    ``UTILITY_KEYS`` agg values), with ``holdout_split`` the membership attacks (forget vs holdout),
    ``extraction_strength`` and ``privleak``, and given the retain model's TOFU_EVAL dict ``forget_quality``
    (KS test of this model's per-sample forget truth ratios against the retain model's).

    All requests go to ``inference`` in one call (one replica job). ``token_positions``: see
    :mod:`baldro_ray.eval.privacy`.
    """
    evaluation = TofuEvaluation(source, forget_split, holdout_split, max_new_tokens, token_positions)
    return evaluation.run(inference, retain_eval)


def forget_quality_entry(result: Mapping[str, Any], retain_eval: Mapping[str, Any]) -> dict[str, float]:
    """KS test of ``result``'s per-sample forget truth ratios against ``retain_eval``'s: the p-value as
    ``agg_value``, with ``statistic`` and ``log10_pvalue``."""
    fq = M.forget_quality(forget_truth_ratios(result), forget_truth_ratios(retain_eval, "retain_eval"))
    return {"agg_value": fq["pvalue"], "statistic": fq["statistic"], "log10_pvalue": fq["log10_pvalue"]}


def load_retain_eval(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read an open-unlearning ``TOFU_EVAL.json``; ``ValueError`` naming the file (and key path) unless it is
    a JSON object whose ``forget_truth_ratio.value_by_index`` entries all carry a numeric ``score``."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON: {err}") from err
    if not isinstance(data, dict):
        # ValueError, not TypeError: callers catch one error type for every malformed file.
        raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__}")  # noqa: TRY004
    forget_truth_ratios(data, str(path))
    return data


def write_eval(
    result: Mapping[str, Mapping[str, Any]], out_dir: str | os.PathLike[str], benchmark: str = "TOFU"
) -> Path:
    """Write ``<benchmark>_EVAL.json`` (``result``) and ``<benchmark>_SUMMARY.json`` (metric -> agg_value) into
    ``out_dir``, each atomically; return ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / f"{benchmark}_EVAL.json", result)
    write_json(
        out / f"{benchmark}_SUMMARY.json", {name: entry["agg_value"] for name, entry in result.items()}
    )
    return out
