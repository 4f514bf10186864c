"""``baldro-ray quickstart``: BalDRO against its plain baseline on an embedded benchmark (TOFU or MUSE format), in
one command.

Stages: start (or join) Ray; generate the benchmark and fine-tune (or reuse) the tiny target and retain models;
evaluate the references (cached); run BalDRO unlearning and the baseline (the same settings with ``dro.type=mean``:
the plain average over the forget batch); print one table. Both runs are validated
before either trains, and both are MLflow child runs of one parent run.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from baldro_ray.config import RunConfig, load_config

PRESETS = {"tofu": "embedded_npo_dv", "muse": "embedded_muse_npo_dv"}  # --benchmark -> its preset
BASELINE_OVERRIDES = ("method.dro.type=mean",)  # only the aggregation differs, so the table isolates it
TABLE_FILE = "quickstart.md"
BALANCE_COLUMNS = (
    ("progress mean", "balance/progress_mean", ".2f"),
    ("progress std", "balance/progress_std", ".2f"),
    ("hard progress", "balance/hard/progress_mean", ".2f"),
    ("easy progress", "balance/easy/progress_mean", ".2f"),
    ("still memorised", "balance/still_memorised", ".2f"),
    ("over-forgotten", "balance/over_forgotten", ".2f"),
    ("wall s", "seconds", ".1f"),  # unlearning and evaluating every epoch
)
COLUMNS = {  # benchmark -> (heading, summary key, format)
    "TOFU": (
        ("forget quality", "eval/forget_quality", ".2e"),
        ("KS stat", "eval/forget_ks_statistic", ".3f"),
        ("model utility", "eval/model_utility", ".3f"),
        ("forget prob", "eval/forget_Q_A_Prob", ".3f"),
        ("privleak", "eval/privleak", ".1f"),
        *BALANCE_COLUMNS,
    ),
    "MUSE": (
        ("verbmem forget", "eval/forget_verbmem_ROUGE", ".3f"),
        ("knowmem forget", "eval/forget_knowmem_ROUGE", ".3f"),
        ("knowmem retain", "eval/retain_knowmem_ROUGE", ".3f"),
        ("privleak", "eval/privleak", ".1f"),
        ("extraction", "eval/extraction_strength", ".3f"),
        ("score", "eval/score", ".3f"),
        *BALANCE_COLUMNS,
    ),
}


@dataclass(frozen=True)
class QuickstartResult:
    """The comparison table (rows: model -> summary), where it was written, and the MLflow parent run."""

    rows: dict[str, dict[str, float]]
    table: str
    folder: Path
    tracking_uri: str | None
    parent_run_id: str | None


class Stages:
    """Numbered stage lines with the time each stage took."""

    def __init__(self, total: int, log: Callable[[str], None]) -> None:
        self.total, self.log, self.index, self.started = total, log, 0, time.perf_counter()

    def begin(self, text: str) -> float:
        self.index += 1
        self.log(f"[{self.index}/{self.total}] {text} ...")
        return time.perf_counter()

    def end(self, began: float, text: str = "done") -> None:
        self.log(f"[{self.index}/{self.total}] {text} ({time.perf_counter() - began:.1f} s)")


def quickstart_configs(
    config_path: str | None,
    overrides: Sequence[str],
    method: str | None,
    workers: int | None,
    benchmark: str = "tofu",
) -> tuple[RunConfig, RunConfig]:
    """The BalDRO config (``config_path``, else the ``benchmark``'s preset) and its baseline (the same with
    ``BASELINE_OVERRIDES``); flags come before overrides."""
    flags = [f"method.name={method}"] if method is not None else []
    flags += [f"trainer.num_workers={workers}"] if workers is not None else []
    path = config_path or PRESETS[benchmark]
    return load_config(path, [*flags, *overrides]), load_config(
        path, [*flags, *BASELINE_OVERRIDES, *overrides]
    )


def format_table(rows: dict[str, dict[str, float]], benchmark: str = "TOFU") -> str:
    """A Markdown table, one row per model, the benchmark's ``COLUMNS`` figures (blank where a model has none)."""
    columns = COLUMNS[benchmark]

    def cell(row: dict[str, float], key: str, fmt: str) -> str:
        value = row.get(key)
        return "" if value is None or math.isnan(value) else format(value, fmt)

    lines = ["| model | " + " | ".join(h for h, _, _ in columns) + " |", "|---" * (len(columns) + 1) + "|"]
    lines += [
        f"| {name} | " + " | ".join(cell(r, k, f) for _, k, f in columns) + " |" for name, r in rows.items()
    ]
    return "\n".join(lines)


def _reference_rows(plan: Any, refs: Any) -> dict[str, dict[str, float]]:
    from baldro_ray.eval.evaluate import forgetting_balance, relative_to_retain, summarise

    rows = {}
    for name, result in (
        ("target (before unlearning)", refs.target),
        ("retain (never saw forget)", refs.retain),
    ):
        full = relative_to_retain(result, refs.retain)
        rows[name] = summarise(
            full, plan.evaluation, forgetting_balance(plan, full, refs.target, refs.retain)
        )
    return rows


def run_quickstart(
    config_path: str | None = None,
    overrides: Sequence[str] = (),
    method: str | None = None,
    workers: int | None = None,
    log: Callable[[str], None] = print,
    benchmark: str = "tofu",
) -> QuickstartResult:
    """Run the whole comparison on an embedded benchmark (``config_path``, else ``benchmark``'s preset); every
    configuration problem is raised before anything trains."""
    from baldro_ray.cluster import ensure_ray
    from baldro_ray.eval.evaluate import references
    from baldro_ray.tracking.run_records import open_recorder
    from baldro_ray.unlearn import resolve_run, run_unlearn

    baldro, baseline = quickstart_configs(config_path, overrides, method, workers, benchmark)
    if not baldro.data.embedded:
        from baldro_ray.config import ConfigError

        raise ConfigError(
            "quickstart runs on an embedded benchmark (data.source=synthetic or synthetic_muse); "
            f"got {baldro.data.source!r}"
        )
    stages = Stages(5, log)
    began = stages.begin("starting or joining a Ray cluster")
    ensure_ray()
    stages.end(began)
    began = stages.begin("embedded benchmark and tiny models (generated and fine-tuned once, then cached)")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    dro = baldro.method.dro.type
    runs = {
        f"{baldro.method.name} + BalDRO-{dro.upper() if dro == 'dv' else dro}": resolve_run(
            baldro, f"quickstart-{stamp}-{dro}", lambda _: None
        ),
        f"{baseline.method.name} (baseline)": resolve_run(
            baseline, f"quickstart-{stamp}-baseline", lambda _: None
        ),
    }
    stages.end(began)
    first = next(iter(runs.values()))
    plan = first.eval_plan
    began = stages.begin("evaluating the target and retain models (cached after the first time)")
    refs = references(plan, first.model_path, log=lambda _: None) if plan is not None else None
    stages.end(began)
    root = first.output_dir.parent
    root.mkdir(parents=True, exist_ok=True)
    parent = open_recorder(baldro, root, f"quickstart-{stamp}")
    with parent or contextlib.nullcontext():
        rows = _reference_rows(plan, refs) if refs is not None else {}
        for name, run in runs.items():
            began = stages.begin(
                f"unlearning: {name} ({run.config.trainer.num_workers} workers), then evaluation"
            )
            outcome = run_unlearn(run, log=lambda _: None, parent=parent)
            final = outcome.summary.evaluations[-1] if outcome.summary.evaluations else {}
            rows[name] = {**final, "seconds": time.perf_counter() - began}
            stages.end(began, f"done: {outcome.output_dir}")
        table = format_table(rows, plan.benchmark if plan is not None else "TOFU")
        folder = root / f"quickstart-{stamp}"
        folder.mkdir()
        (folder / TABLE_FILE).write_text(table + "\n")
        (folder / "quickstart.json").write_text(json.dumps(rows, indent=2))
        if parent is not None:
            parent.log_artifacts(folder)
    return QuickstartResult(
        rows, table, folder, None if parent is None else parent.uri, None if parent is None else parent.run_id
    )
