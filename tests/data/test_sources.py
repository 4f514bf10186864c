"""Data sources: the real TOFU files, the three file forms, MUSE chunking, and one DataError per bad file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from baldro_ray.data.readers import DataError, read_record_file, read_records
from baldro_ray.data.sources import (
    TOFU_SUBSETS,
    DataSource,
    FilesSource,
    MuseSource,
    TofuSource,
    build_source,
    check_disjoint,
    chunk_text,
    tofu_schema,
    validate_rows,
)
from tests.conftest import TOFU_DIR, TOFU_ROWS

QA = [{"question": f"Who is author {i}?", "answer": f"Author {i} writes novels."} for i in range(5)]


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def write_array(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rows, indent=1))
    return path


def write_parquet(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def raises_one(func: Any, *args: Any) -> str:
    """Run ``func`` and return the message of the single DataError it raises."""
    with pytest.raises(DataError) as info:
        func(*args)
    assert not isinstance(info.value.__cause__, DataError)
    return str(info.value)


# --- the real TOFU files -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tofu() -> TofuSource:
    if not TOFU_DIR.is_dir():
        pytest.skip(f"TOFU data not found at {TOFU_DIR}")
    return TofuSource(TOFU_DIR)


@pytest.fixture(scope="module")
def tofu_full(tofu: TofuSource) -> list[dict[str, Any]]:
    return tofu.load("full")


@pytest.mark.tofu
def test_real_tofu_lists_all_subsets(tofu: TofuSource) -> None:
    assert sorted(tofu.subsets()) == sorted(TOFU_SUBSETS) == sorted(TOFU_ROWS)


@pytest.mark.tofu
@pytest.mark.parametrize("subset", sorted(TOFU_ROWS))
def test_real_tofu_row_counts(tofu: TofuSource, subset: str) -> None:
    rows = tofu.load(subset)
    assert len(rows) == TOFU_ROWS[subset]
    width = {"perturbed": 5, "mc_perturbed": 3}.get(tofu_schema(subset))
    if width:
        assert all(len(row["perturbed_answer"]) == width for row in rows)


@pytest.mark.tofu
def test_real_tofu_holds_both_json_forms(tofu: TofuSource) -> None:
    assert read_record_file(TOFU_DIR / "full.json").form == "jsonl"
    for name in ("holdout01", "holdout05", "holdout10"):
        assert read_record_file(TOFU_DIR / f"{name}.json").form == "json"
    assert tofu.load("holdout10")[:40] == tofu.load("holdout01")


@pytest.mark.tofu
@pytest.mark.parametrize(
    ("forget", "retain", "n"),
    [("forget01", "retain99", 40), ("forget05", "retain95", 200), ("forget10", "retain90", 400)],
)
def test_real_tofu_forget_is_tail_of_full_and_disjoint_from_retain(
    tofu: TofuSource, tofu_full: list[dict[str, Any]], forget: str, retain: str, n: int
) -> None:
    forget_rows, retain_rows = tofu.load(forget), tofu.load(retain)
    assert forget_rows == tofu_full[-n:]
    assert retain_rows == tofu_full[:-n]
    check_disjoint(forget_rows, retain_rows, forget, retain)
    check_disjoint(tofu.load("holdout10"), tofu_full, "holdout10", "full")


@pytest.mark.tofu
def test_real_tofu_overlap_is_reported(tofu: TofuSource, tofu_full: list[dict[str, Any]]) -> None:
    message = raises_one(check_disjoint, tofu.load("forget01"), tofu_full, "forget01.json", "full.json")
    assert "forget01.json row 0 (0-based)" in message and "full.json row 3960 (0-based)" in message


# --- readers and the three forms -----------------------------------------------------------------------


def test_jsonl_array_and_parquet_load_identically(tmp_path: Path) -> None:
    extra = {"perturbed_answer": ["a", "b"], "paraphrased_question": "q", "paraphrased_answer": "p"}
    rows = [{**row, **extra} for row in QA]
    paths = [
        write_jsonl(tmp_path / "jsonl" / "forget01_perturbed.json", rows),
        write_array(tmp_path / "array" / "forget01_perturbed.json", rows),
        write_parquet(tmp_path / "parquet" / "forget01_perturbed.parquet", rows),
    ]
    assert [read_record_file(path).form for path in paths] == ["jsonl", "json", "parquet"]
    for path in paths:
        assert read_records(path) == rows
        assert TofuSource(path.parent).load("forget01_perturbed") == rows


def test_form_is_detected_by_content_not_extension(tmp_path: Path) -> None:
    array_named_jsonl = write_array(tmp_path / "a" / "forget01.jsonl", QA)
    jsonl_with_blank_lines = tmp_path / "b" / "forget01.json"
    jsonl_with_blank_lines.parent.mkdir()
    jsonl_with_blank_lines.write_text("\n" + json.dumps(QA[0]) + "\n\n" + json.dumps(QA[1]) + "\n")
    assert TofuSource(array_named_jsonl.parent).load("forget01") == QA
    records = read_record_file(jsonl_with_blank_lines)
    assert records.rows == QA[:2] and records.lines == (2, 4)
    assert records.locate(1) == "line 4 (1-based line number, JSON Lines)"


# --- MUSE ----------------------------------------------------------------------------------------------


@pytest.fixture
def muse_dir(tmp_path: Path) -> Path:
    root = tmp_path / "muse"
    raw_forget = [{"text": "the cat sat on the mat " * 3}, {"text": "a dog ran"}]
    write_jsonl(root / "raw" / "forget.json", raw_forget)
    write_array(root / "raw" / "retain1.json", [{"text": "x" * 25}])
    write_jsonl(root / "knowmem" / "forget_qa.jsonl", QA[:2])
    write_parquet(root / "verbmem" / "forget.parquet", [{"prompt": "Once upon", "gt": "a time"}])
    write_jsonl(root / "privleak" / "holdout.json", [{"text": "private text " * 100}])
    return root


def test_muse_subsets_and_loads(muse_dir: Path) -> None:
    source = MuseSource(muse_dir, max_length=10)
    assert source.subsets() == [
        "raw/forget",
        "raw/retain1",
        "knowmem/forget_qa",
        "verbmem/forget",
        "privleak/holdout",
    ]
    assert source.load("knowmem/forget_qa") == QA[:2]
    assert source.load("verbmem/forget") == [{"prompt": "Once upon", "gt": "a time"}]
    assert source.load("privleak/holdout") == [{"text": "private text " * 100}]  # not chunked
    assert source.load("raw/retain1") == [{"text": "x" * 10}, {"text": "x" * 10}, {"text": "x" * 5}]


def test_chunk_text_by_characters_rebuilds_the_joined_corpus() -> None:
    texts = ["abcdefghij" * 3 + "k", "short", "tail"]
    chunks = chunk_text(texts, None, 7)
    assert all(len(chunk) <= 7 for chunk in chunks)
    assert "".join(chunks) == "\n\n".join(texts) and chunks[4] == "ijk\n\nsh"  # a piece spans two texts
    assert chunk_text(["abc", "   "], None, 3) == ["abc"]  # whitespace-only pieces are dropped
    with pytest.raises(ValueError):
        chunk_text(texts, None, 0)


def word_tokenizer() -> Any:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {word: i for i, word in enumerate(["[UNK]", "the", "cat", "sat", "on", "mat", "a", "dog", "ran"])}
    core = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=core, unk_token="[UNK]")


def test_chunk_text_by_tokens_with_real_tokenizer(muse_dir: Path) -> None:
    tokenizer = word_tokenizer()
    chunks = chunk_text(["the cat sat on the mat the cat sat", "a dog ran"], tokenizer, 4)
    assert chunks == ["the cat sat on", "the mat the cat", "sat a dog ran"]
    assert all(len(tokenizer.encode(chunk, add_special_tokens=False)) <= 4 for chunk in chunks)

    rows = MuseSource(muse_dir, tokenizer=tokenizer, max_length=5).load("raw/forget")
    assert [row["text"] for row in rows] == [
        "the cat sat on the",
        "mat the cat sat on",
        "the mat the cat sat",
        "on the mat a dog",
        "ran",
    ]


def test_muse_bad_subset_names(muse_dir: Path) -> None:
    source = MuseSource(muse_dir)
    assert "closest match 'knowmem'" in raises_one(source.load, "knowmen/forget_qa")
    message = raises_one(source.load, "knowmem/retain_qa")
    assert "retain_qa" in message and "forget_qa.jsonl" in message


# --- files, factory and hub ----------------------------------------------------------------------------


def test_files_source_infers_schema(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "qa.jsonl", QA)
    write_parquet(tmp_path / "docs.parquet", [{"text": "hello", "id": 1}])
    source = build_source("files", tmp_path)
    assert sorted(source.subsets()) == ["docs", "qa"]
    assert source.load("qa") == QA and source.load("docs") == [{"text": "hello", "id": 1}]
    mapped = build_source("files", tmp_path, files={"forget": "qa.jsonl"}, schema="qa")
    assert mapped.load("forget") == QA
    assert "docs.parquet" in raises_one(FilesSource({"x": tmp_path / "gone.json"}).load, "x")


def test_build_source_kinds(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "forget01.json", QA)
    for kind in ("tofu", "synthetic", "muse", "files"):
        assert isinstance(build_source(kind, tmp_path), DataSource)
    assert build_source("synthetic", tmp_path).load("forget01") == QA
    assert "closest match 'tofu'" in raises_one(build_source, "tofo", tmp_path)
    assert "generate it first" in raises_one(build_source, "synthetic", str(tmp_path / "nope"))
    assert "no such folder" in raises_one(TofuSource, str(tmp_path / "a" / "b"))


def test_hub_branch_builds_the_call_and_explains_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    datasets = pytest.importorskip("datasets")
    calls: list[tuple[Any, ...]] = []

    def fake_load(name: str, config: str, split: str) -> list[dict[str, Any]]:
        calls.append((name, config, split))
        return QA

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    assert TofuSource("locuslab/TOFU").load("forget01") == QA
    assert MuseSource("muse-bench/MUSE-News").load("knowmem/forget_qa") == QA
    assert calls == [("locuslab/TOFU", "forget01", "train"), ("muse-bench/MUSE-News", "knowmem", "forget_qa")]
    assert len(TofuSource("locuslab/TOFU").subsets()) == 18

    def offline(*args: Any, **kwargs: Any) -> None:
        raise ConnectionError("Couldn't reach 'locuslab/TOFU' on the Hub")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    message = raises_one(TofuSource("locuslab/TOFU").load, "forget05")
    assert "locuslab/TOFU" in message and "forget05" in message and "offline?" in message


# --- one DataError per bad file ------------------------------------------------------------------------


def test_truncated_json_line(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "forget01.json", QA)
    lines = path.read_text().splitlines()
    path.write_text(lines[0] + "\n" + lines[1][:20] + "\n" + lines[2] + "\n")
    message = raises_one(TofuSource(tmp_path).load, "forget01")
    assert "forget01.json: line 2 (1-based line number, JSON Lines)" in message
    assert "Unterminated string" in message


def test_truncated_json_array(tmp_path: Path) -> None:
    path = tmp_path / "holdout01.json"
    path.write_text(json.dumps(QA)[:-30])
    message = raises_one(TofuSource(tmp_path).load, "holdout01")
    assert "holdout01.json: invalid JSON array" in message and "line 1" in message


def test_misspelt_column_suggests_closest(tmp_path: Path) -> None:
    rows = [*QA[:2], {"question": "Q?", "anwser": "A."}]
    write_jsonl(tmp_path / "retain99.json", rows)
    message = raises_one(TofuSource(tmp_path).load, "retain99")
    assert "retain99.json: line 3 (1-based line number, JSON Lines): field 'answer' missing" in message
    assert "'anwser'" in message and "closest match 'anwser'" in message


def test_empty_forget_split(tmp_path: Path) -> None:
    (tmp_path / "forget10.json").write_text("\n")
    message = raises_one(TofuSource(tmp_path).load, "forget10")
    assert "forget10.json: empty split (0 rows)" in message


@pytest.mark.parametrize("answer", ["", "  \t "])
def test_empty_answer(tmp_path: Path, answer: str) -> None:
    write_array(tmp_path / "forget01.json", [QA[0], {"question": "Q?", "answer": answer}])
    message = raises_one(TofuSource(tmp_path).load, "forget01")
    assert "forget01.json: index 1 (0-based, JSON array): field 'answer': empty or whitespace-only" in message


def test_wrong_types(tmp_path: Path) -> None:
    row = {"question": "Q?", "answer": "A.", "perturbed_answer": "not a list"}
    write_jsonl(tmp_path / "world_facts_perturbed.json", [row])
    message = raises_one(TofuSource(tmp_path).load, "world_facts_perturbed")
    assert "line 1" in message and "field 'perturbed_answer': expected a non-empty list of strings" in message
    write_parquet(tmp_path / "forget05.parquet", [{"question": "Q?", "answer": 7}])
    message = raises_one(TofuSource(tmp_path).load, "forget05")
    assert "forget05.parquet: row 0 (0-based, parquet): field 'answer': expected a string, got int" in message


def test_forget_retain_overlap(tmp_path: Path) -> None:
    forget = TofuSource(write_jsonl(tmp_path / "forget01.json", QA[3:]).parent).load("forget01")
    retain = [*QA[:2], QA[4], QA[3]]
    message = raises_one(check_disjoint, forget, retain, "forget01.json", "retain99.json")
    assert "forget01.json row 0 (0-based) equals retain99.json row 3 (0-based)" in message


def test_missing_file_lists_present_and_expected(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "forget01.json", QA)
    message = raises_one(TofuSource(tmp_path).load, "forget5")
    assert "forget5" in message and "files present" in message and "['forget01.json']" in message
    assert "closest match 'forget05'" in message and "retain90" in message


def test_validate_rows_default_locator() -> None:
    message = raises_one(validate_rows, [{"text": 3}], "text", "hub:raw")
    assert message == "hub:raw: index 0 (0-based): field 'text': expected a string, got int 3"
