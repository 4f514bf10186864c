"""Every MUSE preset resolves through ``resolve_run`` on a MUSE-layout folder and a local model, without Ray: the raw
corpora become text-chunk training units of at most ``trainer.max_length`` tokens and the evaluation finds every
MUSE subset it scores."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import AutoTokenizer

from baldro_ray.config import list_presets, load_config
from baldro_ray.data.synthetic_muse import SyntheticMuseConfig, write_muse_benchmark
from baldro_ray.models.tiny import TinyModelSpec, build_tiny_llama, save_model, train_tokenizer
from baldro_ray.unlearn import resolve_run

MUSE_PRESETS = [name for name in list_presets() if name.startswith("muse_")]
# The presets' 2048-token windows would leave the small generated corpora fewer rows than 8 workers x 2 per step.
WINDOW = 64


@pytest.fixture(scope="module")
def muse_run_inputs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("muse-presets")
    folder = write_muse_benchmark(SyntheticMuseConfig(), root / "muse")
    texts = [
        line for path in sorted((folder / "raw").glob("*.json")) for line in path.read_text().splitlines()
    ]
    tokenizer = train_tokenizer(texts, vocab_size=400)
    spec = TinyModelSpec(hidden_size=16, intermediate_size=32, num_layers=1, num_heads=2, num_kv_heads=2)
    return folder, save_model(build_tiny_llama(spec, tokenizer), tokenizer, root / "model")


def test_the_muse_grid_is_there() -> None:
    assert len(MUSE_PRESETS) == 18


@pytest.mark.parametrize("preset", MUSE_PRESETS)
def test_every_muse_preset_resolves(preset: str, muse_run_inputs: tuple[Path, Path], tmp_path: Path) -> None:
    folder, model = muse_run_inputs
    config = load_config(
        preset,
        [
            f"data.location={folder}",
            f"model.name_or_path={model}",
            f"output_dir={tmp_path / 'out'}",
            f"trainer.max_length={WINDOW}",
        ],
    )
    run = resolve_run(config, name="run", log=lambda _: None)
    tokenizer = AutoTokenizer.from_pretrained(model)
    for rows in (run.forget_rows, run.retain_rows):
        assert rows and all(set(row) == {"text"} for row in rows)
        lengths = [len(tokenizer.encode(row["text"], add_special_tokens=False)) for row in rows]
        assert max(lengths) <= WINDOW and len(rows) > 16  # many windows: more rows than one step takes
    assert run.eval_plan is not None and run.eval_plan.benchmark == "MUSE"
    assert not (tmp_path / "out").exists()  # resolving writes nothing


def test_text_forget_with_qa_retain_resolves(muse_run_inputs: tuple[Path, Path], tmp_path: Path) -> None:
    """The mixed case is supported: text forget units against QA retain rows (each kind encoded as it is; the
    step's maths is tested on it in tests/train/test_step.py)."""
    _, model = muse_run_inputs
    data = tmp_path / "data"
    data.mkdir()
    (data / "forget.json").write_text("".join(f'{{"text": "Article {i} about a town."}}\n' for i in range(8)))
    (data / "retain.json").write_text(
        "".join(f'{{"question": "Who is {i}?", "answer": "A person."}}\n' for i in range(8))
    )
    overrides = [
        "data.source=files",
        f"data.location={data}",
        "data.forget_split=forget",
        "data.retain_split=retain",
        f"model.name_or_path={model}",
        "trainer.per_device_batch_size=2",
        "evaluation.enabled=false",
        f"output_dir={tmp_path / 'out'}",
    ]
    run = resolve_run(load_config(overrides=overrides), name="mixed", log=lambda _: None)
    assert all(set(row) == {"text"} for row in run.forget_rows)
    assert all(set(row) == {"question", "answer"} for row in run.retain_rows)
