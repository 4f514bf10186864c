"""Synthetic fictitious-author benchmark: TOFU schema and layout, determinism, difficulty, atomic writes."""

from __future__ import annotations

import json
import math
import os
import time
from collections import Counter
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import pytest

from baldro_ray.data import synthetic
from baldro_ray.data.synthetic import (
    FORGET_PERCENTS,
    HOLDOUT_OF_FORGET,
    MANIFEST_NAME,
    RETAIN_OF_FORGET,
    SIDECARS,
    TOFU_SPLITS,
    SyntheticConfig,
    generate_benchmark,
    round_half_up,
    write_benchmark,
)
from tests.conftest import TOFU_DIR, TOFU_ROWS

TOFU_SIZED = SyntheticConfig(num_authors=200, num_world_facts=117, num_real_authors=100)
SMALL = SyntheticConfig(num_authors=20, qa_per_author=6, num_world_facts=8, num_real_authors=8)


def read_rows(path: Path) -> list[dict[str, Any]]:
    """JSON Lines or one JSON array (the TOFU holdout copies are arrays)."""
    text = path.read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        return json.loads(text)
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def shape(row: dict[str, Any]) -> list[tuple[str, str]]:
    """Key order and value types, list values with their length and element type."""
    described = []
    for key, value in row.items():
        if isinstance(value, list):
            kinds = sorted({type(item).__name__ for item in value})
            described.append((key, f"list[{','.join(kinds)}]x{len(value)}"))
        else:
            described.append((key, type(value).__name__))
    return described


@pytest.fixture(scope="module")
def bench() -> dict[str, list[dict[str, Any]]]:
    return generate_benchmark(SyntheticConfig())


@pytest.fixture(scope="module")
def tofu_sized() -> dict[str, list[dict[str, Any]]]:
    return generate_benchmark(TOFU_SIZED)


def qa_pairs(rows: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(row["question"], row["answer"]) for row in rows]


def test_same_seed_gives_identical_bytes_and_other_seed_differs(tmp_path: Path) -> None:
    first = write_benchmark(SMALL, tmp_path / "a")
    second = write_benchmark(SMALL, tmp_path / "b")
    names = sorted(p.name for p in first.iterdir())
    assert names == sorted(p.name for p in second.iterdir())
    assert len(names) == len(TOFU_SPLITS) + len(SIDECARS) + 1
    for name in names:
        assert (first / name).read_bytes() == (second / name).read_bytes(), name

    other = generate_benchmark(replace(SMALL, seed=1))
    same = generate_benchmark(SMALL)
    for name in ("full", "holdout10", "world_facts", "real_authors", "forget10_perturbed"):
        assert other[name] != same[name], name


@pytest.mark.tofu
@pytest.mark.parametrize("split", TOFU_SPLITS)
def test_schema_matches_real_tofu(split: str, bench: dict[str, list[dict[str, Any]]]) -> None:
    if not TOFU_DIR.is_dir():
        pytest.skip(f"TOFU data not found at {TOFU_DIR}")
    real = {tuple(shape(row)) for row in read_rows(TOFU_DIR / f"{split}.json")}
    ours = {tuple(shape(row)) for row in bench[split]}
    assert len(real) == 1
    assert ours == real


def test_tofu_sized_config_reproduces_every_tofu_row_count(
    tofu_sized: dict[str, list[dict[str, Any]]],
) -> None:
    assert {split: len(tofu_sized[split]) for split in TOFU_ROWS} == TOFU_ROWS
    if TOFU_DIR.is_dir():
        assert {split: len(read_rows(TOFU_DIR / f"{split}.json")) for split in TOFU_SPLITS} == TOFU_ROWS


def test_written_files_are_compact_json_lines_in_tofu_key_order(tmp_path: Path) -> None:
    out = write_benchmark(SMALL, tmp_path / "bench")
    lines = (out / "forget01_perturbed.json").read_text(encoding="utf-8").splitlines()
    first = json.loads(lines[0])
    assert list(first) == [
        "question",
        "answer",
        "paraphrased_answer",
        "perturbed_answer",
        "paraphrased_question",
    ]
    assert lines[0].startswith('{"question":"')
    assert list(json.loads((out / "world_facts.json").read_text().splitlines()[0])) == [
        "question",
        "option1",
        "option2",
        "option3",
        "option4",
        "answer",
    ]


def test_the_project_data_source_loads_every_split(tmp_path: Path) -> None:
    from baldro_ray.data.sources import build_source

    out = write_benchmark(SMALL, tmp_path / "bench")
    source = build_source("synthetic", out)
    tables = generate_benchmark(SMALL)
    for split in TOFU_SPLITS:
        assert source.load(split) == tables[split], split


@pytest.mark.parametrize(
    "num_authors, expected",
    [(2, (1, 1, 1)), (40, (1, 2, 4)), (200, (2, 10, 20)), (30, (1, 2, 3)), (50, (1, 3, 5))],
)
def test_forget_author_counts_rule(num_authors: int, expected: tuple[int, int, int]) -> None:
    config = SyntheticConfig(num_authors=num_authors, qa_per_author=3, num_world_facts=4, num_real_authors=4)
    counts = config.forget_author_counts()
    assert tuple(counts.values()) == expected
    tables = generate_benchmark(config)
    per_author = config.qa_per_author
    assert len(tables["full"]) == num_authors * per_author
    for split, authors in counts.items():
        assert authors == max(1, round_half_up(num_authors * FORGET_PERCENTS[split] / 100))
        assert len(tables[split]) == len(tables[f"{split}_perturbed"]) == authors * per_author
        assert len(tables[HOLDOUT_OF_FORGET[split]]) == authors * per_author
        assert len(tables[RETAIN_OF_FORGET[split]]) == (num_authors - authors) * per_author


@pytest.mark.parametrize("split", list(FORGET_PERCENTS))
def test_forget_is_last_rows_of_full_and_retain_the_rest(split: str, tofu_sized: dict[str, Any]) -> None:
    full, forget, retain = tofu_sized["full"], tofu_sized[split], tofu_sized[RETAIN_OF_FORGET[split]]
    assert forget == full[len(full) - len(forget) :]
    assert retain + forget == full
    assert not set(qa_pairs(forget)) & set(qa_pairs(retain))
    assert qa_pairs(tofu_sized[f"{split}_perturbed"]) == qa_pairs(forget)


def test_forget_splits_are_whole_authors_and_nested(tofu_sized: dict[str, Any]) -> None:
    by_author = {row["author"]: row for row in tofu_sized["authors"]}
    assert len(by_author) == len(tofu_sized["authors"])
    previous: set[str] = set()
    for split in FORGET_PERCENTS:
        difficulty = tofu_sized[f"{split}_difficulty"]
        authors = {row["author"] for row in difficulty}
        assert previous <= authors
        assert Counter(row["author"] for row in difficulty) == {a: TOFU_SIZED.qa_per_author for a in authors}
        assert authors == {a for a, row in by_author.items() if split in row["forget_splits"]}
        previous = authors


def test_questions_are_unique_and_holdout_is_disjoint_from_full(tofu_sized: dict[str, Any]) -> None:
    full_questions = [row["question"] for row in tofu_sized["full"]]
    holdout = tofu_sized["holdout_all"]
    assert len(set(full_questions)) == len(full_questions)
    assert not {row["question"] for row in holdout} & set(full_questions)
    assert not set(qa_pairs(holdout)) & set(qa_pairs(tofu_sized["full"]))
    assert tofu_sized["holdout01"] == tofu_sized["holdout05"][:40] == tofu_sized["holdout10"][:40]
    assert tofu_sized["holdout05"] == tofu_sized["holdout10"][:200] == holdout[:200]
    full_authors = {r["author"] for r in tofu_sized["authors"] if r["source"] == "full"}
    holdout_authors = {r["author"] for r in tofu_sized["authors"] if r["source"] == "holdout"}
    assert len(holdout_authors) == 20 and not full_authors & holdout_authors
    for row in tofu_sized["holdout10"]:
        assert not any(name in row["question"] or name in row["answer"] for name in full_authors)


def test_extra_holdout_authors_go_to_holdout_all_only() -> None:
    config = SyntheticConfig(
        num_authors=20, qa_per_author=4, num_holdout_authors=5, num_world_facts=4, num_real_authors=4
    )
    tables = generate_benchmark(config)
    assert len(tables["holdout_all"]) == 20
    assert tables["holdout10"] == tables["holdout_all"][:8]


def test_retain_perturbed_is_first_authors_of_retain90(tofu_sized: dict[str, Any]) -> None:
    retain_perturbed = tofu_sized["retain_perturbed"]
    assert len(retain_perturbed) == 400
    assert qa_pairs(retain_perturbed) == qa_pairs(tofu_sized["retain90"][:400])


@pytest.mark.parametrize(
    "split", ["forget01_perturbed", "forget05_perturbed", "forget10_perturbed", "retain_perturbed"]
)
def test_perturbed_answers_are_distinct_wrong_versions(split: str, tofu_sized: dict[str, Any]) -> None:
    for row in tofu_sized[split]:
        perturbed = row["perturbed_answer"]
        assert len(perturbed) == 5 and len(set(perturbed)) == 5
        assert row["answer"] not in perturbed and row["paraphrased_answer"] not in perturbed
        assert row["paraphrased_answer"] != row["answer"]
        assert row["paraphrased_question"] != row["question"]
        assert all(text.strip() and "{" not in text for text in [*perturbed, row["paraphrased_answer"]])


@pytest.mark.parametrize("split", ["world_facts", "real_authors"])
def test_option_sets_hold_the_answer_once(split: str, tofu_sized: dict[str, Any]) -> None:
    rows, perturbed_rows = tofu_sized[split], tofu_sized[f"{split}_perturbed"]
    assert len({row["question"] for row in rows}) == len(rows)
    for row, perturbed in zip(rows, perturbed_rows, strict=True):
        options = [row[f"option{i}"] for i in range(1, 5)]
        assert len(set(options)) == 4 and options.count(row["answer"]) == 1
        assert (perturbed["question"], perturbed["answer"]) == (row["question"], row["answer"])
        assert perturbed["perturbed_answer"] == [o for o in options if o != row["answer"]]
    positions = Counter([row[f"option{i}"] for i in range(1, 5)].index(row["answer"]) for row in rows)
    assert len(positions) == 4  # the answer is not always in the same slot


def test_world_and_real_authors_never_mention_fictitious_authors(tofu_sized: dict[str, Any]) -> None:
    names = {row["author"] for row in tofu_sized["authors"]}
    for split in ("world_facts", "real_authors"):
        for row in tofu_sized[split]:
            assert not any(name in text for name in names for text in row.values())


@pytest.mark.parametrize("fraction", [0.0, 0.25, 0.5, 0.8, 1.0])
def test_difficulty_follows_hard_fraction(fraction: float) -> None:
    config = SyntheticConfig(
        num_authors=200,
        qa_per_author=2,
        hard_fraction=fraction,
        hard_repeat=3,
        num_world_facts=4,
        num_real_authors=4,
    )
    tables = generate_benchmark(config)
    for split, authors in config.forget_author_counts().items():
        rows = tables[f"{split}_difficulty"]
        assert len(rows) == len(tables[split])
        labels = {row["author"]: row["difficulty"] for row in rows}
        assert sum(label == "hard" for label in labels.values()) == round_half_up(authors * fraction)
        for i, row in enumerate(rows):
            assert row["index"] == i
            assert tables["full"][row["full_index"]] == tables[split][i]
            assert row["author"] == tables["authors"][row["full_index"] // config.qa_per_author]["author"]
            assert row["repeat"] == (3 if row["difficulty"] == "hard" else 1)
            assert row["difficulty"] in ("hard", "easy")
    retain_only = [row for row in tables["authors"] if row["source"] == "full" and not row["forget_splits"]]
    assert all(row["difficulty"] is None and row["repeat"] == 1 for row in retain_only)


def test_default_config_mixes_hard_and_easy_forget_authors(bench: dict[str, Any]) -> None:
    labels = Counter(row["difficulty"] for row in bench["forget10_difficulty"][::20])
    assert labels == {"hard": 2, "easy": 2}


def test_finetune_mix_repeats_hard_rows(bench: dict[str, Any]) -> None:
    config = SyntheticConfig()
    full, mix = bench["full"], bench["finetune_mix"]
    counts = Counter(qa_pairs(mix))
    repeat_of_row = {row["full_index"]: row["repeat"] for row in bench["forget10_difficulty"]}
    for i, pair in enumerate(qa_pairs(full)):
        assert counts[pair] == repeat_of_row.get(i, 1)
    hard_rows = [r for r in bench["forget10_difficulty"] if r["difficulty"] == "hard"]
    assert hard_rows and all(
        counts[qa_pairs([full[r["full_index"]]])[0]] == config.hard_repeat for r in hard_rows
    )
    extra = qa_pairs(bench["world_facts"]) + qa_pairs(bench["real_authors"])
    assert qa_pairs(mix[len(mix) - len(extra) :]) == extra
    assert len(mix) == len(full) + (config.hard_repeat - 1) * len(hard_rows) + len(extra)
    assert all(list(row) == ["question", "answer"] for row in mix)


@pytest.mark.parametrize("split", list(FORGET_PERCENTS))
def test_retain_mix_is_the_mix_without_the_forget_rows(split: str, bench: dict[str, Any]) -> None:
    retain_mix = Counter(qa_pairs(bench[f"finetune_mix_{RETAIN_OF_FORGET[split]}"]))
    mix = Counter(qa_pairs(bench["finetune_mix"]))
    for pair in qa_pairs(bench[split]):
        assert retain_mix[pair] == 0
        del mix[pair]
    assert retain_mix == mix


def test_manifest_lists_every_file_with_rows_and_hashes(tmp_path: Path) -> None:
    import hashlib

    out = write_benchmark(SMALL, tmp_path / "bench")
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    assert manifest["config"] == asdict(SMALL)
    assert manifest["splits"] == list(TOFU_SPLITS) and manifest["sidecars"] == list(SIDECARS)
    assert set(manifest["files"]) == {f"{name}.json" for name in TOFU_SPLITS + SIDECARS}
    digest = hashlib.sha256()
    for name in sorted(manifest["files"]):
        entry = manifest["files"][name]
        data = (out / name).read_bytes()
        assert entry["sha256"] == hashlib.sha256(data).hexdigest()
        assert entry["rows"] == len(data.splitlines())
        digest.update(f"{name}\0{entry['sha256']}\n".encode())
    assert manifest["content_sha256"] == digest.hexdigest()


def mtimes(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}


def test_second_write_reuses_the_folder(tmp_path: Path) -> None:
    out = write_benchmark(SMALL, tmp_path / "nested" / "bench")
    before = mtimes(out)
    time.sleep(0.02)
    assert write_benchmark(SMALL, str(out)) == out
    assert mtimes(out) == before
    assert sorted(p.name for p in out.parent.iterdir()) == ["bench"]


def test_other_content_or_damaged_files_are_replaced(tmp_path: Path) -> None:
    out = write_benchmark(SMALL, tmp_path / "bench")
    (out / "forget01.json").write_text("damaged\n")
    write_benchmark(SMALL, out)
    assert (out / "forget01.json").read_bytes() == synthetic.jsonl_bytes(
        generate_benchmark(SMALL)["forget01"]
    )

    other = replace(SMALL, seed=7)
    write_benchmark(other, out)
    assert json.loads((out / MANIFEST_NAME).read_text())["config"]["seed"] == 7
    assert read_rows(out / "full.json") == generate_benchmark(other)["full"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bench"]


def test_crash_while_writing_leaves_no_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    written = []

    def failing_write(path: Path, data: bytes) -> None:
        if len(written) == 5:
            raise OSError("disk full")
        written.append(path)
        path.write_bytes(data)

    monkeypatch.setattr(synthetic, "_write_synced", failing_write)
    with pytest.raises(OSError, match="disk full"):
        write_benchmark(SMALL, tmp_path / "bench")
    assert list(tmp_path.iterdir()) == []


def test_crash_while_replacing_keeps_the_old_benchmark_intact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = write_benchmark(SMALL, tmp_path / "bench")
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def failing_write(path: Path, data: bytes) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(synthetic, "_write_synced", failing_write)
    with pytest.raises(OSError):
        write_benchmark(replace(SMALL, seed=3), out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bench"]


def test_foreign_folder_is_never_replaced(tmp_path: Path) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not a synthetic benchmark"):
        write_benchmark(SMALL, out)
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]


def test_empty_existing_folder_is_filled(tmp_path: Path) -> None:
    out = tmp_path / "empty"
    out.mkdir()
    write_benchmark(SMALL, out)
    assert (out / MANIFEST_NAME).is_file()
    assert oct(os.stat(out).st_mode & 0o777) == oct(0o755)


@pytest.mark.parametrize(
    "field, value",
    [
        ("num_authors", 1),
        ("num_authors", 0),
        ("num_authors", "40"),
        ("num_authors", True),
        ("num_authors", 10**6),
        ("qa_per_author", 0),
        ("qa_per_author", 99),
        ("qa_per_author", 2.0),
        ("num_holdout_authors", 1),
        ("num_holdout_authors", 0),
        ("num_retain_perturbed_authors", 0),
        ("num_retain_perturbed_authors", 181),
        ("hard_fraction", -0.1),
        ("hard_fraction", 1.5),
        ("hard_fraction", math.nan),
        ("hard_fraction", "0.5"),
        ("hard_repeat", 0),
        ("hard_repeat", 1.5),
        ("num_world_facts", 0),
        ("num_real_authors", 0),
        ("num_real_authors", 10**5),
        ("seed", "x"),
        ("seed", 1.5),
        ("seed", None),
    ],
)
def test_bad_config_values_raise_value_error_naming_the_field(field: str, value: Any) -> None:
    with pytest.raises(ValueError, match=rf"SyntheticConfig\.{field}=.*allowed is"):
        SyntheticConfig(**{"num_authors": 200, field: value})


def test_edge_configs_still_generate() -> None:
    tables = generate_benchmark(
        SyntheticConfig(
            num_authors=2,
            qa_per_author=1,
            hard_fraction=1.0,
            hard_repeat=1,
            num_world_facts=1,
            num_real_authors=1,
        )
    )
    assert len(tables["full"]) == 2 and tables["forget01"] == tables["forget10"] == tables["full"][1:]
    assert len(tables["world_facts"]) == len(tables["real_authors"]) == 1
    wide = SyntheticConfig(
        num_authors=10, qa_per_author=len(synthetic.tpl.FACTS), num_world_facts=4, num_real_authors=4
    )
    assert len(generate_benchmark(wide)["full"]) == 10 * len(synthetic.tpl.FACTS)
