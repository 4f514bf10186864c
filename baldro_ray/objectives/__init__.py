"""BalDRO objectives in pure torch: per-token/per-sample NLL, forget and retain losses, DRO aggregations, registry.

Tensors in, tensors out; nothing here knows about Ray, files or configs. Formulas: ``docs/method.md``.
"""

from baldro_ray.objectives.aggregation import AGGREGATIONS, Aggregation
from baldro_ray.objectives.dro import (
    WeightDiagnostics,
    dro_weights,
    dv_aggregate,
    group_select,
    group_size,
    group_weights,
    is_mean_temperature,
    weight_diagnostics,
)
from baldro_ray.objectives.forget import (
    npo_loss,
    satimp_from_token_nll,
    satimp_token_losses,
    simnpo_loss,
)
from baldro_ray.objectives.nll import IGNORE_INDEX, TokenNLL, average_nll, sequence_nll, token_nll
from baldro_ray.objectives.registry import (
    FORGET_LOSSES,
    ForgetBatch,
    ForgetLoss,
    g_hardness,
    get_forget_loss,
    register_forget_loss,
)
from baldro_ray.objectives.retain import (
    RETAIN_REDUCTIONS,
    kl_per_position,
    reduce_retain_nll,
    retain_kl,
    retain_nll,
)

__all__ = [
    "AGGREGATIONS",
    "FORGET_LOSSES",
    "IGNORE_INDEX",
    "RETAIN_REDUCTIONS",
    "Aggregation",
    "ForgetBatch",
    "ForgetLoss",
    "TokenNLL",
    "WeightDiagnostics",
    "average_nll",
    "dro_weights",
    "dv_aggregate",
    "g_hardness",
    "get_forget_loss",
    "group_select",
    "group_size",
    "group_weights",
    "is_mean_temperature",
    "kl_per_position",
    "npo_loss",
    "reduce_retain_nll",
    "register_forget_loss",
    "retain_kl",
    "retain_nll",
    "satimp_from_token_nll",
    "satimp_token_losses",
    "sequence_nll",
    "simnpo_loss",
    "token_nll",
    "weight_diagnostics",
]
