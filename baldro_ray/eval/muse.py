"""MUSE evaluation in open-unlearning's ``MUSE_EVAL.json`` layout (docs/method.md#muse-metrics).

* ``forget_verbmem_ROUGE``: ROUGE-L F1 between the greedy 128-token continuation of each ``verbmem/forget`` prompt
  (raw text, no template) and its ground-truth continuation ``gt``.
* ``forget_knowmem_ROUGE`` / ``retain_knowmem_ROUGE``: ROUGE-L F1 (``rouge_type: rougeL_f1`` in open-unlearning's
  ``configs/eval/muse_metrics/*_knowmem_ROUGE.yaml``) of the greedy 32-token answer to each
  ``knowmem/{forget,retain}_qa`` question, asked after the ``*_qa_icl`` few-shot examples (template turns, each
  closed by ``assistant_end``) and cut at a blank line or the next ``Question``.
* ``mia_*`` AUCs of ``privleak/forget`` (members) against ``privleak/holdout`` (raw text, no eos, up to
  ``text_max_length`` tokens: 2048, ``configs/data/datasets/MUSE_MIA.yaml``), and ``privleak`` relative to the
  retain model's ``mia_min_k`` (0.5 without retain logs, as in open-unlearning).
* ``extraction_strength`` of the ``verbmem/forget`` ground truth after its prompt (prompt + " " + gt, as
  ``MUSE_forget_verbmem.yaml``'s ``insert_space``), as open-unlearning's ``muse.yaml`` reports it.

Per-sample entries under ``value_by_index`` as in TOFU_EVAL; all requests go to one ``Inference.run`` call.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from baldro_ray.data.render import PromptTemplate
from baldro_ray.data.sources import MuseSource
from baldro_ray.eval import metrics as M
from baldro_ray.eval.inference import Evaluation, Generate, Inference, Result, Score
from baldro_ray.eval.privacy import extraction_entry, mia_entries, privleak_entry

VERBMEM_NEW_TOKENS = 128
# Tokens of a raw text scored after its prefix (open-unlearning's MUSE_MIA.yaml, verbmem).
TEXT_MAX_LENGTH = 2048
KNOWMEM_NEW_TOKENS = 32
KNOWMEM_STOP = ("\n\n", "\nQuestion", "Question:")
MUSE_SUBSETS = (
    "verbmem/forget",
    "knowmem/forget_qa",
    "knowmem/retain_qa",
    "knowmem/forget_qa_icl",
    "knowmem/retain_qa_icl",
    "privleak/forget",
    "privleak/holdout",
)


def few_shot_prompt(template: PromptTemplate, examples: Sequence[Mapping[str, str]], question: str) -> str:
    """The in-context examples as finished turns (each closed by ``assistant_end``), then ``question``'s prompt."""
    shots = "".join(template.turn(e["question"], e["answer"]) for e in examples)
    return shots + template.prompt(question)


def _rouge_entry(
    values: Sequence[float],
    rows: Sequence[Mapping[str, str]],
    key: str,
    generations: Sequence[str],
    field: str,
) -> dict[str, Any]:
    by_index = {
        str(i): {
            field: float(v),
            "input": row[key],
            "ground_truth": row["gt" if key == "prompt" else "answer"],
            "generation": g,
        }
        for i, (v, row, g) in enumerate(zip(values, rows, generations))
    }
    return {"agg_value": float(sum(values) / len(values)), "value_by_index": by_index}


class MuseEvaluation(Evaluation):
    """The MUSE requests of one benchmark (see the module docstring) and their assembly into entries."""

    def __init__(
        self,
        source: MuseSource,
        template: PromptTemplate,
        text_max_length: int = TEXT_MAX_LENGTH,
        token_positions: str = "open_unlearning",
    ) -> None:
        self.token_positions = token_positions
        self.verbmem = source.load("verbmem/forget")
        self.knowmem = {part: source.load(f"knowmem/{part}_qa") for part in ("forget", "retain")}
        shots = {part: source.load(f"knowmem/{part}_qa_icl") for part in ("forget", "retain")}
        self.members, self.nonmembers = source.load("privleak/forget"), source.load("privleak/holdout")
        self.segments = [[Generate(row["prompt"], VERBMEM_NEW_TOKENS, raw=True) for row in self.verbmem]]
        for part in ("forget", "retain"):
            prompts = [few_shot_prompt(template, shots[part], row["question"]) for row in self.knowmem[part]]
            self.segments.append([Generate(p, KNOWMEM_NEW_TOKENS, True, KNOWMEM_STOP) for p in prompts])
        for rows in (self.members, self.nonmembers):
            self.segments.append([Score("", row["text"], True, True, text_max_length) for row in rows])
        self.segments.append(
            [Score(row["prompt"], " " + row["gt"], True, True, text_max_length) for row in self.verbmem]
        )

    def assemble(
        self, results: Sequence[Result], retain_eval: Mapping[str, Any] | None = None
    ) -> dict[str, dict[str, Any]]:
        verb_gen, forget_gen, retain_gen, inside, outside, verbmem_scores = self.parts(results)
        gt = [row["gt"] for row in self.verbmem]
        result = {
            "forget_verbmem_ROUGE": _rouge_entry(
                M.rouge_l_f1(verb_gen, gt), self.verbmem, "prompt", verb_gen, "rougeL_f1"
            )
        }
        for part, generations in (("forget", forget_gen), ("retain", retain_gen)):
            rows = self.knowmem[part]
            f1 = M.rouge_l_f1(generations, [row["answer"] for row in rows])
            result[f"{part}_knowmem_ROUGE"] = _rouge_entry(f1, rows, "question", generations, "rougeL_f1")
        result.update(mia_entries(inside, outside, self.token_positions))
        result["privleak"] = privleak_entry(result["mia_min_k"]["agg_value"], retain_eval)
        result["extraction_strength"] = extraction_entry(verbmem_scores, self.token_positions)
        return result


def evaluate_muse(
    inference: Inference,
    source: MuseSource,
    template: PromptTemplate,
    retain_eval: Mapping[str, Any] | None = None,
    text_max_length: int = TEXT_MAX_LENGTH,
    token_positions: str = "open_unlearning",
) -> dict[str, dict[str, Any]]:
    """verbmem, knowmem (forget and retain), the membership attacks, privleak and extraction strength of one
    model."""
    evaluation = MuseEvaluation(source, template, text_max_length, token_positions)
    return evaluation.run(inference, retain_eval)
