"""TOFU evaluator on a tiny synthetic benchmark and a briefly trained tiny Llama, checked against direct
teacher-forced computations, scipy, and hand aggregation."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from scipy import stats

from baldro_ray.data.render import TEMPLATES, encode_qa, pad_batch
from baldro_ray.data.sources import TofuSource
from baldro_ray.data.synthetic import SyntheticConfig, write_benchmark
from baldro_ray.eval import tofu
from baldro_ray.eval.inference import LocalInference
from baldro_ray.eval.metrics import UTILITY_KEYS
from baldro_ray.models.tiny import TinyModelSpec, build_tiny_llama, train_tokenizer
from tests.eval import field_reference as F

TEMPLATE = TEMPLATES["tiny"]
FORGET = "forget10"
HOLDOUT = "holdout10"
REQUIRED = (
    "forget_Q_A_Prob",
    "forget_Q_A_ROUGE",
    "forget_truth_ratio",
    *UTILITY_KEYS,
    "model_utility",
)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any, TofuSource]:
    folder = write_benchmark(
        SyntheticConfig(num_authors=10, qa_per_author=4, num_world_facts=4, num_real_authors=4),
        tmp_path_factory.mktemp("tofu"),
    )
    source = TofuSource(folder)
    rows = source.load("full") + source.load("real_authors") + source.load("world_facts")
    tokenizer = train_tokenizer([f"{r['question']} {r['answer']}" for r in rows], vocab_size=400)
    model = build_tiny_llama(
        TinyModelSpec(hidden_size=16, num_layers=1, num_heads=2, num_kv_heads=2, intermediate_size=32),
        tokenizer,
    )
    # Enough full-batch steps that generations share words with the answers: every ROUGE, hence model
    # utility, is then > 0.
    encoded = [encode_qa(tokenizer, r["question"], r["answer"], TEMPLATE, 128) for r in rows]
    batch = pad_batch(
        {"input_ids": [e["input_ids"] for e in encoded], "labels": [e["labels"] for e in encoded]},
        tokenizer.pad_token_id,
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-2)
    for _ in range(40):
        loss = model(**batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model, tokenizer, source


@pytest.fixture(scope="module")
def result(setup: tuple[Any, Any, TofuSource]) -> dict[str, Any]:
    model, tokenizer, source = setup
    return tofu.evaluate_tofu(_local(model, tokenizer), source, FORGET, HOLDOUT, max_new_tokens=8)


def _local(model: Any, tokenizer: Any) -> LocalInference:
    return LocalInference(model, tokenizer, TEMPLATE, max_length=128, batch_size=7)


def _direct_avg_nll(model: Any, tokenizer: Any, question: str, answer: str) -> float:
    """Teacher-forced average NLL of answer + eos after the prompt, by hand log-softmax."""
    prompt = tokenizer(TEMPLATE.prompt(question))["input_ids"]
    full = tokenizer(TEMPLATE.full(question, answer))["input_ids"] + [tokenizer.eos_token_id]
    assert full[: len(prompt)] == prompt
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([full])).logits[0].double()
    log_probs = logits - torch.logsumexp(logits, dim=-1, keepdim=True)
    targets = range(len(prompt), len(full))
    return -sum(log_probs[t - 1, full[t]].item() for t in targets) / len(targets)


def test_structure(result: dict[str, Any], setup: tuple[Any, Any, TofuSource]) -> None:
    source = setup[2]
    assert set(REQUIRED) <= set(result)
    assert "forget_quality" not in result
    sizes = {
        "forget": f"{FORGET}_perturbed",
        "retain": "retain_perturbed",
        "ra": "real_authors_perturbed",
        "wf": "world_facts_perturbed",
    }
    for name in REQUIRED[:-1]:
        entry = result[name]
        assert isinstance(entry["agg_value"], float)
        assert list(entry["value_by_index"]) == [
            str(i) for i in range(len(source.load(sizes[name.split("_")[0]])))
        ]
    sample = result["forget_Q_A_ROUGE"]["value_by_index"]["0"]
    assert set(sample) == {"rougeL_recall", "input", "ground_truth", "generation"}
    assert sample["ground_truth"] == source.load(f"{FORGET}_perturbed")[0]["answer"]
    assert set(result["retain_Q_A_Prob"]["value_by_index"]["0"]) == {"prob", "avg_loss"}
    assert set(result["ra_Q_A_Prob_normalised"]["value_by_index"]["0"]) == {"prob"}
    assert set(result["wf_Truth_Ratio"]["value_by_index"]["0"]) == {"score"}
    for name in ("forget_Q_A_ROUGE", "retain_Q_A_Prob", "ra_Q_A_Prob_normalised"):
        values = [
            v["rougeL_recall" if "ROUGE" in name else "prob"] for v in result[name]["value_by_index"].values()
        ]
        assert result[name]["agg_value"] == pytest.approx(np.mean(values))


def test_prob_matches_direct_teacher_forcing(
    result: dict[str, Any], setup: tuple[Any, Any, TofuSource]
) -> None:
    model, tokenizer, source = setup
    for subset, metric in (
        (f"{FORGET}_perturbed", "forget_Q_A_Prob"),
        ("retain_perturbed", "retain_Q_A_Prob"),
    ):
        rows = source.load(subset)
        for i in (0, len(rows) - 1):
            expected = math.exp(-_direct_avg_nll(model, tokenizer, rows[i]["question"], rows[i]["answer"]))
            assert result[metric]["value_by_index"][str(i)]["prob"] == pytest.approx(expected, rel=1e-4)
    row = source.load("world_facts_perturbed")[1]
    p = [
        math.exp(-_direct_avg_nll(model, tokenizer, row["question"], a))
        for a in [row["answer"], *row["perturbed_answer"]]
    ]
    assert result["wf_Q_A_Prob_normalised"]["value_by_index"]["1"]["prob"] == pytest.approx(
        p[0] / sum(p), rel=1e-4
    )


def test_truth_ratio_per_sample_and_aggregate(
    result: dict[str, Any], setup: tuple[Any, Any, TofuSource]
) -> None:
    model, tokenizer, source = setup
    row = source.load(f"{FORGET}_perturbed")[0]
    correct = _direct_avg_nll(model, tokenizer, row["question"], row["paraphrased_answer"])
    wrong = np.mean([_direct_avg_nll(model, tokenizer, row["question"], a) for a in row["perturbed_answer"]])
    tr0 = result["forget_truth_ratio"]["value_by_index"]["0"]["score"]
    assert tr0 == pytest.approx(math.exp(-wrong) / math.exp(-correct), rel=1e-4)

    forget = [v["score"] for v in result["forget_truth_ratio"]["value_by_index"].values()]
    assert result["forget_truth_ratio"]["agg_value"] == pytest.approx(
        np.mean([min(t, 1 / t) for t in forget])
    )
    for name in ("retain_Truth_Ratio", "ra_Truth_Ratio", "wf_Truth_Ratio"):
        scores = [v["score"] for v in result[name]["value_by_index"].values()]
        assert result[name]["agg_value"] == pytest.approx(np.mean([max(0.0, 1 - t) for t in scores]))


def test_model_utility_is_hmean(result: dict[str, Any]) -> None:
    values = [result[key]["agg_value"] for key in UTILITY_KEYS]
    assert min(values) > 0  # otherwise the harmonic mean below would not be exercised
    assert result["model_utility"]["agg_value"] == pytest.approx(stats.hmean(values))


def test_forget_quality_against_itself(result: dict[str, Any], setup: tuple[Any, Any, TofuSource]) -> None:
    model, tokenizer, source = setup
    again = tofu.evaluate_tofu(_local(model, tokenizer), source, FORGET, max_new_tokens=8, retain_eval=result)
    fq = again["forget_quality"]
    assert fq["agg_value"] == 1.0 and fq["statistic"] == 0.0 and fq["log10_pvalue"] == 0.0


def test_write_load_round_trip(result: dict[str, Any], tmp_path: Path) -> None:
    out = tofu.write_eval(result, tmp_path / "eval")
    assert sorted(p.name for p in out.iterdir()) == [tofu.EVAL_FILE, tofu.SUMMARY_FILE]
    loaded = tofu.load_retain_eval(out / tofu.EVAL_FILE)
    assert loaded == json.loads(json.dumps(result))
    summary = json.loads((out / tofu.SUMMARY_FILE).read_text())
    assert summary == {name: entry["agg_value"] for name, entry in result.items()}
    by_index = result["forget_truth_ratio"]["value_by_index"]
    np.testing.assert_allclose(
        tofu.forget_truth_ratios(loaded), [by_index[str(i)]["score"] for i in range(len(by_index))]
    )


@pytest.mark.parametrize(
    ("content", "key"),
    [
        ({"forget_Q_A_Prob": {"agg_value": 0.5}}, "forget_truth_ratio"),
        ({"forget_truth_ratio": {"agg_value": 0.5}}, "forget_truth_ratio.value_by_index"),
        (
            {"forget_truth_ratio": {"value_by_index": {"0": {"score": 1.0}, "1": {"score": "x"}}}},
            "forget_truth_ratio.value_by_index.1.score",
        ),
        (
            {"forget_truth_ratio": {"value_by_index": {"0": {"prob": 1.0}}}},
            "forget_truth_ratio.value_by_index.0.score",
        ),
        ([1, 2], "JSON object"),
    ],
)
def test_malformed_retain_eval_rejected(tmp_path: Path, content: Any, key: str) -> None:
    path = tmp_path / tofu.EVAL_FILE
    path.write_text(json.dumps(content))
    with pytest.raises(ValueError) as err:
        tofu.load_retain_eval(path)
    assert str(path) in str(err.value) and key in str(err.value)


def test_not_json_rejected(tmp_path: Path) -> None:
    path = tmp_path / tofu.EVAL_FILE
    path.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON") as err:
        tofu.load_retain_eval(path)
    assert str(path) in str(err.value)


def test_membership_attacks_and_extraction_match_the_field(
    result: dict[str, Any], setup: tuple[Any, Any, TofuSource]
) -> None:
    """Every attack's per-sample scores and AUC, and extraction strength, against open-unlearning's definitions
    computed directly (tests/eval/field_reference.py): zlib of the mean NLL, the Min-K% family and extraction
    strength without the eos position, Min-K%++'s variance floor, extraction strength's cap."""
    model, tokenizer, source = setup
    scored = {
        split: [
            F.score(model, F.qa_instance(tokenizer, TEMPLATE, row["question"], row["answer"], 128))
            for row in source.load(split)
        ]
        for split in (FORGET, HOLDOUT)
    }
    for name, attack in F.attacks(tokenizer).items():
        inside, outside = ([attack(s) for s in scored[split]] for split in (FORGET, HOLDOUT))
        ours = [v["score"] for v in result[name]["value_by_index"].values()]
        ours_out = [v["score"] for v in result[name]["holdout_value_by_index"].values()]
        # Our scores are "higher = member": the field's, negated.
        np.testing.assert_allclose(ours, -np.array(inside), rtol=1e-5, err_msg=name)
        np.testing.assert_allclose(ours_out, -np.array(outside), rtol=1e-5, err_msg=name)
        assert result[name]["agg_value"] == pytest.approx(F.auc(inside, outside), abs=1e-12), name
    strength = [F.extraction_strength(s) for s in scored[FORGET]]
    got = [v["score"] for v in result["extraction_strength"]["value_by_index"].values()]
    np.testing.assert_allclose(got, strength, atol=1e-12)
    assert result["extraction_strength"]["agg_value"] == pytest.approx(np.mean(strength))
    # No retain logs: open-unlearning's reference AUC of 0.5.
    auc = result["mia_min_k"]["agg_value"]
    assert result["privleak"]["reference_auc"] == 0.5
    assert result["privleak"]["agg_value"] == pytest.approx(((1 - auc) - 0.5) / 0.5 * 100)


def test_all_positions_keep_the_eos(result: dict[str, Any], setup: tuple[Any, Any, TofuSource]) -> None:
    """``token_positions="all"`` (the earlier definition): Min-K% over every labelled token and extraction
    strength uncapped, which the default must differ from."""
    model, tokenizer, source = setup
    kept = tofu.evaluate_tofu(_local(model, tokenizer), source, FORGET, HOLDOUT, 8, token_positions="all")
    rows = source.load(FORGET)
    scored = [
        F.score(model, F.qa_instance(tokenizer, TEMPLATE, r["question"], r["answer"], 128)) for r in rows
    ]
    lps = [np.sort(s.token_log_probs.numpy()) for s in scored]
    expected = [lp[: max(1, int(0.4 * lp.size))].mean() for lp in lps]
    got = [v["score"] for v in kept["mia_min_k"]["value_by_index"].values()]
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    default = [v["score"] for v in result["mia_min_k"]["value_by_index"].values()]
    assert not np.allclose(got, default)
    for s, v in zip(scored, kept["extraction_strength"]["value_by_index"].values()):
        hits = (s.vocab_log_probs.argmax(-1) == s.targets).tolist()
        wrong = [i for i, c in enumerate(hits) if not c]
        assert v["score"] == pytest.approx(1.0 - (0 if not wrong else wrong[-1] + 1) / len(hits))


def test_privleak_against_retain_logs(setup: tuple[Any, Any, TofuSource], result: dict[str, Any]) -> None:
    model, tokenizer, source = setup
    auc = result["mia_min_k"]["agg_value"]
    again = tofu.evaluate_tofu(
        _local(model, tokenizer), source, FORGET, HOLDOUT, 8, {**result, "mia_min_k": {"agg_value": 0.6}}
    )
    assert again["privleak"]["reference"] == "retain model"
    assert again["privleak"]["agg_value"] == pytest.approx(((1 - auc) - 0.4) / 0.4 * 100)
    perfect = tofu.evaluate_tofu(
        _local(model, tokenizer), source, FORGET, HOLDOUT, 8, {**result, "mia_min_k": {"agg_value": 1.0}}
    )
    assert math.isnan(perfect["privleak"]["agg_value"])
