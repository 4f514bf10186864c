"""A sweep: a base run config plus a ``sweep:`` section that says what Ray Tune searches and how.

Invariant: a :class:`Sweep` that exists is valid — the sweep settings are checked, every searched key is a run
setting a trial may change, and the base config with each dimension at its bounds (or with each of its values)
validates as a :class:`~baldro_ray.config.RunConfig` — so a bad sweep fails with one :class:`ConfigError` before
any trial starts.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from baldro_ray.config import (
    PRESETS_DIR,
    ConfigError,
    RunConfig,
    apply_overrides,
    read_config_file,
    set_values,
    validate_config,
)

SWEEP_PRESETS_DIR = PRESETS_DIR / "sweeps"
SIGN, MAGNITUDE = ".sign", ".magnitude"  # Tune parameters of a signed_loguniform dimension
# Settings a trial may change: they leave the data, the model, the reference scores and the resources alone.
TUNABLE = (
    "method.beta",
    "method.delta",
    "method.beta1",
    "method.beta2",
    "method.gamma",
    "method.alpha",
    "method.retain_loss_type",
    "method.retain_reduction",
    "method.dro.type",
    "method.dro.temperature",
    "method.dro.sampling_ratio",
    "method.dro.scope",
    "method.dro.retain_dro",
    "trainer.lr",
    "trainer.weight_decay",
    "trainer.epochs",
    "trainer.warmup_epochs",
    "trainer.schedule",
    "trainer.seed",
    "trainer.gradient_clipping",
)
# A searched key that only matters under some aggregation.
NEEDS_DRO_TYPE = {"method.dro.temperature": "dv", "method.dro.sampling_ratio": "group"}


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Dimension(_Section):
    """One searched setting: ``grid`` (every value, crossed with the other grids), ``choice`` (sampled),
    ``uniform``/``loguniform``/``int`` between ``low`` and ``high`` (both included), or ``signed_loguniform`` (a magnitude
    log-uniform in [low, high] times a sign from ``signs``: the DV temperature's reference (-) and textbook (+)
    forms)."""

    type: Literal["grid", "choice", "uniform", "loguniform", "int", "signed_loguniform"]
    values: list[Any] | None = None
    low: float | None = None
    high: float | None = None
    signs: list[Literal[-1, 1]] = [-1, 1]

    @model_validator(mode="after")
    def _complete(self) -> Dimension:
        if self.type in ("grid", "choice"):
            if not self.values:
                raise ValueError(f"type {self.type!r} needs a non-empty list 'values'")
        elif self.low is None or self.high is None or not self.low < self.high:
            raise ValueError(f"type {self.type!r} needs low < high; got low={self.low}, high={self.high}")
        elif self.type in ("loguniform", "signed_loguniform") and self.low <= 0:
            raise ValueError(f"type {self.type!r} needs low > 0; got {self.low}")
        return self

    def corners(self) -> list[Any]:
        """Values that bound what a trial can draw (every value of a list, both ends of a range)."""
        if self.values is not None:
            return list(self.values)
        ends = [int(self.low), int(self.high)] if self.type == "int" else [self.low, self.high]
        if self.type == "signed_loguniform":
            return [sign * end for sign in self.signs for end in ends]
        return ends


class Asha(_Section):
    """Asynchronous successive halving on the per-epoch objective: at each rung (grace_period epochs, then x
    reduction_factor), a trial below the top 1/reduction_factor of the trials seen there is stopped."""

    grace_period: int = Field(default=1, ge=1)
    reduction_factor: float = Field(default=2.0, gt=1)


class SweepSettings(_Section):
    """The ``sweep:`` section."""

    search: Literal["grid", "random", "tpe", "nsga2"] = Field(
        default="random",
        description="grid: every combination of grid values; random: grids crossed, the rest sampled; "
        "tpe: Optuna TPE on eval/score; nsga2: Optuna NSGA-II on (forget term, utility term)",
    )
    num_samples: int = Field(default=1, ge=1, description="samples (random/tpe/nsga2) or repeats of the grid")
    scheduler: Literal["fifo", "asha"] = "asha"
    asha: Asha = Asha()
    seed: int = Field(default=0, ge=0, description="seed of the search algorithm")
    max_concurrent_trials: int | None = Field(
        default=None, ge=1, description="null: as many as the cluster's resources hold (at least 1)"
    )
    space: dict[str, Dimension]
    points_to_evaluate: list[dict[str, Any]] = Field(
        default=[],
        description="settings tried first (e.g. the paper's reference values); a point names some or all of the "
        "searched keys",
    )

    @model_validator(mode="after")
    def _search_fits_space(self) -> SweepSettings:
        grids = [key for key, dim in self.space.items() if dim.type == "grid"]
        if self.search == "grid" and len(grids) != len(self.space):
            others = sorted(set(self.space) - set(grids))
            raise ValueError(f"search 'grid' needs every dimension of type 'grid'; not: {others}")
        if self.search in ("tpe", "nsga2") and grids:
            raise ValueError(f"search {self.search!r} samples; use 'choice' instead of 'grid' for {grids}")
        if not self.space:
            raise ValueError("space is empty: name at least one setting to search")
        return self


@dataclass(frozen=True)
class Sweep:
    """A checked sweep: its name, where it came from, the raw base config and the settings."""

    name: str
    source: str
    base: dict[str, Any]
    settings: SweepSettings

    def base_config(self) -> RunConfig:
        return validate_config(self.base, self.source)

    def config_with(self, values: Mapping[str, Any]) -> RunConfig:
        """The base config with dotted settings replaced (``{'trainer.lr': 1e-4}``)."""
        pairs = [(key.split("."), value, f"sweep.space.{key}={value!r}") for key, value in values.items()]
        return validate_config(set_values(self.base, pairs), self.source)

    def trial_config(self, params: Mapping[str, Any]) -> RunConfig:
        """The run config of one trial: the base with the trial's Tune parameters applied."""
        return self.config_with(trial_point(params))


def trial_point(params: Mapping[str, Any]) -> dict[str, Any]:
    """The trial's point (dotted settings) from its Tune parameters (a signed dimension's sign and magnitude multiplied)."""
    values = dict(params)
    for key in [k for k in values if k.endswith(SIGN)]:
        name = key.removesuffix(SIGN)
        values[name] = values.pop(key) * values.pop(name + MAGNITUDE)
    return values


def resolve_sweep_path(path: str | Path) -> Path:
    """``path`` itself, or the packaged sweep preset of that name (``presets/sweeps/<name>.yaml``)."""
    candidate = Path(path)
    preset = SWEEP_PRESETS_DIR / f"{candidate.name.removesuffix('.yaml')}.yaml"
    if candidate.is_file():
        return candidate
    if candidate.parent == Path(".") and preset.is_file():
        return preset
    names = sorted(p.stem for p in SWEEP_PRESETS_DIR.glob("*.yaml"))
    raise ConfigError(f"sweep file {path} does not exist (and is not a packaged sweep preset: {names})")


def load_sweep(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Sweep:
    """Read a sweep file (or preset name); ``overrides`` apply to the base run config (``trainer.lr=...``) or,
    prefixed ``sweep.``, to the sweep settings. Raises :class:`ConfigError` before anything runs."""
    file = resolve_sweep_path(path)
    data = apply_overrides(read_config_file(file), overrides)
    raw = data.pop("sweep", None)
    if not isinstance(raw, dict):
        raise ConfigError(
            f"{file}: a sweep file needs a 'sweep:' section (search, space, ...); found {raw!r}"
        )
    try:
        settings = SweepSettings.model_validate(raw)
    except ValidationError as err:
        problems = "\n  - ".join(
            f"key 'sweep.{'.'.join(str(p) for p in e['loc'])}': {e['msg'].removeprefix('Value error, ')}"
            for e in err.errors()
        )
        raise ConfigError(f"invalid sweep {file}:\n  - {problems}") from None
    sweep = Sweep(file.stem, str(file), data, settings)
    _check_space(sweep)
    return sweep


def _check_space(sweep: Sweep) -> None:
    base = sweep.base_config()
    for point in sweep.settings.points_to_evaluate:
        if unknown := sorted(set(point) - set(sweep.settings.space)):
            raise ConfigError(
                f"{sweep.source}: sweep.points_to_evaluate names {unknown}, which are not in sweep.space"
            )
    for key, dimension in sweep.settings.space.items():
        if key not in TUNABLE:
            raise ConfigError(
                f"{sweep.source}: sweep.space key {key!r} cannot vary between trials; searchable: {list(TUNABLE)}"
            )
        needed = NEEDS_DRO_TYPE.get(key)
        if needed and base.method.dro.type != needed and "method.dro.type" not in sweep.settings.space:
            raise ConfigError(
                f"{sweep.source}: sweep.space searches {key!r}, which only matters with method.dro.type={needed!r};"
                f" the base config has method.dro.type={base.method.dro.type!r}"
            )
        values = dimension.corners() + [p[key] for p in sweep.settings.points_to_evaluate if key in p]
        for value in values:
            try:
                sweep.config_with({key: value})
            except ConfigError as err:
                raise ConfigError(
                    f"sweep.space.{key}: the value {value!r} makes an invalid run: {err}"
                ) from None


def tune_parameters(point: Mapping[str, Any], space: Mapping[str, Dimension]) -> dict[str, Any]:
    """A point of dotted settings as Tune parameters (a signed dimension's value split into sign and magnitude)."""
    params: dict[str, Any] = {}
    for key, value in point.items():
        if space[key].type == "signed_loguniform":
            params[key + SIGN], params[key + MAGNITUDE] = (1 if value > 0 else -1), abs(value)
        else:
            params[key] = value
    return params


def param_space(space: Mapping[str, Dimension]) -> dict[str, Any]:
    """The Tune search space of ``space``."""
    from ray import tune

    params: dict[str, Any] = {}
    for key, dim in space.items():
        if dim.type == "grid":
            params[key] = tune.grid_search(dim.values)
        elif dim.type == "choice":
            params[key] = tune.choice(dim.values)
        elif dim.type == "uniform":
            params[key] = tune.uniform(dim.low, dim.high)
        elif dim.type == "loguniform":
            params[key] = tune.loguniform(dim.low, dim.high)
        elif dim.type == "int":
            params[key] = tune.randint(int(dim.low), int(dim.high) + 1)
        else:
            params[key + SIGN] = tune.choice(list(dim.signs))
            params[key + MAGNITUDE] = tune.loguniform(dim.low, dim.high)
    return params
