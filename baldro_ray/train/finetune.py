"""Fine-tuning causal LMs on QA rows with Ray Train (the embedded benchmark's target and retain models).

Several fine-tuning jobs from the same base model share one Ray Train run (start-up dominates at tiny scale).
Invariant: each returned folder holds a complete ``save_pretrained`` model and tokenizer, or does not exist.
"""

from __future__ import annotations

import math
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from baldro_ray import console
from baldro_ray.atomic import publish_dir
from baldro_ray.config import FinetuneConfig
from baldro_ray.data.render import PromptTemplate


def _train_one(backend: Any, shard: Any, pad_token_id: int, finetune: FinetuneConfig, rank: int) -> float:
    import ray.train.torch

    from baldro_ray.objectives import retain_nll
    from baldro_ray.train.common import iter_padded_batches

    device = ray.train.torch.get_device()
    mean_loss = math.nan
    for epoch in range(finetune.epochs):
        total, steps = 0.0, 0
        seed = finetune.seed * 100_003 + epoch * 1_009 + rank
        for batch in iter_padded_batches(shard, finetune.per_device_batch_size, pad_token_id, seed):
            logits = backend.model(
                input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device)
            ).logits
            loss = retain_nll(logits, batch["labels"].to(device))
            backend.backward(loss)
            backend.step()
            total += float(loss.detach())
            steps += 1
        mean_loss = total / max(steps, 1)
    return mean_loss


def finetune_loop(loop_config: dict[str, Any]) -> None:
    """Ray Train worker: for each job, a fresh copy of the base model trained on the job's dataset shard
    (token-mean answer NLL, AdamW, linear warm-up and decay, DDP); rank 0 saves every model in one checkpoint."""
    console.quiet_process()
    import ray.train
    import ray.train.torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from baldro_ray.train.backend import BackendSpec, build_backend
    from baldro_ray.train.common import build_scheduler, seed_everything, set_worker_threads

    finetune = FinetuneConfig.model_validate(loop_config["finetune"])
    rank = ray.train.get_context().get_world_rank()
    set_worker_threads(finetune.cpus_per_worker)
    tokenizer = AutoTokenizer.from_pretrained(loop_config["base_model"])
    metrics: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as out:
        for job in loop_config["jobs"]:
            seed_everything(finetune.seed, rank)
            steps = loop_config["steps_per_epoch"][job]
            backend = build_backend(
                BackendSpec(),
                lambda: AutoModelForCausalLM.from_pretrained(loop_config["base_model"]),
                finetune.lr,
                finetune.weight_decay,
                lambda opt, steps=steps: build_scheduler(
                    opt, round(finetune.warmup_epochs * steps), finetune.epochs * steps, "linear"
                ),
                ray.train.torch.get_device(),
                ray.train.torch.prepare_model,
            )
            shard = ray.train.get_dataset_shard(job)
            metrics[f"{job}/train_loss"] = _train_one(backend, shard, tokenizer.pad_token_id, finetune, rank)
            backend.save_pretrained(Path(out) / job, tokenizer)
        checkpoint = ray.train.Checkpoint.from_directory(out) if rank == 0 else None
        ray.train.report(metrics, checkpoint=checkpoint)


def run_finetune(
    jobs: Mapping[str, Sequence[Mapping[str, Any]]],
    base_model: Path,
    template: PromptTemplate,
    finetune: FinetuneConfig,
    out_dirs: Mapping[str, Path],
    storage_path: Path,
    run_name: str,
) -> dict[str, Path]:
    """Fine-tune ``base_model`` on each job's rows with ``finetune.num_workers`` Ray Train workers in one run;
    job ``j``'s model lands in ``out_dirs[j]`` (renamed into place from a staging folder)."""
    from ray.train import LoggingConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from baldro_ray.cluster import worker_env
    from baldro_ray.data.pipeline import encoded_dataset

    steps_per_epoch = {}
    for job, rows in jobs.items():
        per_worker = len(rows) // finetune.num_workers
        if per_worker == 0:
            raise ValueError(f"{job}: {len(rows)} rows cannot be split across {finetune.num_workers} workers")
        steps_per_epoch[job] = math.ceil(per_worker / finetune.per_device_batch_size)
    datasets = {
        job: encoded_dataset(rows, str(base_model), template, finetune.max_length, job)
        for job, rows in jobs.items()
    }
    trainer = TorchTrainer(
        finetune_loop,
        train_loop_config={
            "finetune": finetune.model_dump(),
            "base_model": str(base_model),
            "jobs": list(jobs),
            "steps_per_epoch": steps_per_epoch,
        },
        scaling_config=ScalingConfig(
            num_workers=finetune.num_workers,
            use_gpu=finetune.use_gpu,
            resources_per_worker={"CPU": finetune.cpus_per_worker},
        ),
        run_config=RunConfig(
            name=run_name,
            storage_path=str(storage_path),
            worker_runtime_env={"env_vars": worker_env()},
            logging_config=LoggingConfig(log_level=console.train_log_level()),
        ),
        datasets=datasets,
    )
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError(f"fine-tuning run {run_name} ended without a checkpoint: {result.error}")
    staging = Path(tempfile.mkdtemp(dir=storage_path, prefix=f".{run_name}-"))
    try:
        result.checkpoint.to_directory(str(staging))
        for job, out_dir in out_dirs.items():
            out_dir.parent.mkdir(parents=True, exist_ok=True)
            publish_dir(staging / job, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return dict(out_dirs)
