"""A two-second look at what each aggregation does to one forget batch (``baldro-ray objectives-demo``)."""

from __future__ import annotations

import math

import torch

from baldro_ray.objectives.dro import (
    dro_weights,
    dv_aggregate,
    group_select,
    group_weights,
    weight_diagnostics,
)
from baldro_ray.objectives.forget import npo_loss

# Six forget answers of 10 tokens, memorised by the reference model (average NLL 0.2); unlearning has moved them
# unevenly: the first is untouched, the last is well forgotten.
ANSWER_TOKENS = 10
REFERENCE_AVG_NLL = 0.2
CURRENT_AVG_NLL = (0.2, 0.3, 0.6, 1.2, 2.5, 4.0)
NPO_BETA = 0.1
G_RATIO = 0.5
TEMPERATURES = (-1.0, -10.0, 10.0, 1.0)


def demo_rows() -> list[tuple[str, float, torch.Tensor]]:
    """``(label, aggregated forget loss, weights over the batch)`` for mean, BalDRO-G and BalDRO-DV."""
    avg_nll = torch.tensor(CURRENT_AVG_NLL, dtype=torch.float64)
    nll_sum = avg_nll * ANSWER_TOKENS
    losses = npo_loss(nll_sum, torch.full_like(nll_sum, REFERENCE_AVG_NLL * ANSWER_TOKENS), NPO_BETA)
    selected = group_select(-avg_nll, G_RATIO)
    rows = [("mean (NPO)", float(losses.mean()), dro_weights(losses, None))]
    rows.append((f"G  ratio={G_RATIO}", float(losses[selected].mean()), group_weights(len(losses), selected)))
    for t in TEMPERATURES:
        form = "reference" if t < 0 else "textbook"
        rows.append((f"DV t={t:+g} ({form})", float(dv_aggregate(losses, t)), dro_weights(losses, t)))
    return [("NPO loss l_i", float("nan"), losses), *rows]


def render_demo() -> str:
    """The demo table as text."""
    header = f"{'':28s}" + "".join(f"{f'a={a:g}':>9s}" for a in CURRENT_AVG_NLL) + f"{'F':>9s}{'ESS':>6s}"
    lines = [
        "Forget batch: 6 answers the model once memorised (reference average NLL 0.2); a = current average NLL.",
        f"NPO (beta={NPO_BETA}) per-sample losses, then the weight each aggregation puts on each sample:",
        "",
        header,
    ]
    for label, value, weights in demo_rows():
        cells = "".join(f"{float(w):9.3f}" for w in weights)
        tail = (
            ""
            if math.isnan(value)
            else f"{value:9.3f}{weight_diagnostics(weights).effective_sample_size:6.2f}"
        )
        lines.append(f"{label:28s}{cells}{tail}")
    lines += [
        "",
        "Reference DV (t<0) moves the weight to the samples already forgotten (lowest loss); textbook DV (t>0)",
        "and G move it to the samples still memorised. |t| -> infinity recovers the mean; ESS = 1 / sum w^2.",
    ]
    return "\n".join(lines)
