"""MUSE evaluator on a tiny MUSE-layout folder: verbmem and knowmem against direct greedy decoding and
rouge-score, the few-shot prompt by hand, the membership attacks, privleak and extraction strength against
open-unlearning's definitions computed directly (tests/eval/field_reference.py), with a text longer than 512
tokens."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from rouge_score import rouge_scorer

from baldro_ray.data.render import TEMPLATES, PromptTemplate
from baldro_ray.data.sources import MuseSource
from baldro_ray.eval.inference import LocalInference
from baldro_ray.eval.muse import (
    KNOWMEM_NEW_TOKENS,
    TEXT_MAX_LENGTH,
    VERBMEM_NEW_TOKENS,
    evaluate_muse,
    few_shot_prompt,
)
from baldro_ray.models.tiny import TinyModelSpec, build_tiny_llama, train_tokenizer
from tests.eval import field_reference as F

PLAIN = TEMPLATES["plain"]
FACTS = [
    "The harbour council of Vell met every spring to count the boats.",
    "Orin Tal kept bees on the roof of the old customs house.",
    "A storm in the year of the salt fire broke the northern pier.",
    "The lighthouse keeper wrote letters that were never sent.",
    "Market day moved to Thursday after the bridge was rebuilt.",
    "Children in Vell learn to row before they learn to read.",
]


def _write(folder: Path, name: str, rows: list[dict[str, Any]]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.json").write_text("\n".join(json.dumps(r) for r in rows))


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any, MuseSource]:
    root = tmp_path_factory.mktemp("muse")
    _write(root / "verbmem", "forget", [{"prompt": f[:20], "gt": f[20:]} for f in FACTS[:3]])
    qa = [{"question": f"What about fact {i}?", "answer": f.split(" ", 3)[-1]} for i, f in enumerate(FACTS)]
    _write(root / "knowmem", "forget_qa", qa[:2])
    _write(root / "knowmem", "retain_qa", qa[2:4])
    _write(root / "knowmem", "forget_qa_icl", qa[4:5])
    _write(root / "knowmem", "retain_qa_icl", qa[5:])
    # One member text is longer than 512 tokens: MUSE scores up to 2048.
    _write(root / "privleak", "forget", [{"text": f} for f in FACTS[:2]] + [{"text": " ".join(FACTS * 8)}])
    _write(root / "privleak", "holdout", [{"text": f} for f in FACTS[3:]])
    tokenizer = train_tokenizer(FACTS * 3 + [r["question"] for r in qa], vocab_size=300)
    spec = TinyModelSpec(
        hidden_size=16,
        num_layers=1,
        num_heads=2,
        num_kv_heads=2,
        intermediate_size=32,
        max_position_embeddings=1024,
    )
    model = build_tiny_llama(spec, tokenizer, seed=1).eval()
    return model, tokenizer, MuseSource(root)


@pytest.fixture(scope="module")
def result(setup: tuple[Any, Any, MuseSource]) -> dict[str, Any]:
    model, tokenizer, source = setup
    return evaluate_muse(LocalInference(model, tokenizer, PLAIN, max_length=64, batch_size=2), source, PLAIN)


def _greedy(model: Any, tokenizer: Any, text: str, new_tokens: int) -> str:
    ids = torch.tensor([tokenizer(text)["input_ids"]])
    with torch.no_grad():
        out = model.generate(
            input_ids=ids,
            do_sample=False,
            max_new_tokens=new_tokens,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
    new = out[0, ids.shape[1] :].tolist()
    if tokenizer.eos_token_id in new:
        new = new[: new.index(tokenizer.eos_token_id)]
    return tokenizer.decode(new, skip_special_tokens=True)


def test_few_shot_prompt_by_hand() -> None:
    tags = PromptTemplate("Q: ", "\n", "A: ", "\n\n")
    shots = [{"question": "x?", "answer": "1"}, {"question": "y?", "answer": "2"}]
    assert few_shot_prompt(tags, shots, "z?") == "Q: x?\nA: 1\n\nQ: y?\nA: 2\n\nQ: z?\nA: "
    # plain is open-unlearning's Llama-2-7b-hf template: its answers end with a blank line
    expected = "Question: x?\nAnswer: 1\n\nQuestion: z?\nAnswer: "
    assert few_shot_prompt(TEMPLATES["plain"], shots[:1], "z?") == expected


def test_verbmem_and_knowmem(result: dict[str, Any], setup: tuple[Any, Any, MuseSource]) -> None:
    model, tokenizer, source = setup
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    f1 = []
    for i, row in enumerate(source.load("verbmem/forget")):
        generation = _greedy(model, tokenizer, row["prompt"], VERBMEM_NEW_TOKENS)
        entry = result["forget_verbmem_ROUGE"]["value_by_index"][str(i)]
        assert entry["generation"] == generation and entry["ground_truth"] == row["gt"]
        f1.append(scorer.score(row["gt"], generation)["rougeL"].fmeasure)
        assert entry["rougeL_f1"] == pytest.approx(f1[-1])
    assert result["forget_verbmem_ROUGE"]["agg_value"] == pytest.approx(np.mean(f1))
    shots = source.load("knowmem/retain_qa_icl")
    for i, row in enumerate(source.load("knowmem/retain_qa")):
        generation = _greedy(
            model, tokenizer, few_shot_prompt(PLAIN, shots, row["question"]), KNOWMEM_NEW_TOKENS
        )
        generation = generation.split("\n\n")[0].split("\nQuestion")[0].split("Question:")[0]
        entry = result["retain_knowmem_ROUGE"]["value_by_index"][str(i)]
        assert entry["generation"] == generation
        # knowmem is ROUGE-L F1 (rouge_type: rougeL_f1 in open-unlearning's knowmem configs), not recall
        expected = scorer.score(row["answer"], generation)["rougeL"]
        assert entry["rougeL_f1"] == pytest.approx(expected.fmeasure) and "rougeL_recall" not in entry
    assert set(result["forget_knowmem_ROUGE"]["value_by_index"]) == {"0", "1"}


def test_attacks_privleak_extraction_match_the_field(
    result: dict[str, Any], setup: tuple[Any, Any, MuseSource]
) -> None:
    """Raw texts as open-unlearning scores them: no eos, up to 2048 tokens (a 512-token cut or an appended eos
    would move even the LOSS attack); each attack's scores and AUC; extraction strength on verbmem."""
    model, tokenizer, source = setup
    assert len(tokenizer(source.load("privleak/forget")[-1]["text"])["input_ids"]) > 512
    scored = {
        split: [
            F.score(model, F.text_instance(tokenizer, "", r["text"], TEXT_MAX_LENGTH))
            for r in source.load(split)
        ]
        for split in ("privleak/forget", "privleak/holdout")
    }
    for name, attack in F.attacks(tokenizer).items():
        inside, outside = ([attack(s) for s in scored[split]] for split in scored)
        ours = [v["score"] for v in result[name]["value_by_index"].values()]
        np.testing.assert_allclose(ours, -np.array(inside), rtol=1e-5, err_msg=name)
        assert result[name]["agg_value"] == pytest.approx(F.auc(inside, outside)), name
    auc = result["mia_min_k"]["agg_value"]
    assert result["privleak"]["agg_value"] == pytest.approx(((1 - auc) - 0.5) / 0.5 * 100)
    verbmem = source.load("verbmem/forget")
    strength = [
        F.extraction_strength(F.score(model, F.text_instance(tokenizer, r["prompt"], " " + r["gt"], 2048)))
        for r in verbmem
    ]
    got = [v["score"] for v in result["extraction_strength"]["value_by_index"].values()]
    np.testing.assert_allclose(got, strength, atol=1e-12)


@pytest.mark.ray
@pytest.mark.timeout(300)
def test_muse_through_the_run_plan_on_replicas(
    ray_cluster: None, setup: tuple[Any, Any, MuseSource], result: dict[str, Any], tmp_path: Path
) -> None:
    from baldro_ray.config import load_config
    from baldro_ray.eval.evaluate import evaluate_and_report, plan_evaluation, references
    from baldro_ray.models.tiny import save_model

    model, tokenizer, source = setup
    save_model(model, tokenizer, tmp_path / "model")
    config = load_config(
        overrides=[
            "data.source=muse",
            f"data.location={source.location}",
            f"model.name_or_path={tmp_path / 'model'}",
            "model.template=plain",
            "trainer.max_length=64",
            "evaluation.batch_size=2",
            "evaluation.replicas=2",
            f"evaluation.retain_model={tmp_path / 'model'}",
            f"embedded.cache_dir={tmp_path / 'cache'}",
        ]
    )
    plan = plan_evaluation(config, config.data.location)
    refs = references(plan, None, log=lambda _: None)
    (summary,) = evaluate_and_report(plan, [(str(tmp_path / "model"), tmp_path / "report")], refs)
    written = json.loads((tmp_path / "report" / "MUSE_EVAL.json").read_text())
    for name in ("forget_verbmem_ROUGE", "forget_knowmem_ROUGE", "retain_knowmem_ROUGE", "mia_min_k"):
        assert written[name]["agg_value"] == pytest.approx(result[name]["agg_value"], abs=1e-6), name
    assert summary["eval/privleak"] == pytest.approx(0.0)  # the retain model is this model
    assert "forget_quality" not in written  # a TOFU metric
