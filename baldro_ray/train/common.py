"""Pieces the worker loops share: seeding, thread count, the learning-rate schedule, padded dataset batches."""

from __future__ import annotations

import random
from collections.abc import Iterator
from functools import partial
from typing import Any

import numpy as np
import torch

from baldro_ray.data.render import pad_batch


def seed_everything(seed: int, rank: int) -> None:
    """Seed Python, NumPy and torch with ``seed + rank``: each rank its own stream, reproducible run to run."""
    value = seed + rank
    random.seed(value)
    np.random.seed(value % 2**32)
    torch.manual_seed(value)


def set_worker_threads(cpus_per_worker: float) -> None:
    """One intra-op thread per CPU the worker holds, so co-located workers do not fight over cores."""
    torch.set_num_threads(max(1, int(cpus_per_worker)))


def lr_lambda(step: int, warmup_steps: int, total_steps: int, schedule: str) -> float:
    """Multiplier of the base lr: linear warm-up over ``warmup_steps``, then constant or linear decay to 0."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))


def build_scheduler(
    optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int, schedule: str
) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR following :func:`lr_lambda`."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, partial(lr_lambda, warmup_steps=warmup_steps, total_steps=total_steps, schedule=schedule)
    )


def iter_padded_batches(
    shard: Any, batch_size: int, pad_token_id: int, seed: int | None = None, drop_last: bool = False
) -> Iterator[dict[str, torch.Tensor]]:
    """Batches of a Ray Data shard, right-padded by :func:`pad_batch` (shuffled locally when ``seed`` is given)."""
    shuffle = (
        {"local_shuffle_buffer_size": 4 * batch_size, "local_shuffle_seed": seed} if seed is not None else {}
    )
    return shard.iter_torch_batches(
        batch_size=batch_size,
        collate_fn=partial(pad_batch, pad_token_id=pad_token_id),
        drop_last=drop_last,
        **shuffle,
    )
