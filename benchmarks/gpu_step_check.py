"""GPU check of one BalDRO step on a ~1B-parameter Llama (one NVIDIA GPU, torch + transformers only).

Run from a checkout:  PYTHONPATH=. python3 benchmarks/gpu_step_check.py [--layers 16] [--steps 5]

1. Correctness: the gradient of our step (``run_step``: one concatenated forget+retain forward, cached reference
   NLL, exact DV weights) against autograd on the objective written out directly, same bf16 model and batch.
2. Cost, side by side in one process: our step vs a reference-style step (reference model forward every step,
   separate forget and retain forwards), tokens/s and peak GPU memory. Ratios are what to read.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from baldro_ray.objectives import IGNORE_INDEX, dv_aggregate, npo_loss, sequence_nll
from baldro_ray.train.layout import StepLayout
from baldro_ray.train.step import MicroBatch, SingleProcessExchange, StepConfig, run_step


def build_model(layers: int, device: torch.device) -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=32000,
        hidden_size=2048,
        intermediate_size=5504,
        num_hidden_layers=layers,
        num_attention_heads=16,
        num_key_value_heads=16,
        max_position_embeddings=2048,
    )
    torch.manual_seed(0)
    return LlamaForCausalLM(config).to(device=device, dtype=torch.bfloat16)


def random_batch(
    batch: int, length: int, prompt: int, device: torch.device, seed: int
) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(10, 32000, (batch, length), generator=gen)
    labels = ids.clone()
    labels[:, :prompt] = IGNORE_INDEX
    return {
        "input_ids": ids.to(device),
        "attention_mask": torch.ones_like(ids).to(device),
        "labels": labels.to(device),
        "index": torch.arange(batch, device=device),
    }


def nll(model: torch.nn.Module, b: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    return sequence_nll(
        model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits, b["labels"]
    )


def reference_style_step(model, ref_model, forget, retain, beta: float, tau: float) -> torch.Tensor:
    """What the original code does per step: reference forward, then separate forget and retain forwards."""
    with torch.no_grad():
        ref_sum, _ = nll(ref_model, forget)
    s, _ = nll(model, forget)
    losses = -(2 / beta) * torch.nn.functional.logsigmoid(-beta * (ref_sum - s))
    forget_loss = -tau * torch.log(torch.mean(torch.exp(-losses / tau)))
    r_sum, r_n = nll(model, retain)
    loss = forget_loss + r_sum.sum() / r_n.sum()
    loss.backward()
    return loss.detach()


def timed(fn, steps: int, device: torch.device) -> tuple[float, float]:
    cuda = device.type == "cuda"
    fn()  # warm-up
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    if cuda:
        torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if cuda else float("nan")
    return (time.perf_counter() - start) / steps, peak


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--layers", type=int, default=16)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=256)
    parser.add_argument("--device", default="cuda", help="cpu only for a smoke test of the script")
    args = parser.parse_args()
    device = torch.device(args.device)
    model = build_model(args.layers, device)
    params = sum(p.numel() for p in model.parameters())
    forget = random_batch(args.batch, args.length, args.length // 4, device, 1)
    retain = random_batch(args.batch, args.length, args.length // 4, device, 2)
    with torch.no_grad():
        ref_sum, _ = nll(model, forget)
    forget["ref_nll_sum"] = ref_sum + torch.linspace(-20, 20, args.batch, device=device)
    cfg = StepConfig(
        forget_loss="NPO",
        hyperparameters={"beta": 0.1, "delta": 0.0, "beta1": 5.0, "beta2": 1.0},
        aggregation="dv",
        temperature=-1.0,
        sampling_ratio=0.5,
        scope="global",
        gamma=1.0,
        alpha=1.0,
        retain_loss_type="NLL",
        retain_reduction="token_mean",
        retain_dro=False,
        seed=0,
    )
    layout = StepLayout(1, args.batch, 1)
    positions = layout.local_positions(args.batch, 0, 0)

    def ours() -> float:
        micro = [MicroBatch(forget, positions, retain, positions)]
        return run_step(model, lambda x: x.backward(), micro, cfg, layout, SingleProcessExchange(), 0).loss

    model.zero_grad(set_to_none=True)
    our_loss = ours()
    our_grads = [p.grad.float().clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    s, _ = nll(model, forget)
    losses = npo_loss(s, forget["ref_nll_sum"], 0.1)
    r_sum, r_n = nll(model, retain)
    direct = dv_aggregate(losses, -1.0) + r_sum.sum() / r_n.sum()
    direct.backward()
    direct_grads = [p.grad.float() for p in model.parameters()]
    dot = sum(float((a * b).sum()) for a, b in zip(our_grads, direct_grads))
    norms = [math.sqrt(sum(float((g * g).sum()) for g in gs)) for gs in (our_grads, direct_grads)]
    cosine = dot / (norms[0] * norms[1])
    finite = all(bool(torch.isfinite(g).all()) for g in our_grads)

    tokens = 2 * args.batch * args.length
    our_time, our_mem = timed(lambda: (model.zero_grad(set_to_none=True), ours()), args.steps, device)
    ref_model = copy.deepcopy(model).eval().requires_grad_(False)  # only the reference style keeps one
    ref_time, ref_mem = timed(
        lambda: (
            model.zero_grad(set_to_none=True),
            reference_style_step(model, ref_model, forget, retain, 0.1, 1.0),
        ),
        args.steps,
        device,
    )
    report = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "params": params,
        "batch": f"{args.batch} forget + {args.batch} retain x {args.length} tokens",
        "loss_ours": our_loss,
        "loss_direct": float(direct.detach()),
        "grad_cosine_ours_vs_direct": cosine,
        "grad_norm_ratio": norms[0] / norms[1],
        "grads_finite": finite,
        "ours_tokens_per_s": tokens / our_time,
        "reference_style_tokens_per_s": tokens / ref_time,
        "speedup": ref_time / our_time,
        "ours_peak_gib": our_mem,
        "reference_style_peak_gib": ref_mem,
        "mfu_ours_bf16_989tflops": 6 * params * tokens / our_time / 989e12,
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
