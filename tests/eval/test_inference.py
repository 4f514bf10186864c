"""Batched evaluation inference: request planning, scoring and token statistics against direct float64
computations, batched greedy generation against one-by-one, and the Ray Data replica pool against in-process."""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import pytest
import torch

from baldro_ray.data.render import TEMPLATES
from baldro_ray.eval.inference import (
    Generate,
    LocalInference,
    Score,
    TokenCache,
    decode_request,
    encode_request,
    fingerprint,
    plan_chunks,
    stop_token_ids,
    tokenise,
)
from baldro_ray.models.tiny import (
    TinyModelSpec,
    build_tiny_llama,
    load_tokenizer,
    save_model,
    train_tokenizer,
)

TEMPLATE = TEMPLATES["tiny"]
TEXTS = [
    "Who wrote the Glass Orchard?",
    "Mara Voss wrote it in 1987.",
    "Where was Ilan Petr born?",
    "In a small port town on the northern coast.",
    "What genre?",
    "Speculative fiction.",
    "Which award did she win?",
    "The Lantern Prize for debut novels, twice.",
]


@pytest.fixture(scope="module")
def model_and_tokenizer() -> tuple[Any, Any]:
    tokenizer = train_tokenizer(TEXTS * 4, vocab_size=300)
    spec = TinyModelSpec(hidden_size=16, num_layers=1, num_heads=2, num_kv_heads=2, intermediate_size=32)
    return build_tiny_llama(spec, tokenizer, seed=3).eval(), tokenizer


def _requests() -> list[Any]:
    pairs = list(zip(TEXTS[::2], TEXTS[1::2]))
    requests: list[Any] = [Score(q, a) for q, a in pairs] + [Score(q, a, token_stats=True) for q, a in pairs]
    requests += [Score("", TEXTS[3], raw=True, token_stats=True), Score(*pairs[0])]  # a duplicate
    requests += [Generate(q, 6) for q, _ in pairs] + [Generate(TEXTS[0], 5, raw=True, stop=("e",))]
    return requests


def test_plan_dedupes_groups_and_sorts() -> None:
    requests = _requests()
    unique, chunks = plan_chunks(requests, batch_size=3)
    assert len(unique) == len(requests) - 1
    assert sorted(i for chunk in chunks for i in chunk) == list(range(len(unique)))
    for chunk in chunks:
        kinds = {(type(unique[i]), getattr(unique[i], "token_stats", None), unique[i].raw) for i in chunk}
        assert len(kinds) == 1 and len(chunk) <= 3
    assert plan_chunks(requests, 3) == (unique, chunks)
    assert all(decode_request(encode_request(r)) == r for r in unique)
    with pytest.raises(ValueError, match="batch_size"):
        plan_chunks(requests, 0)


def _direct(model: Any, tokenizer: Any, prompt: str, text: str, raw: bool) -> dict[str, np.ndarray]:
    """Per answer token, by hand in float64: log p, mean and std of log p over the vocabulary, argmax hit. A raw
    text has no eos appended and its prefix (at least its first token) unscored."""
    if raw:
        prompt_ids = tokenizer(prompt)["input_ids"] or [None]
        full = tokenizer(prompt + text)["input_ids"]
    else:
        prompt_ids = tokenizer(TEMPLATE.prompt(prompt))["input_ids"]
        full = tokenizer(TEMPLATE.full(prompt, text))["input_ids"] + [tokenizer.eos_token_id]
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([full])).logits[0].double()
    lp = logits - torch.logsumexp(logits, -1, keepdim=True)
    rows = range(len(prompt_ids) - 1, len(full) - 1)
    p = lp.exp()
    return {
        "log_probs": np.array([lp[t, full[t + 1]].item() for t in rows]),
        "mu": np.array([(p[t] * lp[t]).sum().item() for t in rows]),
        "sigma": np.array(
            [((p[t] * lp[t] ** 2).sum() - (p[t] * lp[t]).sum() ** 2).sqrt().item() for t in rows]
        ),
        "correct": np.array([lp[t].argmax().item() == full[t + 1] for t in rows]),
    }


def test_scores_and_token_stats_match_direct(model_and_tokenizer: tuple[Any, Any]) -> None:
    model, tokenizer = model_and_tokenizer
    requests = _requests()
    results = LocalInference(model, tokenizer, TEMPLATE, batch_size=3).run(requests)
    assert results[-1 - 5] == results[0]  # the duplicate gets the same result
    for request, result in zip(requests, results):
        if not isinstance(request, Score):
            continue
        direct = _direct(model, tokenizer, request.question, request.answer, request.raw)
        assert result["n_tokens"] == direct["log_probs"].size
        assert result["nll_sum"] == pytest.approx(-direct["log_probs"].sum(), rel=1e-5)
        if request.token_stats:
            for key in ("log_probs", "mu", "sigma"):
                np.testing.assert_allclose(result[key], direct[key], rtol=1e-5, atol=1e-6)
            assert result["correct"] == direct["correct"].tolist()
            assert result["target_text"] == request.answer  # a QA answer's scored eos decodes to nothing
        else:
            assert set(result) == {"nll_sum", "n_tokens"}


def test_batched_generation_equals_one_by_one(model_and_tokenizer: tuple[Any, Any]) -> None:
    model, tokenizer = model_and_tokenizer
    generations = [r for r in _requests() if isinstance(r, Generate)]
    assert len({len(tokenizer(TEMPLATE.prompt(g.question))["input_ids"]) for g in generations}) > 1
    batched = LocalInference(model, tokenizer, TEMPLATE, batch_size=4).run(generations)
    single = [LocalInference(model, tokenizer, TEMPLATE, batch_size=1).run([g])[0] for g in generations]
    assert batched == single
    assert all(isinstance(t, str) and tokenizer.eos_token not in t for t in batched)
    assert "e" not in batched[-1]  # cut at the stop string


def test_requests_are_tokenised_once_per_tokenizer(
    model_and_tokenizer: tuple[Any, Any], tmp_path: Any
) -> None:
    """A tokenizer reloaded from a model folder has the same fingerprint and reuses the first tokenisation (the
    same lists, not new ones); another vocabulary gets its own."""
    model, tokenizer = model_and_tokenizer
    save_model(model, tokenizer, tmp_path / "model")
    reloaded, other = load_tokenizer(tmp_path / "model"), train_tokenizer(TEXTS[::-1] * 4, vocab_size=280)
    assert fingerprint(reloaded) == fingerprint(tokenizer) != fingerprint(other)
    cache, requests = TokenCache(), list(dict.fromkeys(_requests()))
    first = cache.encoded(tokenizer, fingerprint(tokenizer), TEMPLATE, 512, requests)
    assert first == [tokenise(r, tokenizer, TEMPLATE, 512) for r in requests]
    again = cache.encoded(reloaded, fingerprint(reloaded), TEMPLATE, 512, requests[::-1])
    assert all(a is b for a, b in zip(first, again[::-1]))
    theirs = cache.encoded(other, fingerprint(other), TEMPLATE, 512, requests)
    assert theirs == [tokenise(r, other, TEMPLATE, 512) for r in requests] and theirs != first
    shorter = cache.encoded(tokenizer, fingerprint(tokenizer), TEMPLATE, 20, requests[:1])
    assert shorter != first[:1]  # the length limit is part of the key


@pytest.mark.ray
@pytest.mark.timeout(300)
def test_replicas_equal_in_process(
    ray_cluster: None, model_and_tokenizer: tuple[Any, Any], tmp_path: Any
) -> None:
    from baldro_ray.eval.replicas import ReplicaInference

    model, tokenizer = model_and_tokenizer
    save_model(model, tokenizer, tmp_path / "model")
    requests = _requests()
    local = LocalInference(model, tokenizer, TEMPLATE, batch_size=3).run(requests)
    one = ReplicaInference(str(tmp_path / "model"), TEMPLATE, batch_size=3, replicas=1).run(requests)
    two = ReplicaInference(str(tmp_path / "model"), TEMPLATE, batch_size=3, replicas=2).run(requests)
    assert one == two  # exactly: the same batches on replicas with the same thread count
    other = build_tiny_llama(
        TinyModelSpec(hidden_size=16, num_layers=1, num_heads=2, num_kv_heads=2, intermediate_size=32),
        tokenizer,
        seed=4,
    )
    save_model(other, tokenizer, tmp_path / "other")
    pool = ReplicaInference(str(tmp_path / "model"), TEMPLATE, batch_size=3, replicas=2)
    both = pool.run_models([str(tmp_path / "model"), str(tmp_path / "other")], requests)
    assert both[0] == one and both[1] == ReplicaInference(
        str(tmp_path / "other"), TEMPLATE, batch_size=3
    ).run(requests)
    assert both[1] != both[0]
    # In process the thread count differs, so float32 reductions may differ in the last bits.
    for mine, theirs in zip(local, one):
        if isinstance(mine, str):
            assert mine == theirs
        else:
            assert mine.keys() == theirs.keys()
            assert mine.get("target_text") == theirs.get("target_text")
            for key in mine.keys() - {"target_text"}:
                np.testing.assert_allclose(
                    np.asarray(mine[key], dtype=float), np.asarray(theirs[key], dtype=float), rtol=1e-6
                )


def test_generation_stops_at_every_eos_id_of_the_generation_config(
    model_and_tokenizer: tuple[Any, Any],
) -> None:
    """Llama-3 Instruct's generation config lists several eos ids: generation ends at any of them (a request stopped
    only at the tokenizer's eos would run on past the others)."""
    model, tokenizer = model_and_tokenizer
    model = copy.deepcopy(model)
    prompt = torch.tensor([tokenizer(TEMPLATE.prompt(TEXTS[0]))["input_ids"]])
    with torch.no_grad():
        out = model.generate(
            input_ids=prompt, do_sample=False, max_new_tokens=8, eos_token_id=tokenizer.eos_token_id
        )
    new = out[0, prompt.shape[1] :].tolist()
    cut = next(t for t in range(1, len(new)) if new[t] not in new[:t])  # the first token not generated before
    assert tokenizer.eos_token_id not in new[: cut + 1]
    model.generation_config.eos_token_id = [tokenizer.eos_token_id, new[cut]]
    assert stop_token_ids(model, tokenizer) == [tokenizer.eos_token_id, new[cut]]
    got = LocalInference(model, tokenizer, TEMPLATE, batch_size=1).run([Generate(TEXTS[0], 8)])
    assert got == [tokenizer.decode(new[:cut], skip_special_tokens=True)]


def test_pad_equal_to_eos_keeps_every_real_token_attended(model_and_tokenizer: tuple[Any, Any]) -> None:
    """With pad == eos (Llama's tokenizers padded as open-unlearning does), an eos inside a sequence is a real
    token: scores and generations of padded batches equal unpadded float64 / single computations, which a mask
    built from ``token != pad`` would break."""
    model, tokenizer = model_and_tokenizer
    tokenizer = copy.deepcopy(tokenizer)
    tokenizer.pad_token = tokenizer.eos_token
    assert tokenizer.pad_token_id == tokenizer.eos_token_id
    texts = [f"{TEXTS[1]}{tokenizer.eos_token}{TEXTS[3]}", TEXTS[5], f"{TEXTS[7]}{tokenizer.eos_token} x"]
    scores = [Score("", t, raw=True, token_stats=True) for t in texts]
    for request, result in zip(scores, LocalInference(model, tokenizer, TEMPLATE, batch_size=3).run(scores)):
        direct = _direct(model, tokenizer, "", request.answer, raw=True)
        np.testing.assert_allclose(result["log_probs"], direct["log_probs"], rtol=1e-5, atol=1e-6)
    # Few-shot style prompts: an earlier turn ends with eos, the next one follows; left padding is eos too.
    prompts = [Generate(f"{TEXTS[0]}{tokenizer.eos_token}{q}", 5, raw=True) for q in TEXTS[2::2]]
    batched = LocalInference(model, tokenizer, TEMPLATE, batch_size=3).run(prompts)
    for request, text in zip(prompts, batched):
        ids = torch.tensor([tokenizer(request.question)["input_ids"]])
        with torch.no_grad():
            out = model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                do_sample=False,
                max_new_tokens=5,
                pad_token_id=tokenizer.pad_token_id,
            )
        new = out[0, ids.shape[1] :].tolist()
        new = new[: new.index(tokenizer.eos_token_id)] if tokenizer.eos_token_id in new else new
        assert text == tokenizer.decode(new, skip_special_tokens=True)


def test_raw_text_is_scored_past_the_inference_max_length(model_and_tokenizer: tuple[Any, Any]) -> None:
    """A raw text's own ``max_length`` (MUSE: 2048 tokens after the prefix) wins over the inference's (the QA
    limit, 512 by default): every token of a text longer than 512 is scored, no eos added."""
    _, tokenizer = model_and_tokenizer
    spec = TinyModelSpec(
        hidden_size=16,
        num_layers=1,
        num_heads=2,
        num_kv_heads=2,
        intermediate_size=32,
        max_position_embeddings=2048,
    )
    model = build_tiny_llama(spec, tokenizer, seed=5).eval()
    text = " ".join(TEXTS * 12)
    n_text = len(tokenizer(text)["input_ids"]) - 1
    assert n_text > 512
    inference = LocalInference(model, tokenizer, TEMPLATE, max_length=512, batch_size=2)
    long, cut = inference.run([Score("", text, True, True, 2048), Score("", text, True, True, 100)])
    direct = _direct(model, tokenizer, "", text, raw=True)
    assert long["n_tokens"] == n_text == direct["log_probs"].size
    np.testing.assert_allclose(long["log_probs"], direct["log_probs"], rtol=1e-5, atol=1e-6)
    assert cut["n_tokens"] == 100
