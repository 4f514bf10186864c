"""Which forget and retain rows each rank sees at each micro-step: a pure function of (seed, epoch, step).

Every epoch draws one permutation of the forget set and, from an independent stream, one of the retain set. The
optimizer step ``s`` takes the global batch of forget positions ``q = s*G .. s*G + G - 1`` of the permutation
(``G = world_size * per_device_batch_size * accumulation``, the last one may be short); inside it, position ``p``
belongs to micro-step ``p // (W*b)``, rank ``(p // b) % W``. Forget position ``q`` is paired with retain row
``retain_order[q mod R]``. So the global batch, its order and its retain partners do not depend on the number of
workers, ranks never draw the same retain row within an epoch (when ``R >= F``), and a rerun draws the same rows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

_RETAIN_STREAM = 0x5E7A1


@dataclass(frozen=True)
class StepLayout:
    """The shape of one optimizer step."""

    world_size: int
    per_device_batch_size: int
    accumulation: int

    @property
    def global_batch(self) -> int:
        return self.world_size * self.per_device_batch_size * self.accumulation

    def steps_per_epoch(self, num_forget: int) -> int:
        return math.ceil(num_forget / self.global_batch)

    def local_positions(self, num_in_step: int, micro: int, rank: int) -> np.ndarray:
        """Positions (within the step's global batch) of the rows ``rank`` processes at micro-step ``micro``."""
        start = micro * self.world_size * self.per_device_batch_size + rank * self.per_device_batch_size
        return np.arange(start, min(start + self.per_device_batch_size, num_in_step), dtype=np.int64)

    def dro_batch(self, position: int, scope: str) -> int:
        """The DRO batch of a position (the units one aggregation sees): 0 for the global scope; one per
        (micro-step, rank) for local."""
        return 0 if scope == "global" else position // self.per_device_batch_size

    def num_dro_batches(self, num_in_step: int, scope: str) -> int:
        return 1 if scope == "global" else math.ceil(num_in_step / self.per_device_batch_size)


def epoch_orders(num_forget: int, num_retain: int, seed: int, epoch: int) -> tuple[np.ndarray, np.ndarray]:
    """The epoch's forget permutation and retain permutation (independent seeded streams)."""
    forget = np.random.default_rng([seed, epoch]).permutation(num_forget)
    retain = (
        np.random.default_rng([seed, epoch, _RETAIN_STREAM]).permutation(num_retain)
        if num_retain
        else forget[:0]
    )
    return forget, retain


def step_rows(
    forget_order: np.ndarray, retain_order: np.ndarray, layout: StepLayout, step: int
) -> tuple[np.ndarray, np.ndarray]:
    """Forget row ids and their paired retain row ids of the optimizer step ``step``, in position order."""
    start = step * layout.global_batch
    epoch_positions = np.arange(start, min(start + layout.global_batch, len(forget_order)))
    forget = forget_order[epoch_positions]
    retain = retain_order[epoch_positions % len(retain_order)] if len(retain_order) else epoch_positions[:0]
    return forget, retain
