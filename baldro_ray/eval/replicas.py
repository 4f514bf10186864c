"""Evaluation as a Ray Data batch-inference job: model replicas in an actor pool run the planned batches.

Each dataset row is one batch of :func:`~baldro_ray.eval.inference.plan_chunks` (its requests as JSON); an actor
loads the model once and runs the batches it is given with :func:`~baldro_ray.eval.inference.run_chunk`. The
batches are planned on the driver, so the results are identical for any number of replicas (and to
:class:`~baldro_ray.eval.inference.LocalInference` with the same batch size).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np

from baldro_ray.data.render import PromptTemplate
from baldro_ray.eval.inference import Request, Result, decode_request, encode_request, plan_chunks, scatter


class _Replica:
    """A Ray Data actor holding one model replica."""

    def __init__(
        self, model_path: str, template: dict[str, Any], max_length: int, dtype: str | None, threads: int
    ):
        import torch

        from baldro_ray.models.tiny import load_model

        torch.set_num_threads(threads)
        model, self.tokenizer = load_model(model_path, None if dtype is None else getattr(torch, dtype))
        device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model = model.to(device).eval()
        self.template, self.max_length = PromptTemplate(**template), max_length

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from baldro_ray.eval.inference import run_chunk

        results = []
        for payload in batch["payload"]:
            chunk = [decode_request(r) for r in json.loads(str(payload))]
            results.append(
                json.dumps(run_chunk(self.model, self.tokenizer, self.template, chunk, self.max_length))
            )
        return {"chunk": batch["chunk"], "results": np.asarray(results, dtype=object)}


class ReplicaInference:
    """Runs requests on ``replicas`` copies of the model at ``model_path`` (a folder or a hub name).

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
    ) -> None:
        self.model_path, self.template, self.max_length = model_path, template, max_length
        self.batch_size, self.replicas = batch_size, replicas
        self.cpus_per_replica, self.use_gpu, self.dtype = cpus_per_replica, use_gpu, dtype

    def run(self, requests: Sequence[Request]) -> list[Result]:
        import ray.data

        unique, chunks = plan_chunks(requests, self.batch_size)
        if not chunks:
            return []
        items = [
            {"chunk": c, "payload": json.dumps([encode_request(unique[i]) for i in chunk])}
            for c, chunk in enumerate(chunks)
        ]
        dataset = ray.data.from_items(items, override_num_blocks=min(len(items), 4 * self.replicas))
        output = dataset.map_batches(
            _Replica,
            fn_constructor_kwargs={
                "model_path": self.model_path,
                "template": self.template.as_dict(),
                "max_length": self.max_length,
                "dtype": self.dtype,
                "threads": max(1, int(self.cpus_per_replica)),
            },
            batch_size=1,
            batch_format="numpy",
            concurrency=self.replicas,
            num_cpus=self.cpus_per_replica,
            num_gpus=1 if self.use_gpu else 0,
        ).take_all()
        results = {int(row["chunk"]): json.loads(row["results"]) for row in output}
        return scatter(requests, unique, chunks, results)
