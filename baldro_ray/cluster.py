"""Starting or joining a Ray cluster: the one place that calls ``ray.init``."""

from __future__ import annotations

import os

from baldro_ray import console


def ensure_ray(num_cpus: int | None = None) -> None:
    """Join the cluster named by ``RAY_ADDRESS`` (``ray job submit`` sets it), else start a local one (which
    inherits this process's environment, the console's verbosity with it: :mod:`baldro_ray.console`).

    Idempotent: an already initialised Ray is left as it is (tests share one session cluster).
    """
    import ray

    console.quiet_process()
    if ray.is_initialized():
        return
    address = os.environ.get("RAY_ADDRESS")
    level = console.ray_logging_level()
    if address:
        ray.init(address=address, logging_level=level)
    else:
        ray.init(num_cpus=num_cpus, include_dashboard=True, dashboard_host="127.0.0.1", logging_level=level)


def worker_env() -> dict[str, str]:
    """Environment for training workers: one OpenMP thread each (the worker sets torch threads itself), the
    console's verbosity, and Ray Train's print left alone (its redirect printed every worker line twice)."""
    return {
        "OMP_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",
        **console.process_env(),
    }
