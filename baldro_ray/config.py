"""Typed run configuration: YAML files in ``configs/`` plus dotted ``key=value`` overrides, validated once.

Invariant: a :class:`RunConfig` that exists is valid — unknown keys, bad types and out-of-range values are rejected
by :func:`load_config` with a :class:`ConfigError` naming the key path, the value found and what is allowed (and the
closest valid key for typos), before anything runs. Hyperparameter names follow open-unlearning and the BalDRO paper.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from baldro_ray.data.render import TEMPLATES, PromptTemplate, resolve_template
from baldro_ray.data.synthetic import SyntheticConfig
from baldro_ray.data.synthetic_muse import SyntheticMuseConfig
from baldro_ray.errors import UserError
from baldro_ray.models.tiny import TinyModelSpec
from baldro_ray.objectives import FORGET_LOSSES, Aggregation, get_forget_loss


class ConfigError(UserError, ValueError):
    """A configuration problem, reported before any compute starts (a ``ValueError`` too, for older callers)."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


class DROConfig(_Section):
    """How the per-unit forget losses are aggregated: ``mean`` (ERM), ``group`` (BalDRO-G) or ``dv`` (BalDRO-DV)."""

    type: Literal["mean", "group", "dv"] = "mean"
    temperature: float | None = Field(
        default=-1.0,
        description="signed DV temperature t: t<0 is the reference BalDRO-DV (t = -beta_dv_forget / -sigma_forget), "
        "t>0 the textbook worst case, null the mean",
    )
    sampling_ratio: float = Field(
        default=0.5, gt=0, le=1, description="BalDRO-G: fraction of the forget batch kept"
    )
    scope: Literal["global", "local"] = Field(
        default="global",
        description="global: DRO over the whole optimizer-step batch on all ranks; local: per device micro-batch "
        "(reference behaviour)",
    )
    retain_dro: bool = Field(default=False, description="apply the same DV form to per-sequence retain NLL")

    @field_validator("temperature")
    @classmethod
    def _temperature_not_zero(cls, value: float | None) -> float | None:
        if value is not None and (value == 0 or math.isnan(value)):
            raise ValueError(
                "must be a non-zero number (negative: reference form, positive: textbook form) or null"
            )
        return value

    def aggregation(self) -> Aggregation:
        """The forget aggregation, holding only the setting its type reads (the others are ignored)."""
        return Aggregation.of(self.type, self.temperature, self.sampling_ratio)

    def retain_aggregation(self) -> Aggregation | None:
        """DV at the same temperature over per-sequence retain NLL with ``retain_dro``; else None (the mean)."""
        return Aggregation.dv(self.temperature) if self.retain_dro else None


class MethodConfig(_Section):
    """Forget loss x aggregation x retain loss; unset hyperparameters take the method's reference defaults."""

    name: str = "NPO"
    beta: float = Field(default=0.1, gt=0, description="NPO / SimNPO inverse temperature")
    delta: float = Field(default=0.0, description="SimNPO margin")
    beta1: float = Field(default=5.0, ge=0, description="SatImp exponent of p")
    beta2: float = Field(default=1.0, ge=0, description="SatImp exponent of 1 - p")
    gamma: float = Field(default=1.0, ge=0, description="weight of the forget loss")
    alpha: float = Field(default=1.0, ge=0, description="weight of the retain loss")
    retain_loss_type: Literal["NLL", "KL"] = "NLL"
    retain_reduction: Literal["token_mean", "sequence_sum_mean"] = "token_mean"
    dro: DROConfig = DROConfig()

    @model_validator(mode="before")
    @classmethod
    def _method_defaults(cls, data: Any) -> Any:
        if isinstance(data, Mapping):
            name = data.get("name", "NPO")
            if isinstance(name, str) and name in FORGET_LOSSES:
                data = {**FORGET_LOSSES[name].defaults, **data}
        return data

    @field_validator("name")
    @classmethod
    def _known_method(cls, value: str) -> str:
        get_forget_loss(value)
        return value

    def hyperparameters(self) -> dict[str, float]:
        """The values the forget loss may read, by their open-unlearning names."""
        return {"beta": self.beta, "delta": self.delta, "beta1": self.beta1, "beta2": self.beta2}


# The benchmark each data source holds; the embedded sources are generated, in that benchmark's layout.
BENCHMARK_OF_SOURCE = {
    "synthetic": "TOFU",
    "tofu": "TOFU",
    "synthetic_muse": "MUSE",
    "muse": "MUSE",
    "files": None,
}
EMBEDDED_SOURCES = ("synthetic", "synthetic_muse")


class DataConfig(_Section):
    """Where the forget/retain/holdout splits come from: ``synthetic`` / ``synthetic_muse`` are the embedded
    TOFU-format / MUSE-format benchmarks, ``tofu`` / ``muse`` the user's folder or hub dataset in that layout,
    ``files`` plain data files."""

    source: Literal["synthetic", "synthetic_muse", "tofu", "muse", "files"] = "synthetic"
    location: str | None = Field(
        default=None, description="folder or Hugging Face dataset name; null: generated"
    )
    forget_split: str = "forget10"
    retain_split: str = "retain90"
    holdout_split: str = "holdout10"

    @property
    def benchmark(self) -> str | None:
        """ "TOFU" or "MUSE": the benchmark the source holds and evaluation measures; None for plain files."""
        return BENCHMARK_OF_SOURCE[self.source]

    @property
    def embedded(self) -> bool:
        """Whether the data is an embedded benchmark, generated with its tiny models."""
        return self.source in EMBEDDED_SOURCES


class PromptTagsConfig(_Section):
    """Explicit prompt tags (open-unlearning's template fields), or the tokenizer's chat template with its system
    prompt and date string."""

    user_start: str = ""
    user_end: str = ""
    assistant_start: str = ""
    assistant_end: str = Field(
        default="",
        description="closes the answers of earlier turns (few-shot examples), not the scored answer",
    )
    chat_template: bool = False
    system_prompt: str = Field(default="", description="chat_template: a system message when non-empty")
    date_string: str = Field(
        default="", description="chat_template: the date_string passed to it when non-empty"
    )


class ModelConfig(_Section):
    """The model to unlearn (a local folder saved with save_pretrained, or a Hugging Face name)."""

    name_or_path: str = "tiny"
    tokenizer: str | None = Field(default=None, description="defaults to name_or_path")
    template: str | PromptTagsConfig = Field(
        default="tiny",
        description="prompt template: tiny | llama2-chat | plain | llama3-chat | chat_template (the tokenizer's, "
        "as it is), or explicit tags",
    )

    @field_validator("template")
    @classmethod
    def _known_template(cls, value: str | PromptTagsConfig) -> str | PromptTagsConfig:
        if isinstance(value, str) and value not in TEMPLATES:
            raise ValueError(
                f"unknown template {value!r}; expected one of {sorted(TEMPLATES)} or a mapping of tags"
            )
        return value

    def prompt_template(self) -> PromptTemplate:
        """The resolved :class:`PromptTemplate`."""
        return resolve_template(
            self.template if isinstance(self.template, str) else self.template.model_dump()
        )


class DeepSpeedSection(_Section):
    """DeepSpeed ZeRO settings; ``zero_stage: null`` trains with plain DDP."""

    zero_stage: Literal[0, 1, 2, 3] | None = None
    offload_optimizer: bool = False
    offload_param: bool = Field(default=False, description="ZeRO-3 only")
    bf16: bool = False

    @model_validator(mode="after")
    def _offload_needs_stage(self) -> DeepSpeedSection:
        if self.offload_param and self.zero_stage != 3:
            raise ValueError(f"offload_param needs zero_stage 3; got zero_stage={self.zero_stage}")
        if self.offload_optimizer and not self.zero_stage:
            raise ValueError(f"offload_optimizer needs zero_stage >= 1; got zero_stage={self.zero_stage}")
        return self


class TrainerConfig(_Section):
    """Optimisation settings, named as in the reference presets."""

    lr: float = Field(default=1e-5, gt=0)
    weight_decay: float = Field(default=0.01, ge=0)
    epochs: int = Field(default=10, ge=1)
    per_device_batch_size: int = Field(default=8, ge=1)
    gradient_accumulation_steps: int = Field(default=1, ge=1)
    warmup_epochs: float = Field(default=1.0, ge=0)
    schedule: Literal["linear", "constant"] = "linear"
    seed: int = Field(default=0, ge=0)
    max_length: int = Field(default=512, ge=8)
    num_workers: int = Field(default=2, ge=1)
    cpus_per_worker: float = Field(default=1.0, gt=0)
    use_gpu: bool = False
    deepspeed: DeepSpeedSection = DeepSpeedSection()
    max_failures: int = Field(
        default=0, ge=0, description="Ray Train restarts from the last epoch checkpoint"
    )
    dtype: Literal["float32", "bfloat16", "float64"] | None = Field(
        default=None, description="weights dtype; null keeps the checkpoint's"
    )
    gradient_clipping: float | None = Field(default=None, gt=0)


class FinetuneConfig(_Section):
    """How the embedded benchmark's tiny target and retain models are fine-tuned (Ray Train, DDP)."""

    epochs: int = Field(default=12, ge=1)
    lr: float = Field(default=5e-3, gt=0)
    weight_decay: float = Field(default=0.0, ge=0)
    per_device_batch_size: int = Field(default=16, ge=1)
    warmup_epochs: float = Field(default=1.0, ge=0)
    seed: int = Field(default=0, ge=0)
    num_workers: int = Field(default=2, ge=1)
    cpus_per_worker: float = Field(default=1.0, gt=0)
    max_length: int = Field(default=128, ge=8)
    use_gpu: bool = False


class EmbeddedConfig(_Section):
    """The embedded defaults: synthetic fictitious-author (TOFU-format) and fictitious-news (MUSE-format)
    benchmarks and tiny Llama models trained locally."""

    cache_dir: str = Field(
        default="~/.cache/baldro-ray", description="benchmark and models, keyed by content hash"
    )
    benchmark: SyntheticConfig = SyntheticConfig()
    muse: SyntheticMuseConfig = Field(
        default=SyntheticMuseConfig(), description="the MUSE-format benchmark (data.source=synthetic_muse)"
    )
    vocab_size: int = Field(default=2048, ge=300)
    tiny_model: TinyModelSpec = TinyModelSpec()
    model_seed: int = Field(default=0, ge=0)
    finetune: FinetuneConfig = FinetuneConfig()


class EvaluationConfig(_Section):
    """Evaluation of the unlearned model (TOFU metrics for synthetic/tofu data, MUSE metrics for muse data)."""

    enabled: bool = Field(default=True, description="evaluate after unlearning")
    every_epoch: bool = Field(
        default=True, description="save and evaluate every epoch's model; the best one is kept as best_model/"
    )
    replicas: int = Field(default=1, ge=1, description="model replicas in the Ray Data actor pool")
    cpus_per_replica: float = Field(default=1.0, gt=0)
    use_gpu: bool = Field(default=False, description="one GPU per replica")
    batch_size: int = Field(default=16, ge=1, description="rows per scoring or generation batch")
    max_new_tokens: int = Field(default=200, ge=1, description="greedy generation length (TOFU ROUGE)")
    text_max_length: int = Field(
        default=2048,
        ge=1,
        description="tokens of a raw text scored after its prefix (MUSE membership attacks and extraction "
        "strength); MUSE's default, open-unlearning's MUSE_MIA.yaml",
    )
    token_positions: Literal["open_unlearning", "all"] = Field(
        default="open_unlearning",
        description="positions of Min-K%, Min-K%++ and extraction strength: open_unlearning (every labelled "
        "token but the last, k capped at n-1) or all (every labelled token, k uncapped)",
    )
    retain_model: str | None = Field(
        default=None,
        description="the retain model (folder or hub name) for forget quality and privleak; "
        "synthetic data: the embedded retain model",
    )
    retain_logs_path: str | None = Field(
        default=None, description="an open-unlearning TOFU_EVAL.json of the retain model, used instead"
    )
    objective: Literal["geometric", "arithmetic", "utility_at_fq_floor"] = Field(
        default="geometric",
        description="the combined forget/utility score (eval/score) that picks the best epoch and drives Tune: "
        "weighted geometric or arithmetic mean of the forget term (TOFU: 1 - KS statistic) and the utility term "
        "(TOFU: model utility), or model utility among models whose forget quality reaches fq_floor",
    )
    forget_weight: float = Field(default=1.0, ge=0, description="combined score: weight of the forget term")
    utility_weight: float = Field(default=1.0, ge=0, description="combined score: weight of the utility term")
    fq_floor: float = Field(
        default=0.05,
        gt=0,
        le=1,
        description="utility_at_fq_floor: the forget quality (p-value) a model must reach",
    )

    @property
    def per_epoch(self) -> bool:
        """Whether every epoch's model is saved and evaluated."""
        return self.enabled and self.every_epoch

    @model_validator(mode="after")
    def _weights_not_both_zero(self) -> EvaluationConfig:
        if self.forget_weight + self.utility_weight == 0:
            raise ValueError("forget_weight and utility_weight cannot both be 0")
        return self


class TrackingConfig(_Section):
    """MLflow tracking: an embedded sqlite store under output_dir unless a tracking URI is given."""

    enabled: bool = True
    tracking_uri: str | None = Field(
        default=None,
        description="null: $MLFLOW_TRACKING_URI if set, else sqlite:///<output_dir>/mlflow.db",
    )
    experiment: str = "baldro-ray"
    on_unreachable: Literal["fail", "local"] = Field(
        default="fail",
        description="fail before training, or record into the local sqlite store and keep a marker to sync later",
    )
    log_model: bool = Field(default=True, description="log the final model as an MLflow transformers model")
    registered_model_name: str | None = Field(
        default=None, description="also register the logged model under this name"
    )


class RunConfig(_Section):
    """One unlearning run."""

    method: MethodConfig = MethodConfig()
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    trainer: TrainerConfig = TrainerConfig()
    embedded: EmbeddedConfig = EmbeddedConfig()
    evaluation: EvaluationConfig = EvaluationConfig()
    tracking: TrackingConfig = TrackingConfig()
    output_dir: str = "outputs"


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {path} is not valid YAML: {err}") from err
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"config file {path} must hold a mapping at the top level; found {type(data).__name__}"
        )
    return data


def _deep_merge(base: dict[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _deep_merge(dict(merged[key]), value)
        else:
            merged[key] = value
    return merged


def read_config_file(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The raw mapping of a YAML config with its ``extends`` merged underneath.

    ``extends`` is one entry or a list of entries, merged in order (a later entry overrides an earlier one, the
    file's own keys override them all); an entry is a file path relative to the file or, when no such file exists,
    a packaged preset name (see :func:`resolve_config_path`). A file that extends itself, directly or through
    others, is an error; the same base reached along two branches is not.
    """
    path = Path(path).resolve()
    if path in _seen:
        raise ConfigError(f"config file {path} extends itself through {[str(p) for p in _seen]}")
    data = _read_yaml(path)
    merged: dict[str, Any] = {}
    for parent in _extends_entries(path, data.pop("extends", None)):
        merged = _deep_merge(merged, read_config_file(parent, (*_seen, path)))
    return _deep_merge(merged, data)


def _extends_entries(path: Path, value: Any) -> list[Path]:
    """The files that ``extends: value`` of the config file ``path`` names, in merge order."""
    if value is None:
        return []
    entries = [value] if isinstance(value, str) else value
    if not isinstance(entries, list) or not entries or not all(isinstance(e, str) and e for e in entries):
        raise ConfigError(
            f"{path}: key 'extends' must be a file path or preset name, or a non-empty list of them; "
            f"found {value!r}"
        )
    files = []
    for entry in entries:
        beside = path.parent / entry
        if beside.is_file():
            files.append(beside)
            continue
        try:
            files.append(_preset_file(entry))
        except ConfigError as err:
            raise ConfigError(
                f"{path}: 'extends' entry {entry!r} is not a file next to it ({beside}): {err}"
            ) from None
    return files


def parse_override(text: str) -> tuple[list[str], Any]:
    """``'trainer.lr=2e-5'`` -> ``(['trainer', 'lr'], 2e-05)``; the value is read as YAML (``null``, lists...)."""
    key, sep, raw = text.partition("=")
    parts = key.strip().split(".")
    if not sep or not all(parts):
        raise ConfigError(f"override {text!r} must look like section.key=value (e.g. trainer.lr=2e-5)")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as err:
        raise ConfigError(f"override {text!r}: the value is not valid YAML: {err}") from err
    return parts, value


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Set each dotted ``key=value``; unknown keys are kept so that validation reports them with a suggestion."""
    return set_values(data, [(*parse_override(text), f"override {text!r}") for text in overrides])


def set_values(data: dict[str, Any], values: Sequence[tuple[list[str], Any, str]]) -> dict[str, Any]:
    """A copy of ``data`` with each ``(key path, value, label)`` set; ``label`` names the source in errors."""
    result = _deep_merge({}, data)
    for parts, value, label in values:
        node = result
        for depth, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, dict):
                prefix = ".".join(parts[: depth + 1])
                raise ConfigError(f"{label}: {prefix!r} is a value ({child!r}), not a section")
            else:
                child = node[part] = dict(child)
            node = child
        node[parts[-1]] = value
    return result


def _known_keys(loc: Sequence[str | int]) -> list[str]:
    """The keys allowed in the section at ``loc`` (pydantic sections and dataclass sections alike)."""
    section: Any = RunConfig
    for part in loc:
        fields = _fields_of(section)
        if str(part) not in fields:
            return []
        annotation = fields[str(part)]
        nested = [c for c in (annotation, *typing.get_args(annotation)) if _fields_of(c)]
        if not nested:
            return []
        section = nested[0]
    return sorted(_fields_of(section))


def _fields_of(section: Any) -> dict[str, Any]:
    if isinstance(section, type) and issubclass(section, BaseModel):
        return {name: field.annotation for name, field in section.model_fields.items()}
    if dataclasses.is_dataclass(section) and isinstance(section, type):
        hints = typing.get_type_hints(section)
        return {f.name: hints[f.name] for f in dataclasses.fields(section)}
    return {}


def _describe(error: Mapping[str, Any], overrides: Sequence[str]) -> str:
    loc = [str(p) for p in error["loc"]]
    key = ".".join(loc)
    origin = next(
        (
            f" (from override {o!r})"
            for o in overrides
            if f"{o.partition('=')[0].strip()}.".startswith(f"{key}.")
        ),
        "",
    )
    if error["type"] in ("extra_forbidden", "unexpected_keyword_argument"):
        known = _known_keys(loc[:-1])
        close = difflib.get_close_matches(loc[-1], known, n=1)
        hint = f"did you mean {'.'.join([*loc[:-1], close[0]])!r}? " if close else ""
        return f"unknown key {key!r}{origin}: {hint}allowed keys here: {known}"
    message = error["msg"].removeprefix("Value error, ")
    return f"key {key!r} = {error.get('input')!r}{origin}: {message}"


def validate_config(
    data: Mapping[str, Any], source: str = "<config>", overrides: Sequence[str] = ()
) -> RunConfig:
    """Build a :class:`RunConfig`, turning every validation problem into one :class:`ConfigError`."""
    try:
        return RunConfig.model_validate(data)
    except ValidationError as err:
        problems = "\n  - ".join(_describe(e, overrides) for e in err.errors())
        raise ConfigError(f"invalid configuration {source}:\n  - {problems}") from None


PRESETS_DIR = Path(__file__).parent / "presets"
# Folders of packaged YAML files that are not run configurations (Tune search spaces).
_NOT_RUN_FOLDERS = frozenset({"sweeps"})


def list_presets() -> list[str]:
    """The names of the packaged presets that are complete runs, sorted: each YAML file under ``presets/`` by its
    path without ``.yaml`` (``tofu_llama2/npo_dv_forget10``). Files and folders whose name starts with ``_`` are
    bases that presets extend, and ``sweeps/`` holds Tune search spaces: neither is listed (bases still load by
    name)."""
    names = []
    for file in PRESETS_DIR.rglob("*.yaml"):
        parts = file.relative_to(PRESETS_DIR).with_suffix("").parts
        if parts[0] not in _NOT_RUN_FOLDERS and not any(part.startswith("_") for part in parts):
            names.append("/".join(parts))
    return sorted(names)


def _preset_file(name: str) -> Path:
    """The packaged preset file of ``name`` (with or without ``.yaml``); :class:`ConfigError` listing the presets,
    closest first, when there is none."""
    parts = Path(name.removesuffix(".yaml")).parts
    if parts and not Path(name).is_absolute() and ".." not in parts:
        file = PRESETS_DIR.joinpath(*parts[:-1], f"{parts[-1]}.yaml")
        if file.is_file():
            return file
    names = list_presets()
    close = difflib.get_close_matches(name.removesuffix(".yaml"), names, n=3)
    hint = f"did you mean {' or '.join(map(repr, close))}? " if close else ""
    raise ConfigError(f"not a packaged preset; {hint}packaged presets: {names}")


def resolve_config_path(path: str | Path) -> Path:
    """``path`` itself when that file exists, else the packaged preset of that name (``embedded_npo_dv`` ->
    ``presets/embedded_npo_dv.yaml``, ``tofu_llama2/npo_dv_forget10`` -> ``presets/tofu_llama2/npo_dv_forget10.yaml``);
    :class:`ConfigError` listing the presets when neither exists."""
    candidate = Path(path)
    if candidate.is_file():
        return candidate
    try:
        return _preset_file(str(path))
    except ConfigError as err:
        raise ConfigError(f"config file {path} does not exist (and is {err})") from None


def load_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> RunConfig:
    """Read ``path`` (a file or a preset name; or the defaults), apply ``overrides`` in order, validate; raises
    :class:`ConfigError`."""
    if path is None:
        return validate_config(apply_overrides({}, overrides), "<defaults>", overrides)
    file = resolve_config_path(path)
    source = str(path) if file == Path(path) else f"{path} ({file})"
    return validate_config(apply_overrides(read_config_file(file), overrides), source, overrides)


def dump_config(config: RunConfig) -> str:
    """The resolved configuration as YAML; ``load_config`` of this text gives back an equal config."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)


def dro_settings_in_use(dro: DROConfig) -> dict[str, Any]:
    """``method.dro`` without the settings no aggregation of the run reads (no temperature on a mean run)."""
    used = dro.model_dump(mode="json")
    readers = [dro.aggregation(), dro.retain_aggregation()]
    for key in ("temperature", "sampling_ratio"):
        if not any(a is not None and key in a.params() for a in readers):
            del used[key]
    return used


def flatten_config(config: RunConfig, sep: str = "/") -> dict[str, Any]:
    """Flat ``{'method/dro/temperature': -1.0, ...}`` for experiment trackers, with only the DRO settings in use."""

    def walk(prefix: str, value: Any) -> typing.Iterator[tuple[str, Any]]:
        if isinstance(value, dict):
            for key, child in value.items():
                yield from walk(f"{prefix}{sep}{key}" if prefix else key, child)
        else:
            yield prefix, value

    data = config.model_dump(mode="json")
    data["method"]["dro"] = dro_settings_in_use(config.method.dro)
    return dict(walk("", data))
