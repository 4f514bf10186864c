"""Real Ray Train runs (2 CPU workers, gloo): worker-count invariance, the per-device (local) scope, DeepSpeed
ZeRO-2/3 against DDP, and validation before any worker starts."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load_file

from baldro_ray.config import ConfigError, load_config
from baldro_ray.data.render import TEMPLATES, encode_qa, pad_batch
from baldro_ray.models.tiny import TinyModelSpec, build_tiny_llama, save_model, train_tokenizer
from baldro_ray.objectives import sequence_nll
from baldro_ray.train.layout import StepLayout, epoch_orders, step_rows
from baldro_ray.train.progress import StepEvent, watch_steps
from baldro_ray.unlearn import build_datasets, build_trainer, resolve_run, run_unlearn

pytestmark = [pytest.mark.ray]

QA = [(f"What did author {i} write?", f"Author {i} wrote book {i * 7} in {1900 + i}.") for i in range(24)]
FORGET, RETAIN = QA[:8], QA[8:]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """A float64 tiny model and a TOFU-layout folder (forget10 / retain90) written by the test."""
    root = tmp_path_factory.mktemp("unlearn")
    tokenizer = train_tokenizer([f"{q} {a}" for q, a in QA] * 3, vocab_size=300)
    spec = TinyModelSpec(hidden_size=16, intermediate_size=32, num_layers=1, num_heads=2, num_kv_heads=2)
    save_model(build_tiny_llama(spec, tokenizer, seed=3).double(), tokenizer, root / "model")
    data = root / "data"
    data.mkdir()
    for name, rows in (("forget10", FORGET), ("retain90", RETAIN)):
        (data / f"{name}.json").write_text(
            "".join(json.dumps({"question": q, "answer": a}) + "\n" for q, a in rows)
        )
    return root


def config(workspace: Path, tag: str, *overrides: str):
    return load_config(
        overrides=[
            "data.source=tofu",
            f"data.location={workspace / 'data'}",
            f"model.name_or_path={workspace / 'model'}",
            f"output_dir={workspace / 'runs' / tag}",
            "trainer.dtype=float64",
            "trainer.epochs=1",
            "trainer.lr=1e-2",
            "trainer.warmup_epochs=0",
            "trainer.schedule=constant",
            "trainer.weight_decay=0",
            "method.name=NPO",
            "evaluation.enabled=false",
            "tracking.enabled=false",  # MLflow has its own tests; here it would only add minutes
            *overrides,
        ]
    )


def train(workspace: Path, tag: str, *overrides: str) -> dict[str, torch.Tensor]:
    run = resolve_run(config(workspace, tag, *overrides), name="run", log=lambda _: None)
    outcome = run_unlearn(run, log=lambda _: None)
    return load_file(outcome.model_dir / "model.safetensors")


def max_relative_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max(float((a[k] - b[k]).abs().max() / b[k].abs().max()) for k in a)


@pytest.mark.timeout(600)
@pytest.mark.parametrize(
    ("method", "accumulation"),
    [
        (("method.dro.type=dv", "method.dro.temperature=-1"), 1),
        (("method.dro.type=dv", "method.dro.temperature=-1"), 2),  # DDP: the online-softmax pass
        (("method.dro.type=group", "method.dro.sampling_ratio=0.5"), 1),
    ],
    ids=["dv-reference", "dv-reference-accumulated", "group"],
    # the textbook sign takes the same paths: test_step.py simulates its two ranks
)
def test_one_step_is_the_same_with_one_or_two_workers(
    ray_cluster, workspace: Path, method: tuple[str, ...], accumulation: int
) -> None:
    tag = "-".join(m.split("=")[1] for m in method) + f"-x{accumulation}"
    one = train(workspace, f"one-{tag}", *method, "trainer.num_workers=1", "trainer.per_device_batch_size=8")
    two = train(
        workspace,
        f"two-{tag}",
        *method,
        "trainer.num_workers=2",
        f"trainer.per_device_batch_size={4 // accumulation}",
        f"trainer.gradient_accumulation_steps={accumulation}",
    )
    initial = load_file(workspace / "model" / "model.safetensors")
    assert max_relative_difference(one, initial) > 1e-4  # the step moved the weights
    assert max_relative_difference(two, one) < 1e-6

    # the telemetry of the 2-worker run: every forget sample once, weights as the aggregation defines them
    out = workspace / "runs" / f"two-{tag}" / "run"
    trajectory = pq.read_table(out / "trajectory.parquet").to_pandas()
    steps = pq.read_table(out / "steps.parquet").to_pylist()
    assert sorted(trajectory["sample_id"]) == list(range(8)) and len(steps) == 1
    weights = trajectory["dro_weight"].to_numpy()
    assert weights.sum() == pytest.approx(1.0)
    if "group" in tag:
        assert sorted(weights) == [0.0] * 4 + [0.25] * 4
    else:
        t = float(method[1].split("=")[1])
        losses = trajectory["loss"].to_numpy()
        assert weights == pytest.approx(np.exp(losses / t) / np.exp(losses / t).sum(), rel=1e-9)
    assert steps[0]["train/dro_ess"] == pytest.approx(1 / (weights**2).sum(), rel=1e-9)


@pytest.mark.timeout(300)
def test_a_rank_without_rows_in_the_last_step_does_not_stall(ray_cluster, workspace: Path) -> None:
    # 8 forget rows, 6 per step: the second step's 2 rows all land on rank 0, rank 1 forwards a dummy row.
    dv = ("method.dro.type=dv", "method.dro.temperature=1")
    one = train(workspace, "uneven-one", *dv, "trainer.num_workers=1", "trainer.per_device_batch_size=6")
    two = train(workspace, "uneven-two", *dv, "trainer.num_workers=2", "trainer.per_device_batch_size=3")
    assert max_relative_difference(two, one) < 1e-6


@pytest.mark.timeout(300)
def test_rank_zero_sends_every_step_to_the_driver_once(ray_cluster, workspace: Path, tmp_path: Path) -> None:
    # 8 forget rows, 2 workers x 2 per step: 2 steps in each of 2 epochs.
    overrides = ("trainer.epochs=2", "trainer.num_workers=2", "trainer.per_device_batch_size=2")
    run = resolve_run(config(workspace, "progress", *overrides), name="run", log=lambda _: None)
    events: list[StepEvent] = []
    with watch_steps(events.append) as mailbox:
        result = build_trainer(run, build_datasets(run), tmp_path / "train", progress=mailbox).fit()
    assert [(e.epoch, e.step, e.global_step, e.total) for e in events] == [
        (1, 1, 1, 4),
        (1, 2, 2, 4),
        (2, 1, 3, 4),
        (2, 2, 4, 4),
    ]
    reported = {k: v for k, v in result.metrics.items() if k.startswith("train/")}
    assert events[-1].metrics == pytest.approx(reported, nan_ok=True)


def batch(pairs: list[tuple[str, str]], tokenizer) -> dict[str, torch.Tensor]:
    encoded = [encode_qa(tokenizer, q, a, TEMPLATES["tiny"], 512) for q, a in pairs]
    return pad_batch(
        {"input_ids": [e["input_ids"] for e in encoded], "labels": [e["labels"] for e in encoded]}, 0
    )


def nll(model, b: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    return sequence_nll(
        model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits, b["labels"]
    )


@pytest.mark.timeout(300)
def test_local_scope_reproduces_per_device_dv(ray_cluster, workspace: Path) -> None:
    """Two workers x 4 with scope=local equals, computed here by hand, the mean over the two devices of
    (DV over the device's 4 forget samples + its token-mean retain NLL), then one AdamW step."""
    got = train(
        workspace,
        "local",
        "method.dro.type=dv",
        "method.dro.temperature=-1",
        "method.dro.scope=local",
        "trainer.num_workers=2",
        "trainer.per_device_batch_size=4",
    )
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(workspace / "model", dtype=torch.float64)
    tokenizer = AutoTokenizer.from_pretrained(workspace / "model")
    with torch.no_grad():
        ref_sum, _ = nll(model, batch(FORGET, tokenizer))
    forget_order, retain_order = epoch_orders(len(FORGET), len(RETAIN), seed=0, epoch=0)
    forget_ids, retain_ids = step_rows(forget_order, retain_order, StepLayout(2, 4, 1), 0)
    total = 0.0
    for device in range(2):
        f_ids, r_ids = forget_ids[device * 4 : device * 4 + 4], retain_ids[device * 4 : device * 4 + 4]
        s, _ = nll(model, batch([FORGET[i] for i in f_ids], tokenizer))
        losses = -(2 / 0.1) * torch.nn.functional.logsigmoid(-0.1 * (ref_sum[torch.as_tensor(f_ids)] - s))
        dv = -1.0 * (torch.logsumexp(losses / -1.0, 0) - math.log(4))
        r_sum, r_n = nll(model, batch([RETAIN[i] for i in r_ids], tokenizer))
        total = total + (dv + r_sum.sum() / r_n.sum()) / 2
    total.backward()
    torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0).step()
    want = {k: v.detach() for k, v in model.state_dict().items()}
    assert max_relative_difference(got, want) < 1e-6


@pytest.mark.timeout(600)
def test_deepspeed_zero3_run_matches_ddp(ray_cluster, workspace: Path) -> None:
    common = (
        "method.dro.type=dv",
        "method.dro.temperature=1",
        "trainer.num_workers=2",
        "trainer.per_device_batch_size=2",
        "trainer.gradient_accumulation_steps=2",
    )
    ddp = train(workspace, "ddp", *common)
    # ZeRO-0/1/2 (and offload) against DDP step by step: tests/train/test_backend.py. ZeRO-3 partitions and consolidates in float32 (our float64 run comes back float32): float32 tolerance
    zero3 = train(workspace, "zero3", *common, "trainer.deepspeed.zero_stage=3")
    assert next(iter(zero3.values())).dtype == torch.float32
    assert max_relative_difference({k: v.double() for k, v in zero3.items()}, ddp) < 1e-4


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        (
            ("trainer.per_device_batch_size=8", "trainer.num_workers=2"),
            "the forget split 'forget10' has only 8 rows",
        ),
        (("model.name_or_path=/nonexistent/model",), "does not exist"),
        (("data.location=/nonexistent",), "nonexistent"),
    ],
)
def test_bad_runs_fail_before_any_worker(workspace: Path, overrides: tuple[str, ...], fragment: str) -> None:
    with pytest.raises((ConfigError, ValueError), match=fragment):
        resolve_run(config(workspace, "bad", *overrides), name="bad", log=lambda _: None)


def _muse_text_runs(workspace: Path, tag: str, *overrides: str) -> tuple[Any, dict[str, torch.Tensor]]:
    """MUSE-layout raw corpora (the QA texts as articles), cut into 12-token chunks, trained as text units."""
    raw = workspace / "muse" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for split, pairs in (("forget", FORGET), ("retain1", RETAIN)):
        (raw / f"{split}.json").write_text("".join(json.dumps({"text": f"{q} {a}"}) + "\n" for q, a in pairs))
    muse = (
        "data.source=muse",
        f"data.location={raw.parent}",
        "data.forget_split=raw/forget",
        "data.retain_split=raw/retain1",
        "trainer.max_length=12",
    )
    run = resolve_run(config(workspace, tag, *muse, *overrides), name="run", log=lambda _: None)
    return run, load_file(run_unlearn(run, log=lambda _: None).model_dir / "model.safetensors")


@pytest.mark.timeout(600)
@pytest.mark.parametrize(
    "method",
    [("method.dro.type=dv", "method.dro.temperature=-1"), ("method.dro.type=group",)],
    ids=["dv-reference", "group"],
)
def test_text_chunks_train_the_same_with_one_or_two_workers(
    ray_cluster, workspace: Path, method: tuple[str, ...]
) -> None:
    tag = method[0].split("=")[1]
    run, one = _muse_text_runs(
        workspace, f"text-one-{tag}", *method, "trainer.num_workers=1", "trainer.per_device_batch_size=8"
    )
    forget = [row["text"] for row in run.forget_rows]
    assert len(forget) >= 8 and "\n\n" in "".join(forget)  # chunks of the joined corpus, more than one step
    _, two = _muse_text_runs(
        workspace, f"text-two-{tag}", *method, "trainer.num_workers=2", "trainer.per_device_batch_size=4"
    )
    assert max_relative_difference(one, load_file(workspace / "model" / "model.safetensors")) > 1e-4
    assert max_relative_difference(two, one) < 1e-6
    trajectory = pq.read_table(workspace / "runs" / f"text-two-{tag}" / "run" / "trajectory.parquet")
    assert sorted(set(trajectory.column("sample_id").to_pylist())) == list(range(len(forget)))


def test_tokenizer_that_does_not_match_the_model_is_rejected(workspace: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    bigger = train_tokenizer(
        [f"{q} {a} extra words here {i}" for i, (q, a) in enumerate(QA)] * 3, vocab_size=400
    )
    model = AutoModelForCausalLM.from_pretrained(workspace / "model")
    model.save_pretrained(tmp_path / "mismatch")
    bigger.save_pretrained(tmp_path / "mismatch")
    assert len(bigger) > model.config.vocab_size  # precondition: the mismatch this test is about
    with pytest.raises(ConfigError, match="does not match the model's vocabulary"):
        resolve_run(
            config(workspace, "bad", f"model.name_or_path={tmp_path / 'mismatch'}"),
            name="x",
            log=lambda _: None,
        )


def test_retain_rows_differ_between_ranks_and_repeat_with_the_seed() -> None:
    layout = StepLayout(world_size=2, per_device_batch_size=4, accumulation=1)
    forget_order, retain_order = epoch_orders(8, 16, seed=0, epoch=0)
    _, retain_ids = step_rows(forget_order, retain_order, layout, 0)
    rank0, rank1 = (retain_ids[layout.local_positions(8, 0, r)] for r in (0, 1))
    assert not set(rank0.tolist()) & set(rank1.tolist())
    again = step_rows(*epoch_orders(8, 16, seed=0, epoch=0), layout, 0)[1]
    assert np.array_equal(again, retain_ids)
    next_epoch = step_rows(*epoch_orders(8, 16, seed=0, epoch=1), layout, 0)[1]
    assert not np.array_equal(next_epoch, retain_ids)


@pytest.mark.timeout(180)
def test_cached_reference_nll_gives_the_online_npo_loss(ray_cluster, workspace: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from baldro_ray.data.pipeline import encoded_dataset
    from baldro_ray.eval.replicas import score_reference
    from baldro_ray.objectives import npo_loss

    rows = [{"question": q, "answer": a} for q, a in FORGET]
    path = str(workspace / "model")
    scored = score_reference(encoded_dataset(rows, path, TEMPLATES["tiny"], 512, "forget10"), path, "float64")
    ordered = sorted(scored.take_all(), key=lambda r: r["index"])
    cached = torch.tensor([r["ref_nll_sum"] for r in ordered], dtype=torch.float64)
    reference = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float64)
    with torch.no_grad():
        online, _ = nll(reference, batch(FORGET, AutoTokenizer.from_pretrained(path)))
    assert torch.allclose(cached, online, rtol=1e-12)
    current = online + torch.linspace(0.0, 3.0, len(FORGET), dtype=torch.float64)  # a model that moved on
    assert torch.allclose(npo_loss(current, cached, 0.1), npo_loss(current, online, 0.1), rtol=1e-12)


def worker_pids() -> set[int]:
    import psutil

    pids = set()
    for process in psutil.process_iter(["cmdline"]):
        if any("RayTrainWorker" in part for part in process.info["cmdline"] or ()):
            pids.add(process.pid)
    return pids


@pytest.mark.timeout(600)
def test_killed_worker_resumes_from_its_checkpoint_to_the_same_weights(ray_cluster, workspace: Path) -> None:
    """SIGKILL a real Ray Train worker once the first epoch checkpoint exists; Ray Train restarts the group from
    that checkpoint (max_failures=1) and the run ends on the weights of an uninterrupted run."""
    import os
    import signal
    import threading
    import time

    many = workspace / "many"
    many.mkdir(exist_ok=True)
    for name, rows in (("forget10", QA[:16]), ("retain90", QA[16:])):
        (many / f"{name}.json").write_text(
            "".join(json.dumps({"question": q, "answer": a}) + "\n" for q, a in rows)
        )
    common = (
        f"data.location={many}",
        "method.dro.type=dv",
        "trainer.epochs=4",
        "trainer.num_workers=2",
        "trainer.per_device_batch_size=1",
        "trainer.max_failures=1",
    )
    uninterrupted = train(workspace, "resume-reference", *common)

    run = resolve_run(config(workspace, "resume", *common), name="run", log=lambda _: None)
    outcome: dict[str, object] = {}
    thread = threading.Thread(target=lambda: outcome.update(result=run_unlearn(run, log=lambda _: None)))
    before = worker_pids()
    thread.start()
    checkpoints = run.output_dir.parent / ".ray" / "run" / "run"
    killed = None
    deadline = time.monotonic() + 300
    while killed is None and thread.is_alive() and time.monotonic() < deadline:
        workers = worker_pids() - before
        if len(workers) == 2 and list(checkpoints.glob("checkpoint_*")):
            killed = max(workers)
            os.kill(killed, signal.SIGKILL)
        time.sleep(0.05)
    replacements: set[int] = set()
    while thread.is_alive() and time.monotonic() < deadline + 300:
        replacements |= worker_pids() - before - {killed} - set(workers)
        time.sleep(0.05)
    thread.join(timeout=60)
    assert killed is not None, "the run ended before a worker could be killed after its first checkpoint"
    assert replacements, "no replacement worker group was started after the kill"
    assert "result" in outcome, "the run did not recover from the killed worker"
    resumed = load_file(outcome["result"].model_dir / "model.safetensors")
    assert max_relative_difference(resumed, uninterrupted) < 1e-9


@pytest.mark.timeout(600)
def test_one_epoch_per_fit_ends_on_the_weights_of_one_fit(ray_cluster, workspace: Path) -> None:
    """A run fitted one epoch at a time (``stop_epoch``, each fit resuming from the last checkpoint in the same
    storage, as a Tune trial does) equals the uninterrupted run, learning-rate schedule included."""
    from baldro_ray.unlearn import build_datasets, build_trainer

    common = (
        "trainer.epochs=2",
        "trainer.per_device_batch_size=2",
        "trainer.schedule=linear",
        "trainer.warmup_epochs=0.5",
        "method.dro.type=dv",
    )
    run = resolve_run(config(workspace, "per-epoch", *common), name="run", log=lambda _: None)
    datasets = build_datasets(run)

    def weights(result) -> dict[str, torch.Tensor]:
        with result.checkpoint.as_directory() as checkpoint:
            return load_file(Path(checkpoint) / "model" / "model.safetensors")

    uninterrupted = weights(build_trainer(run, datasets, run.output_dir / "one-fit").fit())
    storage, epochs = run.output_dir / "per-epoch", []
    for epoch in (1, 2):
        result = build_trainer(run, datasets, storage, stop_epoch=epoch).fit()
        epochs.append(result.metrics["epoch"])
    assert epochs == [1, 2]
    assert max_relative_difference(weights(result), uninterrupted) < 1e-9
