"""Data sources behind one interface: TOFU, MUSE and plain files, local or on the Hugging Face hub.

Every source returns plain ``list[dict]`` rows for a named subset, already validated against the schema
of that subset: a problem surfaces as one ``DataError`` naming the file, the row and the field.

MUSE local layout (one folder per hub config, one file per split, ``.json``/``.jsonl``/``.parquet``)::

    <root>/raw/{forget,retain1,retain2,holdout}.json          column: text (chunked on load)
    <root>/knowmem/{forget_qa,retain_qa,forget_qa_icl,retain_qa_icl}.json   columns: question, answer
    <root>/verbmem/forget.json                                 columns: prompt, gt
    <root>/privleak/{forget,retain,holdout}.json               column: text

MUSE subset names are ``"<config>/<split>"``, e.g. ``"knowmem/forget_qa"``, the same locally and on the hub.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from baldro_ray.data.readers import DATA_SUFFIXES, DataError, read_record_file
from baldro_ray.hub import is_hub_id

Rows = list[dict[str, Any]]

# Required columns per schema. Every column is a non-blank string except those in LIST_COLUMNS.
SCHEMAS: dict[str, tuple[str, ...]] = {
    "qa": ("question", "answer"),
    "perturbed": ("question", "answer", "paraphrased_question", "paraphrased_answer", "perturbed_answer"),
    "options": ("question", "answer", "option1", "option2", "option3", "option4"),
    "mc_perturbed": ("question", "answer", "perturbed_answer"),
    "text": ("text",),
    "verbmem": ("prompt", "gt"),
}
LIST_COLUMNS: frozenset[str] = frozenset({"perturbed_answer"})

TOFU_HUB_NAME = "locuslab/TOFU"
TOFU_HUB_SPLIT = "train"
TOFU_SUBSETS: tuple[str, ...] = (
    "full",
    "forget01",
    "forget05",
    "forget10",
    "retain99",
    "retain95",
    "retain90",
    "holdout01",
    "holdout05",
    "holdout10",
    "forget01_perturbed",
    "forget05_perturbed",
    "forget10_perturbed",
    "retain_perturbed",
    "real_authors",
    "real_authors_perturbed",
    "world_facts",
    "world_facts_perturbed",
)
_TOFU_OPTION_SETS = ("real_authors", "world_facts")

# MUSE hub configs (muse-bench/MUSE-News, muse-bench/MUSE-Books): config -> (schema, splits).
# Also the local folder layout; fix names here only.
MUSE_CONFIGS: dict[str, tuple[str, tuple[str, ...]]] = {
    "raw": ("text", ("forget", "retain1", "retain2", "holdout")),
    "knowmem": ("qa", ("forget_qa", "retain_qa", "forget_qa_icl", "retain_qa_icl")),
    "verbmem": ("verbmem", ("forget",)),
    "privleak": ("text", ("forget", "retain", "holdout")),
}
MUSE_CHUNKED_CONFIGS = frozenset({"raw"})

SOURCE_KINDS: tuple[str, ...] = ("tofu", "muse", "files", "synthetic", "synthetic_muse")


@runtime_checkable
class DataSource(Protocol):
    """Named subsets of one benchmark; ``load`` returns validated, non-empty rows."""

    def load(self, subset: str) -> Rows: ...

    def subsets(self) -> list[str]: ...


class Tokenizer(Protocol):
    """The part of a Hugging Face tokenizer that ``chunk_text`` uses."""

    def encode(self, text: str, add_special_tokens: bool = ...) -> list[int]: ...

    def decode(self, token_ids: list[int]) -> str: ...


def _closest(name: str, choices: Iterable[str]) -> str:
    match = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return f"; closest match {match[0]!r}" if match else ""


def tofu_schema(subset: str) -> str:
    """Schema name (a key of ``SCHEMAS``) of a TOFU subset; unknown names (synthetic sets) get ``"qa"``
    or ``"perturbed"`` by their ``_perturbed`` suffix."""
    base = subset.removesuffix("_perturbed")
    perturbed = base != subset
    if base in _TOFU_OPTION_SETS:
        return "mc_perturbed" if perturbed else "options"
    return "perturbed" if perturbed else "qa"


def validate_rows(
    rows: Sequence[Mapping[str, Any]],
    schema: str,
    source: str,
    locate: Callable[[int], str] | None = None,
) -> None:
    """Raise one ``DataError`` unless ``rows`` is non-empty and every row carries every column of
    ``SCHEMAS[schema]`` with the right type (non-blank string, or non-empty list of non-blank strings).

    ``source`` names the file in messages; ``locate(i)`` describes row ``i`` (default: 0-based index).
    Extra columns are allowed and kept.
    """
    columns = SCHEMAS[schema]
    if not rows:
        raise DataError(f"{source}: empty split (0 rows); expected rows with columns {list(columns)}")
    describe = locate or (lambda index: f"index {index} (0-based)")
    for index, row in enumerate(rows):
        for column in columns:
            if column not in row:
                extra = [name for name in row if name not in columns]
                raise DataError(
                    f"{source}: {describe(index)}: field {column!r} missing; "
                    f"columns found {sorted(row)}, expected {list(columns)}{_closest(column, extra)}"
                )
            problem = _type_problem(column, row[column])
            if problem:
                raise DataError(f"{source}: {describe(index)}: field {column!r}: {problem}")


def _type_problem(column: str, value: Any) -> str | None:
    if column in LIST_COLUMNS:
        if not isinstance(value, list) or not value or not all(isinstance(item, str) for item in value):
            return f"expected a non-empty list of strings, got {_show(value)}"
        if not all(item.strip() for item in value):
            return "list holds an empty or whitespace-only string"
        return None
    if not isinstance(value, str):
        return f"expected a string, got {_show(value)}"
    if not value.strip():
        return "empty or whitespace-only string"
    return None


def _show(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 60 else text[:57] + '...'}"


def check_disjoint(
    forget_rows: Sequence[Mapping[str, Any]],
    retain_rows: Sequence[Mapping[str, Any]],
    forget_name: str,
    retain_name: str,
    keys: tuple[str, ...] = ("question", "answer"),
) -> None:
    """Raise one ``DataError`` if any forget row equals a retain row on ``keys``; the message names the
    first such forget row and the first retain row it matches (0-based indices in load order)."""
    first_seen: dict[tuple[Any, ...], int] = {}
    for index, row in enumerate(retain_rows):
        first_seen.setdefault(tuple(row.get(key) for key in keys), index)
    for index, row in enumerate(forget_rows):
        pair = tuple(row.get(key) for key in keys)
        if pair in first_seen:
            raise DataError(
                f"forget/retain overlap: {forget_name} row {index} (0-based) equals {retain_name} "
                f"row {first_seen[pair]} (0-based) on {list(keys)}: {_show(pair[0])}"
            )


def check_subset(source: DataSource, subset: str, key: str, location: str | Path) -> None:
    """Raise one ``DataError`` naming the configuration ``key``, the ``subset`` it asks for and the subsets
    available when ``source`` reads local files and has no such subset. A hub dataset is not checked here: its
    configs are known only to the hub, which names the missing one when it is loaded."""
    if isinstance(source, TofuSource | MuseSource) and source.folder is None:
        return
    available = source.subsets()
    if subset not in available:
        raise DataError(
            f"{key}={subset!r}: no such split in {location}; splits available: {available}"
            f"{_closest(subset, available)}"
        )


TEXT_SEPARATOR = "\n\n"


def chunk_text(texts: Iterable[str], tokenizer: Tokenizer | None, max_length: int) -> list[str]:
    """The texts joined by a blank line, then split into consecutive pieces of at most ``max_length`` tokens
    (characters when ``tokenizer`` is None), in order; whitespace-only pieces are dropped.

    This is the reference's chunking of a pretraining corpus (open-unlearning's ``PretrainingDataset``): a piece
    may span the end of one text and the start of the next. Character pieces concatenate back to the joined text
    exactly; token pieces are decoded from consecutive id windows of
    ``tokenizer.encode(joined, add_special_tokens=False)``, so they may normalise whitespace.
    """
    if max_length < 1:
        raise ValueError(f"max_length must be >= 1, got {max_length}")
    joined = TEXT_SEPARATOR.join(texts)
    if tokenizer is None:
        pieces = [joined[start : start + max_length] for start in range(0, len(joined), max_length)]
    else:
        ids = list(tokenizer.encode(joined, add_special_tokens=False))
        pieces = [
            tokenizer.decode(ids[start : start + max_length]) for start in range(0, len(ids), max_length)
        ]
    # A blank piece would be a training row with no content.
    return [piece for piece in pieces if piece.strip()]


def _resolve(location: str | Path) -> Path | None:
    """The local folder at ``location``, or None when it names a hub dataset ("owner/name")."""
    path = Path(location)
    if path.is_dir():
        return path
    if path.exists():
        raise DataError(f"{path}: expected a folder of data files or a hub name 'owner/name', got a file")
    if isinstance(location, str) and is_hub_id(location):
        return None
    raise DataError(f"{path}: no such folder (and not a Hugging Face hub name 'owner/name')")


def _data_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in DATA_SUFFIXES)


def _find_file(folder: Path, stem: str, expected: Sequence[str]) -> Path:
    found = [folder / f"{stem}{suffix}" for suffix in DATA_SUFFIXES if (folder / f"{stem}{suffix}").is_file()]
    if len(found) == 1:
        return found[0]
    if found:
        raise DataError(f"{folder}: several files for {stem!r}: {[p.name for p in found]}; keep one")
    present = [p.name for p in _data_files(folder)] if folder.is_dir() else []
    hint = "" if stem in expected else _closest(stem, expected)
    raise DataError(
        f"{folder / stem}{{{','.join(DATA_SUFFIXES)}}}: missing file for subset {stem!r}; "
        f"files present in {folder}: {present}; subsets expected: {list(expected)}{hint}"
    )


def _load_file(path: Path, schema: str) -> Rows:
    records = read_record_file(path)
    validate_rows(records.rows, schema, str(path), records.locate)
    return records.rows


def _load_hub(name: str, config: str, split: str, schema: str) -> Rows:
    """The only code path that reaches the Hugging Face hub."""
    import datasets  # heavy import, paid only by hub names

    try:
        dataset = datasets.load_dataset(name, config, split=split)
    except Exception as exc:  # offline, auth, network and unknown-config failures all need the same advice
        raise DataError(
            f"{name} (config {config!r}, split {split!r}): cannot load from the Hugging Face hub "
            f"({type(exc).__name__}: {exc}); offline? pass a local folder instead"
        ) from exc
    rows = [dict(row) for row in dataset]
    validate_rows(rows, schema, f"{name}/{config}[{split}]")
    return rows


class TofuSource:
    """TOFU subsets from a local folder (``<subset>.json|.jsonl|.parquet``) or the hub (``locuslab/TOFU``).

    Invariant: ``load(subset)`` returns non-empty rows valid for ``tofu_schema(subset)``; ``folder`` is the local
    folder, None for a hub name.
    """

    def __init__(self, location: str | Path = TOFU_HUB_NAME) -> None:
        self.location = location
        self.folder = _resolve(location)

    def subsets(self) -> list[str]:
        """Subsets with a data file in the folder, or every hub config."""
        if self.folder is None:
            return list(TOFU_SUBSETS)
        return sorted({path.stem for path in _data_files(self.folder)})

    def load(self, subset: str) -> Rows:
        schema = tofu_schema(subset)
        if self.folder is None:
            return _load_hub(str(self.location), subset, TOFU_HUB_SPLIT, schema)
        return _load_file(_find_file(self.folder, subset, TOFU_SUBSETS), schema)


class MuseSource:
    """MUSE subsets ``"<config>/<split>"`` from a local folder (layout in the module docstring) or the hub.

    Invariant: ``load`` returns non-empty rows valid for the config's schema; ``raw`` rows are
    ``{"text": chunk}`` with each chunk at most ``max_length`` tokens of ``tokenizer`` (characters if None);
    ``folder`` is the local folder, None for a hub name.
    """

    def __init__(
        self, location: str | Path, *, tokenizer: Tokenizer | str | None = None, max_length: int = 2048
    ) -> None:
        self.location = location
        # A tokenizer, or the folder / hub name to load it from when raw text is first read.
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.folder = _resolve(location)

    def subsets(self) -> list[str]:
        """``config/split`` names with a data file in the folder, or every name in ``MUSE_CONFIGS``."""
        if self.folder is None:
            return [f"{config}/{split}" for config, (_, splits) in MUSE_CONFIGS.items() for split in splits]
        return [
            f"{config}/{path.stem}"
            for config in MUSE_CONFIGS
            if (self.folder / config).is_dir()
            for path in _data_files(self.folder / config)
        ]

    def load(self, subset: str) -> Rows:
        config, _, split = subset.partition("/")
        if config not in MUSE_CONFIGS or not split:
            raise DataError(
                f"{self.location}: MUSE subset {subset!r} is not '<config>/<split>' with config in "
                f"{list(MUSE_CONFIGS)}{_closest(config, MUSE_CONFIGS)}"
            )
        schema, splits = MUSE_CONFIGS[config]
        if self.folder is None:
            rows = _load_hub(str(self.location), config, split, schema)
        else:
            rows = _load_file(_find_file(self.folder / config, split, splits), schema)
        if config not in MUSE_CHUNKED_CONFIGS:
            return rows
        if isinstance(self.tokenizer, str):
            from transformers import AutoTokenizer

            self.tokenizer = AutoTokenizer.from_pretrained(self.tokenizer)
        texts = chunk_text((row["text"] for row in rows), self.tokenizer, self.max_length)
        return [{"text": text} for text in texts]


class FilesSource:
    """Subsets from explicit files, ``{subset name: path}``, each JSON Lines, a JSON array or parquet.

    The schema is ``schema`` when given, else ``"text"`` for files whose first row has ``text`` and no
    ``question``, else ``"qa"``. Invariant: ``load`` returns non-empty rows valid for that schema.
    """

    def __init__(self, files: Mapping[str, str | Path], schema: str | None = None) -> None:
        if schema is not None and schema not in SCHEMAS:
            raise DataError(
                f"unknown schema {schema!r}; expected one of {list(SCHEMAS)}{_closest(schema, SCHEMAS)}"
            )
        self.files = {name: Path(path) for name, path in files.items()}
        self.schema = schema

    @classmethod
    def from_folder(cls, folder: str | Path, schema: str | None = None) -> FilesSource:
        """One subset per data file in ``folder``, named by the file's stem."""
        folder = Path(folder)
        if not folder.is_dir():
            raise DataError(f"{folder}: no such folder")
        return cls({path.stem: path for path in _data_files(folder)}, schema)

    def subsets(self) -> list[str]:
        return list(self.files)

    def load(self, subset: str) -> Rows:
        if subset not in self.files:
            raise DataError(
                f"no file for subset {subset!r}; subsets: {list(self.files)}{_closest(subset, self.files)}"
            )
        path = self.files[subset]
        if not path.is_file():
            present = [p.name for p in _data_files(path.parent)] if path.parent.is_dir() else []
            raise DataError(
                f"{path}: missing file for subset {subset!r}; files present in {path.parent}: {present}"
            )
        records = read_record_file(path)
        schema = self.schema or training_schema(records.rows)
        validate_rows(records.rows, schema, str(path), records.locate)
        return records.rows


def training_schema(rows: Sequence[Mapping[str, Any]]) -> str:
    """``"text"`` for text rows (a ``text`` column and no ``question``), else ``"qa"``: the two kinds of rows
    unlearning and fine-tuning train on (``SCHEMAS`` gives each one's columns)."""
    return "text" if rows and "text" in rows[0] and "question" not in rows[0] else "qa"


def build_source(kind: str, location: str | Path, **options: Any) -> DataSource:
    """The source of ``kind`` (one of ``SOURCE_KINDS``) at ``location``.

    ``synthetic`` / ``synthetic_muse`` is a TOFU / MUSE-layout folder written by a synthetic generator (never a
    hub name);
    ``files`` takes ``files={subset: path relative to location}``, or every data file in ``location``.
    Remaining ``options`` go to the source's constructor.
    """
    if kind == "tofu":
        return TofuSource(location, **options)
    if kind in ("synthetic", "synthetic_muse"):
        if not Path(location).is_dir():
            raise DataError(f"{location}: synthetic data folder not found; generate it first")
        return (TofuSource if kind == "synthetic" else MuseSource)(location, **options)
    if kind == "muse":
        return MuseSource(location, **options)
    if kind == "files":
        files = options.pop("files", None)
        if files is None:
            return FilesSource.from_folder(location, **options)
        return FilesSource({name: Path(location) / path for name, path in files.items()}, **options)
    raise DataError(
        f"unknown data source kind {kind!r}; expected one of {list(SOURCE_KINDS)}"
        f"{_closest(kind, SOURCE_KINDS)}"
    )
