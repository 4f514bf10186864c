"""Starting or joining a Ray cluster: the one place that calls ``ray.init``."""

from __future__ import annotations

import os


def ensure_ray(num_cpus: int | None = None) -> None:
    """Join the cluster named by ``RAY_ADDRESS`` (``ray job submit`` sets it), else start a local one.

    Idempotent: an already initialised Ray is left as it is (tests share one session cluster).
    """
    import ray

    # Ray Data's progress bars, drawn from every training worker, would bury the run's own progress lines.
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    # Likewise the per-load/per-save bars of transformers (workers of a local cluster inherit this environment).
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if ray.is_initialized():
        return
    address = os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address)
    else:
        ray.init(num_cpus=num_cpus, include_dashboard=True, dashboard_host="127.0.0.1")


def worker_env() -> dict[str, str]:
    """Environment for training workers: one OpenMP thread each (the worker sets torch threads itself)."""
    return {
        "OMP_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "RAY_DATA_DISABLE_PROGRESS_BARS": "1",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    }
