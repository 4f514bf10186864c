"""The rows of one micro-step and the per-unit losses one forward pass gives them.

A :class:`MicroBatch` holds a rank's padded forget and retain rows of one micro-step with their positions in the
step's global batch; :class:`Units` forwards them (forget and retain in one concatenated pass) and keeps each
forget and retain unit loss with the local row it belongs to; :func:`unit_counts` says how many units each position
will have from the labels alone, before any forward.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from baldro_ray.objectives import (
    IGNORE_INDEX,
    Aggregation,
    ForgetBatch,
    get_forget_loss,
    kl_per_position,
    token_nll,
)


@dataclass(frozen=True)
class StepConfig:
    """The method, as the step needs it."""

    forget_loss: str
    hyperparameters: dict[str, float]
    aggregation: Aggregation  # of the forget units
    retain_aggregation: Aggregation | None  # None: no retain DRO (the retain units are averaged)
    scope: str
    gamma: float
    alpha: float
    retain_loss_type: str | None  # None: forget-only method (GA)
    retain_reduction: str
    seed: int


@dataclass
class MicroBatch:
    """The local rows of one micro-step: padded forget and retain tensors and their positions in the step.

    A retain row's position is that of its forget partner; BalDRO-G may keep a retain row whose partner it dropped.
    """

    forget: dict[str, Tensor]
    forget_positions: np.ndarray
    retain: dict[str, Tensor] | None = None
    retain_positions: np.ndarray | None = None

    def restrict(self, forget_keep: set[int], retain_keep: set[int]) -> MicroBatch:
        """The rows at the kept positions. Without a kept forget row the first one stays as the dummy row (no
        position) that :class:`Units` forwards when nothing else is: a model cannot forward zero rows."""
        f = np.isin(self.forget_positions, sorted(forget_keep))
        forget = _rows(self.forget, f if f.any() else np.arange(len(f)) == 0)
        if self.retain is None or self.retain_positions is None:
            return MicroBatch(forget, self.forget_positions[f])
        r = np.isin(self.retain_positions, sorted(retain_keep))
        return MicroBatch(forget, self.forget_positions[f], _rows(self.retain, r), self.retain_positions[r])


def _rows(batch: dict[str, Tensor], keep: np.ndarray) -> dict[str, Tensor]:
    index = torch.from_numpy(np.flatnonzero(keep))
    return {key: value[index] for key, value in batch.items()}


def _pad_to(t: Tensor, width: int, value: int) -> Tensor:
    return torch.nn.functional.pad(t, (0, width - t.shape[1]), value=value)


def forward_rows(
    model: Callable[..., Any], batches: Sequence[dict[str, Tensor]]
) -> list[tuple[Tensor, Tensor]]:
    """``(logits, labels)`` of several padded batches from one forward pass (right-padded to a common width)."""
    width = max(b["input_ids"].shape[1] for b in batches)
    input_ids = torch.cat([_pad_to(b["input_ids"], width, 0) for b in batches])
    mask = torch.cat([_pad_to(b["attention_mask"], width, 0) for b in batches])
    logits = model(input_ids=input_ids, attention_mask=mask).logits
    parts = logits.split([b["input_ids"].shape[0] for b in batches])
    return [(part, _pad_to(b["labels"], width, IGNORE_INDEX)) for part, b in zip(parts, batches)]


def _non_empty(micro: MicroBatch) -> list[dict[str, Tensor]]:
    batches = [micro.forget] if len(micro.forget_positions) else []
    if micro.retain is not None and micro.retain_positions is not None and len(micro.retain_positions):
        batches.append(micro.retain)
    return batches


class Units:
    """Forget and retain units of one micro-batch, with the local row each unit belongs to."""

    def __init__(
        self,
        cfg: StepConfig,
        micro: MicroBatch,
        model: Callable[..., Any],
        ref_model: Callable[..., Any] | None,
    ) -> None:
        batches = _non_empty(micro)
        self.forget = self.retain = self.dummy = None
        # A rank with no rows still forwards its dummy row here, in step with the others: DDP's forward can run
        # collectives (its first bucket rebuild does), so a late forward would deadlock.
        outputs = forward_rows(model, batches or [micro.forget])
        if not batches:
            self.dummy = outputs.pop(0)[0]
        if len(micro.forget_positions):
            logits, labels = outputs.pop(0)
            tokens = token_nll(logits, labels)
            forget_fn = get_forget_loss(cfg.forget_loss)
            batch = ForgetBatch(tokens, micro.forget.get("ref_nll_sum"))
            self.forget, self.forget_row = (
                forget_fn.units(batch, cfg.hyperparameters),
                forget_fn.unit_sample_index(batch),
            )
            nll_sum, n_tokens = tokens.per_sequence()
            self.avg_nll = (nll_sum.detach() / n_tokens.clamp(min=1)).double()
        if outputs and cfg.retain_loss_type is not None:
            logits, labels = outputs.pop(0)
            if cfg.retain_loss_type == "KL":
                with torch.no_grad():
                    ((ref_logits, _),) = forward_rows(ref_model, [micro.retain])
                self.retain = kl_per_position(logits, _pad_to_width(ref_logits, logits.shape[1]), labels)
                self.retain_row = (labels[:, 1:] != IGNORE_INDEX).nonzero(as_tuple=True)[0]
            else:
                tokens = token_nll(logits, labels)
                if cfg.retain_reduction == "sequence_sum_mean" or cfg.retain_aggregation is not None:
                    self.retain, self.retain_row = tokens.per_sequence()[0], torch.arange(labels.shape[0])
                else:
                    self.retain, self.retain_row = tokens.values, tokens.sample_index

    def payload(self, micro: MicroBatch) -> dict[str, dict[int, Any]]:
        """Detached unit values keyed by position: what the other ranks need to compute the weights."""
        forget, retain = {}, {}
        if self.forget is not None:
            for i, position in enumerate(micro.forget_positions.tolist()):
                forget[position] = {
                    "row": int(micro.forget["index"][i]),
                    "avg_nll": float(self.avg_nll[i]),
                    "units": self.forget.detach()[self.forget_row == i].double().cpu(),
                }
        if self.retain is not None and micro.retain_positions is not None:
            for i, position in enumerate(micro.retain_positions.tolist()):
                retain[position] = self.retain.detach()[self.retain_row == i].double().cpu()
        return {"forget": forget, "retain": retain}


def unit_counts(cfg: StepConfig, micro_batches: Sequence[MicroBatch]) -> dict[str, dict[int, int]]:
    """Units per position, from the labels alone, as :class:`Units` will make them: one per row for per-sample
    losses and per-sequence retain reductions, one per labelled (shifted) token otherwise."""

    def labelled(batch: dict[str, Tensor]) -> list[int]:
        return (batch["labels"][:, 1:] != IGNORE_INDEX).sum(1).tolist()

    per_token = get_forget_loss(cfg.forget_loss).granularity == "token"
    per_row_retain = cfg.retain_loss_type == "NLL" and (
        cfg.retain_reduction == "sequence_sum_mean" or cfg.retain_aggregation is not None
    )
    forget: dict[int, int] = {}
    retain: dict[int, int] = {}
    for micro in micro_batches:
        if len(micro.forget_positions):
            counts = labelled(micro.forget) if per_token else [1] * len(micro.forget_positions)
            forget.update(zip(micro.forget_positions.tolist(), counts))
        if cfg.retain_loss_type and micro.retain is not None and micro.retain_positions is not None:
            counts = [1] * len(micro.retain_positions) if per_row_retain else labelled(micro.retain)
            retain.update(zip(micro.retain_positions.tolist(), counts))
    return {"forget": forget, "retain": retain}


def _pad_to_width(logits: Tensor, width: int) -> Tensor:
    return torch.nn.functional.pad(logits, (0, 0, 0, width - logits.shape[1]))
