"""Part 3: throughput of the TOFU evaluation on the Ray Data replica pool, with 1 and 2 model replicas.

On the embedded benchmark (the default one, cached under ``~/.cache/baldro-ray`` after its first preparation,
which trains its models on Ray Train: about 2 minutes), it times :func:`~baldro_ray.eval.evaluate.evaluate_models`
with ``evaluation.replicas`` 1 and 2 (1 CPU each): one job evaluating the target model, then one evaluating
``--models`` models (the target and copies of it, as when every epoch's model is evaluated in one job).
Samples/s = distinct requests (scored answers and greedy generations, as the pool runs them) per second of the
one-model job; steady samples/s = requests per second of each further model of the larger job (its extra time
over the one-model job: the pool is up, each model still loads); start-up = the one-model time less one
model's steady time. Both replica counts must return the same metrics: the batches are planned on the
driver, so the result does not depend on the replicas (checked and printed).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(REPO_ROOT))


def evaluation_run(
    overrides: Sequence[str], replicas: int, models: int, workdir: Path, log: Callable[[str], None]
) -> dict[str, Any]:
    """One evaluation job of the embedded target model, then one of ``models`` models (the target and copies of
    it in other folders, so that each is loaded too), with ``replicas`` replicas."""
    from baldro_ray.config import load_config
    from baldro_ray.embedded import prepare_embedded
    from baldro_ray.eval.evaluate import evaluate_models, plan_evaluation
    from baldro_ray.eval.inference import plan_chunks

    config = load_config(overrides=[*overrides, f"evaluation.replicas={replicas}"])
    assets = prepare_embedded(config.embedded, config.data.forget_split, log=lambda _: None)
    plan = plan_evaluation(config, str(assets.data_dir), str(assets.retain_model))
    model = str(assets.target_model)
    copies = [workdir / f"target-copy-{i}" for i in range(1, models)]
    for copy in copies:
        if not copy.exists():
            shutil.copytree(model, copy)
    s = plan.evaluation
    requests = plan.benchmark_evaluation.requests
    unique, _ = plan_chunks(requests, s.batch_size)
    started = time.perf_counter()
    (result,) = evaluate_models(plan, [model])
    one = time.perf_counter() - started
    started = time.perf_counter()
    evaluate_models(plan, [model, *map(str, copies)])
    several = time.perf_counter() - started
    per_model = (several - one) / (models - 1)
    log(f"  evaluation, {replicas} replica(s): 1 model {one:.1f} s, {models} models {several:.1f} s")
    return {
        "replicas": replicas,
        "requests": len(unique),
        "seconds": one,
        "models": models,
        "several_s": several,
        "generations": sum(type(r).__name__ == "Generate" for r in unique),
        "startup_s": one - per_model,
        "samples_per_s": len(unique) / one,
        "steady_samples_per_s": len(unique) / per_model if per_model > 0 else float("nan"),
        "summary": {k: v["agg_value"] for k, v in result.items() if isinstance(v, dict) and "agg_value" in v},
    }


def run(args: argparse.Namespace, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Replicas 1 then 2 (then 1 and 2 again with ``--repeats 2``), on a local 2-CPU Ray cluster."""
    from benchmarks.scaling import start_ray

    start_ray()
    overrides = [
        f"evaluation.max_new_tokens={args.max_new_tokens}",
        f"evaluation.batch_size={args.batch_size}",
    ]
    with tempfile.TemporaryDirectory(prefix="baldro-eval-bench-") as tmp:
        runs = [
            evaluation_run(overrides, r, args.models, Path(tmp), log)
            for _ in range(args.repeats)
            for r in (1, 2)
        ]
    by = {r: [x for x in runs if x["replicas"] == r] for r in (1, 2)}
    same = all(x["summary"] == runs[0]["summary"] for x in runs)
    best = {r: max(x["samples_per_s"] for x in by[r]) for r in by}
    steady = {r: max(x["steady_samples_per_s"] for x in by[r]) for r in by}
    return {
        "runs": runs,
        "identical_results": same,
        "speedup": best[2] / best[1],
        "steady_speedup": steady[2] / steady[1],
        "max_new_tokens": args.max_new_tokens,
        "batch_size": args.batch_size,
    }


def render(out: dict[str, Any]) -> str:
    first = out["runs"][0]
    several = f"{first['models']} models s"
    lines = [
        (
            f"Evaluation throughput: embedded TOFU benchmark, target model, {first['requests']} distinct requests "
            f"({first['generations']} greedy generations of <= {out['max_new_tokens']} tokens), batch "
            f"{out['batch_size']}, 1 CPU per replica."
        ),
        "",
        (
            f"{'replicas':>8}{'1 model s':>11}{'samples/s':>11}{several:>12}{'start-up s':>12}"
            f"{'steady samples/s':>18}"
        ),
    ]
    for r in out["runs"]:
        lines.append(
            f"{r['replicas']:>8}{r['seconds']:>11.1f}{r['samples_per_s']:>11.1f}{r['several_s']:>12.1f}"
            f"{r['startup_s']:>12.1f}{r['steady_samples_per_s']:>18.1f}"
        )
    lines += [
        "",
        (
            f"2 replicas / 1 replica: {out['speedup']:.2f}x end to end, {out['steady_speedup']:.2f}x steady (best of "
            f"each); identical metrics with 1 and 2 replicas: {'yes' if out['identical_results'] else 'NO'}."
        ),
        (
            "samples/s = requests / the one-model job's seconds (what one evaluate_models call costs); steady = "
            f"requests per second of each further model of the {first['models']}-model job, the pool being up (as "
            "when every epoch's model is evaluated in one job); start-up = 1 model s - one model's steady time."
        ),
    ]
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke run: generations of <= 16 tokens")
    p.add_argument("--max-new-tokens", type=int, default=200, help="greedy generation length (TOFU: 200)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--models", type=int, default=3, help="models in the second job (>= 2)")
    args = p.parse_args(argv)
    if args.quick:
        args.max_new_tokens, args.repeats, args.models = 16, 1, 2
    if args.models < 2:
        p.error("--models must be >= 2")
    return args


def main(argv: Sequence[str] | None = None, emit: Callable[[str], None] = print) -> dict[str, Any]:
    out = run(parse_args(argv))
    emit(render(out))
    return out


if __name__ == "__main__":
    main()
