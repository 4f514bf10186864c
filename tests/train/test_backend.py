"""Training backends (DDP; ZeRO-2 and ZeRO-3, with and without offload) on 2 Ray Train workers, checked
against each other and against an independent single-process reference.

One Ray Train run trains every backend (Ray start-up dominates at this scale); the tests read what it wrote.
"""

from __future__ import annotations

import gc
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from baldro_ray.train.backend import BackendSpec, build_backend, validate_deepspeed_config

LR, WEIGHT_DECAY, CLIP = 1e-2, 0.1, 0.5
GAS, STEPS, WORLD, MICRO_BATCH, SEQ = 2, 3, 2, 2, 8
VOCAB = 64
_COMMON = {"gradient_accumulation_steps": GAS, "micro_batch_size": MICRO_BATCH, "gradient_clipping": CLIP}
SPECS: dict[str, BackendSpec] = {
    "ddp": BackendSpec(**_COMMON),
    "zero0": BackendSpec(zero_stage=0, **_COMMON),
    "zero1": BackendSpec(zero_stage=1, **_COMMON),
    "zero2": BackendSpec(zero_stage=2, **_COMMON),
    "zero2_offload": BackendSpec(zero_stage=2, offload_optimizer=True, **_COMMON),
    "zero3": BackendSpec(zero_stage=3, **_COMMON),
    "zero3_offload_bf16": BackendSpec(
        zero_stage=3, offload_optimizer=True, offload_param=True, bf16=True, **_COMMON
    ),
}
EXACT = [name for name, spec in SPECS.items() if not spec.bf16]  # float32: must match the reference


def _batch(rank: int, step: int, micro: int) -> dict[str, torch.Tensor]:
    """The micro-batch of ``rank`` at (``step``, ``micro``): different per rank, same for every backend."""
    generator = torch.Generator().manual_seed(rank * 1000 + step * 10 + micro)
    ids = torch.randint(0, VOCAB, (MICRO_BATCH, SEQ), generator=generator)
    return {"input_ids": ids, "labels": ids}


def _schedule(optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LambdaLR:
    # A decaying lr: an extra or a missing scheduler step changes the result.
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 - 0.25 * step)


def _client_state(rank: int) -> dict[str, Any]:
    return {
        "step": 1,
        "epoch": 0,
        "rank": rank,
        "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state()},
    }


def _tokenizer() -> Any:
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    vocab = {f"t{i}": i for i in range(VOCAB)}
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="t0")))


def _step(backend: Any) -> float | None:
    """``backend.step()``; the global norm of the gradient it applied, before clipping (None: unknown)."""
    if hasattr(backend.model, "get_global_grad_norm"):  # a DeepSpeed engine; ZeRO 1-3 record it in step()
        backend.step()
        norm = backend.model.get_global_grad_norm()
        return None if norm is None else float(norm)
    norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in backend.model.parameters()]))
    backend.step()
    return float(norm)


def _train(backend: Any, steps: range, rank: int) -> dict[str, list[float | None]]:
    """Run ``steps`` optimizer steps of GAS micro-steps each; the lr in force and the grad norm per step."""
    import ray.train.torch

    device = ray.train.torch.get_device()
    log: dict[str, list[float | None]] = {"lr": [], "grad_norm": []}
    for step in steps:
        for micro in range(GAS):
            batch = {k: v.to(device) for k, v in _batch(rank, step, micro).items()}
            backend.backward(backend.model(**batch).loss / GAS)
        log["lr"].append(backend.lr())
        log["grad_norm"].append(_step(backend))
    return log


def _build(spec: BackendSpec, init: str) -> Any:
    import ray.train.torch
    from transformers import AutoModelForCausalLM

    return build_backend(
        spec,
        lambda: AutoModelForCausalLM.from_pretrained(init),
        LR,
        WEIGHT_DECAY,
        _schedule,
        ray.train.torch.get_device(),
        ray.train.torch.prepare_model,
    )


def _worker(config: dict[str, Any]) -> None:
    """Per backend: 3 steps (checkpoint after step 1) -> full/; a fresh one resumes from there -> resumed/."""
    import ray.train

    torch.set_num_threads(1)
    rank = ray.train.get_context().get_world_rank()
    out = Path(config["out"])
    logs: dict[str, dict[str, dict[str, list[float | None]]]] = {}
    for name, spec in SPECS.items():
        backend = _build(spec, config["init"])
        full = _train(backend, range(1), rank)
        backend.save_checkpoint(out / "ckpt" / name, _client_state(rank))
        for key, values in _train(backend, range(1, STEPS), rank).items():
            full[key] += values
        backend.save_pretrained(out / "full" / name, _tokenizer())
        del backend
        gc.collect()  # the ZeRO-3 engine must be gone before the next backend loads its model

        backend = _build(spec, config["init"])
        torch.save(backend.load_checkpoint(out / "ckpt" / name), out / f"client_state_{name}_{rank}.pt")
        resumed = _train(backend, range(1, STEPS), rank)
        backend.save_pretrained(out / "resumed" / name, _tokenizer())
        del backend
        gc.collect()
        logs[name] = {"full": full, "resumed": resumed}
    if rank == 0:
        (out / "logs.json").write_text(json.dumps(logs))
    ray.train.report({})


@pytest.fixture(scope="module")
def trained(ray_cluster, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Initial weights in ``init/``; the Ray run's outputs next to them."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer
    from transformers import LlamaConfig, LlamaForCausalLM

    root = tmp_path_factory.mktemp("backends")
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
    )
    LlamaForCausalLM(config).save_pretrained(root / "init")
    trainer = TorchTrainer(
        _worker,
        train_loop_config={"init": str(root / "init"), "out": str(root)},
        scaling_config=ScalingConfig(num_workers=WORLD, resources_per_worker={"CPU": 1}),
        run_config=RunConfig(
            name="backends",
            storage_path=str(root / "ray"),
            worker_runtime_env={
                "env_vars": {
                    "OMP_NUM_THREADS": "1",
                    "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
                }
            },
        ),
    )
    result = trainer.fit()
    assert result.error is None, result.error
    return root


def _weights(directory: Path) -> dict[str, torch.Tensor]:
    return load_file(directory / "model.safetensors")


def _reference(init: Path) -> tuple[dict[str, torch.Tensor], list[float]]:
    """Plain torch, one process: the gradient of the mean over both ranks' losses, clipped, AdamW (decay on
    matrices only), the same schedule. Final weights, and the gradient norm (before clipping) per step."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(init)
    params = dict(model.named_parameters())
    optimizer = torch.optim.AdamW(
        [
            {"params": [p for p in params.values() if p.ndim >= 2], "weight_decay": WEIGHT_DECAY},
            {"params": [p for p in params.values() if p.ndim < 2], "weight_decay": 0.0},
        ],
        lr=LR,
    )
    scheduler = _schedule(optimizer)
    grad_norms = []
    for step in range(STEPS):
        for micro in range(GAS):
            loss = sum(model(**_batch(rank, step, micro)).loss for rank in range(WORLD)) / WORLD
            (loss / GAS).backward()
        grad_norms.append(float(torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)))
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}, grad_norms


def _assert_close(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], what: str) -> None:
    assert actual.keys() == expected.keys(), what
    for key, value in expected.items():
        torch.testing.assert_close(
            actual[key], value, rtol=0, atol=1e-5, msg=lambda m, key=key: f"{what} {key}: {m}"
        )


@pytest.mark.ray
@pytest.mark.timeout(240)
def test_backends_agree_and_train(trained: Path) -> None:
    init = _weights(trained / "init")
    ddp = _weights(trained / "full" / "ddp")
    for name in EXACT:
        _assert_close(_weights(trained / "full" / name), ddp, f"{name} vs ddp")
    assert max(float((ddp[k] - init[k]).abs().max()) for k in init) > 1e-3, (
        "training left the weights unchanged"
    )
    # bf16 flips the sign of Adam's first update wherever a gradient is tiny: only check it trained in bf16.
    bf16 = _weights(trained / "full" / "zero3_offload_bf16")
    assert all(bf16[k].dtype == torch.bfloat16 and bool(bf16[k].isfinite().all()) for k in init)
    assert max(float((bf16[k].float() - init[k]).abs().max()) for k in init) > 1e-3
    assert (trained / "full" / "zero3" / "tokenizer.json").is_file()
    assert not list((trained / "full").glob(".*")), "save_pretrained left a staging folder"


@pytest.mark.ray
@pytest.mark.timeout(240)
def test_backends_match_single_process_reference(trained: Path) -> None:
    reference, grad_norms = _reference(trained / "init")
    logs = json.loads((trained / "logs.json").read_text())
    for name in SPECS:
        assert logs[name]["full"]["lr"] == pytest.approx([LR, 0.75 * LR, 0.5 * LR]), name
    assert logs["zero3_offload_bf16"]["full"]["grad_norm"] == pytest.approx(grad_norms, rel=1e-2)
    for name in EXACT:
        _assert_close(_weights(trained / "full" / name), reference, f"{name} vs reference")
        # AdamW (clipped) barely sees a constant gradient scale such as an extra 1/GAS: compare the norms too.
        if name != "zero0":  # DeepSpeed records no norm for stage 0 in float32
            assert logs[name]["full"]["grad_norm"] == pytest.approx(grad_norms, rel=1e-5), name


@pytest.mark.ray
@pytest.mark.timeout(240)
def test_checkpoint_round_trip_resumes_exactly(trained: Path) -> None:
    logs = json.loads((trained / "logs.json").read_text())
    for name in SPECS:
        _assert_close(
            _weights(trained / "resumed" / name), _weights(trained / "full" / name), f"{name} resumed"
        )
        assert logs[name]["resumed"]["lr"] == pytest.approx(logs[name]["full"]["lr"][1:]), name
        for rank in range(WORLD):
            state = torch.load(trained / f"client_state_{name}_{rank}.pt", weights_only=False)
            assert state.keys() == {"step", "epoch", "rank", "rng"}, name
            assert (state["step"], state["epoch"], state["rank"]) == (1, 0, rank)
            assert isinstance(state["rng"]["torch"], torch.Tensor) and state["rng"]["numpy"][0] == "MT19937"


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (BackendSpec(zero_stage=4), "zero_stage must be None (DDP) or 0, 1, 2, 3, got 4"),
        (BackendSpec(zero_stage=2, offload_param=True), "offload_param needs ZeRO stage 3, got stage 2"),
        (BackendSpec(offload_optimizer=True), "offload_optimizer needs DeepSpeed"),
        (BackendSpec(zero_stage=0, offload_optimizer=True), "offload_optimizer needs ZeRO stage >= 1"),
        (
            BackendSpec(zero_stage=2, gradient_accumulation_steps=0),
            "gradient_accumulation_steps must be >= 1",
        ),
    ],
)
def test_validate_rejects_invalid_specs(spec: BackendSpec, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        validate_deepspeed_config(spec)


@pytest.mark.timeout(60)
def test_validate_accepts_valid_specs() -> None:
    for spec in (
        BackendSpec(),
        BackendSpec(zero_stage=3, offload_param=True, offload_optimizer=True, bf16=True),
    ):
        validate_deepspeed_config(spec)
