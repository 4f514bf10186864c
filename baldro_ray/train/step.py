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

from baldro_ray.objectives import Aggregation, g_hardness, group_select, token_nll
from baldro_ray.train.exchange import Exchange
from baldro_ray.train.layout import StepLayout
from baldro_ray.train.passes import Pass, gather, micro_step_pass, online_pass, uniform_pass, value_pass
from baldro_ray.train.units import MicroBatch, StepConfig, forward_rows, unit_counts


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
            ((logits, labels),) = forward_rows(model, [micro.forget])
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
    scale_gradients: Callable[[float], None] | None = None,
) -> StepResult:
    """Forward, exchange, weigh and back-propagate one optimizer step; the caller then steps the optimizer.

    ``backward`` must accumulate the gradient of its argument averaged over ranks (DDP semantics);
    ``scale_gradients``, when the backend has it, multiplies everything accumulated so far by a factor (the same on
    every rank). Which pass runs follows from the aggregation alone (:mod:`baldro_ray.train.passes`): every row is
    forwarded once with gradients, so only one micro-batch's activations are alive at a time, and only BalDRO-G's
    scoring and the fallback value pass (retain DRO over several micro-steps, or no ``scale_gradients``) add a
    forward without gradients.
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

    def weigh(forget: dict[int, Tensor], retain: dict[int, Tensor]) -> tuple[dict[int, Tensor], ...]:
        return (
            _dro_batch_weights(forget, layout, cfg.scope, cfg.aggregation),
            _dro_batch_weights(retain, layout, cfg.scope, retain_aggregation),
        )

    run = Pass(model, ref_model, backward, cfg, exchange, exchange.world_size / n_dro_batches)
    if cfg.aggregation.uniform and retain_aggregation.uniform:
        forget_data, retain_units = uniform_pass(run, work, *weigh(*_placeholders(exchange, cfg, work)))
    elif cfg.scope == "local" or len(work) == 1:
        forget_data, retain_units = micro_step_pass(run, work, weigh)
    elif scale_gradients is not None and cfg.aggregation.softmax and retain_aggregation.uniform:
        _, retain_w = weigh({}, _placeholders(exchange, cfg, work)[1])
        temperature = float(cfg.aggregation.temperature)  # type: ignore[arg-type]  # softmax: DV's own
        forget_data, retain_units = online_pass(run, work, temperature, retain_w, scale_gradients)
    else:
        forget_data, retain_units = value_pass(run, work, weigh)
    forget_units = {p: v["units"] for p, v in forget_data.items()}
    forget_w, _ = weigh(forget_units, {})

    forget_values = _dro_batch_values(forget_units, layout, cfg.scope, cfg.aggregation)
    retain_values = _dro_batch_values(retain_units, layout, cfg.scope, retain_aggregation)
    forget_value = sum(forget_values) / n_dro_batches
    retain_value = sum(retain_values) / n_dro_batches if cfg.retain_loss_type else 0.0
    for p, v in forget_data.items():
        samples[p] = {"row": v["row"], "avg_nll": v["avg_nll"], "loss": float(v["units"].mean())}
    weights = {p: float(forget_w[p].sum()) / n_dro_batches if p in forget_w else 0.0 for p in all_positions}
    loss = cfg.gamma * forget_value + (cfg.alpha * retain_value if cfg.retain_loss_type else 0.0)
    return StepResult(loss, forget_value, retain_value, weights, samples)


def _placeholders(
    exchange: Exchange, cfg: StepConfig, work: Sequence[MicroBatch]
) -> tuple[dict[int, Tensor], dict[int, Tensor]]:
    """Zero units of every rank's unit counts: enough for uniform weights, which do not read the values."""
    forget_n, retain_n = gather(exchange, unit_counts(cfg, work))
    return (
        {p: torch.zeros(n, dtype=torch.float64) for p, n in forget_n.items()},
        {p: torch.zeros(n, dtype=torch.float64) for p, n in retain_n.items()},
    )
