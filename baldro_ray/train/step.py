"""One BalDRO optimizer step over data-parallel ranks with exact global (or per-micro-batch) DRO aggregation.

The objective of a step is ``L = mean over DRO batches b of (gamma * F_b + alpha * R_b)``: one DRO batch for
``scope=global`` (the whole global batch of all ranks and micro-steps), one per (micro-step, rank) for ``local``
(the reference's behaviour). ``F_b`` aggregates the forget units of the DRO batch (mean, BalDRO-G, BalDRO-DV) and
``R_b`` is its retain loss. Ranks exchange only per-unit scalars (all-gather), every rank computes the
same weights from them, and back-propagates the surrogate ``W/n_dro_batches * sum_u (gamma w_u l_u + alpha v_u r_u)``
over its own units; data-parallel gradient averaging then yields exactly ``grad L``. Positions, not ranks, order the
gathered values, so the update does not depend on the number of workers.
"""

from __future__ import annotations

from collections import defaultdict
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
    g_hardness,
    get_forget_loss,
    group_select,
    kl_per_position,
    token_nll,
)
from baldro_ray.train.exchange import Exchange
from baldro_ray.train.layout import StepLayout


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
        f = np.isin(self.forget_positions, sorted(forget_keep))
        if self.retain is None or self.retain_positions is None:
            return MicroBatch(_rows(self.forget, f), self.forget_positions[f])
        r = np.isin(self.retain_positions, sorted(retain_keep))
        return MicroBatch(
            _rows(self.forget, f), self.forget_positions[f], _rows(self.retain, r), self.retain_positions[r]
        )


@dataclass
class StepResult:
    """Values of the step's objective and per-sample telemetry (identical on every rank)."""

    loss: float
    forget_loss: float
    retain_loss: float
    sample_weights: dict[int, float]  # forget position -> weight of the sample in the step (sums to 1)
    samples: dict[
        int, dict[str, Any]
    ]  # forget position -> row, avg_nll, loss (mean of its units; nan if unscored)


def _rows(batch: dict[str, Tensor], keep: np.ndarray) -> dict[str, Tensor]:
    index = torch.from_numpy(np.flatnonzero(keep))
    return {key: value[index] for key, value in batch.items()}


def _pad_to(t: Tensor, width: int, value: int) -> Tensor:
    return torch.nn.functional.pad(t, (0, width - t.shape[1]), value=value)


def _forward(model: Callable[..., Any], batches: Sequence[dict[str, Tensor]]) -> list[tuple[Tensor, Tensor]]:
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


class _Units:
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
        outputs = _forward(model, batches or [micro.forget])
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
                    ((ref_logits, _),) = _forward(ref_model, [micro.retain])
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


def _unit_counts(cfg: StepConfig, micro_batches: Sequence[MicroBatch]) -> dict[str, dict[int, int]]:
    """Units per position, from the labels alone, as :class:`_Units` will make them: one per row for per-sample
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


def _gather(exchange: Exchange, local: dict[str, dict[int, Any]]) -> tuple[dict[int, Any], dict[int, Any]]:
    """Every rank's ``{"forget": {position: x}, "retain": {position: y}}``, merged."""
    forget: dict[int, Any] = {}
    retain: dict[int, Any] = {}
    for part in exchange.all_gather_object(local):
        forget.update(part["forget"])
        retain.update(part["retain"])
    return forget, retain


def _pad_to_width(logits: Tensor, width: int) -> Tensor:
    return torch.nn.functional.pad(logits, (0, 0, 0, width - logits.shape[1]))


def _select_group(
    model: Callable[..., Any],
    micro_batches: list[MicroBatch],
    cfg: StepConfig,
    layout: StepLayout,
    exchange: Exchange,
    step_id: int,
) -> tuple[list[MicroBatch], dict[int, tuple[float, int]]]:
    """BalDRO-G: score hardness without gradients, keep the top-k of each DRO batch over all ranks, and cut each
    DRO batch's retain rows to ``min(k, n)`` drawn uniformly at random (seeded by seed, step and DRO batch)."""
    local: dict[int, tuple[float, int]] = {}
    with torch.no_grad():
        for micro in micro_batches:
            ((logits, labels),) = _forward(model, [micro.forget])
            hardness_values = g_hardness(token_nll(logits, labels)).double().tolist()
            rows = micro.forget["index"].tolist()
            for position, h, row in zip(micro.forget_positions.tolist(), hardness_values, rows):
                local[position] = (h, int(row))
    scored = {p: v for part in exchange.all_gather_object(local) for p, v in part.items()}
    hardness = {p: h for p, (h, _) in scored.items()}
    forget_keep: set[int] = set()
    retain_keep: set[int] = set()
    for dro_batch, positions in _by_dro_batch(hardness, layout, cfg.scope).items():
        chosen = group_select(
            torch.tensor([hardness[p] for p in positions], dtype=torch.float64),
            cfg.aggregation.sampling_ratio,
        )
        forget_keep.update(positions[i] for i in chosen.tolist())
        rng = np.random.default_rng([cfg.seed, step_id, dro_batch])
        retain_keep.update(int(p) for p in rng.choice(positions, size=len(chosen), replace=False))
    return [micro.restrict(forget_keep, retain_keep) for micro in micro_batches], scored


def _by_dro_batch(values: dict[int, Any], layout: StepLayout, scope: str) -> dict[int, list[int]]:
    """The positions of ``values``, in order, under the DRO batch each belongs to."""
    batches: dict[int, list[int]] = defaultdict(list)
    for position in sorted(values):
        batches[layout.dro_batch(position, scope)].append(position)
    return batches


def _dro_batch_weights(
    gathered: dict[int, Tensor], layout: StepLayout, scope: str, aggregation: Aggregation
) -> dict[int, Tensor]:
    """Per position, the weights of its units within its DRO batch (summing to 1 over each DRO batch)."""
    weights: dict[int, Tensor] = {}
    for positions in _by_dro_batch(gathered, layout, scope).values():
        values = torch.cat([gathered[p] for p in positions])
        w = aggregation.weights(values) if values.numel() else values
        for position, part in zip(positions, w.split([gathered[p].numel() for p in positions])):
            weights[position] = part
    return weights


def _aligned(values: Tensor, rows: Tensor, positions: np.ndarray, weights: dict[int, Tensor]) -> Tensor:
    """The weights of ``values`` (units of local rows ``rows``), in unit order."""
    out = torch.zeros(values.shape, dtype=torch.float64)
    for i, position in enumerate(positions.tolist()):
        out[(rows == i).cpu()] = weights[position]
    return out.to(device=values.device, dtype=values.dtype)


def _surrogate(
    units: _Units,
    micro: MicroBatch,
    forget_w: dict[int, Tensor],
    retain_w: dict[int, Tensor],
    cfg: StepConfig,
) -> Tensor | None:
    """``gamma * sum w_u l_u + alpha * sum v_u r_u`` over this micro-batch's units (None when it has none)."""
    terms = []
    if units.forget is not None:
        terms.append(
            cfg.gamma
            * (
                _aligned(units.forget, units.forget_row, micro.forget_positions, forget_w) * units.forget
            ).sum()
        )
    if units.retain is not None and micro.retain_positions is not None:
        v = _aligned(units.retain, units.retain_row, micro.retain_positions, retain_w)
        terms.append(cfg.alpha * (v * units.retain).sum())
    return sum(terms[1:], terms[0]) if terms else None


def _dro_batch_values(
    gathered: dict[int, Tensor], layout: StepLayout, scope: str, aggregation: Aggregation
) -> list[float]:
    """The aggregated loss of each DRO batch that has units."""
    parts = [
        torch.cat([gathered[p] for p in positions])
        for positions in _by_dro_batch(gathered, layout, scope).values()
    ]
    return [float(aggregation.value(values)) for values in parts if values.numel()]


def run_step(
    model: Callable[..., Any],
    backward: Callable[[Tensor], None],
    micro_batches: list[MicroBatch],
    cfg: StepConfig,
    layout: StepLayout,
    exchange: Exchange,
    step_id: int,
    ref_model: Callable[..., Any] | None = None,
) -> StepResult:
    """Forward, exchange, weigh and back-propagate one optimizer step; the caller then steps the optimizer.

    ``backward`` must accumulate the gradient of its argument averaged over ranks (DDP semantics). Each micro-batch
    is forwarded with gradients once, so only one micro-batch's activations are alive at a time. Uniform weights
    (the mean, and G over the rows it kept) follow from the unit counts, which the labels give before any forward;
    DV's weights depend on every unit's value, so with several micro-batches they come from a no-grad pass first
    (with one, the graph of that pass is reused).
    """
    gathered_positions = exchange.all_gather_object(
        [int(p) for m in micro_batches for p in m.forget_positions]
    )
    all_positions = sorted(p for part in gathered_positions for p in part)
    n_dro_batches = layout.num_dro_batches(len(all_positions), cfg.scope)
    samples: dict[int, dict[str, Any]] = {
        p: {"row": None, "avg_nll": float("nan"), "loss": float("nan")} for p in all_positions
    }
    work = micro_batches
    if cfg.aggregation.selects:
        work, scored = _select_group(model, micro_batches, cfg, layout, exchange, step_id)
        for position, (h, row) in scored.items():  # unselected samples keep their gradient-free average NLL
            samples[position].update(row=row, avg_nll=-h)
    retain_aggregation = cfg.retain_aggregation or Aggregation.mean()
    uniform = cfg.aggregation.uniform and retain_aggregation.uniform

    def weigh(forget: dict[int, Tensor], retain: dict[int, Tensor]) -> tuple[dict[int, Tensor], ...]:
        return (
            _dro_batch_weights(forget, layout, cfg.scope, cfg.aggregation),
            _dro_batch_weights(retain, layout, cfg.scope, retain_aggregation),
        )

    # Per-unit values (detached) of this rank, by position: the weights' input (DV) or the step's telemetry.
    local: dict[str, dict[int, Any]] = {"forget": {}, "retain": {}}

    def record(unit: _Units, micro: MicroBatch) -> None:
        payload = unit.payload(micro)
        local["forget"].update(payload["forget"])
        local["retain"].update(payload["retain"])

    keep_graph = len(work) == 1
    units: list[_Units] = []
    if uniform:  # placeholder units of the right counts: uniform weights do not read their values
        forget_n, retain_n = _gather(exchange, _unit_counts(cfg, work))
        forget_w, retain_w = weigh(
            {p: torch.zeros(n, dtype=torch.float64) for p, n in forget_n.items()},
            {p: torch.zeros(n, dtype=torch.float64) for p, n in retain_n.items()},
        )
    else:
        with torch.enable_grad() if keep_graph else torch.no_grad():
            units = [_Units(cfg, micro, model, ref_model) for micro in work]
        for unit, micro in zip(units, work):
            record(unit, micro)
        forget_data, retain_units = _gather(exchange, local)
        forget_w, retain_w = weigh({p: v["units"] for p, v in forget_data.items()}, retain_units)

    scale = exchange.world_size / n_dro_batches
    for index, micro in enumerate(work):
        unit = units[index] if units and keep_graph else _Units(cfg, micro, model, ref_model)
        if uniform:
            record(unit, micro)
        surrogate = _surrogate(unit, micro, forget_w, retain_w, cfg)
        if (
            surrogate is None
        ):  # no rows here (or none selected): a zero gradient keeps the all-reduces aligned
            surrogate = unit.dummy.sum() * 0.0
        backward(surrogate * scale)
    if uniform:
        forget_data, retain_units = _gather(exchange, local)
    forget_units = {p: v["units"] for p, v in forget_data.items()}

    forget_values = _dro_batch_values(forget_units, layout, cfg.scope, cfg.aggregation)
    retain_values = _dro_batch_values(retain_units, layout, cfg.scope, retain_aggregation)
    forget_value = sum(forget_values) / n_dro_batches
    retain_value = sum(retain_values) / n_dro_batches if cfg.retain_loss_type else 0.0
    for p, v in forget_data.items():
        samples[p] = {"row": v["row"], "avg_nll": v["avg_nll"], "loss": float(v["units"].mean())}
    weights = {p: float(forget_w[p].sum()) / n_dro_batches if p in forget_w else 0.0 for p in all_positions}
    loss = cfg.gamma * forget_value + (cfg.alpha * retain_value if cfg.retain_loss_type else 0.0)
    return StepResult(loss, forget_value, retain_value, weights, samples)
