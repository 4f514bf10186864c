"""How one DRO batch's units become one loss: the plain mean (ERM), BalDRO-G or BalDRO-DV, as an object.

An :class:`Aggregation` is built once from the configuration and then asked — its weights, its value, whether it
selects a subset first, the parameters that define it — so no caller decides "is this DV?" from a string again.
BalDRO-G's units are those of the selected samples only (the step selects them with :func:`group_select` at
``sampling_ratio``); on them it is the plain mean. BalDRO-DV is :func:`dv_aggregate` at its signed temperature.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from torch import Tensor

from baldro_ray.objectives.dro import dro_weights, dv_aggregate, is_mean_temperature

AggregationType = Literal["mean", "group", "dv"]
AGGREGATIONS: tuple[str, ...] = ("mean", "group", "dv")


@dataclass(frozen=True)
class Aggregation:
    """One aggregation with only the parameter its type reads: ``temperature`` for DV, ``sampling_ratio`` for G.

    Build it with :meth:`mean`, :meth:`group`, :meth:`dv` or :meth:`of`; the constructor rejects a parameter the
    type does not read, so an aggregation never carries an unused setting.
    """

    type: AggregationType
    temperature: float | None = None
    sampling_ratio: float | None = None

    def __post_init__(self) -> None:
        if self.type not in AGGREGATIONS:
            raise ValueError(f"unknown aggregation {self.type!r}; expected one of {AGGREGATIONS}")
        if self.type != "dv" and self.temperature is not None:
            raise ValueError(f"aggregation {self.type!r} has no temperature; got {self.temperature}")
        if self.type == "dv":
            is_mean_temperature(self.temperature)  # rejects 0 and NaN
        if (self.type == "group") != (self.sampling_ratio is not None):
            raise ValueError(
                f"sampling_ratio is BalDRO-G's alone; got {self.sampling_ratio} for {self.type!r}"
            )
        if self.sampling_ratio is not None and not 0 < self.sampling_ratio <= 1:
            raise ValueError(f"sampling_ratio must be in (0, 1]; got {self.sampling_ratio}")

    @classmethod
    def mean(cls) -> Aggregation:
        return cls("mean")

    @classmethod
    def group(cls, sampling_ratio: float) -> Aggregation:
        return cls("group", sampling_ratio=sampling_ratio)

    @classmethod
    def dv(cls, temperature: float | None) -> Aggregation:
        return cls("dv", temperature=temperature)

    @classmethod
    def of(cls, type: str, temperature: float | None, sampling_ratio: float) -> Aggregation:
        """The aggregation ``type`` from settings that hold every type's parameter: only its own one is kept."""
        if type == "dv":
            return cls.dv(temperature)
        if type == "group":
            return cls.group(sampling_ratio)
        return cls(type)  # type: ignore[arg-type]  # __post_init__ rejects an unknown type

    @property
    def uniform(self) -> bool:
        """True when the weights do not depend on the unit values: the mean, and G over the units it kept."""
        return self.temperature is None

    @property
    def softmax(self) -> bool:
        """True when the weights are ``softmax(l / temperature)`` (BalDRO-DV): a step can then accumulate them
        across micro-steps with a running maximum, before every value is known (the online-softmax identity)."""
        return self.type == "dv"

    @property
    def selects(self) -> bool:
        """True for BalDRO-G: the step keeps the hardest ``sampling_ratio`` of each DRO batch before the loss."""
        return self.sampling_ratio is not None

    def weights(self, units: Tensor) -> Tensor:
        """The distribution over ``units`` (detached, summing to 1): uniform for the mean and G, DV's softmax."""
        return dro_weights(units, self.temperature)

    def value(self, units: Tensor) -> Tensor:
        """The aggregated loss of ``units``; its gradient is ``sum_u weights_u * grad l_u``."""
        return dv_aggregate(units, self.temperature)

    def params(self) -> dict[str, Any]:
        """What defines this aggregation, for records: its type and the one parameter it reads, if any."""
        out: dict[str, Any] = {"type": self.type}
        if self.type == "dv":
            out["temperature"] = self.temperature
        if self.type == "group":
            out["sampling_ratio"] = self.sampling_ratio
        return out
