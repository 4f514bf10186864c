"""Starting or joining a Ray cluster: the one place that calls ``ray.init``."""

from __future__ import annotations

import os
import socket

from baldro_ray import console
from baldro_ray.errors import UserError

# ray.init waits minutes for a head that is not there; a live head accepts a TCP connection at once.
_CONNECT_TIMEOUT_S = 5.0


def _check_address(address: str) -> None:
    """Raise ``UserError`` naming ``RAY_ADDRESS`` unless a process listens at its ``host:port``."""
    if address in ("auto", "local"):
        return
    scheme, sep, rest = address.partition("://")
    if sep and scheme != "ray":
        raise UserError(
            f"RAY_ADDRESS={address!r}: expected the head's host:port (e.g. 127.0.0.1:6379), ray://host:port or "
            f"auto; {scheme}:// addresses are for 'ray job submit'"
        )
    host, sep, port = (rest if sep else address).rpartition(":")
    if not sep or not port.isdigit():
        raise UserError(
            f"RAY_ADDRESS={address!r}: expected host:port (e.g. 127.0.0.1:6379), ray://host:port or auto"
        )
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=_CONNECT_TIMEOUT_S).close()
    except OSError as err:
        raise UserError(
            f"RAY_ADDRESS={address!r}: no Ray cluster answers at {host}:{port} ({err.strerror or err}); "
            "start one (ray start --head) or unset RAY_ADDRESS to start a local cluster"
        ) from err


def ensure_ray(num_cpus: int | None = None) -> None:
    """Join the cluster named by ``RAY_ADDRESS`` (``ray job submit`` sets it), else start a local one (which
    inherits this process's environment, the console's verbosity with it: :mod:`baldro_ray.console`).

    Idempotent: an already initialised Ray is left as it is (tests share one session cluster). A ``RAY_ADDRESS``
    where no cluster answers raises ``UserError`` within seconds instead of waiting for one.
    """
    import ray

    console.quiet_process()
    if ray.is_initialized():
        return
    address = os.environ.get("RAY_ADDRESS")
    level = console.ray_logging_level()
    if address:
        _check_address(address)
        try:
            ray.init(address=address, logging_level=level)
        except ConnectionError as err:
            problem = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise UserError(f"RAY_ADDRESS={address!r}: cannot join the cluster: {problem}") from err
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
