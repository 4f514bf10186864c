"""Models on Ray Data actor pools: evaluation replicas running the planned batches, and the one reference-scoring
pass of an unlearning run (:func:`score_reference`).

Each dataset row is one batch of :func:`~baldro_ray.eval.inference.plan_chunks` for one model: its requests and
their token ids as JSON, tokenised on the driver once per tokenizer (:class:`~baldro_ray.eval.inference.TokenCache`); an actor loads a model when its first batch arrives and runs the batches it is given with
:func:`~baldro_ray.eval.inference.run_chunk`. Several models (e.g. every epoch's checkpoint) can share one job, so
the actors start once. The batches are planned on the driver, so the results are identical for any number of
replicas (and to :class:`~baldro_ray.eval.inference.LocalInference` with the same batch size and threads).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np

from baldro_ray.bars import open_bar
from baldro_ray.data.render import PromptTemplate
from baldro_ray.eval.inference import (
    Request,
    Result,
    TokenCache,
    decode_request,
    encode_request,
    fingerprint,
    plan_chunks,
    scatter,
)
from baldro_ray.models.tiny import load_tokenizer


class _Replica:
    """A Ray Data actor holding one model replica at a time (rows arrive grouped by model)."""

    def __init__(self, dtype: str | None, threads: int) -> None:
        import torch

        torch.set_num_threads(threads)
        self.dtype = dtype
        self.path: str | None = None

    def _load(self, path: str) -> None:
        import torch

        from baldro_ray.models.tiny import load_model

        self.model = self.tokenizer = None  # free the previous model before loading the next
        model, self.tokenizer = load_model(path, None if self.dtype is None else getattr(torch, self.dtype))
        self.model = model.to("cuda" if torch.cuda.is_available() else "cpu").eval()
        self.path = path

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from baldro_ray.eval.inference import run_chunk

        results = []
        for path, payload in zip(batch["model"], batch["payload"]):
            if str(path) != self.path:
                self._load(str(path))
            data = json.loads(str(payload))
            chunk = [decode_request(r) for r in data["requests"]]
            results.append(json.dumps(run_chunk(self.model, self.tokenizer, chunk, data["encoded"])))
        return {"job": batch["job"], "chunk": batch["chunk"], "results": np.asarray(results, dtype=object)}


class ReplicaInference:
    """Runs requests on ``replicas`` copies of the model at ``model_path`` (a folder or a hub name), or the same
    requests on several models in one job (:meth:`run_models`).

    Needs a running Ray cluster with ``replicas * cpus_per_replica`` free CPUs (and a GPU each with ``use_gpu``).
    """

    def __init__(
        self,
        model_path: str,
        template: PromptTemplate,
        max_length: int = 512,
        batch_size: int = 16,
        replicas: int = 1,
        cpus_per_replica: float = 1.0,
        use_gpu: bool = False,
        dtype: str | None = None,
        tokens: TokenCache | None = None,
    ) -> None:
        self.model_path, self.template, self.max_length = model_path, template, max_length
        self.batch_size, self.replicas = batch_size, replicas
        self.cpus_per_replica, self.use_gpu, self.dtype = cpus_per_replica, use_gpu, dtype
        self.tokens = tokens or TokenCache()

    def run(self, requests: Sequence[Request]) -> list[Result]:
        return self.run_models([self.model_path], requests)[0]

    def run_models(self, model_paths: Sequence[str], requests: Sequence[Request]) -> list[list[Result]]:
        """``requests`` run on each model of ``model_paths``, all in one Ray Data job; results per model."""
        import ray.data

        unique, chunks = plan_chunks(requests, self.batch_size)
        if not chunks:
            return [[] for _ in model_paths]
        payloads = {}  # per tokenizer: models that share one share its payloads
        items = []
        for j, path in enumerate(model_paths):
            tokenizer = load_tokenizer(path)
            digest = fingerprint(tokenizer)
            if digest not in payloads:
                encoded = self.tokens.encoded(tokenizer, digest, self.template, self.max_length, unique)
                payloads[digest] = [
                    json.dumps(
                        {
                            "requests": [encode_request(unique[i]) for i in chunk],
                            "encoded": [encoded[i] for i in chunk],
                        }
                    )
                    for chunk in chunks
                ]
            items += [
                {"job": j, "model": str(path), "chunk": c, "payload": payload}
                for c, payload in enumerate(payloads[digest])
            ]
        dataset = ray.data.from_items(items, override_num_blocks=min(len(items), 4 * self.replicas))
        output = dataset.map_batches(
            _Replica,
            fn_constructor_kwargs={
                "dtype": self.dtype,
                "threads": max(1, int(self.cpus_per_replica)),
            },
            batch_size=1,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=self.replicas),
            num_cpus=self.cpus_per_replica,
            num_gpus=1 if self.use_gpu else 0,
        )
        by_job: list[dict[int, list[Result]]] = [{} for _ in model_paths]
        bar = open_bar(len(model_paths) * len(unique), f"evaluating {len(model_paths)} model(s)", "request")
        done = 0
        try:
            for row in output.iter_rows():
                results = json.loads(row["results"])
                by_job[int(row["job"])][int(row["chunk"])] = results
                done += len(results)
                bar.update_to(done)
        finally:
            bar.close()
        return [scatter(requests, unique, chunks, results) for results in by_job]


class _ReferenceScorer:
    """Ray Data actor: the frozen reference model, loaded once per actor, scoring padded batches without grad."""

    def __init__(self, model_path: str, dtype: str | None) -> None:
        import torch

        from baldro_ray.models.tiny import load_model

        model, tokenizer = load_model(model_path, None if dtype is None else getattr(torch, dtype))
        self.model, self.pad_token_id = model.eval(), tokenizer.pad_token_id

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from baldro_ray.data.render import pad_batch
        from baldro_ray.eval.inference import score_batch

        padded = pad_batch({"input_ids": batch["input_ids"], "labels": batch["labels"]}, self.pad_token_id)
        nll_sum, _ = score_batch(self.model, padded)
        return {**batch, "ref_nll_sum": nll_sum.double().numpy()}


def score_reference(dataset: Any, model_path: str, dtype: str | None = None, batch_size: int = 16) -> Any:
    """Add ``ref_nll_sum`` (the reference model's summed answer NLL) to every row, once, before training.

    The reference model of NPO is the model before unlearning and the forget rows never change, so this replaces
    the reference forward pass the original implementation runs at every step.
    """
    import ray.data

    return dataset.map_batches(
        _ReferenceScorer,
        fn_constructor_kwargs={"model_path": model_path, "dtype": dtype},
        batch_size=batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=1),
        num_cpus=1,
    ).materialize()
