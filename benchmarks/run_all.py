"""The benchmark entry point: parts 1-3 in one run on this machine, every table printed at the end.

    python benchmarks/run_all.py [--quick] [--only step,accumulation,scaling,eval] [--json results.json]

1. ``step``: our step against the reference-style step, NPO/SimNPO/SatImp x mean/G/DV, one micro-batch of 8 + 8
   rows (:mod:`benchmarks.step_benchmark`); ``accumulation``: the same for NPO with 2 micro-batches of 4 + 4
   rows, where our exact global DRO forwards each micro-batch twice (a no-grad value pass, then with gradients);
2. ``scaling``: real Ray Train runs with 1 and 2 workers, and the all-gather's cost (:mod:`benchmarks.scaling`);
3. ``eval``: TOFU evaluation throughput with 1 and 2 replicas (:mod:`benchmarks.eval_throughput`).
Part 1 runs before Ray starts, with one torch thread. ``--quick`` is a smoke run (numbers mean little).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(REPO_ROOT))

PARTS = ("step", "accumulation", "scaling", "eval")


def part_commands(quick: bool) -> dict[str, tuple[str, list[str]]]:
    """Each part's module and arguments."""
    q = ["--quick"] if quick else []
    return {
        "step": ("benchmarks.step_benchmark", q),
        "accumulation": ("benchmarks.step_benchmark", [*q, "--methods=NPO", "--rows=4", "--accumulation=2"]),
        "scaling": ("benchmarks.scaling", q),
        "eval": ("benchmarks.eval_throughput", q),
    }


def machine() -> str:
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return f"{platform.node()} | {platform.platform()} | {os.cpu_count()} CPUs | Python {platform.python_version()} | load {load}"


def main(argv: Sequence[str] | None = None, emit: Callable[[str], None] = print) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke run of every part (about 2-3 minutes)")
    p.add_argument("--only", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}")
    p.add_argument("--json", type=Path, help="also write every part's results here")
    args = p.parse_args(argv)
    parts = [x for x in args.only.split(",") if x]
    if not parts or any(x not in PARTS for x in parts):
        p.error(f"--only: a comma-separated subset of {','.join(PARTS)}")
    import importlib

    started = time.perf_counter()
    header = f"{time.strftime('%Y-%m-%d %H:%M %Z')} | {machine()} at start"
    emit(header)
    tables, results = [], {}
    for name in sorted(parts, key=PARTS.index):
        module, part_argv = part_commands(args.quick)[name]
        emit(f"--- {name}: python -m {module} {' '.join(part_argv)}".rstrip())
        t0 = time.perf_counter()
        texts: list[str] = []
        results[name] = importlib.import_module(module).main(part_argv, emit=texts.append)
        tables.append(f"[{name}] ({time.perf_counter() - t0:.0f} s)\n" + "\n".join(texts))
    total = time.perf_counter() - started
    emit("\n" + "=" * 110)
    emit(header)
    emit("\n\n".join(tables))
    emit(f"\nTotal {total:.0f} s; load at the end {' '.join(f'{x:.2f}' for x in os.getloadavg())}.")
    if args.json:
        args.json.write_text(json.dumps({"header": header, "seconds": total, "parts": results}, indent=1))
    return results


if __name__ == "__main__":
    main()
