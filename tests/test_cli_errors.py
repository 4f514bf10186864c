"""Every error a user can cause is one line: ``baldro-ray`` run as a real subprocess on bad input exits 2 with a
single ``baldro-ray: error:`` line naming the file or key, no traceback, and nothing under ``output_dir`` — all
before Ray starts (no test here starts Ray); ``--debug`` brings the traceback back."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from baldro_ray.models.tiny import TinyModelSpec, build_tiny_llama, save_model, train_tokenizer

REPO_ROOT = Path(__file__).resolve().parents[1]
QA = [(f"What did author {i} write?", f"Author {i} wrote book {i * 7} in {1900 + i}.") for i in range(12)]
SPEC = TinyModelSpec(hidden_size=16, intermediate_size=32, num_layers=1, num_heads=2, num_kv_heads=2)


def _jsonl(rows: list[dict[str, str]]) -> str:
    return "".join(json.dumps(row) + "\n" for row in rows)


def _rows(pairs: list[tuple[str, str]]) -> list[dict[str, str]]:
    return [{"question": q, "answer": a} for q, a in pairs]


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """``good``: a tiny model with its own tokenizer; ``mismatch``: the same weights and config beside the
    tokenizer of another tiny model, which has more tokens than the model's vocabulary."""
    root = tmp_path_factory.mktemp("models")
    texts = [f"{q} {a}" for q, a in QA] * 3
    tokenizer = train_tokenizer(texts, vocab_size=300)
    good = save_model(build_tiny_llama(SPEC, tokenizer), tokenizer, root / "good")
    other = train_tokenizer([f"{t} and some other words {i}" for i, t in enumerate(texts)], vocab_size=400)
    assert len(other) > len(tokenizer)  # precondition: the vocabularies differ
    build_tiny_llama(SPEC, tokenizer).save_pretrained(root / "mismatch")
    other.save_pretrained(root / "mismatch")
    return {"good": good, "mismatch": root / "mismatch"}


def _tofu_folder(root: Path, forget: str | None = None) -> Path:
    """A TOFU-layout folder: ``forget10`` (``forget`` as its text when given) and ``retain90``, JSON Lines."""
    data = root / "data"
    data.mkdir()
    (data / "forget10.json").write_text(forget if forget is not None else _jsonl(_rows(QA[:4])))
    (data / "retain90.json").write_text(_jsonl(_rows(QA[4:])))
    return data


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# A MUSE-layout run, evaluated, so that every MUSE subset is read before compute.
MUSE_RUN = (
    "data.source=muse",
    "data.forget_split=raw/forget",
    "data.retain_split=raw/retain1",
    "data.holdout_split=raw/holdout",
    "trainer.max_length=32",
    "evaluation.enabled=true",
)


def _run(
    args: list[str], tmp_path: Path, data: Path, model: Path, muse: bool = False, **env: str
) -> subprocess.CompletedProcess:
    """``baldro-ray <args> <a valid small run's overrides>`` (``args`` set no key those set; ``muse``: on a
    MUSE-layout folder), with no cluster or tracking server in the environment unless ``env`` names one."""
    overrides = [
        "data.source=tofu",
        f"data.location={data}",
        f"model.name_or_path={model}",
        f"output_dir={tmp_path / 'out'}",
        "trainer.num_workers=1",
        "trainer.per_device_batch_size=1",
        "evaluation.enabled=false",
        *(MUSE_RUN if muse else ()),
    ]
    base = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    return subprocess.run(
        [sys.executable, "-m", "baldro_ray.cli", *args, *overrides],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=tmp_path,
        env={**base, "PYTHONPATH": str(REPO_ROOT), "HF_HUB_OFFLINE": "1", **env},
    )


def _one_line_error(result: subprocess.CompletedProcess, tmp_path: Path, *names: str) -> str:
    """The single error line, after checking exit status 2, no traceback and an untouched ``output_dir``."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert len(lines) == 1 and lines[0].startswith("baldro-ray: error: "), result.stderr
    for name in names:
        assert name in lines[0]
    out = tmp_path / "out"
    assert not out.exists() or not any(out.iterdir())
    assert not (tmp_path / "ray_runs").exists() and not (tmp_path / ".ray").exists()
    return lines[0]


def _muse_folder(root: Path) -> Path:
    from baldro_ray.data.synthetic_muse import SyntheticMuseConfig, write_muse_benchmark

    small = SyntheticMuseConfig(
        num_forget_articles=3,
        num_retain1_articles=2,
        num_retain2_articles=3,
        num_holdout_articles=2,
        facts_per_article=3,
        qa_per_article=1,
        num_icl_examples=1,
        verbmem_prefix_words=6,
    )
    return write_muse_benchmark(small, root / "muse")


def _breaks(folder: Path, case: str) -> tuple[str, ...]:
    """Break the MUSE folder as ``case`` says; the fragments its error line must name."""
    if case == "missing split":
        (folder / "knowmem" / "retain_qa.json").unlink()
        return ("knowmem/retain_qa", str(folder / "knowmem"))
    if case == "wrong column":
        path = folder / "verbmem" / "forget.json"
        path.write_text(_jsonl([{"prompt": "A town", "answer": "voted."}]))
        return (str(path), "line 1", "'gt' missing")
    path = folder / "raw" / "forget.json"
    path.write_text(_jsonl([{"text": "One article."}, {"text": "  "}]))
    return (str(path), "line 2", "'text'")


@pytest.mark.parametrize("case", ["missing split", "wrong column", "empty text"])
def test_malformed_muse_folder_is_one_line_before_compute(
    models: dict[str, Path], tmp_path: Path, case: str
) -> None:
    folder = _muse_folder(tmp_path)
    names = _breaks(folder, case)
    result = _run(["unlearn"], tmp_path, folder, models["good"], muse=True)
    _one_line_error(result, tmp_path, *names)


def test_truncated_json_line_names_the_file_and_line(models: dict[str, Path], tmp_path: Path) -> None:
    text = _jsonl(_rows(QA[:4]))
    data = _tofu_folder(tmp_path, text[: text.index("\n", text.index("\n") + 1) - 20] + "\n")
    result = _run(["unlearn"], tmp_path, data, models["good"])
    _one_line_error(result, tmp_path, str(data / "forget10.json"), "line 2", "truncated JSON")


def test_row_missing_a_field_names_file_line_field_and_expected(
    models: dict[str, Path], tmp_path: Path
) -> None:
    rows = _rows(QA[:4])
    del rows[2]["answer"]
    data = _tofu_folder(tmp_path, _jsonl(rows))
    result = _run(["unlearn"], tmp_path, data, models["good"])
    _one_line_error(
        result, tmp_path, str(data / "forget10.json"), "line 3", "'answer' missing", "['question', 'answer']"
    )


def test_unknown_split_names_the_key_and_the_splits_available(
    models: dict[str, Path], tmp_path: Path
) -> None:
    data = _tofu_folder(tmp_path)
    result = _run(["unlearn", "data.forget_split=forget99"], tmp_path, data, models["good"])
    _one_line_error(result, tmp_path, "data.forget_split='forget99'", "['forget10', 'retain90']")


def test_missing_model_folder_names_the_key(models: dict[str, Path], tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model"
    result = _run(["unlearn"], tmp_path, _tofu_folder(tmp_path), missing)
    _one_line_error(result, tmp_path, "model.name_or_path", str(missing), "does not exist")


def test_tokenizer_of_another_model_is_a_vocabulary_mismatch(models: dict[str, Path], tmp_path: Path) -> None:
    result = _run(["unlearn"], tmp_path, _tofu_folder(tmp_path), models["mismatch"])
    _one_line_error(result, tmp_path, "model.name_or_path", "does not match the model's vocabulary")


def test_unreachable_tracking_server_names_the_key_and_uri(models: dict[str, Path], tmp_path: Path) -> None:
    uri = f"http://127.0.0.1:{_closed_port()}"
    result = _run(
        ["unlearn", f"tracking.tracking_uri={uri}"], tmp_path, _tofu_folder(tmp_path), models["good"]
    )
    _one_line_error(result, tmp_path, f"tracking.tracking_uri={uri}", "tracking.on_unreachable=local")


def test_unreachable_cluster_names_ray_address(models: dict[str, Path], tmp_path: Path) -> None:
    address = f"127.0.0.1:{_closed_port()}"
    result = _run(["unlearn"], tmp_path, _tofu_folder(tmp_path), models["good"], RAY_ADDRESS=address)
    _one_line_error(result, tmp_path, f"RAY_ADDRESS={address!r}")


def test_eval_shares_the_model_check(models: dict[str, Path], tmp_path: Path) -> None:
    result = _run(
        ["eval", "--model", str(models["mismatch"])], tmp_path, _tofu_folder(tmp_path), models["good"]
    )
    _one_line_error(result, tmp_path, "--model", "does not match the model's vocabulary")


def test_tune_shares_the_run_checks(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model"
    result = _run(["tune", "--config", "embedded_npo_dv_tiny"], tmp_path, _tofu_folder(tmp_path), missing)
    _one_line_error(result, tmp_path, "model.name_or_path", str(missing), "does not exist")


@pytest.mark.parametrize("position", ["before", "after"])
def test_debug_shows_the_traceback(models: dict[str, Path], tmp_path: Path, position: str) -> None:
    data = _tofu_folder(tmp_path, '{"question": "What did author 0 wr\n')
    args = ["--debug", "unlearn"] if position == "before" else ["unlearn", "--debug"]
    result = _run(args, tmp_path, data, models["good"])
    assert result.returncode not in (0, 2)
    assert "Traceback" in result.stderr and "DataError" in result.stderr
    assert "baldro-ray: error:" not in result.stderr
