"""One BalDRO step against the objective written out directly in float64 (no Ray): every method and
aggregation, gradient accumulation, and two ranks simulated by threads (a real all-gather between them)."""

from __future__ import annotations

import copy
import math
import threading
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch

from baldro_ray.data.render import TEMPLATES, encode_qa, encode_text, pad_batch
from baldro_ray.models.tiny import TinyModelSpec, build_tiny_llama, train_tokenizer
from baldro_ray.objectives import Aggregation, sequence_nll, token_nll
from baldro_ray.train.exchange import SingleProcessExchange
from baldro_ray.train.layout import StepLayout
from baldro_ray.train.step import run_step
from baldro_ray.train.units import MicroBatch, StepConfig

QA = [
    (f"What did author {i} write?", f"Author {i} wrote book number {i * 7} in {1900 + i}.") for i in range(16)
]
HP = {"beta": 0.1, "delta": 0.5, "beta1": 2.0, "beta2": 1.0}


class Float64LM(torch.nn.Module):
    """A causal LM computed in float64 throughout (each position sees the mean of its prefix's embeddings).

    Llama in float64 still runs RMSNorm, RoPE and the attention softmax in float32, so two exact ways to the same
    gradient that round differently agree to about 1e-7 only; this model tells exact from inexact at 1e-10.
    """

    def __init__(self, vocab_size: int, hidden: int = 16) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(vocab_size, hidden, dtype=torch.float64)
        self.mix = torch.nn.Linear(hidden, hidden, dtype=torch.float64)
        self.head = torch.nn.Linear(hidden, vocab_size, dtype=torch.float64)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> SimpleNamespace:
        mask = attention_mask[..., None].double()
        h = self.embed(input_ids) * mask
        prefix = h.cumsum(1) / mask.cumsum(1).clamp(min=1)
        return SimpleNamespace(logits=self.head(torch.tanh(self.mix(prefix) + h)))


def build_setup(data: str, float64: bool) -> dict[str, Any]:
    torch.manual_seed(0)
    tokenizer = train_tokenizer([f"{q} {a}" for q, a in QA] * 3, vocab_size=300)
    spec = TinyModelSpec(hidden_size=16, intermediate_size=32, num_layers=1, num_heads=2, num_kv_heads=2)
    model = Float64LM(len(tokenizer)) if float64 else build_tiny_llama(spec, tokenizer).double()
    qa = [encode_qa(tokenizer, q, a, TEMPLATES["tiny"], 64) for q, a in QA]
    text = [encode_text(tokenizer, "", f"{q} {a}", 64) for q, a in QA]
    encoded = {"qa": qa, "text": text, "text-forget-qa-retain": text[:8] + qa[8:]}[data]

    def batch(ids: list[int]) -> dict[str, torch.Tensor]:
        columns = {
            "input_ids": [encoded[i]["input_ids"] for i in ids],
            "labels": [encoded[i]["labels"] for i in ids],
        }
        return pad_batch({**columns, "index": ids}, tokenizer.pad_token_id)

    forget, retain = batch(list(range(8))), batch(list(range(8, 16)))
    with torch.no_grad():
        ref, _ = sequence_nll(
            model(input_ids=forget["input_ids"], attention_mask=forget["attention_mask"]).logits,
            forget["labels"],
        )
    forget["ref_nll_sum"] = ref + torch.linspace(-1, 2, 8, dtype=torch.float64)
    ref_model = copy.deepcopy(model)
    with torch.no_grad():
        for p in ref_model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    return {"model": model, "ref_model": ref_model, "forget": forget, "retain": retain}


@pytest.fixture(scope="module", params=["qa", "text", "text-forget-qa-retain"])
def setup(request: pytest.FixtureRequest) -> dict[str, Any]:
    """The tiny Llama on QA rows (answer tokens labelled), text chunks (every token but the first labelled,
    MUSE's raw units), or text forget units with QA retain rows (the mixed case, which the step supports as it is)."""
    return build_setup(request.param, float64=False)


@pytest.fixture(scope="module", params=["qa", "text"])
def float64_setup(request: pytest.FixtureRequest) -> dict[str, Any]:
    """:class:`Float64LM` on QA rows or text chunks: for passes that round differently from the direct objective."""
    return build_setup(request.param, float64=True)


def step_config(
    aggregation: str = "mean", temperature: float | None = -1.0, sampling_ratio: float = 0.5, **kw: Any
) -> StepConfig:
    base = {
        "forget_loss": "NPO",
        "hyperparameters": HP,
        "aggregation": Aggregation.of(aggregation, temperature, sampling_ratio),
        "retain_aggregation": None,
        "scope": "global",
        "gamma": 1.0,
        "alpha": 1.0,
        "retain_loss_type": "NLL",
        "retain_reduction": "token_mean",
        "seed": 0,
    }
    return StepConfig(**{**base, **kw})


def logits_of(model, b):
    return model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits


def direct_objective(
    s: dict[str, Any], cfg: StepConfig, forget_ids: list[int], retain_ids: list[int]
) -> torch.Tensor:
    """The objective of the spec, written out for one group of samples."""
    model, f = s["model"], s["forget"]
    fi, ri = torch.tensor(forget_ids), torch.tensor(retain_ids)
    fb = {k: v[fi] for k, v in f.items()}
    tokens = token_nll(logits_of(model, fb), fb["labels"])
    nll_sum, n = tokens.per_sequence()
    if cfg.forget_loss == "NPO":
        units = -(2 / HP["beta"]) * torch.nn.functional.logsigmoid(
            -HP["beta"] * (fb["ref_nll_sum"] - nll_sum)
        )
    elif cfg.forget_loss == "SimNPO":
        units = -(2 / HP["beta"]) * torch.nn.functional.logsigmoid(HP["beta"] * (nll_sum / n - HP["delta"]))
    elif cfg.forget_loss == "SatImp":
        p = torch.exp(-tokens.values.detach())
        units = -(p ** HP["beta1"]) * (1 - p) ** HP["beta2"] * tokens.values
    else:
        units = -tokens.values
    if cfg.aggregation.type == "dv":
        t = cfg.aggregation.temperature
        forget = t * (torch.logsumexp(units / t, 0) - math.log(units.numel()))
    else:
        forget = units.mean()
    if cfg.retain_loss_type is None:
        return cfg.gamma * forget
    rb = {k: v[ri] for k, v in s["retain"].items()}
    logits = logits_of(model, rb)
    if cfg.retain_loss_type == "KL":
        with torch.no_grad():
            ref_logits = logits_of(s["ref_model"], rb)
        mask = rb["labels"][:, 1:] != -100
        log_p, log_q = (
            torch.log_softmax(logits[:, :-1][mask], -1),
            torch.log_softmax(ref_logits[:, :-1][mask], -1),
        )
        retain = (log_q.exp() * (log_q - log_p)).sum(-1).mean()
    else:
        r_sum, r_n = sequence_nll(logits, rb["labels"])
        retain = r_sum.sum() / r_n.sum() if cfg.retain_reduction == "token_mean" else r_sum.mean()
    return cfg.gamma * forget + cfg.alpha * retain


def grads(model) -> list[torch.Tensor]:
    return [p.grad.clone() for p in model.parameters()]


def micro_batches(s: dict[str, Any], layout: StepLayout, rank: int) -> list[MicroBatch]:
    out = []
    for m in range(layout.accumulation):
        pos = layout.local_positions(8, m, rank)
        idx = torch.from_numpy(pos)
        out.append(
            MicroBatch(
                {k: v[idx] for k, v in s["forget"].items()},
                pos,
                {k: v[idx] for k, v in s["retain"].items()},
                pos,
            )
        )
    return out


def scaler(model: torch.nn.Module):
    """What the DDP backend's ``scale_gradients`` does, on a bare module."""

    def scale(factor: float) -> None:
        for p in model.parameters():
            if p.grad is not None:
                p.grad.mul_(factor)

    return scale


def ours(
    s: dict[str, Any], cfg: StepConfig, layout: StepLayout, rescalable: bool = True
) -> tuple[float, list[torch.Tensor]]:
    """Our step's loss and gradient; ``rescalable`` False is a backend without ``scale_gradients`` (DeepSpeed)."""
    s["model"].zero_grad()
    result = run_step(
        s["model"],
        lambda x: x.backward(),
        micro_batches(s, layout, 0),
        cfg,
        layout,
        SingleProcessExchange(),
        0,
        s["ref_model"],
        scaler(s["model"]) if rescalable else None,
    )
    return result.loss, grads(s["model"])


def assert_close(a: list[torch.Tensor], b: list[torch.Tensor]) -> None:
    for x, y in zip(a, b):
        assert torch.allclose(x, y, rtol=1e-10, atol=1e-13)


CASES = [
    {"forget_loss": "NPO", "aggregation": "mean"},
    {"forget_loss": "NPO", "aggregation": "dv", "temperature": -1.0},
    {"forget_loss": "NPO", "aggregation": "dv", "temperature": 2.0},
    {"forget_loss": "SimNPO", "aggregation": "dv", "temperature": -0.5, "gamma": 0.125},
    {"forget_loss": "SatImp", "aggregation": "dv", "temperature": -1.0, "gamma": 0.1},
    {"forget_loss": "GA", "aggregation": "mean", "retain_loss_type": None},
    {"forget_loss": "GradDiff", "aggregation": "mean", "retain_reduction": "sequence_sum_mean"},
    {"forget_loss": "NPO", "aggregation": "mean", "retain_loss_type": "KL"},
]


def expect(s: dict[str, Any], cfg: StepConfig) -> tuple[float, list[torch.Tensor]]:
    """The direct objective's value and gradient over all 8 forget and retain rows."""
    s["model"].zero_grad()
    want = direct_objective(s, cfg, list(range(8)), list(range(8)))
    want.backward()
    return float(want.detach()), grads(s["model"])


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(str(v) for v in c.values()))
@pytest.mark.parametrize(("batch", "accumulation"), [(8, 1), (4, 2), (2, 4)])
def test_step_gradient_equals_the_direct_objective(setup, case, batch: int, accumulation: int) -> None:
    """On a backend that cannot rescale gradients (DeepSpeed): global DV over several micro-steps takes the value
    pass, whose rows round exactly as the direct objective's do."""
    cfg = step_config(**case)
    want, expected = expect(setup, cfg)
    loss, got = ours(setup, cfg, StepLayout(1, batch, accumulation), rescalable=False)
    assert loss == pytest.approx(want, rel=1e-12)
    assert_close(got, expected)


DV_CASES = [case for case in CASES if case["aggregation"] == "dv"] + [
    {"forget_loss": "GA", "aggregation": "dv", "temperature": -1.0, "retain_loss_type": None},
    {"forget_loss": "NPO", "aggregation": "dv", "temperature": -1.0, "retain_loss_type": "KL"},
]


@pytest.mark.parametrize("case", DV_CASES, ids=lambda c: "-".join(str(v) for v in c.values()))
@pytest.mark.parametrize(("batch", "accumulation"), [(4, 2), (2, 4), (1, 8)])
def test_online_dv_equals_the_direct_objective(float64_setup, case, batch: int, accumulation: int) -> None:
    """On a backend that rescales gradients (DDP), global DV over several micro-steps takes the online pass: one
    gradient forward per row, and the direct objective's gradient to 1e-10 in float64."""
    cfg = step_config(**case)
    want, expected = expect(float64_setup, cfg)
    loss, got = ours(float64_setup, cfg, StepLayout(1, batch, accumulation))
    assert loss == pytest.approx(want, rel=1e-12)
    assert_close(got, expected)


def test_online_dv_on_llama_agrees_to_its_float32_parts(setup) -> None:
    """On the float64 Llama, whose RMSNorm, RoPE and softmax run in float32, the online pass rounds differently
    from the direct objective: equal to float32 precision."""
    cfg = step_config(aggregation="dv", temperature=-1.0)
    _, expected = expect(setup, cfg)
    _, got = ours(setup, cfg, StepLayout(1, 2, 4))
    for x, y in zip(got, expected):  # relative to each tensor's largest entry: float32 rounds at that scale
        assert float((x - y).abs().max()) <= 1e-6 * float(y.abs().max())


def test_online_dv_rescales_when_the_running_maximum_moves(float64_setup) -> None:
    """At temperature +-0.05 the weights span many orders of magnitude; the losses rise with position (the reference NLL has a ramp
    added), so at
    +0.05 the running maximum of l/t moves at every micro-step (at -0.05 it stays with the first). Both give the
    direct gradient."""
    moved = []
    for temperature in (-0.05, 0.05):
        cfg = step_config(aggregation="dv", temperature=temperature)
        _, expected = expect(float64_setup, cfg)
        float64_setup["model"].zero_grad()
        scale, factors = scaler(float64_setup["model"]), []
        layout = StepLayout(1, 2, 4)
        run_step(
            float64_setup["model"],
            lambda x: x.backward(),
            micro_batches(float64_setup, layout, 0),
            cfg,
            layout,
            SingleProcessExchange(),
            0,
            None,
            lambda f, factors=factors, scale=scale: (factors.append(f), scale(f)),
        )
        assert_close(grads(float64_setup["model"]), expected)
        moved.append(len(factors) - 1)  # the last factor is the normalisation
    assert moved[1] >= 2


def test_group_keeps_the_hardest_half_and_a_random_retain_cut(setup) -> None:
    cfg = step_config(aggregation="group", sampling_ratio=0.5)
    f = setup["forget"]
    with torch.no_grad():
        s, n = sequence_nll(logits_of(setup["model"], f), f["labels"])
    hardest = sorted(torch.sort(-(s / n), descending=True, stable=True).indices[:4].tolist())
    retain = sorted(np.random.default_rng([0, 0, 0]).choice(8, size=4, replace=False).tolist())
    setup["model"].zero_grad()
    direct_objective(setup, cfg, hardest, retain).backward()
    expected = grads(setup["model"])
    for batch, accumulation in ((8, 1), (2, 4), (1, 8)):  # at 1 x 8 most micro-batches keep no row at all
        _, got = ours(setup, cfg, StepLayout(1, batch, accumulation))
        assert_close(got, expected)


def test_local_scope_is_the_mean_of_per_micro_batch_objectives(setup) -> None:
    cfg = step_config(aggregation="dv", temperature=-1.0, scope="local")
    setup["model"].zero_grad()
    halves = [list(range(4)), list(range(4, 8))]
    (sum(direct_objective(setup, cfg, h, h) for h in halves) / 2).backward()
    _, got = ours(setup, cfg, StepLayout(1, 4, 2))
    assert_close(got, grads(setup["model"]))


class ThreadExchange:
    """A real all-gather between threads (one per simulated rank)."""

    def __init__(self, shared: dict[str, Any], rank: int, world_size: int) -> None:
        self.shared, self.rank, self.world_size = shared, rank, world_size

    def all_gather_object(self, obj: Any) -> list[Any]:
        self.shared["slots"][self.rank] = obj
        self.shared["barrier"].wait()
        out = list(self.shared["slots"])
        self.shared["barrier"].wait()
        return out


@pytest.mark.parametrize("aggregation", ["dv", "group"])
def test_two_simulated_ranks_equal_one(float64_setup, aggregation: str) -> None:
    """Two ranks at two micro-steps each (DV: the online pass, its running maximum shared by both) equal one."""
    cfg = step_config(aggregation=aggregation, temperature=1.0)
    _, single = ours(float64_setup, cfg, StepLayout(1, 8, 1))
    layout = StepLayout(2, 2, 2)
    models = [copy.deepcopy(float64_setup["model"]) for _ in range(2)]
    shared = {"slots": [None, None], "barrier": threading.Barrier(2)}
    errors: list[BaseException] = []

    def rank_main(rank: int) -> None:
        try:
            models[rank].zero_grad()
            run_step(
                models[rank],
                lambda x: x.backward(),
                micro_batches(float64_setup, layout, rank),
                cfg,
                layout,
                ThreadExchange(shared, rank, 2),
                0,
                None,
                scaler(models[rank]),
            )
        except BaseException as err:  # surfaced below
            errors.append(err)
            shared["barrier"].abort()

    threads = [threading.Thread(target=rank_main, args=(r,)) for r in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors
    averaged = [(a.grad + b.grad) / 2 for a, b in zip(*(m.parameters() for m in models))]
    assert_close(averaged, single)


def test_group_telemetry_covers_every_sample(setup) -> None:
    cfg = step_config(aggregation="group", sampling_ratio=0.25)
    layout = StepLayout(1, 4, 2)
    result = run_step(
        setup["model"],
        lambda x: None,
        micro_batches(setup, layout, 0),
        cfg,
        layout,
        SingleProcessExchange(),
        0,
    )
    assert sorted(s["row"] for s in result.samples.values()) == list(range(8))
    assert all(math.isfinite(s["avg_nll"]) for s in result.samples.values())
    kept = [p for p, w in result.sample_weights.items() if w > 0]
    assert len(kept) == 2 and sum(result.sample_weights.values()) == pytest.approx(1.0)
    assert all(math.isnan(result.samples[p]["loss"]) for p in result.samples if p not in kept)


@pytest.mark.parametrize(
    ("aggregation", "rescalable", "rows_without_grad"),
    # 4 micro-batches of 2 forget + 2 retain rows: every row is forwarded once with gradients; G adds its
    # gradient-free scoring of the 8 forget rows (and forwards only the 4 it keeps, with their 4 retain rows);
    # DV adds a value pass of every row only on a backend that cannot rescale gradients
    [("mean", True, 0), ("group", True, 8), ("dv", True, 0), ("dv", False, 16)],
)
def test_rows_forwarded_per_step(setup, aggregation: str, rescalable: bool, rows_without_grad: int) -> None:
    cfg = step_config(aggregation=aggregation)
    model = setup["model"]
    rows = {True: 0, False: 0}
    hook = model.register_forward_hook(
        lambda _m, _args, kwargs, _out: rows.__setitem__(
            torch.is_grad_enabled(), rows[torch.is_grad_enabled()] + kwargs["input_ids"].shape[0]
        ),
        with_kwargs=True,
    )
    try:
        run_step(
            model,
            lambda x: x.backward(),
            micro_batches(setup, StepLayout(1, 2, 4), 0),
            cfg,
            StepLayout(1, 2, 4),
            SingleProcessExchange(),
            0,
            setup["ref_model"],
            scaler(model) if rescalable else None,
        )
    finally:
        hook.remove()
        model.zero_grad()
    assert rows == {True: 8 if aggregation == "group" else 16, False: rows_without_grad}
