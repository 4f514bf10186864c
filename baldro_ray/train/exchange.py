"""The all-gather of small Python objects a BalDRO step needs: across ``torch.distributed`` ranks, or within one
process. A step exchanges only per-unit scalars (hardness, unit values, unit counts), never tensors of the model."""

from __future__ import annotations

from typing import Any, Protocol

import torch


class Exchange(Protocol):
    """The all-gather a step needs (``torch.distributed`` across ranks, or a single process)."""

    rank: int
    world_size: int

    def all_gather_object(self, obj: Any) -> list[Any]: ...


class TorchDistributedExchange:
    """All-gather of small Python objects over the default ``torch.distributed`` process group."""

    def __init__(self) -> None:
        self.rank = torch.distributed.get_rank()
        self.world_size = torch.distributed.get_world_size()

    def all_gather_object(self, obj: Any) -> list[Any]:
        out: list[Any] = [None] * self.world_size
        torch.distributed.all_gather_object(out, obj)
        return out


class SingleProcessExchange:
    """The exchange of a one-rank run."""

    rank = 0
    world_size = 1

    def all_gather_object(self, obj: Any) -> list[Any]:
        return [obj]
