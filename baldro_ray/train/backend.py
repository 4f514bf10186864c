"""One training-backend interface for Ray Train worker loops: plain torch DDP or DeepSpeed ZeRO 0/1/2/3.

Invariants every backend keeps, so one worker loop gives the same numbers under each of them:
- ``backward(loss)`` adds exactly d loss / d theta, averaged over data-parallel ranks, to the accumulated
  gradient, however often it is called between two ``step()`` calls (no 1/gradient_accumulation_steps).
- ``scale_gradients(factor)``, where a backend has it (None where not), multiplies the gradient accumulated since
  the last ``step()`` by ``factor``, the same on every rank (the online-softmax pass of BalDRO-DV needs it).
- ``step()`` applies exactly one optimizer update: clip (if set), AdamW step, one scheduler step, zero grads.
- The optimizer is torch AdamW with weight decay on parameters of two or more dimensions only (as HF Trainer).
- Checkpoints and ``save_pretrained`` are collective: all ranks call them; files exist once all ranks return.
  A checkpoint directory must be on storage every rank sees (each rank reads files other ranks wrote).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from baldro_ray.atomic import atomic_path, staging_dir

_DDP_STATE_FILE = "training_state.pt"


@dataclass(frozen=True)
class BackendSpec:
    """How to train: ``zero_stage`` None is plain torch DDP, 0..3 is DeepSpeed with that ZeRO stage."""

    zero_stage: int | None = None
    offload_optimizer: bool = False
    offload_param: bool = False
    bf16: bool = False
    gradient_accumulation_steps: int = 1
    micro_batch_size: int = 1
    gradient_clipping: float | None = None


def deepspeed_config(spec: BackendSpec) -> dict[str, Any]:
    """The DeepSpeed JSON config for ``spec`` (optimizer and scheduler are the client's torch objects, so the
    config has no optimizer or scheduler section: lr and weight decay live in the client AdamW)."""
    zero: dict[str, Any] = {"stage": spec.zero_stage}
    if spec.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu"}
    if spec.offload_param:
        zero["offload_param"] = {"device": "cpu"}
    return {
        "train_micro_batch_size_per_gpu": spec.micro_batch_size,
        "gradient_accumulation_steps": spec.gradient_accumulation_steps,
        # Our step() is the accumulation boundary however many backward() calls preceded it; the engine's own
        # micro-step counter would otherwise decide when the update happens.
        "managed_gradient_accumulation": False,
        "zero_optimization": zero,
        "bf16": {"enabled": spec.bf16},
        "gradient_clipping": spec.gradient_clipping or 0.0,
        # Offloaded states are stepped by torch AdamW: no cpu_adam build (about 47 s), the same maths as DDP.
        "zero_force_ds_cpu_optimizer": False,
        "steps_per_print": 2**31 - 1,
    }


def validate_deepspeed_config(spec: BackendSpec) -> None:
    """Raise ValueError naming every problem with ``spec``; cheap enough for the driver, before any worker."""
    problems = []
    if spec.zero_stage is None:
        problems += [
            f"{flag} needs DeepSpeed (set zero_stage)"
            for flag in ("offload_optimizer", "offload_param")
            if getattr(spec, flag)
        ]
        if spec.bf16:
            problems.append("bf16 needs DeepSpeed (fp32 master weights); plain DDP trains in float32")
    elif spec.zero_stage not in (0, 1, 2, 3):
        problems.append(f"zero_stage must be None (DDP) or 0, 1, 2, 3, got {spec.zero_stage}")
    else:
        if spec.offload_optimizer and spec.zero_stage < 1:
            problems.append(f"offload_optimizer needs ZeRO stage >= 1, got stage {spec.zero_stage}")
        if spec.offload_param and spec.zero_stage != 3:
            problems.append(f"offload_param needs ZeRO stage 3, got stage {spec.zero_stage}")
    if spec.gradient_accumulation_steps < 1:
        problems.append(f"gradient_accumulation_steps must be >= 1, got {spec.gradient_accumulation_steps}")
    if spec.micro_batch_size < 1:
        problems.append(f"micro_batch_size must be >= 1, got {spec.micro_batch_size}")
    if spec.gradient_clipping is not None and spec.gradient_clipping <= 0:
        problems.append(f"gradient_clipping must be > 0 or None, got {spec.gradient_clipping}")
    if problems:
        raise ValueError("invalid training backend: " + "; ".join(problems))
    if spec.zero_stage is not None:
        from deepspeed.runtime.config import DeepSpeedConfig

        try:
            DeepSpeedConfig(deepspeed_config(spec))
        except Exception as exc:
            raise ValueError(f"DeepSpeed rejects the config for {spec}: {exc}") from exc


class TrainingBackend(Protocol):
    """What a worker loop needs; ``model`` is the wrapped module (DDP or DeepSpeed engine) to run forward."""

    model: torch.nn.Module
    scale_gradients: Callable[[float], None] | None

    def backward(self, loss: torch.Tensor) -> None: ...
    def step(self) -> None: ...
    def lr(self) -> float: ...
    def save_checkpoint(self, directory: Path, client_state: dict[str, Any]) -> None: ...
    def load_checkpoint(self, directory: Path) -> dict[str, Any]: ...
    def save_pretrained(self, directory: Path, tokenizer: Any) -> None: ...


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            # ZeRO-3 partitions parameters in place: the true shape survives only as ds_shape.
            (decay if len(getattr(param, "ds_shape", param.shape)) >= 2 else no_decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [group for group in groups if group["params"]]  # ZeRO-3 fails on an empty parameter group


def _rank() -> int:
    return torch.distributed.get_rank() if torch.distributed.is_initialized() else 0


def _barrier() -> None:
    if torch.distributed.is_initialized():
        torch.distributed.barrier()


def _save_client_state(directory: Path, client_state: dict[str, Any]) -> None:
    # One file per rank: client state (RNG streams above all) differs between ranks.
    with atomic_path(directory / f"client_state_rank{_rank()}.pt") as tmp:
        torch.save(client_state, tmp)


def _load_client_state(directory: Path) -> dict[str, Any]:
    # Our own file, holding RNG states (NumPy arrays, tuples): not loadable with weights_only.
    return torch.load(directory / f"client_state_rank{_rank()}.pt", weights_only=False)


def _write_pretrained(directory: Path, model: Any, tokenizer: Any, state_dict: dict[str, Any] | None) -> None:
    """Publish model + tokenizer as ``directory`` whole (replacing one)."""
    with staging_dir(directory) as staging:
        model.save_pretrained(staging, state_dict=state_dict)
        tokenizer.save_pretrained(staging)


class _DDPBackend:
    """torch DDP (``ray.train.torch.prepare_model``): DDP averages gradients over ranks on every backward."""

    def __init__(
        self, model: torch.nn.Module, optimizer: Optimizer, scheduler: LRScheduler, clip: float | None
    ):
        self.model = model
        self._module: Any = getattr(model, "module", model)
        self._optimizer = optimizer
        self._scheduler = scheduler
        self._clip = clip

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def scale_gradients(self, factor: float) -> None:
        # DDP all-reduced every backward already: .grad holds the same rank-averaged sum on every rank.
        for param in self.model.parameters():
            if param.grad is not None:
                param.grad.mul_(factor)

    def step(self) -> None:
        if self._clip is not None:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self._clip)
        self._optimizer.step()
        self._scheduler.step()
        self._optimizer.zero_grad(set_to_none=True)

    def lr(self) -> float:
        return float(self._optimizer.param_groups[0]["lr"])

    def save_checkpoint(self, directory: Path, client_state: dict[str, Any]) -> None:
        """Rank 0 writes the training state (replicas are identical), each rank its client state;
        ``directory`` must be visible to every rank."""
        directory.mkdir(parents=True, exist_ok=True)
        if _rank() == 0:
            state = {
                "model": self._module.state_dict(),
                "optimizer": self._optimizer.state_dict(),
                "scheduler": self._scheduler.state_dict(),
            }
            partial = directory / f".{_DDP_STATE_FILE}.tmp"
            torch.save(state, partial)
            partial.replace(directory / _DDP_STATE_FILE)
        _save_client_state(directory, client_state)
        _barrier()

    def load_checkpoint(self, directory: Path) -> dict[str, Any]:
        state = torch.load(directory / _DDP_STATE_FILE, map_location="cpu", weights_only=True)
        self._module.load_state_dict(state["model"])
        self._optimizer.load_state_dict(state["optimizer"])
        self._scheduler.load_state_dict(state["scheduler"])
        return _load_client_state(directory)

    def save_pretrained(self, directory: Path, tokenizer: Any) -> None:
        if _rank() == 0:
            _write_pretrained(directory, self._module, tokenizer, None)
        _barrier()


class _DeepSpeedBackend:
    """A DeepSpeed engine in unmanaged accumulation mode: backward() reduces and accumulates; step() is the
    boundary where the engine clips, steps the client AdamW, steps the client scheduler once, zeroes grads.

    ZeRO keeps the accumulated gradient in its own (partitioned, possibly reduced-precision) buffers, which no public
    API rescales: no ``scale_gradients``, so BalDRO-DV over several micro-steps takes the value pass here."""

    scale_gradients = None

    def __init__(self, engine: Any, hf_ds_config: Any):
        self.model = engine
        self._engine = engine
        # transformers detects ZeRO-3 through a weak reference to this object: it must outlive the model.
        self._hf_ds_config = hf_ds_config

    def backward(self, loss: torch.Tensor) -> None:
        self._engine.backward(loss, scale_wrt_gas=False)

    def step(self) -> None:
        self._engine.step()

    def lr(self) -> float:
        return float(self._engine.get_lr()[0])

    def save_checkpoint(self, directory: Path, client_state: dict[str, Any]) -> None:
        """Sharded: every rank writes its partition under ``directory/global_step<N>`` plus a ``latest`` tag;
        client state goes to our per-rank file (under ZeRO 0-2 the engine keeps only rank 0's)."""
        self._engine.save_checkpoint(str(directory))
        _save_client_state(directory, client_state)
        _barrier()

    def load_checkpoint(self, directory: Path) -> dict[str, Any]:
        path, _ = self._engine.load_checkpoint(str(directory))
        if path is None:
            raise FileNotFoundError(f"no DeepSpeed checkpoint under {directory}")
        return _load_client_state(directory)

    def save_pretrained(self, directory: Path, tokenizer: Any) -> None:
        # ZeRO-3: gathered one layer at a time into a full state dict on rank 0 only (collective; the same
        # engine call accelerate uses). In float32 training the "16bit" dict holds float32 tensors.
        state_dict = (
            self._engine._zero3_consolidated_16bit_state_dict()
            if self._engine.zero_optimization_stage() == 3
            else None
        )
        if _rank() == 0:
            _write_pretrained(directory, self._engine.module, tokenizer, state_dict)
        _barrier()


def build_backend(
    spec: BackendSpec,
    model_loader: Callable[[], Any],
    lr: float,
    weight_decay: float,
    scheduler_fn: Callable[[Optimizer], LRScheduler],
    device: torch.device,
    prepare_model: Callable[[torch.nn.Module], torch.nn.Module],
) -> TrainingBackend:
    """Load the model as ``spec`` needs, wrap it with AdamW and the scheduler, on the process group that exists
    (in a Ray Train worker, the one Ray created; ``device`` and ``prepare_model``, which moves the model there and
    wraps it for data parallelism, are then ``ray.train.torch.get_device`` and ``ray.train.torch.prepare_model``).

    Under ZeRO-3 the model is loaded partitioned (no rank holds a full copy). One ZeRO-3 backend at most may be
    alive per process: transformers keeps a process-global flag.
    """
    from transformers.integrations import HfDeepSpeedConfig, is_deepspeed_zero3_enabled

    if spec.zero_stage is not None and device.type == "cpu":
        # DeepSpeed picks its accelerator once, on first import (validation imports it): a CPU worker on a
        # GPU node would otherwise pick CUDA.
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    validate_deepspeed_config(spec)
    if spec.zero_stage != 3 and is_deepspeed_zero3_enabled():
        raise RuntimeError("a ZeRO-3 backend is still alive in this process; from_pretrained would partition")
    if spec.zero_stage is None:
        model = prepare_model(model_loader())
        optimizer = torch.optim.AdamW(_param_groups(model, weight_decay), lr=lr)
        return _DDPBackend(model, optimizer, scheduler_fn(optimizer), spec.gradient_clipping)

    import deepspeed

    config = deepspeed_config(spec)
    deepspeed.init_distributed(dist_backend=torch.distributed.get_backend())
    hf_ds_config = HfDeepSpeedConfig(config) if spec.zero_stage == 3 else None
    model = model_loader()
    optimizer = torch.optim.AdamW(_param_groups(model, weight_decay), lr=lr)
    engine, *_ = deepspeed.initialize(
        model=model, optimizer=optimizer, lr_scheduler=scheduler_fn(optimizer), config=config
    )
    return _DeepSpeedBackend(engine, hf_ds_config)
