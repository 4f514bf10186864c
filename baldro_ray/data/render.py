"""Prompt rendering, label masking and padding: the one place a QA pair becomes model input.

A QA sample is ``user_start + question + user_end + assistant_start + answer (+ eos)``; labels are ``-100`` on every
prompt token, so only answer tokens count (open-unlearning's ``preprocess_chat_instance`` for templates given as
tags: the full text and the prompt are tokenised separately and the prompt's length is masked). ``assistant_end``
(open-unlearning's ``asst_end_tag``) closes only the answers of earlier turns, e.g. few-shot examples; the answer
a sample is scored or trained on ends with eos instead.

A raw text (:func:`encode_text`) is scored as open-unlearning's ``preprocess_pretraining_instance`` does: no eos
appended, the prefix (at least the first token) unlabelled, at most ``max_length`` tokens after the prefix.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from baldro_ray.errors import UserError
from baldro_ray.models.tiny import TINY_TEMPLATE
from baldro_ray.objectives.nll import IGNORE_INDEX


@dataclass(frozen=True)
class PromptTemplate:
    """The four tags around a question and its answer, or (``chat_template=True``) the tokenizer's chat template,
    given ``system_prompt`` (a system message when non-empty) and ``date_string`` (passed to the template when
    non-empty; Llama-3's otherwise writes today's date into every prompt)."""

    user_start: str = ""
    user_end: str = ""
    assistant_start: str = ""
    assistant_end: str = ""
    chat_template: bool = False
    system_prompt: str = ""
    date_string: str = ""

    def prompt(self, question: str) -> str:
        return f"{self.user_start}{question}{self.user_end}{self.assistant_start}"

    def full(self, question: str, answer: str) -> str:
        """The text of a sample: its prompt and answer, without ``assistant_end``."""
        return f"{self.prompt(question)}{answer}"

    def turn(self, question: str, answer: str) -> str:
        """A finished exchange before the one asked about (a few-shot example): closed by ``assistant_end``."""
        return f"{self.full(question, answer)}{self.assistant_end}"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def texts(self, tokenizer: Any, question: str, answer: str) -> tuple[str, str, bool]:
        """``(prompt_text, full_text, add_special_tokens)``; chat templates bring their own special tokens."""
        if not self.chat_template:
            return self.prompt(question), self.full(question, answer), True
        chat = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        chat.append({"role": "user", "content": question})
        extra = {"date_string": self.date_string} if self.date_string else {}
        prompt = tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True, **extra)
        full = tokenizer.apply_chat_template(
            [*chat, {"role": "assistant", "content": answer}], tokenize=False, **extra
        )
        return prompt, full, False


# The tag sets and chat settings of open-unlearning's configs/model/*.yaml template_args: llama2-chat from
# Llama-2-7b-chat-hf.yaml, plain from Llama-2-7b-hf.yaml (MUSE's base models), llama3-chat from
# Llama-3.2-1B-Instruct.yaml (its system prompt and fixed date, which the published TOFU targets were trained with).
TEMPLATES: dict[str, PromptTemplate] = {
    "llama2-chat": PromptTemplate("[INST] ", " [/INST]", "", " "),
    "tiny": PromptTemplate(**TINY_TEMPLATE),
    "plain": PromptTemplate("Question: ", "\n", "Answer: ", "\n\n"),
    "llama3-chat": PromptTemplate(
        chat_template=True, system_prompt="You are a helpful assistant.", date_string="10 Apr 2025"
    ),
    "chat_template": PromptTemplate(chat_template=True),
}


def resolve_template(value: str | Mapping[str, Any]) -> PromptTemplate:
    """A template by name (``TEMPLATES``) or from explicit tags (``user_start``, ``user_end``, ...)."""
    if isinstance(value, str):
        if value not in TEMPLATES:
            raise ValueError(
                f"unknown prompt template {value!r}; expected one of {sorted(TEMPLATES)} or a mapping of tags"
            )
        return TEMPLATES[value]
    return PromptTemplate(**value)


class EncodingError(UserError, ValueError):
    """A sample that cannot be trained on (its answer has no token left)."""


def encode_qa(
    tokenizer: Any, question: str, answer: str, template: PromptTemplate, max_length: int
) -> dict[str, list[int]]:
    """``input_ids`` and ``labels`` (prompt masked with -100, eos appended) cut to ``max_length`` tokens.

    Raises :class:`EncodingError` when no answer token survives (empty answer, or a prompt of ``max_length`` tokens).
    """
    prompt_text, full_text, special = template.texts(tokenizer, question, answer)
    full_ids = list(tokenizer(full_text, add_special_tokens=special)["input_ids"])
    prompt_len = len(tokenizer(prompt_text, add_special_tokens=special)["input_ids"])
    eos = tokenizer.eos_token_id
    if eos is not None and (not full_ids or full_ids[-1] != eos):
        full_ids.append(eos)
    ids = full_ids[:max_length]
    labels = [IGNORE_INDEX] * min(prompt_len, len(ids)) + ids[prompt_len:]
    answer_tokens = len(ids) - min(prompt_len, len(ids))
    if answer_tokens == 0 or not answer.strip():
        raise EncodingError(
            f"the answer {answer[:60]!r} has no token left after a prompt of {prompt_len} tokens "
            f"(max_length={max_length}): it is empty or cut off"
        )
    return {"input_ids": ids, "labels": labels}


def encode_text(tokenizer: Any, prefix: str, text: str, max_length: int) -> dict[str, list[int]]:
    """``input_ids`` and ``labels`` of ``prefix + text`` (``prefix`` unlabelled; never the first token), cut to
    ``max_length`` tokens after the prefix; no eos appended (open-unlearning's ``preprocess_pretraining_instance``).

    Raises :class:`EncodingError` when no labelled token remains.
    """
    ids = list(tokenizer(prefix + text)["input_ids"])
    prefix_len = len(tokenizer(prefix)["input_ids"])
    ids = ids[: prefix_len + max_length]
    unlabelled = min(max(1, prefix_len), len(ids))
    if unlabelled == len(ids):
        raise EncodingError(
            f"the text {text[:60]!r} has no token to score after a prefix of {prefix_len} tokens"
        )
    return {"input_ids": ids, "labels": [IGNORE_INDEX] * unlabelled + ids[unlabelled:]}


def pad_batch(batch: Mapping[str, Any], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-pad ragged ``input_ids``/``labels`` (lists or object arrays) into tensors with an attention mask.

    The mask is 1 on each row's own ``len(input_ids)`` tokens and 0 on the padding, from the lengths alone: never
    from ``token != pad_token_id``, which would hide real tokens equal to it (eos, where pad is eos).

    Other columns are stacked as they are (scalars per row, e.g. ``index`` or ``ref_nll_sum``).
    """
    ids = [np.asarray(x, dtype=np.int64) for x in batch["input_ids"]]
    width = max(len(x) for x in ids)
    input_ids = torch.full((len(ids), width), pad_token_id, dtype=torch.long)
    labels = torch.full((len(ids), width), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(ids), width), dtype=torch.long)
    for row, (seq, lab) in enumerate(zip(ids, batch["labels"])):
        # Copied in by numpy assignment: Ray Data hands over read-only arrays, which torch.as_tensor warns about.
        input_ids[row, : len(seq)].numpy()[:] = seq
        labels[row, : len(seq)].numpy()[:] = np.asarray(lab, dtype=np.int64)
        attention_mask[row, : len(seq)] = 1
    out = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
    for key, values in batch.items():
        if key not in out:
            out[key] = torch.as_tensor(np.array(values))  # a copy: Ray Data hands out read-only arrays
    return out
