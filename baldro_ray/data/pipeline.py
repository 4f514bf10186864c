"""Ray Data pipelines: QA rows or text chunks -> tokenised rows (``index``, ``input_ids``, ``labels``) in
``map_batches`` tasks. A QA row is rendered with the prompt template and only its answer is labelled; a text chunk
(MUSE's raw corpora) has every token labelled but the first, as the reference does.

The tokenizer travels as a folder path and is loaded once per worker process. Datasets are materialised before
training starts, so Ray Data needs no CPU next to the training workers (on 2-CPU machines it would otherwise stall),
and an unencodable row surfaces as one :class:`EncodingError` before any compute: the tasks record the problem in an
``encoding_error`` column instead of raising, because Ray re-raises a task's exception as its own type.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import Any

import numpy as np

from baldro_ray.data.render import EncodingError, PromptTemplate, encode_qa, encode_text
from baldro_ray.data.sources import SCHEMAS, training_schema

_ERROR_COLUMN = "encoding_error"
_ROWS_PER_BLOCK = 512


@lru_cache(maxsize=4)
def _tokenizer(path: str) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


def _encode_batch(
    batch: Mapping[str, np.ndarray],
    tokenizer_path: str,
    template: dict[str, str],
    max_length: int,
    source: str,
) -> dict[str, Any]:
    tokenizer = _tokenizer(tokenizer_path)
    prompt = PromptTemplate(**template)
    text = "text" in batch
    input_ids, labels, errors = [], [], []
    for i, index in enumerate(batch["index"]):
        try:
            if text:
                encoded = encode_text(tokenizer, "", str(batch["text"][i]), max_length)
            else:
                question, answer = str(batch["question"][i]), str(batch["answer"][i])
                encoded = encode_qa(tokenizer, question, answer, prompt, max_length)
        except EncodingError as err:
            encoded = {"input_ids": [], "labels": []}
            errors.append(
                f"{source}, row {int(index)} (0-based), field {'text' if text else 'answer'!r}: {err}"
            )
        else:
            errors.append("")
        input_ids.append(np.asarray(encoded["input_ids"], dtype=np.int64))
        labels.append(np.asarray(encoded["labels"], dtype=np.int64))
    out = {key: value for key, value in batch.items() if key not in ("question", "answer", "text")}
    out["input_ids"] = _ragged(input_ids)
    out["labels"] = _ragged(labels)
    out[_ERROR_COLUMN] = np.asarray(errors, dtype=object)
    return out


def _ragged(arrays: list[np.ndarray]) -> np.ndarray:
    out = np.empty(len(arrays), dtype=object)
    out[:] = arrays
    return out


def encoded_dataset(
    rows: Sequence[Mapping[str, Any]],
    tokenizer_path: str,
    template: PromptTemplate,
    max_length: int,
    source: str,
    extra_columns: Mapping[str, Sequence[Any]] | None = None,
) -> Any:
    """A materialised Ray Dataset of tokenised rows — QA rows (``question``, ``answer``) or text chunks (``text``),
    one kind per dataset; ``index`` is each row's position in ``rows``.

    ``extra_columns`` (e.g. ``ref_nll_sum``, ``difficulty``) are carried along row by row.
    """
    import ray.data

    extra = dict(extra_columns or {})
    for name, values in extra.items():
        if len(values) != len(rows):
            raise ValueError(
                f"extra column {name!r} has {len(values)} values for {len(rows)} rows of {source}"
            )
    fields = SCHEMAS[training_schema(rows)]
    items = [
        {"index": i, **{f: row[f] for f in fields}, **{k: v[i] for k, v in extra.items()}}
        for i, row in enumerate(rows)
    ]
    # A few large blocks: each map task loads the tokenizer, and tiny blocks cost more in scheduling than work.
    blocks = max(1, min(8, len(items) // _ROWS_PER_BLOCK))
    dataset = ray.data.from_items(items, override_num_blocks=blocks).map_batches(
        _encode_batch,
        batch_format="numpy",
        fn_kwargs={
            "tokenizer_path": str(tokenizer_path),
            "template": template.as_dict(),
            "max_length": max_length,
            "source": source,
        },
    )
    dataset = dataset.materialize()
    errors = [e for e in dataset.select_columns([_ERROR_COLUMN]).take_all() if e[_ERROR_COLUMN]]
    if errors:
        raise EncodingError(errors[0][_ERROR_COLUMN])
    # Materialised again: a lazy projection would need a CPU while the training workers hold them all.
    return dataset.drop_columns([_ERROR_COLUMN]).materialize()
