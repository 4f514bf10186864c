"""Synthetic fictitious-news benchmark: MUSE schema and layout, knowmem/ICL/verbmem/privleak invariants,
distinct entities, difficulty, the finetuning mixes, validation and atomic writes."""

from __future__ import annotations

import json
import math
import re
import time
from collections import Counter
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import pytest

from baldro_ray.data import synthetic
from baldro_ray.data.render import TEMPLATES
from baldro_ray.data.sources import MUSE_CONFIGS, SCHEMAS, MuseSource, build_source
from baldro_ray.data.synthetic import MANIFEST_NAME, round_half_up
from baldro_ray.data.synthetic_muse import (
    ENTITY_FIELDS,
    MIN_SENTENCE_WORDS,
    MUSE_SUBSET_NAMES,
    RAW_SPLITS,
    SIDECARS,
    SyntheticMuseConfig,
    generate_muse_benchmark,
    write_muse_benchmark,
)
from baldro_ray.eval.muse import MUSE_SUBSETS, MuseEvaluation

DEFAULT = SyntheticMuseConfig()
SMALL = SyntheticMuseConfig(
    num_forget_articles=8, num_retain1_articles=5, num_retain2_articles=6, num_holdout_articles=4
)
Tables = dict[str, list[dict[str, Any]]]


@pytest.fixture(scope="module")
def bench() -> Tables:
    return generate_muse_benchmark(DEFAULT)


def files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def articles_of(bench: Tables, split: str) -> list[dict[str, Any]]:
    return [row for row in bench["articles"] if row["split"] == split]


def test_same_seed_gives_identical_bytes_and_other_seed_differs(tmp_path: Path) -> None:
    first = files(write_muse_benchmark(SMALL, tmp_path / "a"))
    assert first == files(write_muse_benchmark(SMALL, tmp_path / "b"))
    assert sorted(first) == sorted(
        [f"{name}.json" for name in MUSE_SUBSET_NAMES + SIDECARS] + [MANIFEST_NAME]
    )
    other, same = generate_muse_benchmark(replace(SMALL, seed=1)), generate_muse_benchmark(SMALL)
    for name in MUSE_SUBSET_NAMES:
        assert other[name] != same[name], name


def test_subsets_follow_the_muse_layout_and_columns(bench: Tables) -> None:
    assert MUSE_SUBSET_NAMES == (
        "raw/forget",
        "raw/retain1",
        "raw/retain2",
        "raw/holdout",
        "knowmem/forget_qa",
        "knowmem/retain_qa",
        "knowmem/forget_qa_icl",
        "knowmem/retain_qa_icl",
        "verbmem/forget",
        "privleak/forget",
        "privleak/retain",
        "privleak/holdout",
    )
    for name in MUSE_SUBSET_NAMES:
        columns = list(SCHEMAS[MUSE_CONFIGS[name.split("/")[0]][0]])
        assert bench[name] and all(list(row) == columns for row in bench[name]), name
    for name in ("finetune_mix", "finetune_mix_retain"):
        assert all(list(row) == ["text"] for row in bench[name])


def test_muse_source_loads_every_subset_the_evaluator_needs(tmp_path: Path) -> None:
    out = write_muse_benchmark(SMALL, tmp_path / "bench")
    tables = generate_muse_benchmark(SMALL)
    whole = MuseSource(out, max_length=10**6)
    assert set(MUSE_SUBSETS) <= set(whole.subsets()) and set(whole.subsets()) == set(MUSE_SUBSET_NAMES)
    for name in MUSE_SUBSET_NAMES:
        # A raw corpus is read as the reference does: its texts joined by blank lines, then cut into windows.
        want = (
            [{"text": "\n\n".join(row["text"] for row in tables[name])}]
            if name.startswith("raw/")
            else tables[name]
        )
        assert whole.load(name) == want, name
    chunked = build_source("muse", out, max_length=100)
    for split in RAW_SPLITS:
        chunks = [row["text"] for row in chunked.load(f"raw/{split}")]
        assert all(len(chunk) <= 100 for chunk in chunks)
        assert "".join(chunks) == "\n\n".join(row["text"] for row in tables[f"raw/{split}"])


def test_the_muse_evaluator_builds_its_requests_from_the_folder(tmp_path: Path) -> None:
    tables = generate_muse_benchmark(SMALL)
    evaluation = MuseEvaluation(
        MuseSource(write_muse_benchmark(SMALL, tmp_path / "bench")), TEMPLATES["plain"]
    )
    verbmem, forget_qa, retain_qa, members, nonmembers, _ = evaluation.segments
    assert len(verbmem) == len(members) == SMALL.num_forget_articles
    assert len(nonmembers) == SMALL.num_holdout_articles
    assert len(forget_qa) == (SMALL.num_forget_articles - SMALL.num_icl_examples) * SMALL.qa_per_article
    assert len(retain_qa) == (SMALL.num_retain2_articles - SMALL.num_icl_examples) * SMALL.qa_per_article
    shots = tables["knowmem/forget_qa_icl"]
    assert all(shot["question"] in request.question for shot in shots for request in forget_qa)


def test_texts_are_single_spaced_lines_without_placeholders(bench: Tables) -> None:
    for split in RAW_SPLITS:
        for row in bench[f"raw/{split}"]:
            text = row["text"]
            assert "\n" not in text and "  " not in text and "{" not in text and text == text.strip()
    texts = [row["text"] for split in RAW_SPLITS for row in bench[f"raw/{split}"]]
    assert len(set(texts)) == len(texts)


@pytest.mark.parametrize("part, raw", [("forget", "forget"), ("retain", "retain2")])
def test_knowmem_answers_are_spans_of_their_article(part: str, raw: str, bench: Tables) -> None:
    texts = [row["text"] for row in bench[f"raw/{raw}"]]
    covered: Counter[str] = Counter()
    for article in articles_of(bench, raw):
        assert article["knowmem"] in (f"knowmem/{part}_qa", f"knowmem/{part}_qa_icl")
        start, stop = article["first_qa_row"], article["first_qa_row"] + article["num_qa"]
        rows = bench[article["knowmem"]][start:stop]
        assert len(rows) == article["num_qa"]
        for row in rows:
            assert row["answer"] in texts[article["split_index"]]
            assert any(entity in row["question"] for entity in article["entities"])
            covered[article["knowmem"]] += 1
    for name in (f"knowmem/{part}_qa", f"knowmem/{part}_qa_icl"):
        assert covered[name] == len(bench[name])
        questions = [row["question"] for row in bench[name]]
        assert len(set(questions)) == len(questions)
    assert len(bench[f"knowmem/{part}_qa_icl"]) == DEFAULT.num_icl_examples


@pytest.mark.parametrize("part, raw", [("forget", "forget"), ("retain", "retain2")])
def test_icl_examples_come_from_other_articles_than_the_questions(part: str, raw: str, bench: Tables) -> None:
    articles = articles_of(bench, raw)
    icl = [a for a in articles if a["knowmem"] == f"knowmem/{part}_qa_icl"]
    asked = [a for a in articles if a["knowmem"] == f"knowmem/{part}_qa"]
    assert [a["split_index"] for a in icl] == list(range(DEFAULT.num_icl_examples))
    assert all(a["num_qa"] == 1 for a in icl) and all(a["num_qa"] == DEFAULT.qa_per_article for a in asked)
    qa_text = " ".join(r["question"] + " " + r["answer"] for r in bench[f"knowmem/{part}_qa"])
    for article in icl:
        assert not any(entity in qa_text for entity in article["entities"])


def test_only_forget_and_retain2_articles_have_qa(bench: Tables) -> None:
    for split in ("retain1", "holdout"):
        assert all(a["knowmem"] is None and a["num_qa"] == 0 for a in articles_of(bench, split))


def test_verbmem_is_prefix_and_true_continuation_of_every_forget_article(bench: Tables) -> None:
    prefix = DEFAULT.verbmem_prefix_words
    forget = bench["raw/forget"]
    assert len(bench["verbmem/forget"]) == len(forget)
    for row, article in zip(bench["verbmem/forget"], forget, strict=True):
        assert row["prompt"] + " " + row["gt"] == article["text"]
        assert len(row["prompt"].split(" ")) == prefix and row["gt"].strip()


def test_longest_allowed_prefix_leaves_a_continuation() -> None:
    config = replace(
        SMALL, facts_per_article=1, qa_per_article=1, verbmem_prefix_words=MIN_SENTENCE_WORDS - 1
    )
    for row in generate_muse_benchmark(config)["verbmem/forget"]:
        assert row["gt"].strip() and len(row["prompt"].split(" ")) == MIN_SENTENCE_WORDS - 1


def test_privleak_members_retain_and_holdout(bench: Tables) -> None:
    assert bench["privleak/forget"] == bench["raw/forget"]
    assert bench["privleak/retain"] == bench["raw/retain2"]
    assert bench["privleak/holdout"] == bench["raw/holdout"]
    trained = {row["text"] for row in bench["finetune_mix"]}
    assert not trained & {row["text"] for row in bench["privleak/holdout"]}


def test_entity_names_are_never_shared_across_articles_or_splits(bench: Tables) -> None:
    owner: dict[str, int] = {}
    for article in bench["articles"]:
        assert len(article["entities"]) == len(ENTITY_FIELDS)
        for entity in article["entities"]:
            assert owner.setdefault(entity, article["index"]) == article["index"], entity
    texts = {split: " ".join(row["text"] for row in bench[f"raw/{split}"]) for split in RAW_SPLITS}
    for article in bench["articles"]:
        for split, text in texts.items():
            if split != article["split"]:
                for entity in article["entities"]:
                    assert not re.search(rf"\b{re.escape(entity)}\b", text), (entity, split)


@pytest.mark.parametrize("fraction", [0.0, 0.25, 0.5, 0.8, 1.0])
@pytest.mark.parametrize("num_forget", [4, 7, 30])
def test_difficulty_follows_hard_fraction(fraction: float, num_forget: int) -> None:
    config = replace(SMALL, num_forget_articles=num_forget, hard_fraction=fraction, hard_repeat=3)
    tables = generate_muse_benchmark(config)
    rows = tables["forget_difficulty"]
    assert [row["index"] for row in rows] == list(range(num_forget))
    assert sum(row["difficulty"] == "hard" for row in rows) == round_half_up(num_forget * fraction)
    forget = articles_of(tables, "forget")
    for row, article in zip(rows, forget, strict=True):
        assert row["difficulty"] in ("hard", "easy")
        assert row["repeat"] == (3 if row["difficulty"] == "hard" else 1)
        assert (article["difficulty"], article["repeat"]) == (row["difficulty"], row["repeat"])
        assert (
            row["town"] == article["entities"][0]
            and row["town"] in tables["raw/forget"][row["index"]]["text"]
        )
    others = [a for a in tables["articles"] if a["split"] != "forget"]
    assert all(a["difficulty"] is None and a["repeat"] == int(a["split"] != "holdout") for a in others)


def test_finetune_mix_repeats_hard_articles_then_holds_the_retain_sets(bench: Tables) -> None:
    config = DEFAULT
    mix, retain_mix = bench["finetune_mix"], bench["finetune_mix_retain"]
    counts = Counter(row["text"] for row in mix)
    difficulty = bench["forget_difficulty"]
    assert any(row["difficulty"] == "hard" for row in difficulty)
    for row, article in zip(difficulty, bench["raw/forget"], strict=True):
        assert (
            counts[article["text"]]
            == row["repeat"]
            == (config.hard_repeat if row["difficulty"] == "hard" else 1)
        )
    assert retain_mix == bench["raw/retain1"] + bench["raw/retain2"]
    assert mix[len(mix) - len(retain_mix) :] == retain_mix
    assert len(mix) == sum(row["repeat"] for row in difficulty) + len(retain_mix)
    assert sum(a["repeat"] for a in bench["articles"]) == len(mix)
    forget_texts = {row["text"] for row in bench["raw/forget"]}
    assert not forget_texts & {row["text"] for row in retain_mix}


def test_manifest_lists_every_file_with_rows_and_hashes(tmp_path: Path) -> None:
    import hashlib

    out = write_muse_benchmark(SMALL, tmp_path / "bench")
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    assert manifest["format"] == "baldro-ray/synthetic-muse" and manifest["config"] == asdict(SMALL)
    assert manifest["splits"] == list(MUSE_SUBSET_NAMES) and manifest["sidecars"] == list(SIDECARS)
    digest = hashlib.sha256()
    for name in sorted(manifest["files"]):
        entry, data = manifest["files"][name], (out / name).read_bytes()
        assert entry["sha256"] == hashlib.sha256(data).hexdigest() and entry["rows"] == len(data.splitlines())
        digest.update(f"{name}\0{entry['sha256']}\n".encode())
    assert manifest["content_sha256"] == digest.hexdigest()


def mtimes(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*")}


def test_second_write_reuses_and_other_content_replaces(tmp_path: Path) -> None:
    out = write_muse_benchmark(SMALL, tmp_path / "bench")
    before = mtimes(out)
    time.sleep(0.02)
    assert write_muse_benchmark(SMALL, str(out)) == out and mtimes(out) == before

    (out / "knowmem" / "forget_qa.json").write_text("damaged\n")
    write_muse_benchmark(SMALL, out)
    assert files(out) == files(write_muse_benchmark(SMALL, tmp_path / "fresh"))

    other = replace(SMALL, seed=7)
    write_muse_benchmark(other, out)
    assert MuseSource(out).load("knowmem/forget_qa") == generate_muse_benchmark(other)["knowmem/forget_qa"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bench", "fresh"]


def test_crash_while_writing_leaves_no_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    written = []

    def failing_write(path: Path, data: bytes) -> None:
        if len(written) == 6:
            raise OSError("disk full")
        written.append(path)
        path.write_bytes(data)

    monkeypatch.setattr(synthetic, "_write_synced", failing_write)
    with pytest.raises(OSError, match="disk full"):
        write_muse_benchmark(SMALL, tmp_path / "bench")
    assert list(tmp_path.iterdir()) == []


def test_foreign_folder_is_never_replaced(tmp_path: Path) -> None:
    out = tmp_path / "mine"
    (out / "raw").mkdir(parents=True)
    (out / "raw" / "forget.json").write_text('{"text":"keep me"}\n')
    with pytest.raises(FileExistsError, match="not a synthetic benchmark"):
        write_muse_benchmark(SMALL, out)
    assert files(out) == {"raw/forget.json": b'{"text":"keep me"}\n'}


@pytest.mark.parametrize(
    "field, value",
    [
        ("num_forget_articles", 3),
        ("num_forget_articles", 0),
        ("num_forget_articles", "24"),
        ("num_forget_articles", True),
        ("num_forget_articles", 10**6),
        ("num_retain1_articles", 0),
        ("num_retain2_articles", 3),
        ("num_holdout_articles", 0),
        ("num_holdout_articles", 2.0),
        ("facts_per_article", 0),
        ("facts_per_article", 13),
        ("qa_per_article", 0),
        ("qa_per_article", 9),
        ("num_icl_examples", 0),
        ("num_icl_examples", 21),
        ("num_icl_examples", 1.0),
        ("verbmem_prefix_words", 0),
        ("verbmem_prefix_words", 8 * MIN_SENTENCE_WORDS),
        ("hard_fraction", -0.1),
        ("hard_fraction", 1.5),
        ("hard_fraction", math.nan),
        ("hard_fraction", "0.5"),
        ("hard_repeat", 0),
        ("hard_repeat", 101),
        ("seed", "x"),
        ("seed", None),
    ],
)
def test_bad_config_values_raise_value_error_naming_the_field(field: str, value: Any) -> None:
    with pytest.raises(ValueError, match=rf"SyntheticMuseConfig\.{field}=.*allowed is"):
        SyntheticMuseConfig(**{field: value})


def test_smallest_config_still_generates() -> None:
    config = SyntheticMuseConfig(
        num_forget_articles=2,
        num_retain1_articles=1,
        num_retain2_articles=2,
        num_holdout_articles=1,
        facts_per_article=1,
        qa_per_article=1,
        num_icl_examples=1,
        verbmem_prefix_words=1,
        hard_fraction=1.0,
        hard_repeat=1,
    )
    tables = generate_muse_benchmark(config)
    assert all(tables[name] for name in MUSE_SUBSET_NAMES)
    assert len(tables["knowmem/forget_qa"]) == len(tables["knowmem/retain_qa"]) == 1
    assert len(tables["finetune_mix"]) == 2 + 1 + 2
