"""The embedded defaults: two synthetic benchmarks (TOFU-format fictitious authors, MUSE-format fictitious news)
with a tiny tokenizer and base model each, and their fine-tuned target and retain models.

Everything is cached under ``embedded.cache_dir`` by a content hash of what produced it (benchmark bytes, tokenizer
and model shape, fine-tuning settings), so a second call with the same configuration trains nothing. Every folder
is written atomically: it is complete or absent.

The MUSE-format models: a tiny model learns no question answering from articles alone, and none in context, so
both models are also fine-tuned on the knowmem question/answer pairs of the articles they saw, each asked as the
evaluator asks it (the target on forget and retain2's pairs, the retain model on retain2's): knowmem then measures
whether unlearning the raw forget text removes the knowledge the target holds about it, as MUSE's does. The
tokenizer is trained on the raw articles alone, each once, so that no split's names are better known to it.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from baldro_ray.config import ConfigError, EmbeddedConfig
from baldro_ray.data.readers import read_records
from baldro_ray.data.render import TEMPLATES
from baldro_ray.data.sources import chunk_text
from baldro_ray.data.synthetic import MANIFEST_NAME, RETAIN_OF_FORGET, write_benchmark
from baldro_ray.data.synthetic_muse import RAW_SPLITS, write_muse_benchmark

TEMPLATE_NAME = "tiny"
MUSE_FORGET_SPLIT = "raw/forget"
# Fine-tuning data of each MUSE-format model: the articles of a sidecar mix and the knowmem parts it holds.
MUSE_MIXES = {
    "target": ("finetune_mix", ("forget", "retain")),
    "retain": ("finetune_mix_retain", ("retain",)),
}
Rows = list[dict[str, Any]]


@dataclass(frozen=True)
class EmbeddedAssets:
    """Paths of one prepared embedded benchmark ("TOFU" or "MUSE" format); ``trained`` names the models trained
    by this call."""

    benchmark: str
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
    """Every string of every benchmark file (questions, answers, paraphrases, perturbed answers, articles), in
    file order."""
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


def muse_tokenizer_texts(data_dir: Path) -> list[str]:
    """The MUSE-format benchmark's raw articles, each once: every split's names equally often."""
    return [row["text"] for split in RAW_SPLITS for row in read_records(data_dir / "raw" / f"{split}.json")]


def _base_model(
    config: EmbeddedConfig,
    data_dir: Path,
    texts: Callable[[Path], list[str]],
    content: str,
    trained: list[str],
) -> Path:
    from baldro_ray.models.tiny import build_tiny_llama, save_model, train_tokenizer

    key = _digest(content, config.vocab_size, asdict(config.tiny_model), config.model_seed)
    path = cache_root(config) / "models" / f"base-{key}"
    if not path.is_dir():
        tokenizer = train_tokenizer(texts(data_dir), config.vocab_size)
        save_model(build_tiny_llama(config.tiny_model, tokenizer, config.model_seed), tokenizer, path)
        trained.append("base")
    return path


def _finetuned(
    config: EmbeddedConfig,
    base: Path,
    mixes: dict[str, tuple[str, Callable[[Path], Rows]]],
    trained: list[str],
) -> dict[str, Path]:
    """Models fine-tuned from ``base``, one per role of ``mixes`` (role -> (label naming the mix, its rows given
    the base model's folder)); the missing ones are trained together in one run."""
    from baldro_ray.cluster import ensure_ray
    from baldro_ray.train.finetune import run_finetune

    root = cache_root(config)
    paths = {
        role: root / "models" / f"{role}-{_digest(base.name, label, config.finetune.model_dump())}"
        for role, (label, _) in mixes.items()
    }
    missing = [role for role, path in paths.items() if not path.is_dir()]
    if missing:
        jobs = {role: mixes[role][1](base) for role in missing}
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


def _assets(
    config: EmbeddedConfig,
    benchmark: str,
    data_dir: Path,
    forget_split: str,
    tokenizer_texts: Callable[[Path], list[str]],
    mixes: dict[str, tuple[str, Callable[[Path], Rows]]],
    log: Callable[[str], None],
) -> EmbeddedAssets:
    """The base model of the benchmark at ``data_dir`` (its tokenizer trained on ``tokenizer_texts``) and the
    models of ``mixes``: ``target`` and one retain role (label naming the mix, its rows given the base model's
    folder), trained where not cached."""
    content = json.loads((data_dir / MANIFEST_NAME).read_text())["content_sha256"]
    trained: list[str] = []
    base = _base_model(config, data_dir, tokenizer_texts, content, trained)
    log(f"benchmark {data_dir}; base model {base}")
    models = _finetuned(config, base, mixes, trained)
    target = models.pop("target")
    (retain,) = models.values()
    log(
        f"target model {target}; retain model {retain}"
        + (f" (trained now: {trained})" if trained else " (cached)")
    )
    return EmbeddedAssets(benchmark, data_dir, base, target, retain, forget_split, tuple(trained))


def prepare_embedded(
    config: EmbeddedConfig, forget_split: str, log: Callable[[str], None] = print
) -> EmbeddedAssets:
    """Generate (or reuse) the TOFU-format benchmark and fine-tune (or reuse) the target and retain models for
    ``forget_split``; starts or joins Ray (:func:`~baldro_ray.cluster.ensure_ray`) only when a model has to be
    trained."""
    if forget_split not in RETAIN_OF_FORGET:
        raise ConfigError(
            f"data.forget_split={forget_split!r}: no such split in the embedded benchmark; "
            f"forget splits available: {sorted(RETAIN_OF_FORGET)}"
        )
    root = cache_root(config)
    data_dir = write_benchmark(config.benchmark, root / f"benchmark-{_digest(asdict(config.benchmark))}")

    def mix(name: str) -> tuple[str, Callable[[Path], Rows]]:
        return name, lambda _base: read_records(data_dir / f"{name}.json")

    mixes = {
        "target": mix("finetune_mix"),
        f"retain-{forget_split}": mix(f"finetune_mix_{RETAIN_OF_FORGET[forget_split]}"),
    }
    return _assets(config, "TOFU", data_dir, forget_split, benchmark_texts, mixes, log)


def muse_finetune_rows(data_dir: Path, role: str, tokenizer: Any, max_length: int, seed: int) -> Rows:
    """The fine-tuning text rows of a MUSE-format model (``MUSE_MIXES[role]``), shuffled with ``seed``: its
    articles joined and cut into ``max_length``-token windows as MUSE's raw corpora are, and each of its knowmem
    QA pairs as the evaluator asks it (after the part's in-context examples, in the tiny template), answered and
    closed by eos."""
    from baldro_ray.eval.muse import few_shot_prompt

    articles, parts = MUSE_MIXES[role]
    texts = (row["text"] for row in read_records(data_dir / f"{articles}.json"))
    rows: Rows = [{"text": window} for window in chunk_text(texts, tokenizer, max_length)]
    template = TEMPLATES[TEMPLATE_NAME]
    for part in parts:
        shots = read_records(data_dir / "knowmem" / f"{part}_qa_icl.json")
        rows += [
            {"text": few_shot_prompt(template, shots, r["question"]) + r["answer"] + tokenizer.eos_token}
            for r in read_records(data_dir / "knowmem" / f"{part}_qa.json")
        ]
    random.Random(seed).shuffle(rows)
    return rows


def prepare_embedded_muse(
    config: EmbeddedConfig, forget_split: str, log: Callable[[str], None] = print
) -> EmbeddedAssets:
    """Generate (or reuse) the MUSE-format benchmark and fine-tune (or reuse) its target model (forget, retain1
    and retain2 articles) and retain model (retain1 and retain2), as :func:`prepare_embedded` does."""
    if forget_split != MUSE_FORGET_SPLIT:
        raise ConfigError(
            f"data.forget_split={forget_split!r}: the embedded MUSE benchmark's retain model never saw "
            f"{MUSE_FORGET_SPLIT!r}, its only forget split; set data.forget_split={MUSE_FORGET_SPLIT}"
        )
    root = cache_root(config)
    data_dir = write_muse_benchmark(config.muse, root / f"muse-{_digest(asdict(config.muse))}")

    def mix(role: str) -> tuple[str, Callable[[Path], Rows]]:
        def rows(base: Path) -> Rows:
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(base)
            return muse_finetune_rows(
                data_dir, role, tokenizer, config.finetune.max_length, config.finetune.seed
            )

        articles, parts = MUSE_MIXES[role]
        return f"{articles}+knowmem:{'+'.join(parts)}/{TEMPLATE_NAME}", rows

    mixes = {"target": mix("target"), "retain": mix("retain")}
    return _assets(config, "MUSE", data_dir, forget_split, muse_tokenizer_texts, mixes, log)


PREPARERS: dict[str, Callable[..., EmbeddedAssets]] = {
    "synthetic": prepare_embedded,
    "synthetic_muse": prepare_embedded_muse,
}


def _report_splits(assets: EmbeddedAssets) -> tuple[dict[str, list[Any]], str, Path]:
    """The scoring requests of each split of the memorisation report, the template and the difficulty file."""
    from baldro_ray.eval.inference import Score

    data = assets.data_dir
    if assets.benchmark == "MUSE":
        splits = {
            f"raw/{split}": [
                Score("", row["text"], raw=True) for row in read_records(data / f"raw/{split}.json")
            ]
            for split in RAW_SPLITS
        }
        return splits, TEMPLATE_NAME, data / "forget_difficulty.json"
    forget = assets.forget_split
    names = (forget, RETAIN_OF_FORGET[forget], forget.replace("forget", "holdout"))
    splits = {
        name: [Score(row["question"], row["answer"]) for row in read_records(data / f"{name}.json")]
        for name in names
    }
    return splits, TEMPLATE_NAME, data / f"{forget}_difficulty.json"


def memorisation_report(assets: EmbeddedAssets, max_length: int) -> dict[str, dict[str, float]]:
    """Mean probability of the target and retain models on the forget, retain and holdout splits (per answer
    token on TOFU, per text token on MUSE), and on the forget split's hard and easy rows: the gap between target
    and retain on forget is what unlearning must close."""
    import numpy as np

    from baldro_ray.eval.inference import LocalInference
    from baldro_ray.eval.metrics import answer_probability
    from baldro_ray.models.tiny import load_model

    splits, template, difficulty_file = _report_splits(assets)
    forget = next(iter(splits))
    difficulty = np.array([row["difficulty"] for row in read_records(difficulty_file)])
    report: dict[str, dict[str, float]] = {}
    for role, path in (("target", assets.target_model), ("retain", assets.retain_model)):
        model, tokenizer = load_model(path)
        inference = LocalInference(model, tokenizer, TEMPLATES[template], max_length, batch_size=32)
        probs = {
            split: answer_probability([r["nll_sum"] / r["n_tokens"] for r in inference.run(requests)])
            for split, requests in splits.items()
        }
        report[role] = {split: float(p.mean()) for split, p in probs.items()}
        for label in ("hard", "easy"):
            if (difficulty == label).any():
                report[role][f"{forget}[{label}]"] = float(probs[forget][difficulty == label].mean())
    return report


def render_report(report: dict[str, dict[str, float]]) -> str:
    """The memorisation report as a table: one row per split, one column per model."""
    splits = list(next(iter(report.values())))
    lines = [f"{'mean token probability':28s}" + "".join(f"{role:>10s}" for role in report)]
    lines += [f"{split:28s}" + "".join(f"{report[role][split]:10.3f}" for role in report) for split in splits]
    return "\n".join(lines)
