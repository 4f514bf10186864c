"""Batched model inference for evaluation: teacher-forced scoring and greedy generation of request lists.

A request is a frozen, hashable value (:class:`Score` or :class:`Generate`). :func:`plan_chunks` deduplicates a
request list and cuts it into batches (same kind and settings, sorted by text length to limit padding);
:func:`run_chunk` runs one batch on a model. Both a single-process :class:`LocalInference` and the Ray Data replica
pool (:mod:`baldro_ray.eval.replicas`) use these two functions, so a request's result does not depend on the
executor or on the number of replicas: the same batches are formed either way.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import numpy as np
import torch

from baldro_ray.data.render import PromptTemplate, encode_qa, encode_text, pad_batch
from baldro_ray.objectives import sequence_nll
from baldro_ray.objectives.nll import IGNORE_INDEX

RAW = PromptTemplate()  # no tags: the text is scored (or continued) as it is


@dataclass(frozen=True)
class Score:
    """Summed NLL and count of the answer tokens given the prompt.

    ``raw``: ``question + answer`` is plain text with ``question`` an unscored prefix (often empty), encoded by
    :func:`~baldro_ray.data.render.encode_text` (no eos; ``max_length`` tokens after the prefix); otherwise a QA
    sample of the template (:func:`~baldro_ray.data.render.encode_qa`). ``max_length`` None: the inference's.
    With ``token_stats`` the result also holds, per answer token, its log-probability, the mean and standard
    deviation of log p over the vocabulary at that position (Min-K%++) and whether the argmax is the token, and
    ``target_text``, the scored tokens decoded without special tokens (the text the zlib attack compresses).
    """

    question: str
    answer: str
    raw: bool = False
    token_stats: bool = False
    max_length: int | None = None


@dataclass(frozen=True)
class Generate:
    """Greedy continuation of the rendered question (``raw``: of the text as it is), cut at the first stop token
    (:func:`stop_token_ids`) and at the first occurrence of any ``stop`` string."""

    question: str
    max_new_tokens: int
    raw: bool = False
    stop: tuple[str, ...] = ()


Request = Score | Generate
Result = dict[str, Any] | str  # Score -> {"nll_sum", "n_tokens"[, token stats]}, Generate -> text


Encoded = dict[str, list[int]]  # a request's token ids: input_ids (and labels for a Score)


def tokenise(request: Request, tokenizer: Any, template: PromptTemplate, max_length: int) -> Encoded:
    """The ids of one request: ``input_ids`` and ``labels`` for a Score, the prompt's ``input_ids`` for a
    Generate. Raises :class:`~baldro_ray.data.render.EncodingError` for a sample with no scored token."""
    if isinstance(request, Score):
        limit = max_length if request.max_length is None else request.max_length
        if request.raw:
            return encode_text(tokenizer, request.question, request.answer, limit)
        return encode_qa(tokenizer, request.question, request.answer, template, limit)
    text, _, special = (RAW if request.raw else template).texts(tokenizer, request.question, "")
    return {"input_ids": list(tokenizer(text, add_special_tokens=special)["input_ids"])}


def fingerprint(tokenizer: Any) -> str:
    """A digest of everything tokenisation reads: the vocabulary and pipeline (fast tokenizers: their whole JSON
    form), the special-token ids and the chat template. Equal fingerprints tokenise every text the same way."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    parts = {
        "class": type(tokenizer).__name__,
        "pipeline": backend.to_str() if backend is not None else sorted(tokenizer.get_vocab().items()),
        "ids": [tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id],
        "chat_template": getattr(tokenizer, "chat_template", None),
    }
    return hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()[:20]


class TokenCache:
    """Token ids of requests per (tokenizer :func:`fingerprint`, template, length limit), filled on first use: the
    models of a run that share a tokenizer (target, retain and every epoch's checkpoint, as a rule) share one
    tokenisation, across every evaluation of the run."""

    def __init__(self) -> None:
        self._ids: dict[tuple[str, str, int], dict[Request, Encoded]] = {}

    def encoded(
        self,
        tokenizer: Any,
        digest: str,
        template: PromptTemplate,
        max_length: int,
        requests: Sequence[Request],
    ) -> list[Encoded]:
        """The ids of ``requests`` with ``tokenizer``, whose :func:`fingerprint` is ``digest``."""
        known = self._ids.setdefault((digest, json.dumps(template.as_dict(), sort_keys=True), max_length), {})
        for request in requests:
            if request not in known:
                known[request] = tokenise(request, tokenizer, template, max_length)
        return [known[request] for request in requests]


class Inference(Protocol):
    """Runs requests; ``run(requests)[i]`` is the result of ``requests[i]``."""

    def run(self, requests: Sequence[Request]) -> list[Result]: ...


def _batch_key(request: Request) -> tuple:
    if isinstance(request, Score):
        return ("score", request.raw, request.token_stats, request.max_length)
    return ("generate", request.raw, request.max_new_tokens, request.stop)


def plan_chunks(requests: Sequence[Request], batch_size: int) -> tuple[list[Request], list[list[int]]]:
    """``(unique, chunks)``: the distinct requests in first-seen order and batches of indices into them.

    A batch holds requests of one kind and settings, sorted by text length; the plan depends only on the
    requests and ``batch_size``.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    unique = list(dict.fromkeys(requests))
    groups: dict[tuple, list[int]] = {}
    for i, request in enumerate(unique):
        groups.setdefault(_batch_key(request), []).append(i)
    chunks = []
    for key in sorted(groups, key=repr):
        members = sorted(
            groups[key], key=lambda i: len(unique[i].question) + len(getattr(unique[i], "answer", ""))
        )
        chunks += [members[s : s + batch_size] for s in range(0, len(members), batch_size)]
    return unique, chunks


def encode_request(request: Request) -> dict[str, Any]:
    """A request as a JSON-able dict (the replicas receive requests this way)."""
    return {"kind": type(request).__name__, **asdict(request)}


def decode_request(data: dict[str, Any]) -> Request:
    """The inverse of :func:`encode_request`."""
    fields = {k: v for k, v in data.items() if k != "kind"}
    if data["kind"] == "Generate":
        return Generate(**{**fields, "stop": tuple(fields.get("stop", ()))})
    return Score(**fields)


def _token_stats(logits: torch.Tensor, labels: torch.Tensor, tokenizer: Any) -> dict[str, Any]:
    """Per answer token of one sequence: log p(token), mean and std of log p over the vocabulary, argmax hit;
    and the answer tokens decoded."""
    shifted, targets = logits[:-1], labels[1:]
    mask = targets != IGNORE_INDEX
    log_probs = torch.log_softmax(shifted[mask].double(), dim=-1)
    tokens = targets[mask]
    probs = log_probs.exp()
    mu = (probs * log_probs).sum(-1)
    sigma = ((probs * log_probs.square()).sum(-1) - mu.square()).clamp_min(0).sqrt()
    return {
        "log_probs": log_probs.gather(-1, tokens[:, None])[:, 0].tolist(),
        "mu": mu.tolist(),
        "sigma": sigma.tolist(),
        "correct": (shifted[mask].argmax(-1) == tokens).tolist(),
        "target_text": tokenizer.decode(tokens.tolist(), skip_special_tokens=True),
    }


def _logits_and_nll(
    model: Any, batch: dict[str, torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(logits, labels, nll_sum[B], n_tokens[B])`` of a padded batch (``input_ids``, ``attention_mask``,
    ``labels``), on the model's device."""
    device = next(model.parameters()).device
    labels = batch["labels"].to(device)
    logits = model(
        input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device)
    ).logits
    return (logits, labels, *sequence_nll(logits, labels))


@torch.no_grad()
def score_batch(model: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(nll_sum[B], n_tokens[B])`` on the CPU of an already tokenised, padded batch, without gradients."""
    _, _, nll_sum, n_tokens = _logits_and_nll(model, batch)
    return nll_sum.cpu(), n_tokens.cpu()


@torch.no_grad()
def _score(model: Any, tokenizer: Any, chunk: Sequence[Score], encoded: Sequence[Encoded]) -> list:
    batch = pad_batch(
        {"input_ids": [e["input_ids"] for e in encoded], "labels": [e["labels"] for e in encoded]},
        tokenizer.pad_token_id,
    )
    logits, labels, nll_sum, n_tokens = _logits_and_nll(model, batch)
    results = []
    for i, request in enumerate(chunk):
        result: dict[str, Any] = {"nll_sum": float(nll_sum[i].double()), "n_tokens": int(n_tokens[i])}
        if request.token_stats:
            result.update(_token_stats(logits[i], labels[i], tokenizer))
        results.append(result)
    return results


def stop_token_ids(model: Any, tokenizer: Any) -> list[int]:
    """The ids a generation ends at: the tokenizer's eos, then every eos id of the model's generation config
    (Llama-3 Instruct lists several; ``model.generate`` stops at all of them by default), without repeats."""
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids = [tokenizer.eos_token_id, *(configured if isinstance(configured, list) else [configured])]
    return list(dict.fromkeys(i for i in ids if i is not None))


@torch.no_grad()
def _generate(model: Any, tokenizer: Any, chunk: Sequence[Generate], encoded: Sequence[Encoded]) -> list[str]:
    """Left-padded greedy generation, so a prompt's continuation does not depend on its batch's widths."""
    prompts = [e["input_ids"] for e in encoded]
    width = max(len(p) for p in prompts)
    input_ids = torch.full((len(prompts), width), tokenizer.pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, ids in enumerate(prompts):
        input_ids[row, width - len(ids) :] = torch.as_tensor(ids)
        attention_mask[row, width - len(ids) :] = 1
    device = next(model.parameters()).device
    stops = stop_token_ids(model, tokenizer)
    generated = model.generate(
        input_ids=input_ids.to(device),
        attention_mask=attention_mask.to(device),
        do_sample=False,
        max_new_tokens=chunk[0].max_new_tokens,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=stops,
    )[:, width:].cpu()
    outputs = []
    for request, new_ids in zip(chunk, generated.tolist()):
        new_ids = new_ids[: next((t for t, token in enumerate(new_ids) if token in stops), len(new_ids))]
        text = tokenizer.decode(new_ids, skip_special_tokens=True)
        for stop in request.stop:
            text = text.split(stop, 1)[0]
        outputs.append(text)
    return outputs


def run_chunk(
    model: Any, tokenizer: Any, chunk: Sequence[Request], encoded: Sequence[Encoded]
) -> list[Result]:
    """The results of one batch from :func:`plan_chunks` (all of one kind), in its order, from its token ids
    (:func:`tokenise`, with a tokenizer of the same :func:`fingerprint` as ``tokenizer``)."""
    was_training = model.training
    model.eval()
    try:
        if isinstance(chunk[0], Score):
            return _score(model, tokenizer, chunk, encoded)
        return _generate(model, tokenizer, chunk, encoded)
    finally:
        model.train(was_training)


def scatter(
    requests: Sequence[Request],
    unique: Sequence[Request],
    chunks: Sequence[Sequence[int]],
    chunk_results: dict[int, list[Result]],
) -> list[Result]:
    """Map per-chunk results back onto ``requests`` (duplicates share one result)."""
    by_request: dict[Request, Result] = {}
    for c, chunk in enumerate(chunks):
        for i, result in zip(chunk, chunk_results[c]):
            by_request[unique[i]] = result
    return [by_request[r] for r in requests]


class LocalInference:
    """Runs requests in this process on an already loaded model."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        template: PromptTemplate,
        max_length: int = 512,
        batch_size: int = 16,
        tokens: TokenCache | None = None,
    ) -> None:
        self.model, self.tokenizer, self.template = model, tokenizer, template
        self.max_length, self.batch_size = max_length, batch_size
        self.tokens, self.digest = tokens or TokenCache(), fingerprint(tokenizer)

    def run(self, requests: Sequence[Request]) -> list[Result]:
        unique, chunks = plan_chunks(requests, self.batch_size)
        encoded = self.tokens.encoded(self.tokenizer, self.digest, self.template, self.max_length, unique)
        results = {
            c: run_chunk(self.model, self.tokenizer, [unique[i] for i in chunk], [encoded[i] for i in chunk])
            for c, chunk in enumerate(chunks)
        }
        return scatter(requests, unique, chunks, results)


class Evaluation:
    """A benchmark evaluation as data: request segments (built from the benchmark, the same for every model) and
    :meth:`assemble`, which turns one model's results into its metric entries. Splitting the two lets one
    inference job serve several models (:meth:`~baldro_ray.eval.replicas.ReplicaInference.run_models`)."""

    segments: list[list[Request]]

    @property
    def requests(self) -> list[Request]:
        return [request for segment in self.segments for request in segment]

    def parts(self, results: Sequence[Result]) -> list[list[Result]]:
        """``results`` (of :attr:`requests`) cut back into segments."""
        if len(results) != sum(len(segment) for segment in self.segments):
            raise ValueError(f"{len(results)} results for {len(self.requests)} requests")
        parts, offset = [], 0
        for segment in self.segments:
            parts.append(list(results[offset : offset + len(segment)]))
            offset += len(segment)
        return parts

    def assemble(self, results: Sequence[Result], retain_eval: Any = None) -> dict[str, dict[str, Any]]:
        raise NotImplementedError

    def run(self, inference: Inference, retain_eval: Any = None) -> dict[str, dict[str, Any]]:
        """Run every request in one ``inference.run`` call and assemble the result."""
        return self.assemble(inference.run(self.requests), retain_eval)


def stats_arrays(results: Sequence[dict[str, Any]], key: str) -> list[np.ndarray]:
    """One per-token array per Score result (``log_probs``, ``mu``, ``sigma`` or ``correct``)."""
    return [np.asarray(r[key], dtype=bool if key == "correct" else np.float64) for r in results]
