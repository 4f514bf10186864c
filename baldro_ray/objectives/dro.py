"""DRO aggregations of per-unit forget losses: BalDRO-DV (signed temperature) and BalDRO-G (top-k subset).

Signed temperature ``t`` (``docs/method.md#baldro-dv``): ``F_t = t * (logsumexp(l / t) - log N)``.
``t = -tau`` is the reference BalDRO-DV (``-tau * log mean exp(-l / tau)``, weight on the *lowest* losses),
``t = +tau`` the textbook KL-regularised worst case (weight on the *highest* losses), ``t = None`` or infinite the
plain mean. Its gradient is ``sum_i w_i * grad l_i`` with ``w = softmax(l / t)`` (:func:`dro_weights`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable


def _check_losses(losses: Tensor, name: str = "losses") -> None:
    if losses.dim() != 1:
        raise ValueError(f"{name} must be a 1-D tensor of per-unit values; got shape {tuple(losses.shape)}")
    if losses.numel() == 0:
        raise ValueError(f"empty batch: {name} has no element")
    if not bool(torch.isfinite(losses).all()):
        bad = (~torch.isfinite(losses)).nonzero().flatten().tolist()
        raise ValueError(f"{name} must be finite; entries {bad[:10]} are not")


def is_mean_temperature(temperature: float | None) -> bool:
    """True when ``temperature`` selects the plain mean (``None`` or infinite); raises on 0 and NaN."""
    if temperature is None or math.isinf(temperature):
        return True
    if math.isnan(temperature) or temperature == 0:
        raise ValueError(
            f"DRO temperature must be a non-zero number (negative: reference BalDRO-DV, positive: textbook "
            f"worst case) or None/inf for the mean; got {temperature}"
        )
    return False


def _result_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)


def dro_weights(losses: Tensor, temperature: float | None) -> Tensor:
    """DV weights ``softmax(l / t)`` (uniform for the mean); detached, summing to 1, same dtype as ``dv_aggregate``."""
    _check_losses(losses)
    out_dtype = _result_dtype(losses.dtype)
    if is_mean_temperature(temperature):
        return torch.full_like(losses, 1.0 / losses.numel(), dtype=out_dtype)
    with torch.no_grad():
        return torch.softmax(losses.detach().double() / temperature, dim=0).to(out_dtype)


class _SignedLogMeanExp(torch.autograd.Function):
    """Float64 ``t * log mean exp(l / t)`` whose backward is exactly ``softmax(l / t)`` (the DRO weights)."""

    @staticmethod
    def forward(ctx: Any, losses: Tensor, temperature: float) -> Tensor:
        z = losses / temperature
        shift = z.max()
        ctx.save_for_backward(torch.softmax(z, dim=0))
        return temperature * shift + temperature * torch.log1p(torch.expm1(z - shift).mean())

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor, None]:
        (weights,) = ctx.saved_tensors
        return grad_output * weights, None


def dv_aggregate(losses: Tensor, temperature: float | None) -> Tensor:
    """``t * (logsumexp(l / t) - log N)``, finite for every finite input and accurate as ``|t| -> inf``.

    Computed in float64 as ``t*c + t*log1p(mean(expm1(z - c)))`` with ``z = l / t``, ``c = max z``: no overflow for
    small ``|t|``, and no cancellation for large ``|t|``, where the naive form loses every digit to ``log N``. The
    gradient is exactly :func:`dro_weights`. Returned in ``losses``' dtype (at least float32).
    """
    _check_losses(losses)
    out_dtype = _result_dtype(losses.dtype)
    if is_mean_temperature(temperature):
        return losses.to(out_dtype).mean()
    return _SignedLogMeanExp.apply(losses.double(), float(temperature)).to(out_dtype)


def group_size(batch_size: int, ratio: float) -> int:
    """``k = max(1, floor(B * ratio))`` for ``ratio`` in (0, 1], computed as the reference does (float product)."""
    if not (0 < ratio <= 1):
        raise ValueError(f"sampling_ratio must be in (0, 1]; got {ratio}")
    if batch_size <= 0:
        raise ValueError(f"empty batch: cannot select from {batch_size} samples")
    return max(1, math.floor(batch_size * ratio))


def group_select(hardness: Tensor, ratio: float) -> Tensor:
    """Indices (ascending) of the ``k = max(1, floor(B * ratio))`` hardest samples; ties go to the lowest index.

    For BalDRO-G the hardness is ``-a_i`` (lowest average NLL = still most memorised). No gradient flows.
    """
    _check_losses(hardness, "hardness")
    k = group_size(hardness.numel(), ratio)
    order = torch.sort(hardness.detach(), descending=True, stable=True).indices
    return order[:k].sort().values


def group_weights(batch_size: int, selected: Tensor) -> Tensor:
    """The distribution BalDRO-G puts on the batch: ``1/k`` on the selected samples, 0 elsewhere."""
    weights = torch.zeros(batch_size, dtype=torch.float32)
    weights[selected.cpu()] = 1.0 / selected.numel()
    return weights


@dataclass(frozen=True)
class WeightDiagnostics:
    """Summary of a DRO weight vector ``w`` (sums to 1) for telemetry."""

    effective_sample_size: float  # 1 / sum w^2: N for uniform weights, 1 when one unit takes everything
    entropy: float  # -sum w log w (0 log 0 = 0), in nats; log N for uniform weights
    max_weight: float
    top_indices: tuple[int, ...]  # indices of the largest weights, largest first (ties: lowest index first)


def weight_diagnostics(weights: Tensor, top: int = 5) -> WeightDiagnostics:
    """Effective sample size, entropy, max weight and the ``top`` heaviest indices of ``weights``."""
    _check_losses(weights, "weights")
    w = weights.detach().double()
    positive = w[w > 0]
    order = torch.sort(w, descending=True, stable=True).indices[: min(top, w.numel())]
    return WeightDiagnostics(
        effective_sample_size=float(1.0 / (w * w).sum()),
        entropy=float(-(positive * positive.log()).sum()),
        max_weight=float(w.max()),
        top_indices=tuple(int(i) for i in order),
    )
