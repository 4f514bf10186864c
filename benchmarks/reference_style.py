"""A BalDRO step with the reference implementation's cost structure, to time our engine against.

Written from ``docs/method.md`` (``#aggregations``, ``#differences-from-the-reference``), per micro-batch:

- the frozen reference model forwards the forget rows at every step (NPO), instead of a score cached once before
  training, and the retain rows for a KL retain loss;
- the forget rows and the retain rows are forwarded separately (two forwards, two graphs);
- BalDRO-G scores hardness with a full forget forward *with* gradients, keeps the ``k`` hardest rows and forwards
  them again; the retain batch is cut to ``min(k, B_r)`` rows drawn uniformly at random. The first graph is
  released before the second forward (the cheapest reading of the reference) and the reference model scores
  only the kept rows;
- BalDRO-DV is ``t * log(mean(exp(l / t)))`` written out (no shift: it underflows where ours does not), over the
  micro-batch's own units only;
- each micro-batch back-propagates ``loss / n_micro`` at once.

The per-sample and per-token losses, the hardness and the top-k rule are those of :mod:`baldro_ray.objectives`,
and the retain rows G keeps are drawn with the seed ``run_step`` uses, so only the cost differs from
:func:`~baldro_ray.train.step.run_step`. Invariant (``tests/train/test_reference_style.py``): with one
micro-batch in one process (where the reference's per-micro-batch scope and ours aggregate the same rows) and
losses for which ``exp`` does not underflow, the loss and the gradient equal ``run_step``'s to float64 rounding.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from baldro_ray.objectives import (
    ForgetBatch,
    g_hardness,
    get_forget_loss,
    group_select,
    retain_kl,
    retain_nll,
    sequence_nll,
    token_nll,
)
from baldro_ray.train.exchange import SingleProcessExchange
from baldro_ray.train.layout import StepLayout
from baldro_ray.train.step import run_step
from baldro_ray.train.units import MicroBatch, StepConfig

Batch = dict[str, Tensor]


@dataclass(frozen=True)
class ReferenceStepResult:
    """The step's objective (the mean over micro-batches of ``gamma * F + alpha * R``) and its parts."""

    loss: float
    forget_loss: float
    retain_loss: float


def _logits(model: Callable[..., Any], batch: Batch) -> Tensor:
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


def _rows(batch: Batch, index: Tensor) -> Batch:
    return {key: value[index.to(value.device)] for key, value in batch.items()}


def reference_dv(losses: Tensor, temperature: float | None) -> Tensor:
    """The reference's BalDRO-DV as written: ``t * log(mean(exp(l / t)))``; the mean for ``None`` or infinite t."""
    if temperature is None or math.isinf(temperature):
        return losses.mean()
    return temperature * torch.log(torch.mean(torch.exp(losses / temperature)))


def needs_reference_model(cfg: StepConfig) -> bool:
    """Whether the reference-style step forwards a frozen reference model (NPO's forget loss, or KL retain)."""
    return get_forget_loss(cfg.forget_loss).needs_reference or cfg.retain_loss_type == "KL"


def _micro_losses(
    model: Callable[..., Any],
    ref_model: Callable[..., Any] | None,
    forget: Batch,
    retain: Batch | None,
    cfg: StepConfig,
    step_id: int,
    dro_batch: int,
) -> tuple[Tensor, Tensor | None]:
    """``(F, R)`` of one micro-batch (``R`` None for forget-only methods), graphs attached."""
    forget_fn = get_forget_loss(cfg.forget_loss)
    if cfg.aggregation.selects:
        scored = token_nll(_logits(model, forget), forget["labels"])  # with gradients, as the reference does
        chosen = group_select(g_hardness(scored), cfg.aggregation.sampling_ratio).cpu()
        del scored
        forget = _rows(forget, chosen)
        if retain is not None:
            rows = retain["input_ids"].shape[0]
            drawn = np.random.default_rng([cfg.seed, step_id, dro_batch]).choice(
                rows, size=min(len(chosen), rows), replace=False
            )
            retain = _rows(retain, torch.from_numpy(np.sort(drawn)))
    ref_nll_sum = None
    if forget_fn.needs_reference:
        with torch.no_grad():
            ref_nll_sum, _ = sequence_nll(_logits(ref_model, forget), forget["labels"])
    tokens = token_nll(_logits(model, forget), forget["labels"])
    units = forget_fn.units(ForgetBatch(tokens, ref_nll_sum), cfg.hyperparameters)
    forget_loss = reference_dv(units, cfg.aggregation.temperature)
    if cfg.retain_loss_type is None or retain is None:
        return forget_loss, None
    logits = _logits(model, retain)
    if cfg.retain_loss_type == "KL":
        with torch.no_grad():
            ref_logits = _logits(ref_model, retain)
        return forget_loss, retain_kl(logits, ref_logits, retain["labels"])
    return forget_loss, retain_nll(logits, retain["labels"], cfg.retain_reduction)


def reference_style_step(
    model: Callable[..., Any],
    backward: Callable[[Tensor], None],
    micro_batches: Sequence[tuple[Batch, Batch | None]],
    cfg: StepConfig,
    step_id: int,
    ref_model: Callable[..., Any] | None = None,
) -> ReferenceStepResult:
    """Forward and back-propagate one optimizer step the reference's way (module docstring); the caller then
    steps the optimizer. ``micro_batches`` holds ``(forget, retain)`` padded batches (``retain`` None for GA);
    a forget batch's cached ``ref_nll_sum`` is ignored: the reference model is forwarded instead."""
    if cfg.retain_aggregation is not None:
        raise NotImplementedError("the reference-style step has no retain-side DRO")
    if needs_reference_model(cfg) and ref_model is None:
        raise ValueError(f"{cfg.forget_loss} with retain {cfg.retain_loss_type} needs ref_model")
    n = len(micro_batches)
    total = forget_total = retain_total = 0.0
    for dro_batch, (forget, retain) in enumerate(micro_batches):
        forget_loss, retain_loss = _micro_losses(model, ref_model, forget, retain, cfg, step_id, dro_batch)
        loss = cfg.gamma * forget_loss + (0.0 if retain_loss is None else cfg.alpha * retain_loss)
        backward(loss / n)
        total += float(loss.detach()) / n
        forget_total += float(forget_loss.detach()) / n
        retain_total += 0.0 if retain_loss is None else float(retain_loss.detach()) / n
    return ReferenceStepResult(total, forget_total, retain_total)


def our_step(
    model: Callable[..., Any],
    backward: Callable[[Tensor], None],
    micro_batches: Sequence[tuple[Batch, Batch | None]],
    cfg: StepConfig,
    step_id: int,
    ref_model: Callable[..., Any] | None = None,
    scale_gradients: Callable[[float], None] | None = None,
) -> float:
    """:func:`run_step` in one process on the same ``(forget, retain)`` micro-batches; its loss. Forget batches
    need ``index`` and, for NPO, the cached ``ref_nll_sum`` (:func:`add_reference_nll`); ``scale_gradients`` is
    the backend's (with it, BalDRO-DV over several micro-batches takes the online pass)."""
    rows = micro_batches[0][0]["input_ids"].shape[0]
    layout = StepLayout(world_size=1, per_device_batch_size=rows, accumulation=len(micro_batches))
    micro = []
    for index, (forget, retain) in enumerate(micro_batches):
        positions = layout.local_positions(layout.global_batch, index, 0)
        micro.append(MicroBatch(forget, positions, retain, None if retain is None else positions))
    exchange = SingleProcessExchange()
    return run_step(model, backward, micro, cfg, layout, exchange, step_id, ref_model, scale_gradients).loss


def add_reference_nll(ref_model: Callable[..., Any], forget_batches: Sequence[Batch]) -> None:
    """Cache the reference model's summed NLL of each forget row in the batch (``ref_nll_sum``), as the
    engine's one-off scoring pass before training does."""
    with torch.no_grad():
        for batch in forget_batches:
            batch["ref_nll_sum"], _ = sequence_nll(_logits(ref_model, batch), batch["labels"])


@contextmanager
def count_forwards(*modules: torch.nn.Module) -> Iterator[list[int]]:
    """Counts the forward calls of each module while the block runs (a list, one count per module)."""
    counts = [0] * len(modules)

    def hook(index: int) -> Callable[..., None]:
        def count(*_: Any) -> None:
            counts[index] += 1

        return count

    handles = [module.register_forward_pre_hook(hook(i)) for i, module in enumerate(modules)]
    try:
        yield counts
    finally:
        for handle in handles:
            handle.remove()


@dataclass(frozen=True)
class Agreement:
    """How far the reference-style step is from ``run_step`` on one batch from the same weights."""

    loss_ours: float
    loss_reference_style: float
    gradient_difference: float  # max |g_ours - g_ref| over all parameters / max |g_ref|

    @property
    def loss_difference(self) -> float:
        return abs(self.loss_ours - self.loss_reference_style)


def compare_with_run_step(
    model: torch.nn.Module,
    ref_model: torch.nn.Module | None,
    micro_batches: Sequence[tuple[Batch, Batch | None]],
    cfg: StepConfig,
    step_id: int = 0,
) -> Agreement:
    """One step of each implementation on the same micro-batches from the current weights, without updating
    them (the gradients are left zeroed). For NPO, each forget batch first gets its ``ref_nll_sum`` from
    ``ref_model``. They compute the same objective with one micro-batch, or with several under ``scope=local``
    (ours then aggregates per micro-batch too)."""
    micro_batches = [(dict(forget), retain) for forget, retain in micro_batches]
    if get_forget_loss(cfg.forget_loss).needs_reference:
        add_reference_nll(ref_model, [forget for forget, _ in micro_batches])
    params = [p for p in model.parameters() if p.requires_grad]

    def gradients(run: Callable[[], float]) -> tuple[float, list[Tensor]]:
        model.zero_grad(set_to_none=True)
        loss = run()
        grads = [torch.zeros_like(p) if p.grad is None else p.grad.detach().clone() for p in params]
        model.zero_grad(set_to_none=True)
        return loss, grads

    def backward(loss: Tensor) -> None:
        loss.backward()

    ours, g_ours = gradients(lambda: our_step(model, backward, micro_batches, cfg, step_id, ref_model))
    theirs, g_ref = gradients(
        lambda: reference_style_step(model, backward, micro_batches, cfg, step_id, ref_model).loss
    )
    scale = max(float(g.abs().max()) for g in g_ref)
    difference = max(float((a - b).abs().max()) for a, b in zip(g_ours, g_ref))
    return Agreement(ours, theirs, difference / scale if scale > 0 else difference)
