"""The Ray Train worker loop of an unlearning run.

Each worker holds the (small) forget and retain sets in memory, takes its rows of every global batch from the
seeded layout (:mod:`baldro_ray.train.layout`), runs :func:`~baldro_ray.train.step.run_step` under DDP or DeepSpeed,
and at each epoch end reports a Ray Train checkpoint (resumable state; the trajectory table; and the consolidated
model at the epoch it stops after, and at every epoch when each epoch is evaluated). A restarted worker, or a fit
that continues a run stopped after an earlier epoch, resumes from the last checkpoint and, since the data order
is a function of (seed, epoch) and the schedule spans all epochs, ends with the same weights as an uninterrupted
run.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from baldro_ray import console
from baldro_ray.config import RunConfig
from baldro_ray.data.render import pad_batch
from baldro_ray.objectives import get_forget_loss
from baldro_ray.run_folder import MODEL_DIR, STATE_DIR
from baldro_ray.train.exchange import TorchDistributedExchange
from baldro_ray.train.layout import StepLayout, epoch_orders, step_rows
from baldro_ray.train.progress import StepEvent, send_step
from baldro_ray.train.step import run_step
from baldro_ray.train.telemetry import Telemetry
from baldro_ray.train.units import MicroBatch, StepConfig


def step_config(config: RunConfig) -> StepConfig:
    """The method settings one step needs."""
    method = config.method
    return StepConfig(
        forget_loss=method.name,
        hyperparameters=method.hyperparameters(),
        aggregation=method.dro.aggregation(),
        retain_aggregation=method.dro.retain_aggregation(),
        scope=method.dro.scope,
        gamma=method.gamma,
        alpha=method.alpha,
        retain_loss_type=method.retain_loss_type if get_forget_loss(method.name).uses_retain else None,
        retain_reduction=method.retain_reduction,
        seed=config.trainer.seed,
    )


def _load_rows(name: str) -> list[dict[str, Any]]:
    import ray.train

    rows = list(ray.train.get_dataset_shard(name).iter_rows())
    return sorted(rows, key=lambda row: int(row["index"]))


def _collate(
    rows: list[dict[str, Any]], ids: np.ndarray, pad_token_id: int, columns: tuple[str, ...]
) -> dict:
    picked = [rows[i] for i in ids.tolist()]
    return pad_batch({c: [row[c] for row in picked] for c in columns}, pad_token_id)


def _micro_batches(
    forget: list[dict[str, Any]],
    retain: list[dict[str, Any]],
    forget_ids: np.ndarray,
    retain_ids: np.ndarray,
    layout: StepLayout,
    rank: int,
    pad_token_id: int,
    forget_columns: tuple[str, ...],
) -> list[MicroBatch]:
    """This rank's micro-batches of one step; an empty one carries one dummy row so collectives stay aligned."""
    batches = []
    for micro in range(layout.accumulation):
        positions = layout.local_positions(len(forget_ids), micro, rank)
        rows = forget_ids[positions] if len(positions) else forget_ids[:1]
        forget_batch = _collate(forget, rows, pad_token_id, forget_columns)
        retain_batch = None
        if retain and len(positions):
            retain_batch = _collate(
                retain, retain_ids[positions], pad_token_id, ("input_ids", "labels", "index")
            )
        batches.append(MicroBatch(forget_batch, positions, retain_batch, positions if retain_batch else None))
    return batches


def unlearn_loop(loop_config: dict[str, Any]) -> None:
    """Ray Train worker entry point; ``loop_config`` holds the resolved run config, the model path, the MLflow run to
    log steps into, the epoch to stop after (None: the last) and the driver's progress mailbox (or None)."""
    console.quiet_process()
    import ray.train
    import ray.train.torch
    from transformers import AutoTokenizer

    from baldro_ray.models.tiny import load_model
    from baldro_ray.train.backend import BackendSpec, build_backend
    from baldro_ray.train.common import build_scheduler, seed_everything, set_worker_threads

    config = RunConfig.model_validate(loop_config["run"])
    trainer = config.trainer
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    set_worker_threads(trainer.cpus_per_worker)
    seed_everything(trainer.seed, rank)
    cfg = step_config(config)
    forget, retain = _load_rows("forget"), _load_rows("retain") if cfg.retain_loss_type else []
    layout = StepLayout(world, trainer.per_device_batch_size, trainer.gradient_accumulation_steps)
    steps = layout.steps_per_epoch(len(forget))
    dtype = None if trainer.dtype is None else getattr(torch, trainer.dtype)
    ds = trainer.deepspeed
    spec = BackendSpec(
        ds.zero_stage,
        ds.offload_optimizer,
        ds.offload_param,
        ds.bf16,
        trainer.gradient_accumulation_steps,
        trainer.per_device_batch_size,
        trainer.gradient_clipping,
    )
    model_path = loop_config["model_path"]
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    backend = build_backend(
        spec,
        lambda: load_model(model_path, dtype)[0],
        trainer.lr,
        trainer.weight_decay,
        lambda opt: build_scheduler(
            opt, round(trainer.warmup_epochs * steps), trainer.epochs * steps, trainer.schedule
        ),
        ray.train.torch.get_device(),
        ray.train.torch.prepare_model,
    )
    ref_model = (
        load_model(model_path, dtype)[0].eval().requires_grad_(False)
        if cfg.retain_loss_type == "KL"
        else None
    )
    if ref_model is not None:
        ref_model.to(ray.train.torch.get_device())
    telemetry, start_epoch = Telemetry(), 0
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            state = backend.load_checkpoint(Path(directory) / STATE_DIR)
            telemetry = Telemetry.read(Path(directory)) if rank == 0 else telemetry
        start_epoch = state["epoch"]
        torch.set_rng_state(state["torch_rng"][rank])
    exchange = TorchDistributedExchange()
    forget_columns = ("input_ids", "labels", "index") + (
        ("ref_nll_sum",) if "ref_nll_sum" in forget[0] else ()
    )
    device = ray.train.torch.get_device()
    live = _live_recorder(loop_config.get("tracking")) if rank == 0 else None
    progress = loop_config.get("progress") if rank == 0 else None
    stop_epoch = min(trainer.epochs, loop_config.get("stop_epoch") or trainer.epochs)
    for epoch in range(start_epoch, stop_epoch):
        forget_order, retain_order = epoch_orders(len(forget), len(retain), trainer.seed, epoch)
        metrics: dict[str, float] = {}
        for step in range(steps):
            forget_ids, retain_ids = step_rows(forget_order, retain_order, layout, step)
            micro = _micro_batches(
                forget, retain, forget_ids, retain_ids, layout, rank, tokenizer.pad_token_id, forget_columns
            )
            for m in micro:
                m.forget = {k: v.to(device) for k, v in m.forget.items()}
                m.retain = None if m.retain is None else {k: v.to(device) for k, v in m.retain.items()}
            global_step = epoch * steps + step
            result = run_step(
                backend.model,
                backend.backward,
                micro,
                cfg,
                layout,
                exchange,
                global_step,
                ref_model,
                backend.scale_gradients,
            )
            lr = backend.lr()
            backend.step()
            metrics = telemetry.record(result, epoch + 1, global_step + 1, lr)
            if live is not None:
                live.log_metrics(metrics, global_step + 1)
            if progress is not None:
                send_step(progress, StepEvent(epoch + 1, trainer.epochs, step + 1, steps, metrics))
        save_model = epoch + 1 == stop_epoch or config.evaluation.per_epoch
        _report_epoch(backend, tokenizer, telemetry, metrics, epoch + 1, save_model, rank, world)


def _live_recorder(tracking: dict[str, str] | None) -> Any:
    """Rank 0's recorder logging step metrics into the driver's MLflow run as they happen, or None. Best effort:
    the driver logs every step the worker could not from ``steps.parquet`` after training."""
    if not tracking:
        return None
    from baldro_ray.tracking.recorder import RunRecorder

    try:
        return RunRecorder.attach(tracking["uri"], tracking["run_id"])
    except Exception as err:  # e.g. a sqlite store on a filesystem this node does not share
        print(
            f"live MLflow logging off on this worker ({err!r}); step metrics are logged after training",
            flush=True,
        )
        return None


def _report_epoch(
    backend: Any,
    tokenizer: Any,
    telemetry: Telemetry,
    metrics: dict[str, float],
    epoch: int,
    save_model: bool,
    rank: int,
    world: int,
) -> None:
    """Every rank writes its part of the checkpoint: the resumable state and, with ``save_model``, the model."""
    import ray.train

    rng = [None] * world
    torch.distributed.all_gather_object(rng, torch.get_rng_state())
    with tempfile.TemporaryDirectory() as directory:
        root = Path(directory)
        backend.save_checkpoint(root / STATE_DIR, {"epoch": epoch, "torch_rng": rng})
        if save_model:
            backend.save_pretrained(root / MODEL_DIR, tokenizer)
        if rank == 0:
            telemetry.write(root)
        has_files = any(p.is_file() for p in root.rglob("*"))
        checkpoint = ray.train.Checkpoint.from_directory(directory) if has_files else None
        ray.train.report({**metrics, "epoch": epoch}, checkpoint=checkpoint)
