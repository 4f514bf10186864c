"""Where a run's data and models come from, decided once for every command: an embedded benchmark or the user's.

``data.source: synthetic`` / ``synthetic_muse`` are the embedded TOFU-format / MUSE-format benchmarks: the folder
and its tiny target and retain models are prepared here on first use (fine-tuned on Ray when not cached) and
``model.name_or_path: tiny`` names its target model. Anything else is the user's folder or hub name. The unlearn
driver, ``eval`` and the quickstart read the result and never branch on the source again.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from baldro_ray.config import ConfigError, RunConfig
from baldro_ray.data.sources import DataSource, build_source

EMBEDDED_MODEL = "tiny"


@dataclass(frozen=True)
class RunInputs:
    """The data and models a configuration names, resolved."""

    source: DataSource  # reads the benchmark's subsets
    location: str  # the data folder or hub dataset name (the embedded benchmark's folder for synthetic*)
    model_path: str  # the model to unlearn or the evaluation's target (``tiny`` resolved)
    retain_model: str | None  # the benchmark's own retain model (the embedded one), None for the user's data


def resolve_inputs(config: RunConfig, log: Callable[[str], None] = print) -> RunInputs:
    """Resolve ``config``'s data and models, preparing the embedded benchmark when it is the source.

    Raises :class:`ConfigError` for the embedded model on the user's data and for a non-embedded source without
    ``data.location``.
    """
    data, model_path = config.data, config.model.name_or_path
    retain_model = None
    if data.embedded:
        from baldro_ray.embedded import PREPARERS

        assets = PREPARERS[data.source](config.embedded, data.forget_split, log)
        if model_path == EMBEDDED_MODEL:
            model_path = str(assets.target_model)
        location, retain_model = str(assets.data_dir), str(assets.retain_model)
    elif model_path == EMBEDDED_MODEL:
        raise ConfigError(
            "model.name_or_path 'tiny' is the embedded benchmarks' model: it needs data.source=synthetic or "
            "synthetic_muse"
        )
    elif data.location is None:
        raise ConfigError(f"data.location is required for data.source={data.source!r}")
    else:
        location = data.location
    # MUSE's raw corpora are cut into windows of the model's own tokens, as long as a training row may be.
    options = (
        {"tokenizer": model_path, "max_length": config.trainer.max_length} if data.benchmark == "MUSE" else {}
    )
    return RunInputs(build_source(data.source, location, **options), location, model_path, retain_model)
