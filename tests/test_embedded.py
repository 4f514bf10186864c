"""The embedded benchmark end to end on the shared Ray cluster: tiny data, tiny models, real Ray Train DDP."""

from __future__ import annotations

from pathlib import Path

import pytest

from baldro_ray.config import load_config
from baldro_ray.data.pipeline import encoded_dataset
from baldro_ray.data.render import TEMPLATES, EncodingError
from baldro_ray.embedded import memorisation_report, prepare_embedded


@pytest.mark.ray
@pytest.mark.timeout(300)
def test_prepare_trains_once_then_reuses_and_target_memorises_forget(embedded_tiny) -> None:
    overrides, first = embedded_tiny
    config = load_config(overrides=overrides).embedded
    logs: list[str] = []
    assert first.trained == ("base", "target", "retain-forget10")
    for path in (first.target_model, first.retain_model):
        assert (path / "config.json").is_file() and (path / "model.safetensors").is_file()
        assert (path / "tokenizer.json").is_file()
    assert not list((first.target_model.parent).glob("*.partial"))
    stamp = (first.target_model / "model.safetensors").stat().st_mtime_ns

    second = prepare_embedded(config, "forget10", log=logs.append)
    assert second == first.__class__(**{**first.__dict__, "trained": ()})
    assert (second.target_model / "model.safetensors").stat().st_mtime_ns == stamp
    assert "(cached)" in logs[-1]

    report = memorisation_report(first, max_length=64)
    target, retain = report["target"], report["retain"]
    # the target saw the forget author, the retain model did not: that gap is what unlearning closes
    assert target["forget10"] > 2 * retain["forget10"]
    assert target["retain90"] > 2 * retain["forget10"] and retain["retain90"] > 2 * retain["forget10"]


@pytest.mark.ray
@pytest.mark.timeout(120)
def test_encoding_error_surfaces_before_training(ray_cluster, tmp_path: Path) -> None:
    from baldro_ray.models.tiny import TinyModelSpec, build_tiny_llama, save_model, train_tokenizer

    tokenizer = train_tokenizer(["Who is Mara Kell? A writer."] * 10, vocab_size=300)
    path = save_model(
        build_tiny_llama(TinyModelSpec(hidden_size=16, intermediate_size=32), tokenizer),
        tokenizer,
        tmp_path / "m",
    )
    rows = [
        {"question": "Who is Mara Kell?", "answer": "A writer."},
        {"question": "Who is she?", "answer": "  "},
    ]
    with pytest.raises(EncodingError, match=r"forget\.json, row 1 \(0-based\), field 'answer'"):
        encoded_dataset(rows, str(path), TEMPLATES["tiny"], 32, "forget.json")
    dataset = encoded_dataset(
        rows[:1], str(path), TEMPLATES["tiny"], 32, "forget.json", {"difficulty": ["hard"]}
    )
    (row,) = dataset.take_all()
    assert (
        row["index"] == 0 and row["difficulty"] == "hard" and row["input_ids"][-1] == tokenizer.eos_token_id
    )
