"""GPU check of our BalDRO engine on one NVIDIA GPU: a randomly initialised ~1B-parameter Llama, bf16.

Usage, details and tolerances: docs/benchmarks.md ("GPU check"); without deepspeed installed, run it through
``benchmarks/gpu_check.sh WHEEL_DIR``. From the same seeded initial weights, on the same batches, it runs a few
steps of the real engine (``run_step``: NPO + BalDRO-DV in the reference form, t = -1) under three backends
built by ``build_backend`` in one process: ``torch`` (plain torch, world size 1 so no DDP wrapper; float32
weights, bf16 autocast forward) and ``zero2`` / ``zero3`` (DeepSpeed ZeRO-2 / ZeRO-3, bf16 with fp32 master
weights; client torch AdamW, so no DeepSpeed op is compiled). Checks, exit status 1 if one fails: every loss
finite; torch vs DeepSpeed losses within ``--rtol-first`` at the first step (same weights, same batch) and
``--rtol`` at every step; ZeRO-2 vs ZeRO-3 within ``--rtol-same-first`` and ``--rtol-same``; under ``torch``, our step's gradient against
autograd on the directly written objective (cosine >= 0.99, norm ratio within 2%). Prints tokens/s, peak GPU
memory and MFU per backend (6 * parameters * tokens / step time / ``--peak-tflops``; attention-score matmuls not
counted), a reference-style step's cost next to ours, then one JSON line.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import logging
import math
import os
import socket
import sys
import time
import traceback
import warnings
from collections.abc import Callable
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from baldro_ray.objectives import IGNORE_INDEX, Aggregation, dv_aggregate, npo_loss, sequence_nll
from baldro_ray.train.backend import BackendSpec, TrainingBackend, build_backend
from baldro_ray.train.exchange import SingleProcessExchange
from baldro_ray.train.layout import StepLayout
from baldro_ray.train.step import run_step
from baldro_ray.train.units import MicroBatch, StepConfig
from benchmarks.reference_style import reference_style_step

BETA, TEMPERATURE = 0.1, -1.0
STEP_CONFIG = StepConfig(
    forget_loss="NPO",
    hyperparameters={"beta": BETA},
    aggregation=Aggregation.dv(TEMPERATURE),
    retain_aggregation=None,
    scope="global",
    gamma=1.0,
    alpha=1.0,
    retain_loss_type="NLL",
    retain_reduction="token_mean",
    seed=0,
)
VARIANTS = {"torch": None, "zero2": 2, "zero3": 3}  # name -> DeepSpeed ZeRO stage (None: plain torch)
Batch = dict[str, torch.Tensor]


class Autocast(torch.nn.Module):
    """The plain-torch model: float32 weights, forward under bf16 autocast."""

    def __init__(self, module: torch.nn.Module, device_type: str) -> None:
        super().__init__()
        self.module = module
        self.device_type = device_type

    def forward(self, **inputs: torch.Tensor) -> Any:
        with torch.autocast(self.device_type, dtype=torch.bfloat16):
            return self.module(**inputs)


def init_single_process_group(device: torch.device) -> None:
    """World size 1: nccl on a GPU, gloo on CPU; DeepSpeed reuses it (initialised once, for every backend)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(
        RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    if device.type == "cuda":
        torch.cuda.set_device(device)
    torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=0, world_size=1)


def build_base_model(args: argparse.Namespace, device: torch.device) -> LlamaForCausalLM:
    """The seeded initial float32 weights, kept on CPU; every backend starts from a copy."""
    config = LlamaConfig(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        intermediate_size=args.intermediate,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.heads,
        max_position_embeddings=max(2048, args.length),
        use_cache=False,
        attn_implementation="sdpa",
    )
    torch.manual_seed(0)
    with torch.device(device):  # initialising 1B parameters is much faster on the GPU
        model = LlamaForCausalLM(config)
    return model.to("cpu").train()


def random_batches(args: argparse.Namespace, n: int) -> list[tuple[Batch, Batch]]:
    """``n`` (forget, retain) pairs of random tokens, the first quarter of each row a prompt (unlabelled)."""

    def one(seed: int) -> Batch:
        ids = torch.randint(
            10, args.vocab, (args.batch, args.length), generator=torch.Generator().manual_seed(seed)
        )
        labels = ids.clone()
        labels[:, : args.length // 4] = IGNORE_INDEX
        return {
            "input_ids": ids,
            "attention_mask": torch.ones_like(ids),
            "labels": labels,
            "index": torch.arange(args.batch),
        }

    return [(one(2 * i + 1), one(2 * i + 2)) for i in range(n)]


def nll(model: Callable[..., Any], b: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    return sequence_nll(
        model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits, b["labels"]
    )


def add_reference_nll(
    base: torch.nn.Module, batches: list[tuple[Batch, Batch]], device: torch.device
) -> None:
    """The cached reference NLL of each forget row (the initial model), spread by +-20 nats so that the DV weights
    are far from uniform."""
    ref = Autocast(copy.deepcopy(base).to(device), device.type)
    with torch.no_grad():
        for forget, _ in batches:
            s, _ = nll(ref, {k: v.to(device) for k, v in forget.items()})
            forget["ref_nll_sum"] = s.float().cpu() + torch.linspace(-20, 20, len(s))
    del ref
    free(device)


def free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def our_step(
    backend: TrainingBackend, forget: Batch, retain: Batch, step_id: int, update: bool = True
) -> float:
    """One ``run_step`` (one concatenated forget + retain forward, cached reference NLL, exact DV weights)."""
    layout = StepLayout(world_size=1, per_device_batch_size=len(forget["index"]), accumulation=1)
    positions = layout.local_positions(layout.global_batch, 0, 0)
    micro = [MicroBatch(forget, positions, retain, positions)]
    result = run_step(
        backend.model, backend.backward, micro, STEP_CONFIG, layout, SingleProcessExchange(), step_id
    )
    if update:
        backend.step()
    return result.loss


def direct_objective(model: Callable[..., Any], forget: Batch, retain: Batch) -> torch.Tensor:
    """The objective written out: DV over NPO losses plus the token-mean retain NLL, separate forwards."""
    s, _ = nll(model, forget)
    r_sum, r_n = nll(model, retain)
    return dv_aggregate(npo_loss(s, forget["ref_nll_sum"], BETA), TEMPERATURE) + r_sum.sum() / r_n.sum()


def gradient_check(backend: TrainingBackend, forget: Batch, retain: Batch) -> dict[str, Any]:
    """Our step's gradient against autograd on :func:`direct_objective` (same model, same batch); no update."""
    params = [p for p in backend.model.parameters() if p.requires_grad]
    backend.model.zero_grad(set_to_none=True)
    our_step(backend, forget, retain, 0, update=False)
    ours = [p.grad.detach().clone() for p in params]
    backend.model.zero_grad(set_to_none=True)
    direct_objective(backend.model, forget, retain).backward()
    dot = sum(float((a.double() * p.grad.double()).sum()) for a, p in zip(ours, params))
    norm_ours = math.sqrt(sum(float(a.double().square().sum()) for a in ours))
    norm_direct = math.sqrt(sum(float(p.grad.double().square().sum()) for p in params))
    finite = all(bool(torch.isfinite(a).all()) for a in ours)
    backend.model.zero_grad(set_to_none=True)
    cosine, ratio = dot / (norm_ours * norm_direct), norm_ours / norm_direct
    return {"grad_cosine": round(cosine, 6), "grad_norm_ratio": round(ratio, 6), "grads_finite": finite}


def timed_steps(
    fn: Callable[[int], Any], first: int, n: int, device: torch.device
) -> tuple[float, float | None, list[Any]]:
    """Mean seconds per call of ``fn(first) .. fn(first + n - 1)``, peak GiB allocated, their results."""
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    out = [fn(i) for i in range(first, first + n)]
    if cuda:
        torch.cuda.synchronize(device)
    seconds = (time.perf_counter() - start) / n
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if cuda else None
    return seconds, peak, out


def run_variant(
    name: str,
    base: torch.nn.Module,
    batches: list[tuple[Batch, Batch]],
    args: argparse.Namespace,
    device: torch.device,
    flops: float,
) -> dict[str, Any]:
    """Build the backend, (torch only: gradient check), warm-up and timed steps (``flops`` per step, for the MFU),
    (torch only: the reference style, same number of steps). Losses, tokens/s, peak GiB, MFU, ..."""
    stage = VARIANTS[name]
    spec = BackendSpec(zero_stage=stage, bf16=stage is not None, micro_batch_size=args.batch)

    def loader() -> torch.nn.Module:  # DeepSpeed moves the copy to the GPU and casts it to bf16
        model = copy.deepcopy(base)
        return model if stage is not None else Autocast(model, device.type)

    started = time.perf_counter()
    # One process: placing the model on the device is all the data-parallel preparation there is.
    backend = build_backend(
        spec,
        loader,
        args.lr,
        0.0,
        lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0),
        device,
        lambda model: model.to(device),
    )
    on_device = [tuple({k: v.to(device) for k, v in b.items()} for b in pair) for pair in batches]
    out: dict[str, Any] = {"build_s": round(time.perf_counter() - started, 1)}
    if name == "torch" and not args.skip_grad_check:
        out.update(gradient_check(backend, *on_device[0]))

    def step(i: int) -> float:
        return our_step(backend, *on_device[i], i)

    _, _, warm = timed_steps(step, 0, args.warmup, device)
    seconds, peak, timed = timed_steps(step, args.warmup, args.steps, device)
    tokens = 2 * args.batch * args.length
    out.update(losses=[round(x, 6) for x in warm + timed], tokens_per_s=round(tokens / seconds))
    out.update(peak_gib=peak and round(peak, 2), mfu=round(flops / seconds / (args.peak_tflops * 1e12), 4))
    if name == "torch" and not args.skip_reference_style:
        ref = Autocast(copy.deepcopy(base).to(device).eval().requires_grad_(False), device.type)

        def ref_step(i: int) -> None:
            reference_style_step(backend.model, backend.backward, [on_device[i]], STEP_CONFIG, i, ref)
            backend.step()

        timed_steps(ref_step, 0, 1, device)  # warm-up
        ref_seconds, ref_peak, _ = timed_steps(ref_step, 0, args.steps, device)
        out.update(reference_style_tokens_per_s=round(tokens / ref_seconds))
        out.update(reference_style_peak_gib=ref_peak and round(ref_peak, 2))
        out.update(speedup_vs_reference_style=round(ref_seconds / seconds, 3))
        del ref
    engine = backend.model
    if hasattr(engine, "destroy"):  # DeepSpeed engine: removes its hooks and buffers
        engine.destroy()
    backend = engine = on_device = None  # the closures above hold them too
    free(device)
    return out


def evaluate(
    results: dict[str, dict[str, Any]], args: argparse.Namespace
) -> tuple[dict[str, bool], list[str]]:
    """The checks, and one line per backend pair on how closely their losses agree."""
    checks = {"losses_finite": all(math.isfinite(x) for r in results.values() for x in r["losses"])}
    lines, names = [], list(results)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            same = VARIANTS[a] is not None and VARIANTS[b] is not None  # both DeepSpeed bf16: same numerics
            tol_first, tol = (args.rtol_same_first, args.rtol_same) if same else (args.rtol_first, args.rtol)
            pairs = zip(results[a]["losses"], results[b]["losses"])
            diffs = [abs(x - y) / max(abs(x), abs(y), 1e-12) for x, y in pairs]
            checks[f"losses_{a}_vs_{b}"] = diffs[0] <= tol_first and max(diffs) <= tol
            lines.append(
                f"losses {a} vs {b}: step 0 rel diff {diffs[0]:.2e} (<= {tol_first:g}), "
                f"max over steps {max(diffs):.2e} (<= {tol:g})"
            )
    grad = results.get("torch", {})
    if "grad_cosine" in grad:
        checks["grad_cosine_ge_0.99"] = grad["grad_cosine"] >= 0.99
        checks["grad_norm_ratio_within_2pct"] = abs(grad["grad_norm_ratio"] - 1) <= 0.02
        checks["grads_finite"] = grad["grads_finite"]
        lines.append(
            f"gradient of our step vs autograd on the direct objective (torch): cosine "
            f"{grad['grad_cosine']:.6f}, norm ratio {grad['grad_norm_ratio']:.6f}"
        )
    return checks, lines


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda", help="cuda, or cpu for a smoke test of the script")
    sizes = {"layers": 16, "hidden": 2048, "intermediate": 5504, "heads": 16, "vocab": 32000, "length": 512}
    for flag, default in sizes.items():
        p.add_argument(f"--{flag}", type=int, default=default)
    p.add_argument("--batch", type=int, default=8, help="forget rows per step (as many retain rows)")
    p.add_argument("--warmup", type=int, default=2, help="steps not timed (their losses are still compared)")
    p.add_argument("--steps", type=int, default=6, help="timed steps")
    p.add_argument("--lr", type=float, default=1e-5)
    p.add_argument("--peak-tflops", type=float, default=989.0, help="peak bf16 dense TFLOP/s (989: H100 SXM)")
    p.add_argument("--variants", default="torch,zero2,zero3")
    p.add_argument("--rtol-first", type=float, default=3e-2, help="torch vs DeepSpeed, first step")
    p.add_argument("--rtol", type=float, default=5e-2, help="torch vs DeepSpeed, every step")
    p.add_argument("--rtol-same-first", type=float, default=1e-3, help="ZeRO-2 vs ZeRO-3, first step")
    # Later steps differ by bf16 rounding in reduction order (7.2e-3 measured on an H200, 2026-11-28).
    p.add_argument("--rtol-same", type=float, default=2e-2, help="ZeRO-2 vs ZeRO-3, every step")
    p.add_argument("--skip-grad-check", action="store_true")
    p.add_argument("--skip-reference-style", action="store_true")
    args = p.parse_args()
    asked = [n for n in args.variants.split(",") if n]
    if not asked or any(n not in VARIANTS for n in asked):
        p.error(f"--variants: a comma-separated subset of {','.join(VARIANTS)}")
    if args.steps < 1 or args.warmup < 0:
        p.error("--steps must be >= 1 and --warmup >= 0")
    names = [n for n in VARIANTS if n in asked]  # ZeRO-3 last: destroy() leaves its engine referenced
    device = torch.device("cuda", 0) if args.device == "cuda" else torch.device(args.device)
    # ZeRO-3 on a new torch: one FutureWarning per collective
    warnings.filterwarnings("ignore", message=r".*is deprecated\. Please use .*_single")
    ds_version = None
    if any(VARIANTS[n] is not None for n in names):
        if device.type == "cpu":
            os.environ.setdefault("DS_ACCELERATOR", "cpu")  # read once, when deepspeed is first imported
        import deepspeed  # imported here, outside the Ray stand-in
        import transformers.integrations.deepspeed  # noqa: F401

        ds_version = deepspeed.__version__
        logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
    init_single_process_group(device)
    t0 = time.perf_counter()
    base = build_base_model(args, device)
    params = sum(q.numel() for q in base.parameters())
    batches = random_batches(args, args.warmup + args.steps)
    add_reference_nll(base, batches, device)
    tokens = 2 * args.batch * args.length
    flops = 6 * params * tokens
    attention_share = 12 * args.layers * args.hidden * args.length * tokens / flops
    summary, failed = {}, {}
    for name in names:
        print(f"--- {name}", flush=True)
        try:
            summary[name] = run_variant(name, base, batches, args, device, flops)
        except Exception as exc:  # report the other backends all the same
            traceback.print_exc()
            failed[name] = f"{type(exc).__name__}: {exc}"[:500]
            free(device)
    checks, lines = evaluate(summary, args)
    checks.update({f"{name}_ran": False for name in failed})
    total = time.perf_counter() - t0

    dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(
        f"\n{dev_name} | torch {torch.__version__} | deepspeed {ds_version} | {params / 1e6:.1f}M parameters | "
        f"{args.batch} forget + {args.batch} retain rows x {args.length} tokens = {tokens} tokens/step | "
        f"lr {args.lr:g} | {args.warmup} warm-up + {args.steps} timed steps"
    )
    print(
        f"MFU = 6 x parameters x tokens / step time / {args.peak_tflops:g} TFLOP/s (--peak-tflops); attention"
    )
    print(f"score matmuls, not counted, would add {100 * attention_share:.1f}% to the FLOPs.\n")
    print(
        f"{'backend':<8}{'loss[0]':>11}{'loss[-1]':>11}{'tokens/s':>10}{'peak GiB':>10}{'MFU %':>7}{'build s':>9}"
    )
    for name, r in summary.items():
        peak = "-" if r["peak_gib"] is None else f"{r['peak_gib']:.2f}"
        print(
            f"{name:<8}{r['losses'][0]:>11.5f}{r['losses'][-1]:>11.5f}{r['tokens_per_s']:>10}{peak:>10}"
            f"{100 * r['mfu']:>7.1f}{r['build_s']:>9}"
        )
    if "speedup_vs_reference_style" in summary.get("torch", {}):
        t = summary["torch"]
        print(
            f"\nreference-style step (torch; reference forward every step, separate forwards): "
            f"{t['reference_style_tokens_per_s']} tokens/s, peak GiB {t['reference_style_peak_gib'] or '-'}; "
            f"our step is {t['speedup_vs_reference_style']:.2f}x as fast"
        )
    print("\n".join(["", *lines, *(f"check {c}: {'ok' if ok else 'FAILED'}" for c, ok in checks.items())]))
    print(f"total {total:.0f} s after imports\n")
    info = {"device": dev_name, "torch": torch.__version__, "deepspeed": ds_version, "params": params}
    info.update(tokens_per_step=tokens, batch=args.batch, length=args.length, lr=args.lr)
    info.update(peak_tflops=args.peak_tflops, attention_flops_share=round(attention_share, 4))
    info.update(
        backends=summary, failed=failed, checks=checks, total_s=round(total, 1), ok=all(checks.values())
    )
    print(json.dumps(info))
    torch.distributed.destroy_process_group()
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
