"""Part 1: our BalDRO step against a reference-style step, side by side in one process, same model and data.

For each forget loss (NPO, SimNPO, SatImp) x aggregation (mean, G, DV) it times ``--repeats`` repeats of
``--steps`` optimizer steps of each implementation, ours and the reference-style one interleaved (ours first in
even repeats, second in odd ones) so that machine drift cancels; each repeat starts both from the same weights
(a fresh copy, a fresh AdamW) and runs the same batches. Ours is :func:`~baldro_ray.train.step.run_step` in one
process (one concatenated forward, reference NLL scored once before training, not timed); the reference style is
:mod:`benchmarks.reference_style`. Throughput counts forget + retain tokens (padding excluded) per second of the
timed steps; the ratio is ours / reference-style per repeat, with its min / median / max. Peak memory is measured
afterwards, one fresh run of ``--warmup + 1`` steps per implementation (:mod:`benchmarks.memory`: RSS on CPU,
``max_memory_allocated`` on CUDA), and counts the model copy, AdamW state, the reference model where the
implementation keeps one, and activations. Before timing, one step of each implementation in float64 on the same
weights and batch is compared (loss and gradient; the equal-loss check of the tests), so both compute the same
objective and only the cost differs.

    PYTHONPATH=. python benchmarks/step_benchmark.py [--quick] [--json out.json]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(REPO_ROOT))

import torch

from baldro_ray.models.tiny import TinyModelSpec, build_tiny_llama
from baldro_ray.objectives import AGGREGATIONS, IGNORE_INDEX, Aggregation, get_forget_loss
from baldro_ray.train.backend import BackendSpec, TrainingBackend, build_backend
from baldro_ray.train.units import StepConfig
from benchmarks.memory import peak_memory, track_cpu_frees
from benchmarks.reference_style import (
    add_reference_nll,
    compare_with_run_step,
    count_forwards,
    needs_reference_model,
    our_step,
    reference_style_step,
)

Batch = dict[str, torch.Tensor]
Pair = tuple[Batch, Batch]
FORGET_LOSSES = ("NPO", "SimNPO", "SatImp")

IMPLEMENTATIONS = ("ours", "reference-style")
EQUAL = 1e-9  # the equal-loss check's tolerance (losses of order 1-20; gradients relative)
SIZES = {"hidden": 128, "layers": 4, "heads": 4, "intermediate": 352, "vocab": 1024}  # the model's defaults


@dataclass(frozen=True)
class Vocabulary:
    """What :func:`build_tiny_llama` reads from a tokenizer: its size and special ids (no text is tokenised)."""

    size: int
    pad_token_id: int = 0
    bos_token_id: int = 1
    eos_token_id: int = 2

    def __len__(self) -> int:
        return self.size


def step_config(
    forget_loss: str, aggregation: str, temperature: float = -1.0, ratio: float = 0.5
) -> StepConfig:
    """The method with the reference hyperparameters (docs/method.md), DV in the reference form, retain NLL."""
    defaults = dict(get_forget_loss(forget_loss).defaults)
    gamma, alpha = defaults.pop("gamma", 1.0), defaults.pop("alpha", 1.0)
    return StepConfig(
        forget_loss=forget_loss,
        hyperparameters=defaults,
        aggregation=Aggregation.of(aggregation, temperature, ratio),
        retain_aggregation=None,
        scope="global",
        gamma=gamma,
        alpha=alpha,
        retain_loss_type="NLL",
        retain_reduction="token_mean",
        seed=0,
    )


def synthetic_batch(rows: int, length: int, vocab: int, seed: int, first_index: int = 0) -> Batch:
    """Right-padded QA-like rows of random tokens: each row 1/2..1 x ``length`` long, its first third a prompt
    (label -100), the rest the answer."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(length // 2, length + 1, (rows,), generator=g)
    ids = torch.randint(3, vocab, (rows, length), generator=g)
    positions = torch.arange(length).expand(rows, length)
    mask = positions < lengths[:, None]
    ids = torch.where(mask, ids, 0)
    labels = torch.where(mask & (positions >= (lengths // 3)[:, None]), ids, IGNORE_INDEX)
    index = torch.arange(first_index, first_index + rows)
    return {"input_ids": ids, "attention_mask": mask.long(), "labels": labels, "index": index}


def synthetic_steps(n: int, micro: int, rows: int, length: int, vocab: int) -> list[list[Pair]]:
    """``n`` optimizer steps of ``micro`` (forget, retain) micro-batches each."""
    return [
        [
            (
                synthetic_batch(rows, length, vocab, 2 * (s * micro + m) + 1, m * rows),
                synthetic_batch(rows, length, vocab, 2 * (s * micro + m) + 2, m * rows),
            )
            for m in range(micro)
        ]
        for s in range(n)
    ]


def tokens_of(step: Sequence[Pair]) -> int:
    return sum(int(f["attention_mask"].sum() + r["attention_mask"].sum()) for f, r in step)


class Runner:
    """One implementation's training state for one method: a fresh model copy and AdamW (and, reference-style,
    a frozen reference model), and its step on a list of micro-batches."""

    def __init__(self, impl: str, cfg: StepConfig, base: torch.nn.Module, device: torch.device, lr: float):
        self.impl, self.cfg = impl, cfg
        self.backend: TrainingBackend = build_backend(
            BackendSpec(),
            lambda: copy.deepcopy(base),
            lr,
            0.01,
            lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0),
            device,
            lambda m: m.to(device),
        )
        self.ref = None
        if impl == "reference-style" and needs_reference_model(cfg):
            self.ref = copy.deepcopy(base).to(device).eval().requires_grad_(False)

    def step(self, micro: Sequence[Pair], step_id: int) -> float:
        model, backward = self.backend.model, self.backend.backward
        if self.impl == "ours":
            loss = our_step(model, backward, micro, self.cfg, step_id, None, self.backend.scale_gradients)
        else:
            loss = reference_style_step(model, backward, micro, self.cfg, step_id, self.ref).loss
        self.backend.step()
        return loss

    def forwards(self, micro: Sequence[Pair], step_id: int) -> int:
        """Forward passes (model and reference model) of one step; the step is run, and applied."""
        modules = [self.backend.model] + ([self.ref] if self.ref is not None else [])
        with count_forwards(*modules) as counts:
            self.step(micro, step_id)
        return sum(counts)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_repeat(runner: Runner, steps: list[list[Pair]], warmup: int, device: torch.device) -> float:
    """Tokens per second over ``steps[warmup:]`` after ``warmup`` untimed steps."""
    for i in range(warmup):
        runner.step(steps[i], i)
    _sync(device)
    start = time.perf_counter()
    for i in range(warmup, len(steps)):
        runner.step(steps[i], i)
    _sync(device)
    return sum(tokens_of(s) for s in steps[warmup:]) / (time.perf_counter() - start)


def equality_check(
    base: torch.nn.Module, steps: list[list[Pair]], configs: list[StepConfig]
) -> dict[str, Any]:
    """Float64: one step of each implementation per method on the first micro-batch from the same weights; the
    reference model is the base perturbed by 1% noise, so that NPO's log-ratios are not all zero."""
    model = copy.deepcopy(base).double()
    ref = copy.deepcopy(model).eval().requires_grad_(False)
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        for p in ref.parameters():
            p.add_(0.01 * torch.randn_like(p) * p.abs().mean())
    first = [tuple(copy.deepcopy(b) for b in steps[0][0])]
    out = {}
    for cfg in configs:
        a = compare_with_run_step(model, ref, first, cfg)
        out[f"{cfg.forget_loss}/{cfg.aggregation.type}"] = {
            "loss": a.loss_ours,
            "loss_difference": a.loss_difference,
            "gradient_difference": a.gradient_difference,
        }
    return out


def setup(args: argparse.Namespace) -> tuple[torch.nn.Module, list[list[Pair]], list[StepConfig]]:
    """The seeded base model (float32, CPU), the steps' batches and the method configurations."""
    torch.set_num_threads(args.threads)
    spec = TinyModelSpec(
        hidden_size=args.hidden,
        num_layers=args.layers,
        num_heads=args.heads,
        num_kv_heads=args.heads,
        intermediate_size=args.intermediate,
        max_position_embeddings=max(512, args.length),
    )
    base = build_tiny_llama(spec, Vocabulary(args.vocab), seed=0).train()
    configs = [step_config(f, a) for f in args.methods for a in args.aggregations]
    steps = synthetic_steps(args.warmup + args.steps, args.accumulation, args.rows, args.length, args.vocab)
    return base, steps, configs


def on_device(
    base: torch.nn.Module, steps: list[list[Pair]], device: torch.device
) -> tuple[torch.nn.Module, list[list[Pair]]]:
    """The base model and batches on ``device``, each forget batch with its cached reference NLL (the engine's
    one-off scoring pass before training; not timed)."""
    model = copy.deepcopy(base).to(device).eval()
    moved = [[tuple({k: v.to(device) for k, v in b.items()} for b in pair) for pair in s] for s in steps]
    add_reference_nll(model, [f for step in moved for f, _ in step])
    return model.train(), moved


def memory_pass(args: argparse.Namespace) -> dict[str, Any]:
    """Peak MiB of ``--warmup + 1`` steps from a fresh copy, per method and implementation (after a throwaway
    run, so that the process's one-off allocations count for neither)."""
    device = torch.device(args.device)
    tracked = device.type == "cuda" or track_cpu_frees()
    base, steps, configs = setup(args)
    base, steps = on_device(base, steps, device)

    def one_run(impl: str, cfg: StepConfig) -> None:
        runner = Runner(impl, cfg, base, device, args.lr)
        for i in range(args.warmup + 1):
            runner.step(steps[i], i)

    peak_memory(lambda: one_run("reference-style", configs[0]), device)
    peaks = {
        f"{cfg.forget_loss}/{cfg.aggregation.type}": {
            impl: peak_memory(lambda impl=impl, cfg=cfg: one_run(impl, cfg), device)
            for impl in IMPLEMENTATIONS
        }
        for cfg in configs
    }
    return {"tracked": tracked, "peak_mib": peaks}


def measure_memory(args: argparse.Namespace) -> dict[str, Any]:
    """:func:`memory_pass`; on CPU in a fresh process (:mod:`benchmarks.memory`: the allocator setting it needs
    would slow the timed runs, and a heap grown by them would hide allocations)."""
    if torch.device(args.device).type == "cuda":
        return memory_pass(args)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "memory.json"
        command = [
            sys.executable,
            "-m",
            "benchmarks.step_benchmark",
            *child_argv(args),
            "--memory-only",
            str(out),
        ]
        path = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
        subprocess.run(command, check=True, env={**os.environ, "PYTHONPATH": path}, cwd=REPO_ROOT)
        return json.loads(out.read_text())


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Equal-loss check, interleaved timed repeats, then the memory pass: what :func:`render` prints."""
    device = torch.device(args.device)
    base, steps, configs = setup(args)
    started = time.perf_counter()
    check = equality_check(base, steps, configs)
    base_on_device, steps = on_device(base, steps, device)
    results: dict[str, Any] = {}
    for cfg in configs:
        key = f"{cfg.forget_loss}/{cfg.aggregation.type}"
        tps: dict[str, list[float]] = {impl: [] for impl in IMPLEMENTATIONS}
        for r in range(args.repeats):
            for impl in IMPLEMENTATIONS if r % 2 == 0 else IMPLEMENTATIONS[::-1]:
                runner = Runner(impl, cfg, base_on_device, device, args.lr)
                tps[impl].append(timed_repeat(runner, steps, args.warmup, device))
                del runner
        forwards = {
            impl: Runner(impl, cfg, base_on_device, device, args.lr).forwards(steps[0], 0) for impl in tps
        }
        ratios = [a / b for a, b in zip(tps["ours"], tps["reference-style"])]
        results[key] = {"tokens_per_s": tps, "ratios": ratios, "forwards_per_step": forwards}
        print(f"  {key}: ratio median {statistics.median(ratios):.2f}", flush=True)
    timing_s = time.perf_counter() - started
    memory = measure_memory(args)
    for key, peaks in memory["peak_mib"].items():
        results[key]["peak_mib"] = peaks
    params = sum(p.numel() for p in base.parameters())
    return {
        "device": args.device,
        "threads": args.threads,
        "torch": torch.__version__,
        "params": params,
        "model": {k: getattr(args, k) for k in ("hidden", "layers", "heads", "intermediate", "vocab")},
        "rows": args.rows,
        "length": args.length,
        "accumulation": args.accumulation,
        "repeats": args.repeats,
        "steps": args.steps,
        "warmup": args.warmup,
        "tokens_per_step": statistics.mean(tokens_of(s) for s in steps),
        "equality_check": check,
        "results": results,
        "memory_tracked": memory["tracked"],
        "seconds": round(time.perf_counter() - started, 1),
        "timing_seconds": round(timing_s, 1),
    }


def render(out: dict[str, Any]) -> str:
    """The tables as text."""
    check = out["equality_check"]
    worst_loss = max(v["loss_difference"] for v in check.values())
    worst_grad = max(v["gradient_difference"] for v in check.values())
    m = out["model"]
    lines = [
        (
            f"Step benchmark: {out['device']}, {out['threads']} thread(s), torch {out['torch']}; tiny Llama "
            f"{out['params'] / 1e6:.2f}M parameters (hidden {m['hidden']}, {m['layers']} layers, vocab {m['vocab']}); "
            f"{out['accumulation']} x ({out['rows']} forget + {out['rows']} retain rows) <= {out['length']} tokens per "
            f"step, ~{out['tokens_per_step']:.0f} real tokens; {out['repeats']} repeats x {out['steps']} timed steps "
            f"(+{out['warmup']} warm-up)."
        ),
        (
            f"Equal-loss check (float64, one micro-batch, same weights and batch, {len(check)} methods): max |loss "
            f"difference| {worst_loss:.1e}, max gradient difference {worst_grad:.1e} (relative to max |grad|): "
            f"{'ok' if worst_loss <= EQUAL and worst_grad <= EQUAL else 'FAILED'} (<= {EQUAL:g})."
        ),
        "",
        (
            f"{'method':<14}{'ours tok/s':>11}{'ref tok/s':>11}{'ratio min':>10}{'median':>8}{'max':>7}"
            f"{'fwd ours/ref':>13}{'peak MiB ours':>15}{'ref':>8}{'ratio':>7}"
        ),
    ]
    for key, r in out["results"].items():
        ratios, tps, peak = r["ratios"], r["tokens_per_s"], r["peak_mib"]
        fwd = r["forwards_per_step"]
        ours_mib, ref_mib = peak["ours"], peak["reference-style"]
        mem = (
            f"{ours_mib:>15.1f}{ref_mib:>8.1f}{ours_mib / ref_mib:>7.2f}"
            if ours_mib is not None and ref_mib is not None and ref_mib > 0
            else f"{'-':>15}{'-':>8}{'-':>7}"
        )
        lines.append(
            f"{key:<14}{statistics.median(tps['ours']):>11.0f}{statistics.median(tps['reference-style']):>11.0f}"
            f"{min(ratios):>10.2f}{statistics.median(ratios):>8.2f}{max(ratios):>7.2f}"
            f"{fwd['ours']:>7}/{fwd['reference-style']:<5}{mem}"
        )
    kind = "max_memory_allocated" if out["device"].startswith("cuda") else "peak RSS above the start"
    if not out["memory_tracked"]:
        kind += " (glibc's mmap threshold could not be set: freed blocks not tracked, an upper bound)"
    lines += [
        "",
        (
            f"ratio = ours / reference-style tokens/s per repeat (> 1: ours faster); peak MiB = {kind} during "
            f"{out['warmup'] + 1} steps from a fresh copy (model, AdamW state, reference model, activations); "
            f"fwd = forward passes per step (model + reference model). Total {out['seconds']:.0f} s."
        ),
    ]
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke run: 2 repeats x 1 timed step")
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--threads", type=int, default=1, help="torch intra-op threads (1: fair on a shared machine)"
    )
    for flag, default in SIZES.items():
        p.add_argument(f"--{flag}", type=int, default=default)
    p.add_argument("--rows", type=int, default=8, help="forget rows per micro-batch (as many retain rows)")
    p.add_argument("--length", type=int, default=96, help="longest row, tokens")
    p.add_argument("--accumulation", type=int, default=1, help="micro-batches per optimizer step")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--steps", type=int, default=3, help="timed steps per repeat")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--methods", default=",".join(FORGET_LOSSES))
    p.add_argument("--aggregations", default=",".join(AGGREGATIONS))
    p.add_argument("--json", type=Path, help="also write the results here")
    p.add_argument("--memory-only", type=Path, help=argparse.SUPPRESS)  # the memory pass's child process
    args = p.parse_args(argv)
    args.argv = [a for a in (sys.argv[1:] if argv is None else argv) if a not in ("--json", str(args.json))]
    args.methods, args.aggregations = args.methods.split(","), args.aggregations.split(",")
    if args.quick:
        args.repeats, args.steps = 2, 1
    return args


def child_argv(args: argparse.Namespace) -> list[str]:
    """The flags that reproduce ``args``' model, batches and methods in another process."""
    flags = [
        f"--{k}={getattr(args, k)}" for k in (*SIZES, "device", "threads", "rows", "length", "accumulation")
    ]
    flags += [f"--{k}={getattr(args, k)}" for k in ("steps", "warmup", "lr")]
    return flags + [f"--methods={','.join(args.methods)}", f"--aggregations={','.join(args.aggregations)}"]


def main(argv: Sequence[str] | None = None, emit: Callable[[str], None] = print) -> dict[str, Any]:
    args = parse_args(argv)
    if args.memory_only:
        args.memory_only.write_text(json.dumps(memory_pass(args)))
        return {}
    out = run(args)
    emit(render(out))
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
