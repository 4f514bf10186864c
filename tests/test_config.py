"""Configuration: YAML + dotted overrides, validated once with clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from baldro_ray.config import (
    ConfigError,
    DROConfig,
    MethodConfig,
    RunConfig,
    dump_config,
    flatten_config,
    load_config,
)
from baldro_ray.objectives import AGGREGATIONS, RETAIN_REDUCTIONS

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_defaults_are_valid_and_method_defaults_follow_the_method() -> None:
    config = load_config()
    assert config.method.name == "NPO" and config.method.beta == 0.1 and config.method.gamma == 1.0
    simnpo = load_config(overrides=["method.name=SimNPO"]).method
    assert (simnpo.beta, simnpo.delta, simnpo.gamma, simnpo.alpha) == (4.5, 0.0, 0.125, 1.0)
    satimp = load_config(overrides=["method.name=SatImp", "method.gamma=0.5"]).method
    assert (satimp.beta1, satimp.beta2, satimp.gamma) == (5.0, 1.0, 0.5)


def test_overrides_are_applied_in_order_and_typed() -> None:
    config = load_config(
        CONFIGS / "embedded_npo_dv.yaml",
        [
            "trainer.lr=2e-5",
            "method.dro.temperature=-2",
            "method.dro.temperature=5",
            "method.dro.temperature=null",
        ],
    )
    assert config.trainer.lr == 2e-5 and isinstance(config.trainer.lr, float)
    assert config.method.dro.temperature is None


def test_typo_suggests_the_closest_key() -> None:
    with pytest.raises(ConfigError) as err:
        load_config(overrides=["trainer.lrr=1e-4"])
    text = str(err.value)
    assert "unknown key 'trainer.lrr'" in text and "did you mean 'trainer.lr'?" in text
    assert "from override 'trainer.lrr=1e-4'" in text


def test_unknown_key_in_a_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("method:\n  dro:\n    temprature: -1\n")
    with pytest.raises(
        ConfigError, match=r"bad\.yaml(.|\n)*'method\.dro\.temprature'(.|\n)*'method\.dro\.temperature'"
    ):
        load_config(path)


@pytest.mark.parametrize(
    ("override", "fragment"),
    [
        ("trainer.lr=-1", "key 'trainer.lr' = -1"),
        ("trainer.epochs=0", "greater than or equal to 1"),
        ("method.dro.sampling_ratio=0", "key 'method.dro.sampling_ratio' = 0"),
        ("method.dro.sampling_ratio=1.5", "less than or equal to 1"),
        ("method.dro.temperature=0", "non-zero"),
        ("method.dro.type=worst", "'mean', 'group' or 'dv'"),
        ("method.name=NPOO", "did you mean 'NPO'?"),
        ("method.beta=0", "greater than 0"),
        ("trainer.schedule=cosine", "'linear' or 'constant'"),
        ("data.source=hub", "'synthetic', 'synthetic_muse', 'tofu', 'muse' or 'files'"),
        ("evaluation.token_positions=eos", "key 'evaluation.token_positions' = 'eos'"),
        ("evaluation.text_max_length=0", "key 'evaluation.text_max_length' = 0"),
    ],
)
def test_out_of_range_values_are_rejected_with_key_and_value(override: str, fragment: str) -> None:
    with pytest.raises(ConfigError, match="invalid configuration") as err:
        load_config(overrides=[override])
    assert fragment in str(err.value)


def test_every_problem_is_listed_at_once() -> None:
    with pytest.raises(ConfigError) as err:
        load_config(overrides=["trainer.lr=0", "trainer.epochs=abc", "model.nme=x"])
    assert str(err.value).count("\n  - ") == 3


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("trainer.lr", "must look like section.key=value"),
        ("=3", "must look like"),
        ("a..b=1", "must look like"),
    ],
)
def test_malformed_overrides(text: str, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        load_config(overrides=[text])


def test_override_through_a_value_is_an_error() -> None:
    with pytest.raises(ConfigError, match="'trainer.lr' is a value"):
        load_config(CONFIGS / "embedded_npo_dv.yaml", ["trainer.lr.x=1"])


def test_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("method: [unclosed\n")
    with pytest.raises(ConfigError, match="broken.yaml is not valid YAML"):
        load_config(broken)
    listed = tmp_path / "list.yaml"
    listed.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_config(listed)
    loop = tmp_path / "loop.yaml"
    loop.write_text("extends: loop.yaml\n")
    with pytest.raises(ConfigError, match="extends itself"):
        load_config(loop)


def test_extends_merges_sections_deeply() -> None:
    config = load_config(CONFIGS / "embedded_npo_g.yaml")
    assert config.method.dro.type == "group" and config.method.dro.sampling_ratio == 0.5
    assert config.trainer.lr == 1e-3 and config.method.retain_reduction == "sequence_sum_mean"


def test_preset_names_resolve_to_the_packaged_presets() -> None:
    assert load_config("embedded_npo_g") == load_config(CONFIGS / "embedded_npo_g.yaml")
    with pytest.raises(
        ConfigError,
        match=r"not a packaged preset; did you mean 'embedded_npo(.|\n)*packaged presets: \['embedded_muse_npo'",
    ):
        load_config("embedded_npo_x")


def test_dump_round_trips_and_flatten_uses_slashes(tmp_path: Path) -> None:
    config = load_config(CONFIGS / "embedded_npo_dv.yaml", ["trainer.seed=3"])
    path = tmp_path / "resolved.yaml"
    path.write_text(dump_config(config))
    assert load_config(path) == config
    flat = flatten_config(config)
    assert flat["method/dro/temperature"] == -1.0 and flat["trainer/seed"] == 3


@pytest.mark.parametrize(
    ("overrides", "recorded"),
    [
        (["method.dro.type=mean"], set()),
        (["method.dro.type=group"], {"sampling_ratio"}),
        (["method.dro.type=dv"], {"temperature"}),
        (["method.dro.type=mean", "method.dro.retain_dro=true"], {"temperature"}),
    ],
)
def test_trackers_get_only_the_dro_settings_in_use(overrides: list[str], recorded: set[str]) -> None:
    config = load_config(None, overrides)
    flat = flatten_config(config)
    assert {k for k in ("temperature", "sampling_ratio") if f"method/dro/{k}" in flat} == recorded
    assert flat["method/dro/type"] == config.method.dro.type and "method/dro/scope" in flat


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_validates(path: Path) -> None:
    assert isinstance(load_config(path), RunConfig)


def test_config_choices_match_the_objective_library() -> None:
    assert set(DROConfig.model_fields["type"].annotation.__args__) == set(AGGREGATIONS)
    assert set(MethodConfig.model_fields["retain_reduction"].annotation.__args__) == set(RETAIN_REDUCTIONS)


def test_extends_takes_a_list_merged_in_order(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("trainer: {lr: 1.0e-4, epochs: 3}\nmethod: {beta: 0.2}\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\ntrainer: {lr: 2.0e-4}\n")
    (tmp_path / "c.yaml").write_text("extends: a.yaml\nmethod: {beta: 0.3}\n")
    # b and c both extend a (a diamond, not a cycle); c comes later and wins where they differ; own keys win last
    (tmp_path / "run.yaml").write_text("extends: [b.yaml, c.yaml]\ntrainer: {epochs: 4}\n")
    config = load_config(tmp_path / "run.yaml")
    assert (config.trainer.lr, config.trainer.epochs, config.method.beta) == (1e-4, 4, 0.3)
    (tmp_path / "run2.yaml").write_text("extends: [c.yaml, b.yaml]\n")
    assert load_config(tmp_path / "run2.yaml").trainer.lr == 2e-4


def test_extends_names_a_packaged_preset_when_no_file_is_beside(tmp_path: Path) -> None:
    path = tmp_path / "mine.yaml"
    path.write_text("extends: [embedded_npo_dv, tofu_llama2/_forget01]\ntrainer: {epochs: 2}\n")
    config = load_config(path)
    assert config.method.dro.type == "dv" and config.data.forget_split == "forget01"
    assert (
        config.trainer.epochs == 2 and config.trainer.num_workers == 8
    )  # the later base wins over the earlier


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("extends: []\n", "non-empty list"),
        ("extends: 3\n", "must be a file path or preset name"),
        ("extends: [a.yaml, 3]\n", "must be a file path or preset name"),
        ("extends: nowhere.yaml\n", r"'extends' entry 'nowhere.yaml' is not a file next to it"),
        ("extends: embeded_npo_dv\n", "did you mean 'embedded_npo_dv'"),
    ],
)
def test_extends_errors(tmp_path: Path, text: str, fragment: str) -> None:
    (tmp_path / "a.yaml").write_text("{}\n")
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=fragment):
        load_config(path)


def test_a_cycle_through_a_list_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("extends: [ok.yaml, b.yaml]\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\n")
    (tmp_path / "ok.yaml").write_text("{}\n")
    with pytest.raises(ConfigError, match=r"a\.yaml extends itself through"):
        load_config(tmp_path / "a.yaml")
