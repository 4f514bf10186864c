"""Record readers shared by every data source: JSON Lines, one JSON array, or parquet.

The format is detected from the bytes, never from the file name: TOFU stores JSON Lines in files named
``.json`` and some re-exports store one JSON array under the same name.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
import pyarrow.parquet as pq

from baldro_ray.errors import UserError

Form = Literal["jsonl", "json", "parquet"]

# Suffixes a source looks for when it maps a subset name to a file.
DATA_SUFFIXES: tuple[str, ...] = (".json", ".jsonl", ".parquet")

_PARQUET_MAGIC = b"PAR1"


class DataError(UserError, ValueError):
    """A data file or split is unusable; the message names the file, the row and the field at fault."""


@dataclass(frozen=True)
class RecordFile:
    """The rows of one file plus what is needed to point at a row in an error message.

    Invariant: ``rows`` are dicts in file order; for ``form == "jsonl"`` ``lines[i]`` is the 1-based
    line number of ``rows[i]`` (blank lines are skipped, so it may differ from ``i + 1``).
    """

    path: Path
    form: Form
    rows: list[dict[str, Any]]
    lines: tuple[int, ...] = ()

    def locate(self, index: int) -> str:
        """Describe row ``index`` the way a person would find it in this file."""
        if self.form == "jsonl":
            return f"line {self.lines[index]} (1-based line number, JSON Lines)"
        if self.form == "json":
            return f"index {index} (0-based, JSON array)"
        return f"row {index} (0-based, parquet)"


def read_record_file(path: str | Path) -> RecordFile:
    """Read ``path`` as parquet, one JSON array of objects, or JSON Lines (one object per line).

    Raises one ``DataError`` naming the file (and the line or index) for a missing file, bytes that are
    not UTF-8, invalid JSON, or a record that is not a JSON object.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read file: {exc.strerror or exc}") from exc
    if data.startswith(_PARQUET_MAGIC):
        return _read_parquet(path)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text (byte {exc.start}): {exc.reason}") from exc
    if text.lstrip().startswith("["):
        return _read_json_array(path, text)
    return _read_json_lines(path, text)


def read_records(path: str | Path) -> list[dict[str, Any]]:
    """Rows of ``path`` in file order (see ``read_record_file`` for formats and errors)."""
    return read_record_file(path).rows


def _read_parquet(path: Path) -> RecordFile:
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as exc:
        raise DataError(f"{path}: invalid parquet file: {exc}") from exc
    return RecordFile(path, "parquet", table.to_pylist())


def _read_json_array(path: Path, text: str) -> RecordFile:
    try:
        items = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: invalid JSON array (JSON decoder: {exc})") from exc
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            raise DataError(
                f"{path}: index {index} (0-based, JSON array): expected a JSON object, "
                f"got {type(item).__name__}"
            )
    return RecordFile(path, "json", items)


def _read_json_lines(path: Path, text: str) -> RecordFile:
    rows: list[dict[str, Any]] = []
    lines: list[int] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}: line {number} (1-based line number, JSON Lines)"
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{where}: invalid or truncated JSON (JSON decoder: {exc})") from exc
        if not isinstance(item, dict):
            raise DataError(f"{where}: expected a JSON object, got {type(item).__name__}")
        rows.append(item)
        lines.append(number)
    return RecordFile(path, "jsonl", rows, tuple(lines))
