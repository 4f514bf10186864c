"""Prompt rendering, label masking and padding with a real (locally trained) tokenizer."""

from __future__ import annotations

import copy

import pytest
import torch

from baldro_ray.data.render import TEMPLATES, EncodingError, PromptTemplate, encode_qa, encode_text, pad_batch
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


def test_end_of_answer_tag_closes_earlier_turns_only(tokenizer) -> None:
    """open-unlearning's asst_end_tag: after few-shot answers, never after the scored answer, which ends with eos
    (so Llama-2-chat's trailing " " is not a scored token)."""
    llama2 = TEMPLATES["llama2-chat"]
    assert llama2.full("Q?", "A.") == "[INST] Q? [/INST]A."
    assert llama2.turn("Q?", "A.") == "[INST] Q? [/INST]A. "
    assert TEMPLATES["plain"].turn("Q?", "A.") == "Question: Q?\nAnswer: A.\n\n"
    encoded = encode_qa(tokenizer, "Who wrote the book Silver Rain?", "Mara Kell.", llama2, 64)
    ids = tokenizer("[INST] Who wrote the book Silver Rain? [/INST]Mara Kell.")["input_ids"]
    assert encoded["input_ids"] == [*ids, tokenizer.eos_token_id]


def test_chat_template_gets_the_system_prompt_and_date(tokenizer) -> None:
    """llama3-chat passes open-unlearning's system prompt and fixed date; without a date Llama-3's template
    writes today's."""
    chat = copy.deepcopy(tokenizer)
    chat.chat_template = (
        "{% for m in messages %}[{{ m['role'] }}]{{ m['content'] }}{% endfor %}"
        "{% if date_string is defined %}<{{ date_string }}>{% endif %}"
        "{% if add_generation_prompt %}[assistant]{% endif %}"
    )
    prompt, full, special = TEMPLATES["llama3-chat"].texts(chat, "Q?", "A.")
    assert prompt == "[system]You are a helpful assistant.[user]Q?<10 Apr 2025>[assistant]"
    assert full == "[system]You are a helpful assistant.[user]Q?[assistant]A.<10 Apr 2025>" and not special
    assert TEMPLATES["chat_template"].texts(chat, "Q?", "A.")[0] == "[user]Q?[assistant]"


def test_raw_text_has_no_eos_and_skips_its_prefix(tokenizer) -> None:
    text = "Mara Kell wrote Silver Rain in 1987."
    ids = tokenizer(text)["input_ids"]
    encoded = encode_text(tokenizer, "", text, 64)
    assert encoded["input_ids"] == ids and ids[-1] != tokenizer.eos_token_id
    assert encoded["labels"] == [IGNORE_INDEX, *ids[1:]]  # the bos prefix
    cut = encode_text(tokenizer, "", text, 3)
    assert cut["input_ids"] == ids[:4] and cut["labels"].count(IGNORE_INDEX) == 1  # 3 tokens after the prefix
    prefixed = encode_text(tokenizer, "Mara Kell", " wrote Silver Rain in 1987.", 64)
    n_prefix = len(tokenizer("Mara Kell")["input_ids"])
    assert prefixed["labels"][:n_prefix] == [IGNORE_INDEX] * n_prefix
    with pytest.raises(EncodingError, match="no token to score"):
        encode_text(tokenizer, "Mara Kell", "", 64)


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


def test_pad_batch_mask_comes_from_lengths_when_pad_is_eos() -> None:
    """Pad == eos (2): a row's own eos, at its end or inside, stays attended."""
    out = pad_batch({"input_ids": [[1, 5, 2, 6, 2], [1, 2]], "labels": [[-100, 5, 2, 6, 2], [-100, 2]]}, 2)
    assert out["input_ids"].tolist() == [[1, 5, 2, 6, 2], [1, 2, 2, 2, 2]]
    assert out["attention_mask"].tolist() == [[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]]
