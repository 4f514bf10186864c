"""Tiny Llama family: tokenizer invariants, seeded init, atomic save/load round trip, and that it learns."""

from __future__ import annotations

import copy
import dataclasses
import os
import random
import re
from pathlib import Path

import pytest
import torch

from baldro_ray.models import tiny
from baldro_ray.models.tiny import (
    SPECIAL_TOKENS,
    TINY_TEMPLATE,
    TinyModelSpec,
    build_tiny_llama,
    count_parameters,
    load_model,
    save_model,
    train_tokenizer,
)

_NAMES = ["Ada", "Bram", "Chioma", "Dmitri", "Élodie", "Farid", "Gül", "Hiroshi"]
_THINGS = ["novel", "poem", "river", "garden", "letter", "theorem", "song", "city"]
_VERBS = ["wrote", "painted", "found", "left", "named", "loved", "drew", "sang"]


def _corpus(n: int = 2000) -> list[str]:
    rng = random.Random(0)
    return [
        f"{rng.choice(_NAMES)} {rng.choice(_VERBS)} the {rng.choice(_THINGS)} in {rng.randint(1800, 2020)}."
        for _ in range(n)
    ]


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # Tensors this small gain nothing from intra-op threads, and on a busy 2-core box OpenMP threads
    # contending with other processes made the learn test ~30x slower (0.5 s -> 18 s).
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(_corpus(), vocab_size=512)


@pytest.fixture(scope="module")
def model(tokenizer):
    return build_tiny_llama(TinyModelSpec(), tokenizer, seed=0).eval()


def test_round_trip_ascii_and_unicode(tokenizer) -> None:
    for text in [
        "Ada wrote the novel in 1901.",
        "Ünïcödé — 世界 🙂 naïve café\n\ttabs  spaces",
        "",
        " leading",
    ]:
        ids = tokenizer(text)["input_ids"]
        assert tokenizer.decode(ids, skip_special_tokens=True) == text
        assert tokenizer.decode(tokenizer(text, add_special_tokens=False)["input_ids"]) == text


def test_special_and_chat_tags_are_single_tokens(tokenizer) -> None:
    assert [tokenizer.convert_ids_to_tokens(i) for i in range(len(SPECIAL_TOKENS))] == list(SPECIAL_TOKENS)
    for tag in SPECIAL_TOKENS:
        assert len(tokenizer(tag, add_special_tokens=False)["input_ids"]) == 1
    chat = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Who?"}, {"role": "assistant", "content": "Ada."}], tokenize=False
    )
    assert chat == "<|user|>Who?<|assistant|>Ada.</s>"
    assert TINY_TEMPLATE == {
        "user_start": "<|user|>",
        "user_end": "",
        "assistant_start": "<|assistant|>",
        "assistant_end": "",
    }
    tokens = tokenizer.convert_ids_to_tokens(tokenizer(chat, add_special_tokens=False)["input_ids"])
    assert tokens[0] == "<|user|>" and "<|assistant|>" in tokens and tokens[-1] == "</s>"


def test_bos_prepended_and_no_eos(tokenizer) -> None:
    ids = tokenizer("Bram sang the song.")["input_ids"]
    assert ids[0] == tokenizer.bos_token_id
    assert tokenizer.eos_token_id not in ids
    assert ids[1:] == tokenizer("Bram sang the song.", add_special_tokens=False)["input_ids"]


def test_training_is_deterministic(tmp_path: Path) -> None:
    texts = _corpus()
    first = train_tokenizer(texts)
    first.save_pretrained(tmp_path / "a")
    train_tokenizer(texts).save_pretrained(tmp_path / "b")
    assert (tmp_path / "a" / "tokenizer.json").read_bytes() == (
        tmp_path / "b" / "tokenizer.json"
    ).read_bytes()
    with pytest.raises(ValueError, match="vocab_size"):
        train_tokenizer(texts, vocab_size=100)


def test_build_is_deterministic_by_seed(tokenizer) -> None:
    rng_before = torch.random.get_rng_state()
    a = build_tiny_llama(TinyModelSpec(), tokenizer, seed=1).state_dict()
    b = build_tiny_llama(TinyModelSpec(), tokenizer, seed=1).state_dict()
    c = build_tiny_llama(TinyModelSpec(), tokenizer, seed=2).state_dict()
    assert torch.equal(torch.random.get_rng_state(), rng_before)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)


def test_config_follows_spec_and_tokenizer(model, tokenizer) -> None:
    config = model.config
    assert config.vocab_size == len(tokenizer)
    assert (config.bos_token_id, config.eos_token_id, config.pad_token_id) == (1, 2, 0)
    assert config.num_hidden_layers == 2 and config.hidden_size == 64
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert count_parameters(model) == sum(p.numel() for p in model.parameters())


def test_forward_shape_and_finite_loss(model, tokenizer) -> None:
    batch = tokenizer(
        ["Ada wrote the poem.", "Gül found a letter in 1999."], padding=True, return_tensors="pt"
    )
    with torch.no_grad():
        out = model(**batch, labels=batch["input_ids"])
    assert out.logits.shape == (2, batch["input_ids"].shape[1], len(tokenizer))
    assert torch.isfinite(out.loss)


def test_save_load_round_trip(model, tokenizer, tmp_path: Path) -> None:
    out = save_model(model, tokenizer, tmp_path / "tiny")
    assert (out / "model.safetensors").is_file()
    loaded, loaded_tok = load_model(out)
    text = "<|user|>Who drew the city?<|assistant|>Hiroshi, in 1850 — 世界.</s>"
    assert loaded_tok(text)["input_ids"] == tokenizer(text)["input_ids"]
    ids = tokenizer(text, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert torch.equal(loaded.eval()(ids).logits, model(ids).logits)
    assert load_model(out, dtype=torch.bfloat16)[0].dtype == torch.bfloat16


def test_tokenizer_without_pad_pads_with_eos(model, tokenizer, tmp_path: Path) -> None:
    """Llama's tokenizers have no pad token: loaded ones pad with eos, as open-unlearning's do."""
    no_pad = copy.deepcopy(tokenizer)
    no_pad.pad_token = None
    out = save_model(model, no_pad, tmp_path / "no-pad")
    assert load_model(out)[1].pad_token_id == tokenizer.eos_token_id
    assert (
        load_model(save_model(model, tokenizer, tmp_path / "pad"))[1].pad_token_id == tokenizer.pad_token_id
    )


def test_atomic_save_replaces_existing_and_leaves_no_temp(model, tokenizer, tmp_path: Path) -> None:
    out = tmp_path / "tiny"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    save_model(model, tokenizer, out)
    assert not (out / "stale.txt").exists() and (out / "config.json").is_file()
    save_model(model, tokenizer, out)
    assert os.listdir(tmp_path) == ["tiny"]


def test_load_missing_path_raises_file_not_found(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        load_model(missing)


def test_incomplete_folder_error_names_the_folder(model, tokenizer, tmp_path: Path) -> None:
    out = save_model(model, tokenizer, tmp_path / "partial")
    (out / "model.safetensors").unlink()
    with pytest.raises(OSError, match="partial"):
        load_model(out)


def test_hub_error_is_wrapped_with_model_name(monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(*args: object, **kwargs: object) -> None:
        raise OSError("We couldn't connect to 'https://huggingface.co'")

    # Stands in for an offline machine: the real call retries the network for ~20 s.
    monkeypatch.setattr(tiny.AutoModelForCausalLM, "from_pretrained", offline)
    with pytest.raises(OSError, match="hub.*'owner/missing-model'.*connect") as info:
        load_model("owner/missing-model")
    assert not isinstance(info.value, FileNotFoundError)


def test_mismatched_vocab_raises(tokenizer, tmp_path: Path) -> None:
    small = train_tokenizer(_corpus(50), vocab_size=300)
    narrow = build_tiny_llama(TinyModelSpec(), small)
    with pytest.raises(ValueError, match=f"{len(tokenizer)}.*{len(small)}"):
        save_model(narrow, tokenizer, tmp_path / "bad")
    # Written behind save_model's back, as a hand-edited folder would be.
    narrow.save_pretrained(tmp_path / "bad")
    tokenizer.save_pretrained(tmp_path / "bad")
    with pytest.raises(ValueError, match=f"{len(tokenizer)}.*{len(small)}"):
        load_model(tmp_path / "bad")


def test_tiny_model_can_learn() -> None:
    sentences = [
        f"{name} {verb} the {thing}." for name, verb, thing in zip(_NAMES, _VERBS, _THINGS, strict=True)
    ]
    tok = train_tokenizer(sentences, vocab_size=300)
    spec = dataclasses.replace(TinyModelSpec(), hidden_size=32, intermediate_size=128)
    model = build_tiny_llama(spec, tok, seed=0)
    batch = tok(sentences, padding=True, return_tensors="pt")
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    with torch.no_grad():
        initial = model(**batch, labels=labels).loss.item()
    for _ in range(60):
        loss = model(**batch, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        final = model(**batch, labels=labels).loss.item()
    assert final < 0.5 * initial, (initial, final)
