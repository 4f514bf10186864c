"""Prompt rendering, label masking and padding with a real (locally trained) tokenizer."""

from __future__ import annotations

import pytest
import torch

from baldro_ray.data.render import TEMPLATES, EncodingError, PromptTemplate, encode_qa, pad_batch
from baldro_ray.models.tiny import TINY_TEMPLATE, train_tokenizer
from baldro_ray.objectives import IGNORE_INDEX

TEXTS = [
    "Who wrote the book Silver Rain?",
    "Mara Kell wrote Silver Rain in 1987.",
    "Where was Mara Kell born?",
] * 20


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(TEXTS, vocab_size=400)


def test_prompt_tokens_are_masked_and_answer_ends_with_eos(tokenizer) -> None:
    template = TEMPLATES["tiny"]
    encoded = encode_qa(tokenizer, "Who wrote the book Silver Rain?", "Mara Kell.", template, 64)
    prompt_ids = tokenizer(template.prompt("Who wrote the book Silver Rain?"))["input_ids"]
    ids, labels = encoded["input_ids"], encoded["labels"]
    assert ids[: len(prompt_ids)] == prompt_ids and ids[0] == tokenizer.bos_token_id
    assert labels[: len(prompt_ids)] == [IGNORE_INDEX] * len(prompt_ids)
    assert labels[len(prompt_ids) :] == ids[len(prompt_ids) :] and ids[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(ids[len(prompt_ids) : -1]) == "Mara Kell."


def test_tiny_template_is_the_tokenizers_chat_tags() -> None:
    assert TEMPLATES["tiny"] == PromptTemplate(**TINY_TEMPLATE)
    assert TEMPLATES["llama2-chat"].full("Q?", "A.") == "[INST] Q? [/INST]A. "


def test_truncation_keeps_the_prompt_and_cuts_the_answer(tokenizer) -> None:
    full = encode_qa(
        tokenizer, "Where was Mara Kell born?", "Mara Kell wrote Silver Rain in 1987.", TEMPLATES["tiny"], 64
    )
    n_prompt = full["labels"].count(IGNORE_INDEX)
    cut = encode_qa(
        tokenizer,
        "Where was Mara Kell born?",
        "Mara Kell wrote Silver Rain in 1987.",
        TEMPLATES["tiny"],
        n_prompt + 2,
    )
    assert cut["input_ids"] == full["input_ids"][: n_prompt + 2]
    assert sum(label != IGNORE_INDEX for label in cut["labels"]) == 2


@pytest.mark.parametrize("answer", ["", "   "])
def test_empty_answer_is_an_error(tokenizer, answer: str) -> None:
    with pytest.raises(EncodingError, match="empty or cut off"):
        encode_qa(tokenizer, "Where was Mara Kell born?", answer, TEMPLATES["tiny"], 64)


def test_answer_cut_off_by_max_length_is_an_error(tokenizer) -> None:
    question = "Who wrote the book Silver Rain?"
    n_prompt = encode_qa(tokenizer, question, "x", TEMPLATES["tiny"], 64)["labels"].count(IGNORE_INDEX)
    with pytest.raises(EncodingError, match=f"prompt of {n_prompt} tokens"):
        encode_qa(tokenizer, question, "Mara Kell.", TEMPLATES["tiny"], n_prompt)


def test_pad_batch_right_pads_and_stacks_extra_columns() -> None:
    batch = {
        "input_ids": [[5, 6, 7], [8]],
        "labels": [[-100, 6, 7], [8]],
        "index": [3, 4],
        "ref_nll_sum": [1.5, 2.0],
    }
    out = pad_batch(batch, pad_token_id=0)
    assert out["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert out["labels"].tolist() == [[-100, 6, 7], [8, -100, -100]]
    assert out["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert out["index"].tolist() == [3, 4] and out["ref_nll_sum"].dtype == torch.float64
