"""Evaluating models of a run: the benchmark's metrics on a Ray Data replica pool, the retain and target
references (evaluated once, cached), forgetting balance, and the combined score (:mod:`~baldro_ray.eval.objective`).

Invariant: :func:`plan_evaluation` checks everything a configuration can get wrong (benchmark data, retain logs,
retain model) before any model is evaluated; the reference evaluations are cached under
``<embedded.cache_dir>/evals/<key>`` where the key hashes the model (its path, which for the embedded models
carries their content hash, and its files' sizes and modification times) with every evaluation setting.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from baldro_ray.atomic import write_json
from baldro_ray.config import ConfigError, EvaluationConfig, RunConfig
from baldro_ray.data.render import PromptTemplate
from baldro_ray.eval.balance import balance_report
from baldro_ray.eval.inference import Evaluation, TokenCache
from baldro_ray.eval.objective import combined_score, objective_terms
from baldro_ray.eval.privacy import privleak_entry
from baldro_ray.eval.tofu import forget_quality_entry, load_retain_eval, write_eval
from baldro_ray.hub import is_hub_id
from baldro_ray.run_folder import BALANCE_FILE

EVAL_VERSION = 2  # bump when a metric's definition changes: invalidates cached reference evaluations


@dataclass(frozen=True)
class EvalPlan:
    """What to evaluate and how; built and checked by :func:`plan_evaluation`."""

    benchmark: str  # "TOFU" or "MUSE"
    source: Any
    data_key: str
    forget_split: str
    holdout_split: str
    template: PromptTemplate
    max_length: int
    dtype: str | None
    evaluation: EvaluationConfig
    cache_dir: Path
    difficulty: tuple[str, ...] | None  # ground-truth difficulty label of each forget row
    retain_model: str | None
    retain_logs: dict[str, Any] | None
    # Token ids of the requests, per tokenizer, kept for the whole run (every evaluate_models call of this plan).
    tokens: TokenCache = field(default_factory=TokenCache, compare=False, repr=False)

    @cached_property
    def benchmark_evaluation(self) -> Evaluation:
        """The benchmark's requests and how results become metrics, read from the splits once per plan."""
        s = self.evaluation
        if self.benchmark == "MUSE":
            from baldro_ray.eval.muse import MuseEvaluation

            return MuseEvaluation(self.source, self.template, s.text_max_length, s.token_positions)
        from baldro_ray.eval.tofu import TofuEvaluation

        return TofuEvaluation(
            self.source, self.forget_split, self.holdout_split, s.max_new_tokens, s.token_positions
        )


def _fingerprint(location: str) -> str:
    """The location and, for a local folder or file, its files' names, sizes and modification times."""
    parts: list[Any] = [location]
    path = Path(location)
    if path.exists():
        files = sorted(p for p in ([path] if path.is_file() else path.rglob("*")) if p.is_file())
        parts += [(str(p.relative_to(path.parent)), p.stat().st_size, p.stat().st_mtime_ns) for p in files]
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:16]


def _required_subsets(benchmark: str, forget_split: str, holdout_split: str) -> list[str]:
    if benchmark == "MUSE":
        from baldro_ray.eval.muse import MUSE_SUBSETS

        return list(MUSE_SUBSETS)
    from baldro_ray.eval.tofu import SPLITS

    return [spec.subset.format(forget_split=forget_split) for spec in SPLITS] + [forget_split, holdout_split]


def plan_evaluation(config: RunConfig, location: str, retain_model: str | None = None) -> EvalPlan:
    """The evaluation plan of ``config`` on the benchmark at ``location`` (``inputs.RunInputs``: the folder or hub
    name, resolved); ``retain_model`` is the benchmark's own retain model, which ``evaluation.retain_model``
    overrides. Raises :class:`ConfigError` for any problem."""
    from baldro_ray.data.readers import DataError, read_records
    from baldro_ray.data.sources import build_source, check_subset

    evaluation, data = config.evaluation, config.data
    benchmark = data.benchmark
    if benchmark is None:
        raise ConfigError(
            "evaluation needs a benchmark (data.source synthetic, synthetic_muse, tofu or muse); "
            "set evaluation.enabled=false"
        )
    if benchmark == "MUSE" and evaluation.objective == "utility_at_fq_floor":
        raise ConfigError(
            "evaluation.objective='utility_at_fq_floor' needs TOFU's forget quality; MUSE has none: "
            "use 'geometric' or 'arithmetic'"
        )
    source = build_source(data.source, location)
    retain_logs = None
    if evaluation.retain_logs_path is not None:
        try:
            retain_logs = load_retain_eval(evaluation.retain_logs_path)
        except (OSError, ValueError) as err:
            raise ConfigError(f"evaluation.retain_logs_path: {err}") from None
    retain = evaluation.retain_model or retain_model
    if retain is not None and not os.path.exists(retain) and not is_hub_id(retain):
        raise ConfigError(
            f"evaluation.retain_model {retain!r} does not exist (and is not an 'owner/name' hub id)"
        )
    if benchmark == "TOFU":
        for key in ("forget_split", "holdout_split"):
            check_subset(source, getattr(data, key), f"data.{key}", location)
    for subset in _required_subsets(benchmark, data.forget_split, data.holdout_split):
        try:
            source.load(subset)
        except DataError as err:
            raise ConfigError(
                f"evaluation needs the {benchmark} subset {subset!r}: {err}\n"
                "(set evaluation.enabled=false to unlearn without evaluating)"
            ) from None
    difficulty = None
    # The embedded benchmarks' sidecar, named by the forget split (MUSE's "raw/forget": forget_difficulty.json).
    sidecar = Path(location) / f"{data.forget_split.rpartition('/')[2]}_difficulty.json"
    if sidecar.is_file():
        difficulty = tuple(str(row["difficulty"]) for row in read_records(sidecar))
    return EvalPlan(
        benchmark,
        source,
        _fingerprint(location),
        data.forget_split,
        data.holdout_split,
        config.model.prompt_template(),
        config.trainer.max_length,
        config.trainer.dtype,
        evaluation,
        Path(config.embedded.cache_dir).expanduser() / "evals",
        difficulty,
        retain,
        retain_logs,
    )


def _inference(plan: EvalPlan, model_path: str) -> Any:
    from baldro_ray.eval.replicas import ReplicaInference

    s = plan.evaluation
    return ReplicaInference(
        model_path,
        plan.template,
        plan.max_length,
        s.batch_size,
        s.replicas,
        s.cpus_per_replica,
        s.use_gpu,
        plan.dtype,
        plan.tokens,
    )


def evaluate_models(plan: EvalPlan, model_paths: Sequence[str]) -> list[dict[str, Any]]:
    """The benchmark's result for each model (folders or hub names), all in one replica job, with privleak
    against the default reference; :func:`relative_to_retain` adds what needs the retain model."""
    if not model_paths:
        return []
    evaluation = plan.benchmark_evaluation
    per_model = _inference(plan, model_paths[0]).run_models(model_paths, evaluation.requests)
    return [evaluation.assemble(results) for results in per_model]


def relative_to_retain(result: Mapping[str, Any], retain: Mapping[str, Any] | None) -> dict[str, Any]:
    """``result`` with privleak against the retain model's Min-K% AUC and (TOFU) forget quality against its
    forget truth ratios; unchanged without a retain reference."""
    out = dict(result)
    if retain is None:
        return out
    if "mia_min_k" in out:
        out["privleak"] = privleak_entry(out["mia_min_k"]["agg_value"], retain)
    if "forget_truth_ratio" in out:
        out["forget_quality"] = forget_quality_entry(out, retain)
    return out


def _cache_key(plan: EvalPlan, model_path: str) -> str:
    s = plan.evaluation
    parts = [
        EVAL_VERSION,
        plan.benchmark,
        plan.data_key,
        plan.forget_split,
        plan.holdout_split,
        plan.template.as_dict(),
        plan.max_length,
        plan.dtype,
        s.batch_size,
        s.max_new_tokens,
        s.text_max_length,
        s.token_positions,
        _fingerprint(model_path),
    ]
    return hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()[:20]


def reference_evals(
    plan: EvalPlan, model_paths: Sequence[str], log: Callable[[str], None] = print
) -> list[dict[str, Any]]:
    """Each model's :func:`evaluate_models` result, computed once (the uncached ones in one job) and cached."""
    folders = [plan.cache_dir / _cache_key(plan, path) for path in model_paths]
    files = [folder / f"{plan.benchmark}_EVAL.json" for folder in folders]
    missing = [i for i, f in enumerate(files) if not f.is_file()]
    for i in sorted(set(range(len(files))) - set(missing)):
        log(f"reference evaluation of {model_paths[i]}: cached {files[i]}")
    if missing:
        log(f"evaluating reference models {[model_paths[i] for i in missing]}")
        for i, result in zip(missing, evaluate_models(plan, [model_paths[i] for i in missing])):
            write_eval(result, folders[i], plan.benchmark)
    return [json.loads(f.read_text()) for f in files]


def forget_values(result: Mapping[str, Any]) -> list[float] | None:
    """The value forgetting balance follows, per forget unit: on TOFU each forget question's answer probability;
    on MUSE each ``privleak/forget`` text's per-token probability ``exp(-mean NLL)`` (the LOSS attack's member
    score is ``-mean NLL``). None when the result has neither."""
    entry = result.get("forget_Q_A_Prob", {}).get("value_by_index")
    if entry:
        return [float(entry[str(i)]["prob"]) for i in range(len(entry))]
    entry = result.get("mia_loss", {}).get("value_by_index")
    return None if not entry else [math.exp(float(entry[str(i)]["score"])) for i in range(len(entry))]


def forgetting_balance(
    plan: EvalPlan, result: Mapping[str, Any], target: Mapping[str, Any], retain: Mapping[str, Any] | None
) -> dict[str, Any] | None:
    """Balance of the forget values (:func:`forget_values`) between the target and retain models, by difficulty
    when the benchmark records one label per forget unit; None without a retain reference."""
    values = [forget_values(r) for r in (result, target, retain or {})]
    if any(v is None for v in values):
        return None
    labels = (
        plan.difficulty if plan.difficulty is not None and len(plan.difficulty) == len(values[0]) else None
    )
    return balance_report(*values, difficulty=labels)


def summarise(
    result: Mapping[str, Any], evaluation: EvaluationConfig, balance: Mapping[str, Any] | None
) -> dict[str, float]:
    """Flat ``eval/*`` numbers of one evaluation (for trackers, tables and the run summary)."""
    out = {f"eval/{name}": float(entry["agg_value"]) for name, entry in result.items()}
    if "forget_quality" in result:
        out["eval/forget_ks_statistic"] = float(result["forget_quality"]["statistic"])
        out["eval/forget_quality_log10"] = float(result["forget_quality"]["log10_pvalue"])
    out["eval/forget_term"], out["eval/utility_term"] = objective_terms(result)
    out["eval/score"] = combined_score(result, evaluation)
    for key, value in (balance or {}).items():
        if isinstance(value, (int, float)):
            out[f"balance/{key}"] = float(value)
    for label, part in (balance or {}).get("by_difficulty", {}).items():
        out.update({f"balance/{label}/{k}": float(v) for k, v in part.items()})
    return out


def write_report(
    plan: EvalPlan, result: Mapping[str, Any], balance: Mapping[str, Any] | None, out_dir: Path
) -> dict[str, float]:
    """Write ``<B>_EVAL.json``, ``<B>_SUMMARY.json`` and ``BALANCE.json`` into ``out_dir``; return the summary."""
    write_eval(result, out_dir, plan.benchmark)
    if balance is not None:
        write_json(out_dir / BALANCE_FILE, balance)
    return summarise(result, plan.evaluation, balance)


@dataclass(frozen=True)
class References:
    """The reference results a model is measured against: retain (forget quality, privleak) and target (balance)."""

    retain: dict[str, Any] | None
    target: dict[str, Any] | None


def references(plan: EvalPlan, target_model: str | None, log: Callable[[str], None] = print) -> References:
    """The retain reference (the given open-unlearning logs, else the retain model's cached evaluation) and,
    given the model before unlearning, the target reference; the uncached ones are evaluated in one job."""
    models = [m for m in (None if plan.retain_logs else plan.retain_model, target_model) if m is not None]
    results = dict(zip(models, reference_evals(plan, models, log)))
    retain = plan.retain_logs if plan.retain_logs is not None else results.get(plan.retain_model)
    target = None if target_model is None else relative_to_retain(results[target_model], retain)
    return References(retain, target)


def evaluate_and_report(
    plan: EvalPlan, models: Sequence[tuple[str, Path]], refs: References
) -> list[dict[str, float]]:
    """Evaluate each ``(model_path, report_folder)`` against ``refs`` in one job, write each report; return the
    summaries in order."""
    summaries = []
    for (_, out_dir), raw in zip(models, evaluate_models(plan, [path for path, _ in models])):
        result = relative_to_retain(raw, refs.retain)
        balance = None if refs.target is None else forgetting_balance(plan, result, refs.target, refs.retain)
        summaries.append(write_report(plan, result, balance, out_dir))
    return summaries
