"""Tiny Llama-architecture causal LMs with a locally trained byte-level BPE tokenizer.

Everything here runs offline and on CPU in seconds, so the embedded benchmark and the tests exercise the same
code paths (``LlamaForCausalLM``, ``save_pretrained``, ``AutoModelForCausalLM.from_pretrained``) as a real
hub model, without downloading one.

Tokenizer invariants (see ``train_tokenizer``):

* ``decode(encode(text), skip_special_tokens=True) == text`` for any text: every byte is in the vocabulary.
* ids 0..5 are ``<pad>``, ``<s>``, ``</s>``, ``<unk>``, ``<|user|>``, ``<|assistant|>``; each is one token.
* ``tokenizer(text)`` prepends ``<s>`` and appends nothing, like Llama.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)

from baldro_ray.atomic import staging_dir
from baldro_ray.hub import is_hub_id

PAD, BOS, EOS, UNK = "<pad>", "<s>", "</s>", "<unk>"
USER_TAG, ASSISTANT_TAG = "<|user|>", "<|assistant|>"
SPECIAL_TOKENS: tuple[str, ...] = (PAD, BOS, EOS, UNK, USER_TAG, ASSISTANT_TAG)

# Chat markers in the form the data pipeline uses to build prompts; must agree with CHAT_TEMPLATE.
TINY_TEMPLATE: dict[str, str] = {
    "user_start": USER_TAG,
    "user_end": "",
    "assistant_start": ASSISTANT_TAG,
    "assistant_end": "",
}

# Renders ``<|user|>{question}<|assistant|>{answer}</s>`` per exchange; no <s>, since tokenizing adds it.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}" + USER_TAG + "{{ message['content'] }}"
    "{% elif message['role'] == 'assistant' %}"
    + ASSISTANT_TAG
    + "{{ message['content'] }}"
    + EOS
    + "{% else %}{{ raise_exception('unsupported chat role: ' + message['role']) }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}" + ASSISTANT_TAG + "{% endif %}"
)

_BYTE_ALPHABET_SIZE = 256
# "owner/name" as on the Hugging Face hub; anything else that is not a local path is a typo'd path.


def train_tokenizer(texts: Iterable[str], vocab_size: int = 2048) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on ``texts``; same texts and ``vocab_size`` give the same tokenizer.

    ``vocab_size`` is an upper bound: a small corpus runs out of merges earlier. It must leave room for the
    256 byte symbols and the six special tokens, which is what makes every text round-trip.
    """
    minimum = _BYTE_ALPHABET_SIZE + len(SPECIAL_TOKENS)
    if vocab_size < minimum:
        raise ValueError(
            f"vocab_size={vocab_size} is below {minimum} (256 bytes + {len(SPECIAL_TOKENS)} specials)"
        )
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer=trainer)
    bos_id = backend.token_to_id(BOS)
    backend.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS}:1 $B:1", special_tokens=[(BOS, bos_id)]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        extra_special_tokens=[USER_TAG, ASSISTANT_TAG],
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


@dataclass(frozen=True)
class TinyModelSpec:
    """Shape of a tiny Llama; ``num_heads`` must divide ``hidden_size``, ``num_kv_heads`` ``num_heads``."""

    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 4
    intermediate_size: int = 256
    max_position_embeddings: int = 512
    tie_word_embeddings: bool = False
    rope_theta: float = 10000.0


def build_tiny_llama(
    shape: TinyModelSpec, tokenizer: PreTrainedTokenizerBase, seed: int = 0
) -> LlamaForCausalLM:
    """A randomly initialised float32 ``LlamaForCausalLM`` sized to ``tokenizer``.

    The weights depend only on ``shape``, ``len(tokenizer)`` and ``seed``; the global RNG state is untouched.
    """
    if shape.hidden_size % shape.num_heads or shape.num_heads % shape.num_kv_heads:
        raise ValueError(f"incompatible head layout in {shape}")
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=shape.hidden_size,
        num_hidden_layers=shape.num_layers,
        num_attention_heads=shape.num_heads,
        num_key_value_heads=shape.num_kv_heads,
        intermediate_size=shape.intermediate_size,
        max_position_embeddings=shape.max_position_embeddings,
        tie_word_embeddings=shape.tie_word_embeddings,
        rope_theta=shape.rope_theta,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        dtype="float32",
    )
    # devices=[]: initialisation happens on CPU, so forking CUDA generators would only initialise CUDA.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        # The constructor uses torch's global default dtype, which callers may have changed.
        model = LlamaForCausalLM(config).to(torch.float32)
    return model


def count_parameters(model: torch.nn.Module) -> int:
    """Number of distinct parameter elements (tied weights counted once)."""
    return sum(p.numel() for p in model.parameters())


def check_vocabulary(tokenizer_size: int, vocab_size: int, name: str) -> None:
    """Raise ``ValueError`` when a tokenizer has more tokens than the model's vocabulary: they don't belong together."""
    if tokenizer_size > vocab_size:
        raise ValueError(
            f"tokenizer of {name!r} has {tokenizer_size} tokens but the model's vocab_size is {vocab_size}: "
            "the tokenizer does not match the model's vocabulary"
        )


def save_model(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, out_dir: str | os.PathLike[str]
) -> Path:
    """Write ``model`` (safetensors) and ``tokenizer`` to ``out_dir`` atomically; return it as a Path.

    Both are written into a sibling staging folder published as ``out_dir`` (:func:`baldro_ray.atomic.staging_dir`),
    so ``out_dir`` never holds a partial save; an existing one is replaced whole.
    """
    check_vocabulary(len(tokenizer), model.config.vocab_size, str(out_dir))
    with staging_dir(out_dir) as staging:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
    return Path(out_dir)


def load_model(
    name_or_path: str | os.PathLike[str], dtype: torch.dtype | None = None
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM and its tokenizer from a local folder or a hub name, exactly as transformers does.

    ``dtype=None`` keeps transformers' default (5.x: the checkpoint's dtype). Raises ``FileNotFoundError``
    for a missing path that is not an ``owner/name`` hub id, ``OSError`` naming the model when loading
    fails (offline, unknown repo, incomplete folder), and ``ValueError`` when the tokenizer has more tokens
    than the model's vocabulary.
    """
    name = os.fspath(name_or_path)
    if not os.path.exists(name) and not is_hub_id(name):
        raise FileNotFoundError(f"model path {name!r} does not exist (and is not an 'owner/name' hub id)")
    kwargs = {} if dtype is None else {"dtype": dtype}
    try:
        model = AutoModelForCausalLM.from_pretrained(name, **kwargs)
    except OSError as err:
        raise OSError(f"could not load {_where(name)} {name!r}: {err}") from err
    tokenizer = load_tokenizer(name)
    check_vocabulary(len(tokenizer), model.config.vocab_size, name)
    return model, tokenizer


def _where(name: str) -> str:
    return "local folder" if os.path.exists(name) else "Hugging Face hub model (or missing local path)"


def load_tokenizer(name_or_path: str | os.PathLike[str]) -> PreTrainedTokenizerBase:
    """The tokenizer :func:`load_model` gives with the model (padding with eos where it has no pad token)."""
    name = os.fspath(name_or_path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(name)
    except OSError as err:
        raise OSError(f"could not load {_where(name)} {name!r}: {err}") from err
    if tokenizer.pad_token_id is None:  # Llama's tokenizers have none; open-unlearning pads with eos too
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer
