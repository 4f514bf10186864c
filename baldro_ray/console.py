"""The console a person reads: the run's own lines, progress bars, and the libraries' chatter off unless asked for.

Invariant: verbosity is decided once, by :func:`configure` (the CLI's ``--verbose``), and travels as
``BALDRO_RAY_VERBOSE`` to every process of a run: a local cluster inherits the driver's environment, training
workers get it in their runtime env (:func:`baldro_ray.cluster.worker_env`), and each process applies it with
:func:`quiet_process`. Without the flag, Ray, Ray Train, Ray Data, DeepSpeed, transformers and MLflow keep their
INFO chatter to their log files; warnings that report a problem and every error still reach the console. Progress
bars are drawn only in the process that called :func:`configure` (the CLI's driver), never in library use.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

VERBOSE_ENV = "BALDRO_RAY_VERBOSE"

# Set before the libraries are imported (they read them once), in this process and in every worker. Progress bars
# of downloads and model loading stay off even when verbose: drawn from every worker they bury the run's lines.
_ALWAYS_ENV = {"HF_HUB_DISABLE_PROGRESS_BARS": "1", "RAY_DATA_DISABLE_PROGRESS_BARS": "1"}
_QUIET_ENV = {
    # Read by every process that imports Ray Data, its actors too (the split coordinators of Ray Train's datasets).
    "RAY_DATA_LOGGING_CONFIG": str(Path(__file__).with_name("ray_data_logging.yaml")),
    "TRANSFORMERS_VERBOSITY": "error",
    "HF_HUB_VERBOSITY": "error",
    "MLFLOW_LOGGING_LEVEL": "WARNING",
    # Deprecation notices are for the code's authors (Ray's internal actors raise some about Ray's own calls).
    "PYTHONWARNINGS": "ignore::DeprecationWarning",
}
# Loggers whose INFO (or, for notices that report no problem, WARNING) lines are chatter; their files keep them.
_QUIET_LEVELS = {
    "": logging.WARNING,  # the root logger, at INFO on Ray Train workers: Train logs each report to it
    "ray": logging.WARNING,
    "ray.data": logging.WARNING,
    "ray.data._internal.progress": logging.ERROR,  # "Progress bars disabled", once per process
    "ray._private.authentication.authentication_token_setup": logging.ERROR,  # "token auth is on", every start
    "huggingface_hub": logging.ERROR,  # "Repo card metadata block was not found" when MLflow logs the model
    "mlflow": logging.WARNING,
    "alembic": logging.WARNING,
}
# DeepSpeed sets its logger's level when imported, so its level is enforced with a filter instead: the only
# warning it gives here is the accelerator it detected.
_DEEPSPEED_LOGGER = "DeepSpeed"

_live = False


def configure(verbose: bool) -> None:
    """Record the CLI's decision for this process and every process it starts; enable progress bars here."""
    global _live
    _live = True
    os.environ[VERBOSE_ENV] = "1" if verbose else "0"
    for key, value in process_env().items():
        os.environ.setdefault(key, value)


def verbose() -> bool:
    """True when the libraries' own output was asked for (``--verbose``); quiet is the default everywhere."""
    return os.environ.get(VERBOSE_ENV) == "1"


def live() -> bool:
    """True in the process whose console :func:`configure` set up: the one that draws progress bars."""
    return _live


def process_env() -> dict[str, str]:
    """The environment that carries this process's verbosity to another process."""
    return {VERBOSE_ENV: "1" if verbose() else "0", **_ALWAYS_ENV, **({} if verbose() else _QUIET_ENV)}


class _AtLeast(logging.Filter):
    def __init__(self, level: int) -> None:
        super().__init__()
        self.level = level

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= self.level


def quiet_process() -> None:
    """Apply the verbosity to this process's loggers (after Ray Data's import, which configures its own)."""
    for key, value in _ALWAYS_ENV.items():
        os.environ.setdefault(key, value)
    if verbose():
        return
    import ray.data  # noqa: F401  (configures the ray.data logger when first imported)

    for name, level in _QUIET_LEVELS.items():
        logging.getLogger(name).setLevel(level)
    deepspeed = logging.getLogger(_DEEPSPEED_LOGGER)
    if not any(isinstance(f, _AtLeast) for f in deepspeed.filters):
        deepspeed.addFilter(_AtLeast(logging.ERROR))
    if "transformers" in sys.modules:  # imported before TRANSFORMERS_VERBOSITY was set
        import transformers

        transformers.logging.set_verbosity_error()
        transformers.logging.disable_progress_bar()


def ray_logging_level() -> int:
    """The level of the driver's ``ray`` logger (``ray.init(logging_level=...)``)."""
    return logging.INFO if verbose() else logging.WARNING


def train_log_level() -> str:
    """The level of Ray Train's own lines on the console (its controller and workers; ``RunConfig``)."""
    return "INFO" if verbose() else "WARNING"
