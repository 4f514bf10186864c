"""The method registry: a method is a forget loss x an aggregation (``objectives.aggregation``) x a retain loss.

Forget losses produce *units*: one loss per sample (NPO, SimNPO) or per labelled token (GA, SatImp — the reference
averages those over every token of the batch, and DrSatImp applies DV to the token losses). The ERM method is the
mean of the units; BalDRO-DV replaces it by the DV aggregate; BalDRO-G computes the units on the selected
samples only and takes their mean. Users add forget losses with :func:`register_forget_loss`.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from baldro_ray.objectives.forget import npo_loss, satimp_from_token_nll, simnpo_loss
from baldro_ray.objectives.nll import TokenNLL, average_nll

Granularity = Literal["sample", "token"]


@dataclass(frozen=True)
class ForgetBatch:
    """What a forget loss may read: the token NLLs of the batch and, for reference-based losses, ``s_ref`` [B]."""

    tokens: TokenNLL
    ref_nll_sum: Tensor | None = None


ForgetLossFn = Callable[..., Tensor]


@dataclass(frozen=True)
class ForgetLoss:
    """A registered forget loss: ``fn(batch, **hyperparameters) -> units`` (``[B]`` or ``[N tokens]``)."""

    name: str
    fn: ForgetLossFn
    granularity: Granularity
    hyperparameters: tuple[str, ...]
    needs_reference: bool
    uses_retain: bool
    defaults: Mapping[str, float]  # method defaults of the reference presets (hyperparameters, gamma, alpha)

    def units(self, batch: ForgetBatch, hyperparameters: Mapping[str, float]) -> Tensor:
        """Per-unit losses of ``batch``; ``hyperparameters`` may hold more keys than this loss reads."""
        if self.needs_reference and batch.ref_nll_sum is None:
            raise ValueError(f"forget loss {self.name} needs the reference NLL of each sample (ref_nll_sum)")
        missing = [h for h in self.hyperparameters if h not in hyperparameters]
        if missing:
            raise ValueError(f"forget loss {self.name} needs hyperparameters {missing}")
        return self.fn(batch, **{h: hyperparameters[h] for h in self.hyperparameters})

    def unit_sample_index(self, batch: ForgetBatch) -> Tensor:
        """The sample each unit belongs to (``arange(B)`` for per-sample losses)."""
        if self.granularity == "token":
            return batch.tokens.sample_index
        return torch.arange(batch.tokens.batch_size, device=batch.tokens.sample_index.device)


FORGET_LOSSES: dict[str, ForgetLoss] = {}


def register_forget_loss(
    name: str,
    *,
    granularity: Granularity,
    hyperparameters: tuple[str, ...] = (),
    needs_reference: bool = False,
    uses_retain: bool = True,
    defaults: Mapping[str, float] | None = None,
) -> Callable[[ForgetLossFn], ForgetLossFn]:
    """Decorator that registers ``fn(batch: ForgetBatch, **hyperparameters) -> Tensor`` under ``name``.

    ``defaults`` holds the method's default hyperparameters (and ``gamma``/``alpha`` where they differ from 1).
    """
    if granularity not in ("sample", "token"):
        raise ValueError(f"granularity must be 'sample' or 'token'; got {granularity!r}")

    def decorate(fn: ForgetLossFn) -> ForgetLossFn:
        if name in FORGET_LOSSES:
            raise ValueError(f"a forget loss named {name!r} is already registered")
        FORGET_LOSSES[name] = ForgetLoss(
            name, fn, granularity, tuple(hyperparameters), needs_reference, uses_retain, dict(defaults or {})
        )
        return fn

    return decorate


def get_forget_loss(name: str) -> ForgetLoss:
    """The registered forget loss ``name``; the error lists the known names and the closest match."""
    if name not in FORGET_LOSSES:
        close = difflib.get_close_matches(name, list(FORGET_LOSSES), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"unknown method {name!r}{hint}; registered forget losses: {sorted(FORGET_LOSSES)}")
    return FORGET_LOSSES[name]


def _token_ascent(batch: ForgetBatch) -> Tensor:
    return -batch.tokens.values


register_forget_loss("GA", granularity="token", uses_retain=False)(_token_ascent)
register_forget_loss("GradDiff", granularity="token")(_token_ascent)


@register_forget_loss(
    "NPO", granularity="sample", hyperparameters=("beta",), needs_reference=True, defaults={"beta": 0.1}
)
def _npo(batch: ForgetBatch, beta: float) -> Tensor:
    nll_sum, _ = batch.tokens.per_sequence()
    return npo_loss(nll_sum, batch.ref_nll_sum, beta)


@register_forget_loss(
    "SimNPO",
    granularity="sample",
    hyperparameters=("beta", "delta"),
    defaults={"beta": 4.5, "delta": 0.0, "gamma": 0.125},
)
def _simnpo(batch: ForgetBatch, beta: float, delta: float) -> Tensor:
    nll_sum, n_tokens = batch.tokens.per_sequence()
    return simnpo_loss(nll_sum, n_tokens, beta, delta)


@register_forget_loss(
    "SatImp",
    granularity="token",
    hyperparameters=("beta1", "beta2"),
    defaults={"beta1": 5.0, "beta2": 1.0, "gamma": 0.1},
)
def _satimp(batch: ForgetBatch, beta1: float, beta2: float) -> Tensor:
    return satimp_from_token_nll(batch.tokens.values, beta1, beta2)


def g_hardness(tokens: TokenNLL) -> Tensor:
    """BalDRO-G hardness ``h_i = -a_i``: the lower a sample's average NLL, the more it is still memorised."""
    nll_sum, n_tokens = tokens.per_sequence()
    return -average_nll(nll_sum.detach(), n_tokens)
