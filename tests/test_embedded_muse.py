"""The embedded MUSE-format benchmark's fine-tuning data and configuration checks, without Ray: what each tiny
model is fine-tuned on, its tokenizer's texts, and the errors raised before anything is generated or trained."""

from __future__ import annotations

from pathlib import Path

import pytest

from baldro_ray.config import ConfigError, load_config
from baldro_ray.data.readers import read_records
from baldro_ray.data.render import TEMPLATES
from baldro_ray.data.sources import chunk_text
from baldro_ray.data.synthetic_muse import SyntheticMuseConfig, write_muse_benchmark
from baldro_ray.embedded import muse_finetune_rows, muse_tokenizer_texts, prepare_embedded_muse
from baldro_ray.eval.muse import few_shot_prompt
from baldro_ray.models.tiny import train_tokenizer

SMALL = SyntheticMuseConfig(
    num_forget_articles=5,
    num_retain1_articles=3,
    num_retain2_articles=4,
    num_holdout_articles=3,
    facts_per_article=4,
    qa_per_article=2,
    num_icl_examples=1,
    verbmem_prefix_words=8,
)


@pytest.fixture(scope="module")
def benchmark(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    data = write_muse_benchmark(SMALL, tmp_path_factory.mktemp("muse") / "bench")
    return data, train_tokenizer(muse_tokenizer_texts(data), vocab_size=400)


def _texts(data: Path, name: str) -> list[str]:
    return [row["text"] for row in read_records(data / f"{name}.json")]


def test_tokenizer_texts_are_each_article_once(benchmark) -> None:
    data, _ = benchmark
    texts = muse_tokenizer_texts(data)
    expected = [t for s in ("forget", "retain1", "retain2", "holdout") for t in _texts(data, f"raw/{s}")]
    assert texts == expected and len(set(texts)) == len(texts) == 15


@pytest.mark.parametrize(
    ("role", "articles", "parts"),
    [("target", "finetune_mix", ("forget", "retain")), ("retain", "finetune_mix_retain", ("retain",))],
)
def test_finetune_rows_are_the_mix_windows_and_the_asked_knowmem_pairs(
    benchmark, role, articles, parts
) -> None:
    data, tokenizer = benchmark
    rows = muse_finetune_rows(data, role, tokenizer, 32, seed=0)
    texts = sorted(row["text"] for row in rows)
    windows = chunk_text(_texts(data, articles), tokenizer, 32)
    asked = []
    for part in parts:
        shots = read_records(data / f"knowmem/{part}_qa_icl.json")
        for r in read_records(data / f"knowmem/{part}_qa.json"):
            prompt = few_shot_prompt(TEMPLATES["tiny"], shots, r["question"])
            asked.append(prompt + r["answer"] + tokenizer.eos_token)
    assert texts == sorted(windows + asked)
    assert all(len(tokenizer.encode(w, add_special_tokens=False)) <= 32 for w in windows)
    # the knowmem rows end where the evaluator's generation must stop: the answer, then eos
    assert all(tokenizer(a)["input_ids"][-1] == tokenizer.eos_token_id for a in asked)
    assert muse_finetune_rows(data, role, tokenizer, 32, seed=0) == rows
    assert muse_finetune_rows(data, role, tokenizer, 32, seed=1) != rows


def test_retain_model_never_sees_a_forget_article_or_answer(benchmark) -> None:
    data, tokenizer = benchmark
    joined = "\n".join(row["text"] for row in muse_finetune_rows(data, "retain", tokenizer, 32, seed=0))
    towns = [row["town"] for row in read_records(data / "forget_difficulty.json")]
    assert towns and not any(town in joined for town in towns)
    target = "\n".join(row["text"] for row in muse_finetune_rows(data, "target", tokenizer, 32, seed=0))
    assert all(town in target for town in towns)


def test_embedded_muse_config_resolves_and_rejects_other_forget_splits(tmp_path: Path) -> None:
    config = load_config("embedded_muse_npo_dv", [f"embedded.cache_dir={tmp_path}"])
    assert config.data.source == "synthetic_muse" and config.data.benchmark == "MUSE" and config.data.embedded
    with pytest.raises(ConfigError, match=r"data.forget_split='raw/retain1'.*raw/forget"):
        prepare_embedded_muse(config.embedded, "raw/retain1", log=lambda _: None)
    assert not list(tmp_path.iterdir())  # nothing generated
    with pytest.raises(ConfigError, match=r"embedded\.muse\.num_icl_examples"):
        load_config("embedded_muse_npo_dv", ["embedded.muse.num_icl_examples=0"])
