"""The embedded default: synthetic benchmark, tiny tokenizer and base model, fine-tuned target and retain models.

Everything is cached under ``embedded.cache_dir`` by a content hash of what produced it (benchmark bytes, tokenizer
and model shape, fine-tuning settings), so a second call with the same configuration trains nothing. Every folder
is written atomically: it is complete or absent.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from baldro_ray.config import ConfigError, EmbeddedConfig
from baldro_ray.data.readers import read_records
from baldro_ray.data.render import TEMPLATES
from baldro_ray.data.synthetic import MANIFEST_NAME, RETAIN_OF_FORGET, write_benchmark

TEMPLATE_NAME = "tiny"


@dataclass(frozen=True)
class EmbeddedAssets:
    """Paths of one prepared embedded benchmark; ``trained`` names the models trained by this call."""

    data_dir: Path
    base_model: Path
    target_model: Path
    retain_model: Path
    forget_split: str
    trained: tuple[str, ...]


def _digest(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def cache_root(config: EmbeddedConfig) -> Path:
    """The cache folder, user-expanded."""
    return Path(config.cache_dir).expanduser()


def benchmark_texts(data_dir: Path) -> list[str]:
    """Every string of every benchmark file (questions, answers, paraphrases, perturbed answers), in file order."""
    manifest = json.loads((data_dir / MANIFEST_NAME).read_text())
    texts: list[str] = []
    for name in sorted(manifest["files"]):
        for row in read_records(data_dir / name):
            for value in row.values():
                if isinstance(value, str):
                    texts.append(value)
                elif isinstance(value, list):
                    texts.extend(v for v in value if isinstance(v, str))
    return texts


def _base_model(config: EmbeddedConfig, data_dir: Path, content: str, trained: list[str]) -> Path:
    from baldro_ray.models.tiny import build_tiny_llama, save_model, train_tokenizer

    key = _digest(content, config.vocab_size, asdict(config.tiny_model), config.model_seed)
    path = cache_root(config) / "models" / f"base-{key}"
    if not path.is_dir():
        tokenizer = train_tokenizer(benchmark_texts(data_dir), config.vocab_size)
        save_model(build_tiny_llama(config.tiny_model, tokenizer, config.model_seed), tokenizer, path)
        trained.append("base")
    return path


def _finetuned(
    config: EmbeddedConfig, base: Path, data_dir: Path, mixes: dict[str, str], trained: list[str]
) -> dict[str, Path]:
    """Models fine-tuned from ``base`` on each role's mix; the missing ones are trained together in one run."""
    from baldro_ray.cluster import ensure_ray
    from baldro_ray.train.finetune import run_finetune

    root = cache_root(config)
    paths = {
        role: root / "models" / f"{role}-{_digest(base.name, mix, config.finetune.model_dump())}"
        for role, mix in mixes.items()
    }
    missing = [role for role, path in paths.items() if not path.is_dir()]
    if missing:
        jobs = {role: read_records(data_dir / f"{mixes[role]}.json") for role in missing}
        run_name = "finetune-" + _digest(*(paths[role].name for role in missing))
        storage = root / "ray_runs"
        storage.mkdir(parents=True, exist_ok=True)
        ensure_ray()
        run_finetune(
            jobs,
            base,
            TEMPLATES[TEMPLATE_NAME],
            config.finetune,
            {r: paths[r] for r in missing},
            storage,
            run_name,
        )
        trained.extend(missing)
    return paths


def prepare_embedded(
    config: EmbeddedConfig, forget_split: str, log: Callable[[str], None] = print
) -> EmbeddedAssets:
    """Generate (or reuse) the benchmark and fine-tune (or reuse) the target and retain models for
    ``forget_split``; starts or joins Ray (:func:`~baldro_ray.cluster.ensure_ray`) only when a model has to be
    trained."""
    if forget_split not in RETAIN_OF_FORGET:
        raise ConfigError(
            f"data.forget_split={forget_split!r}: no such split in the embedded benchmark; "
            f"forget splits available: {sorted(RETAIN_OF_FORGET)}"
        )
    root = cache_root(config)
    data_dir = write_benchmark(config.benchmark, root / f"benchmark-{_digest(asdict(config.benchmark))}")
    content = json.loads((data_dir / MANIFEST_NAME).read_text())["content_sha256"]
    trained: list[str] = []
    base = _base_model(config, data_dir, content, trained)
    log(f"benchmark {data_dir}; base model {base}")
    retain_role = f"retain-{forget_split}"
    mixes = {"target": "finetune_mix", retain_role: f"finetune_mix_{RETAIN_OF_FORGET[forget_split]}"}
    models = _finetuned(config, base, data_dir, mixes, trained)
    target, retain = models["target"], models[retain_role]
    log(
        f"target model {target}; retain model {retain}"
        + (f" (trained now: {trained})" if trained else " (cached)")
    )
    return EmbeddedAssets(data_dir, base, target, retain, forget_split, tuple(trained))


def memorisation_report(assets: EmbeddedAssets, max_length: int) -> dict[str, dict[str, float]]:
    """Mean answer probability of the target and retain models on forget/retain/holdout, and on the forget
    split's hard and easy authors: the gap between target and retain on forget is what unlearning must close."""
    import numpy as np

    from baldro_ray.eval.inference import LocalInference, Score
    from baldro_ray.eval.metrics import answer_probability
    from baldro_ray.models.tiny import load_model

    retain_split = RETAIN_OF_FORGET[assets.forget_split]
    holdout_split = assets.forget_split.replace("forget", "holdout")
    difficulty = np.array(
        [
            row["difficulty"]
            for row in read_records(assets.data_dir / f"{assets.forget_split}_difficulty.json")
        ]
    )
    requests = {
        split: [
            Score(row["question"], row["answer"]) for row in read_records(assets.data_dir / f"{split}.json")
        ]
        for split in (assets.forget_split, retain_split, holdout_split)
    }
    report: dict[str, dict[str, float]] = {}
    for role, path in (("target", assets.target_model), ("retain", assets.retain_model)):
        model, tokenizer = load_model(path)
        inference = LocalInference(model, tokenizer, TEMPLATES[TEMPLATE_NAME], max_length, batch_size=32)
        probs = {
            split: answer_probability([r["nll_sum"] / r["n_tokens"] for r in inference.run(split_requests)])
            for split, split_requests in requests.items()
        }
        report[role] = {split: float(p.mean()) for split, p in probs.items()}
        for label in ("hard", "easy"):
            if (difficulty == label).any():
                report[role][f"{assets.forget_split}[{label}]"] = float(
                    probs[assets.forget_split][difficulty == label].mean()
                )
    return report


def render_report(report: dict[str, dict[str, float]]) -> str:
    """The memorisation report as a table: one row per split, one column per model."""
    splits = list(next(iter(report.values())))
    lines = [f"{'mean answer probability':28s}" + "".join(f"{role:>10s}" for role in report)]
    lines += [f"{split:28s}" + "".join(f"{report[role][split]:10.3f}" for role in report) for split in splits]
    return "\n".join(lines)
