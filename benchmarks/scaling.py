"""Part 2: data-parallel scaling of real Ray Train unlearning runs, and the cost of the DRO all-gather.

The same run (a generated TOFU-layout folder, a tiny float32 Llama, NPO with BalDRO, evaluation and tracking off)
is trained through :func:`~baldro_ray.unlearn.run_unlearn` with 1 worker x ``B`` rows and with 2 workers x
``B/2`` rows: the same global batch, the same updates (the engine's worker-count invariance). The engine is not
changed: while the driver builds the ``TorchTrainer``, its worker function is swapped for
:func:`timed_unlearn_loop`, which runs the engine's own loop with ``run_step`` wrapped by a timer and its exchange
by a timed proxy, then writes the timings next to the run. From them:

- steps/s = 1 / the median period between the starts of consecutive steps of one epoch on rank 0 (the first step
  and the epoch-end checkpoints excluded: start-up and checkpoint cost are not throughput);
  efficiency = (steps/s with 2 workers / steps/s with 1) / 2;
- exchange = time inside the step's ``all_gather_object`` calls (the per-sample scalars ``run_step`` gathers:
  positions, unit values; BalDRO-G also hardness) as the step sees it, *including* waiting for the slower rank;
- all-gather alone = the same step's gather calls replayed on the same payloads after a barrier, once training
  has ended: the communication cost without the wait.
Comparing ``scope=global`` with ``scope=local`` runs would measure nothing: ``run_step`` gathers in both scopes.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(REPO_ROOT))

TIMING_DIR = "timing"
REPLAYS = 20
METHODS = {"dv": ("method.dro.type=dv", "method.dro.temperature=-1"), "group": ("method.dro.type=group",)}


class TimedExchange:
    """An exchange that times each ``all_gather_object`` of the one it wraps and keeps what it sent."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.rank, self.world_size = inner, inner.rank, inner.world_size
        self.seconds = 0.0
        self.sent: list[Any] = []

    def all_gather_object(self, obj: Any) -> list[Any]:
        start = time.perf_counter()
        out = self.inner.all_gather_object(obj)
        self.seconds += time.perf_counter() - start
        self.sent.append(obj)
        return out


def timed_unlearn_loop(loop_config: dict[str, Any]) -> None:
    """The engine's Ray Train worker loop, with each ``run_step`` timed; afterwards the last step's gathers are
    replayed after a barrier, and the timings go to ``<output_dir>/timing/rank<r>.json``."""
    import torch.distributed as dist

    from baldro_ray.train import unlearn as engine

    original = engine.run_step
    records: list[dict[str, float]] = []
    last: list[Any] = []

    def run_step(
        model: Any,
        backward: Any,
        micro: Any,
        cfg: Any,
        layout: Any,
        exchange: Any,
        step_id: int,
        ref_model: Any = None,
    ) -> Any:
        timed = TimedExchange(exchange)
        start = time.perf_counter()
        result = original(model, backward, micro, cfg, layout, timed, step_id, ref_model)
        records.append(
            {
                "step": step_id,
                "start": start,
                "run_step_s": time.perf_counter() - start,
                "exchange_s": timed.seconds,
            }
        )
        last[:] = timed.sent
        return result

    engine.run_step = run_step
    try:
        engine.unlearn_loop(loop_config)
    finally:
        engine.run_step = original
    replays = []
    for _ in range(REPLAYS):
        dist.barrier()
        start = time.perf_counter()
        for obj in last:
            dist.all_gather_object([None] * dist.get_world_size(), obj)
        replays.append(time.perf_counter() - start)
    out = Path(loop_config["run"]["output_dir"]) / TIMING_DIR
    out.mkdir(parents=True, exist_ok=True)
    payload = {"records": records, "replay_s": replays, "gathers_per_step": len(last)}
    (out / f"rank{dist.get_rank()}.json").write_text(json.dumps(payload))


@contextmanager
def timed_worker_loop() -> Iterator[None]:
    """While open, :func:`~baldro_ray.unlearn.build_trainer` builds trainers running :func:`timed_unlearn_loop`."""
    import ray.cloudpickle

    from baldro_ray.train import unlearn as engine

    if __name__ != "__main__":  # __main__ travels by value anyway
        ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers need not import benchmarks/
    original = engine.unlearn_loop
    engine.unlearn_loop = timed_unlearn_loop
    try:
        yield
    finally:
        engine.unlearn_loop = original


def write_workspace(root: Path, rows: int, hidden: int, layers: int) -> Path:
    """A TOFU-layout folder (``forget10``/``retain90``, ``rows`` QA each) and a tiny float32 Llama whose
    tokenizer is trained on it; answers are 25-60 words long."""
    from baldro_ray.models.tiny import TinyModelSpec, build_tiny_llama, save_model, train_tokenizer

    words = [
        "river",
        "stone",
        "quiet",
        "garden",
        "letter",
        "winter",
        "harbour",
        "violin",
        "lantern",
        "orchard",
        "mirror",
        "thunder",
    ]

    def qa(i: int) -> tuple[str, str]:
        body = " ".join(words[(i * 7 + j * (i % 5 + 1)) % len(words)] for j in range(25 + (i * 13) % 36))
        return f"What did author {i} write in {1900 + i}?", f"Author {i} wrote {body} ({i * 37} pages)."

    pairs = [qa(i) for i in range(2 * rows)]
    tokenizer = train_tokenizer([f"{q} {a}" for q, a in pairs] * 2, vocab_size=1024)
    spec = TinyModelSpec(
        hidden_size=hidden, num_layers=layers, num_heads=4, num_kv_heads=4, intermediate_size=hidden * 11 // 4
    )
    save_model(build_tiny_llama(spec, tokenizer, seed=0), tokenizer, root / "model")
    data = root / "data"
    data.mkdir(parents=True, exist_ok=True)
    for name, part in (("forget10", pairs[:rows]), ("retain90", pairs[rows:])):
        (data / f"{name}.json").write_text(
            "".join(json.dumps({"question": q, "answer": a}) + "\n" for q, a in part)
        )
    return root


def train_timed(
    root: Path, tag: str, workers: int, batch: int, epochs: int, method: Sequence[str]
) -> dict[str, Any]:
    """One timed Ray Train run with ``workers`` workers sharing a global batch of ``batch`` rows."""
    from baldro_ray.config import load_config
    from baldro_ray.unlearn import resolve_run, run_unlearn

    output = root / "runs" / tag
    config = load_config(
        overrides=[
            "data.source=tofu",
            f"data.location={root / 'data'}",
            f"model.name_or_path={root / 'model'}",
            f"output_dir={output}",
            f"trainer.epochs={epochs}",
            "trainer.lr=1e-4",
            "trainer.warmup_epochs=0",
            "trainer.schedule=constant",
            "trainer.max_length=128",
            f"trainer.num_workers={workers}",
            f"trainer.per_device_batch_size={batch // workers}",
            "trainer.cpus_per_worker=1",
            "method.name=NPO",
            *method,
            "evaluation.enabled=false",
            "tracking.enabled=false",
        ]
    )
    started = time.perf_counter()
    with timed_worker_loop():
        run_unlearn(resolve_run(config, name="run", log=lambda _: None), log=lambda _: None)
    wall = time.perf_counter() - started
    ranks = [json.loads(p.read_text()) for p in sorted((output / TIMING_DIR).glob("rank*.json"))]
    return {"workers": workers, "wall_s": wall, "ranks": ranks}


def summarise(run: dict[str, Any], steps_per_epoch: int, batch: int) -> dict[str, float]:
    """Steps/s and the exchange's share of a step, from rank 0's records (see the module docstring)."""
    records = run["ranks"][0]["records"]
    periods = [
        b["start"] - a["start"]
        for a, b in itertools.pairwise(records)
        if a["step"] > 0 and b["step"] == a["step"] + 1 and b["step"] % steps_per_epoch != 0
    ]
    period = statistics.median(periods)
    exchange = statistics.median(r["exchange_s"] for r in records[1:])
    replay = statistics.median(run["ranks"][0]["replay_s"])
    return {
        "workers": run["workers"],
        "steps_per_s": 1 / period,
        "samples_per_s": batch / period,
        "period_ms": 1000 * period,
        "period_min_ms": 1000 * min(periods),
        "period_max_ms": 1000 * max(periods),
        "run_step_ms": 1000 * statistics.median(r["run_step_s"] for r in records[1:]),
        "exchange_ms": 1000 * exchange,
        "exchange_share": exchange / period,
        "allgather_ms": 1000 * replay,
        "allgather_share": replay / period,
        "gathers_per_step": run["ranks"][0]["gathers_per_step"],
        "periods": len(periods),
        "wall_s": run["wall_s"],
    }


def start_ray() -> None:
    """A local 2-CPU Ray cluster, workers' logs not echoed (or the one ``RAY_ADDRESS`` names); Train reports
    every 0.2 s (STACK_NOTES). Idempotent."""
    import os

    import ray

    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if not ray.is_initialized() and not os.environ.get("RAY_ADDRESS"):
        ray.init(num_cpus=2, include_dashboard=True, dashboard_host="127.0.0.1", log_to_driver=False)
    from baldro_ray.cluster import ensure_ray

    ensure_ray()


def run(args: argparse.Namespace, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Every method with 1 and 2 workers (1 CPU each) on a local 2-CPU Ray cluster."""
    start_ray()
    out: dict[str, Any] = {"rows": args.rows, "batch": args.batch, "epochs": args.epochs, "methods": {}}
    with tempfile.TemporaryDirectory(prefix="baldro-scaling-") as tmp:
        root = write_workspace(Path(tmp), args.rows, args.hidden, args.layers)
        for name in args.methods:
            rows = []
            for workers in (1, 2):
                log(f"  scaling: NPO+{name}, {workers} worker(s) ...")
                result = train_timed(
                    root, f"{name}-{workers}", workers, args.batch, args.epochs, METHODS[name]
                )
                rows.append(summarise(result, args.rows // args.batch, args.batch))
            efficiency = rows[1]["steps_per_s"] / rows[0]["steps_per_s"] / 2
            out["methods"][name] = {"runs": rows, "efficiency": efficiency}
    return out


def render(out: dict[str, Any]) -> str:
    lines = [
        (
            f"Scaling: real Ray Train runs (NPO, {out['rows']} forget rows, global batch {out['batch']}, "
            f"{out['epochs']} epoch(s)), 1 CPU per worker; per step on rank 0, medians over the steps."
        ),
        "",
        (
            f"{'method':<10}{'workers':>8}{'steps/s':>9}{'samples/s':>10}{'step ms':>9}{'(min-max)':>14}"
            f"{'exchange ms':>12}{'share':>7}{'all-gather ms':>14}{'share':>7}{'run s':>7}"
        ),
    ]
    for name, m in out["methods"].items():
        for r in m["runs"]:
            spread = f"{r['period_min_ms']:.0f}-{r['period_max_ms']:.0f}"
            lines.append(
                f"{'NPO+' + name:<10}{r['workers']:>8}{r['steps_per_s']:>9.2f}{r['samples_per_s']:>10.1f}"
                f"{r['period_ms']:>9.0f}{spread:>14}{r['exchange_ms']:>12.2f}{100 * r['exchange_share']:>6.1f}%"
                f"{r['allgather_ms']:>14.2f}{100 * r['allgather_share']:>6.1f}%{r['wall_s']:>7.0f}"
            )
        lines.append(f"{'':<10}data-parallel efficiency (steps/s 2 / steps/s 1) / 2 = {m['efficiency']:.2f}")
    lines += [
        "",
        (
            "exchange = run_step's all_gather_object calls as the step sees them (waiting for the other rank "
            "included); all-gather = the same calls replayed after a barrier (communication only); share = of the "
            "step period. run s = the whole run_unlearn call (Ray Train start-up, reference scoring, checkpoints)."
        ),
    ]
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke run: 1 epoch of 3 steps, DV only by default")
    p.add_argument("--rows", type=int, default=64, help="forget rows (as many retain rows)")
    p.add_argument("--batch", type=int, default=8, help="global batch (forget rows per step)")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument(
        "--methods", help=f"comma-separated subset of {','.join(METHODS)} (default: all; --quick: dv)"
    )
    args = p.parse_args(argv)
    if args.quick:
        args.rows, args.epochs = 24, 1
    args.methods = (args.methods or ("dv" if args.quick else ",".join(METHODS))).split(",")
    if any(m not in METHODS for m in args.methods):
        p.error(f"--methods: a comma-separated subset of {','.join(METHODS)}")
    return args


def main(argv: Sequence[str] | None = None, emit: Callable[[str], None] = print) -> dict[str, Any]:
    out = run(parse_args(argv))
    emit(render(out))
    return out


if __name__ == "__main__":
    main()
