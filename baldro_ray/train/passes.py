"""How a step's micro-batches are forwarded and back-propagated so that the accumulated gradient is exactly the
gradient of the step's objective, with as few forward passes as the aggregation allows.

Every pass back-propagates, per micro-batch, ``factor * (gamma * sum_u w_u l_u + alpha * sum_u v_u r_u)`` over the
rank's own units, with ``w`` and ``v`` the weights of the units in their DRO batch; passes differ only in when those
weights are known:

- :func:`uniform_pass`: the weights do not depend on the values (mean; BalDRO-G over the rows it kept), so the
  unit counts, which the labels give, fix them before any forward. One gradient forward per micro-batch.
- :func:`micro_step_pass`: every DRO batch lies inside one micro-step (``scope=local``, or one micro-step), so the
  values gathered after a micro-step's forward fix its weights. One gradient forward per micro-batch.
- :func:`online_pass`: global BalDRO-DV over several micro-steps on a backend that can rescale its accumulated
  gradient. Forget rows go first, each weighted ``exp(l/t - m)`` against the running maximum ``m`` of ``l/t`` over
  every rank's units so far; when ``m`` grows the accumulated gradient is multiplied by ``exp(m_old - m_new)``, and
  after the last micro-step it is divided by the sum of the weights: ``sum_u softmax(l/t)_u grad l_u`` exactly
  (the online-softmax identity). The retain rows follow, with their uniform weights. Forget and retain rows are
  forwarded separately, so each row is forwarded once, with gradients.
- :func:`value_pass`: otherwise (retain DRO over several micro-steps, or a backend that cannot rescale), a no-grad
  pass gives every value first, then each micro-batch is forwarded again with gradients.

Each pass returns every rank's detached unit values by position (``forget``: row, average NLL and units;
``retain``: units), for the step's telemetry.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from baldro_ray.train.exchange import Exchange
from baldro_ray.train.units import MicroBatch, StepConfig, Units

Weights = dict[int, Tensor]
Gathered = tuple[dict[int, Any], dict[int, Any]]
# From gathered {position: units} of forget and retain, the weights of every unit in its DRO batch.
Weigh = Callable[[dict[int, Tensor], dict[int, Tensor]], tuple[Weights, Weights]]


def gather(exchange: Exchange, local: dict[str, dict[int, Any]]) -> Gathered:
    """Every rank's ``{"forget": {position: x}, "retain": {position: y}}``, merged."""
    forget: dict[int, Any] = {}
    retain: dict[int, Any] = {}
    for part in exchange.all_gather_object(local):
        forget.update(part["forget"])
        retain.update(part["retain"])
    return forget, retain


def _aligned(values: Tensor, rows: Tensor, positions: np.ndarray, weights: Weights) -> Tensor:
    """The weights of ``values`` (units of local rows ``rows``), in unit order."""
    out = torch.zeros(values.shape, dtype=torch.float64)
    for i, position in enumerate(positions.tolist()):
        out[(rows == i).cpu()] = weights[position]
    return out.to(device=values.device, dtype=values.dtype)


def _surrogate(
    units: Units, micro: MicroBatch, forget_w: Weights, retain_w: Weights, cfg: StepConfig
) -> Tensor:
    """``gamma * sum w_u l_u + alpha * sum v_u r_u`` over this micro-batch's units; without units, zero times the
    dummy row's output, so that every rank back-propagates in step (the all-reduces stay aligned)."""
    terms = []
    if units.forget is not None:
        w = _aligned(units.forget, units.forget_row, micro.forget_positions, forget_w)
        terms.append(cfg.gamma * (w * units.forget).sum())
    if units.retain is not None and micro.retain_positions is not None:
        v = _aligned(units.retain, units.retain_row, micro.retain_positions, retain_w)
        terms.append(cfg.alpha * (v * units.retain).sum())
    if not terms:
        return units.dummy.sum() * 0.0
    return sum(terms[1:], terms[0])


class Pass:
    """What every pass shares: the model, how to back-propagate, the gradient factor and the collected values."""

    def __init__(
        self,
        model: Callable[..., Any],
        ref_model: Callable[..., Any] | None,
        backward: Callable[[Tensor], None],
        cfg: StepConfig,
        exchange: Exchange,
        factor: float,
    ) -> None:
        self.model, self.ref_model, self.backward = model, ref_model, backward
        self.cfg, self.exchange, self.factor = cfg, exchange, factor
        self.local: dict[str, dict[int, Any]] = {"forget": {}, "retain": {}}

    def units(self, micro: MicroBatch) -> Units:
        return Units(self.cfg, micro, self.model, self.ref_model)

    def record(self, units: Units, micro: MicroBatch) -> None:
        payload = units.payload(micro)
        self.local["forget"].update(payload["forget"])
        self.local["retain"].update(payload["retain"])

    def backpropagate(self, units: Units, micro: MicroBatch, forget_w: Weights, retain_w: Weights) -> None:
        self.backward(_surrogate(units, micro, forget_w, retain_w, self.cfg) * self.factor)

    def gathered(self) -> Gathered:
        return gather(self.exchange, self.local)


def _forget_units(gathered_forget: dict[int, Any]) -> dict[int, Tensor]:
    return {p: v["units"] for p, v in gathered_forget.items()}


def uniform_pass(run: Pass, work: Sequence[MicroBatch], forget_w: Weights, retain_w: Weights) -> Gathered:
    for micro in work:
        units = run.units(micro)
        run.record(units, micro)
        run.backpropagate(units, micro, forget_w, retain_w)
    return run.gathered()


def micro_step_pass(run: Pass, work: Sequence[MicroBatch], weigh: Weigh) -> Gathered:
    forget: dict[int, Any] = {}
    retain: dict[int, Any] = {}
    for micro in work:
        units = run.units(micro)
        run.local = {"forget": {}, "retain": {}}
        run.record(units, micro)
        step_forget, step_retain = run.gathered()
        forget_w, retain_w = weigh(_forget_units(step_forget), step_retain)
        run.backpropagate(units, micro, forget_w, retain_w)
        forget.update(step_forget)
        retain.update(step_retain)
    return forget, retain


def online_pass(
    run: Pass,
    work: Sequence[MicroBatch],
    temperature: float,
    retain_w: Weights,
    scale_gradients: Callable[[float], None],
) -> Gathered:
    shift = -math.inf  # running max of l/t over every rank's forget units so far
    total = 0.0  # sum over those units of exp(l/t - shift)
    forget: dict[int, Any] = {}
    for micro in work:
        rows = MicroBatch(micro.forget, micro.forget_positions)
        units = run.units(rows)
        run.local = {"forget": {}, "retain": {}}
        run.record(units, rows)
        step_forget, _ = run.gathered()
        forget.update(step_forget)
        scaled = {p: u / temperature for p, u in _forget_units(step_forget).items()}
        peak = max((float(z.max()) for z in scaled.values() if z.numel()), default=-math.inf)
        if peak > shift:
            if total:
                scale_gradients(math.exp(shift - peak))
                total *= math.exp(shift - peak)
            shift = peak
        weights = {p: torch.exp(z - shift) for p, z in scaled.items()}
        total += sum(float(w.sum()) for w in weights.values())
        run.backpropagate(units, rows, weights, {})
    scale_gradients(1.0 / total)
    run.local = {"forget": {}, "retain": {}}
    if run.cfg.retain_loss_type is not None:
        for micro in work:
            rows = MicroBatch(micro.forget, micro.forget_positions[:0], micro.retain, micro.retain_positions)
            units = run.units(rows)
            run.record(units, rows)
            run.backpropagate(units, rows, {}, retain_w)
    return forget, run.gathered()[1]


def value_pass(run: Pass, work: Sequence[MicroBatch], weigh: Weigh) -> Gathered:
    with torch.no_grad():
        for micro in work:
            run.record(run.units(micro), micro)
    forget, retain = run.gathered()
    forget_w, retain_w = weigh(_forget_units(forget), retain)
    for micro in work:
        run.backpropagate(run.units(micro), micro, forget_w, retain_w)
    return forget, retain
