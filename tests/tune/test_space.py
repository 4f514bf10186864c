"""Sweep files, search spaces and the Pareto front, without Ray: every problem is one ConfigError before a trial."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from baldro_ray.config import PRESETS_DIR, ConfigError, load_config
from baldro_ray.tune.pareto import pareto_front
from baldro_ray.tune.results import on_reference_grid
from baldro_ray.tune.space import SWEEP_PRESETS_DIR, load_sweep, trial_point, tune_parameters
from baldro_ray.tune.sweep import max_concurrent_trials


def sweep_file(tmp_path: Path, sweep: str, base: str = "embedded_npo_dv.yaml") -> Path:
    path = tmp_path / "sweep.yaml"
    path.write_text(f"extends: {PRESETS_DIR / base}\nsweep:\n{sweep}")
    return path


def test_every_sweep_preset_loads() -> None:
    names = sorted(p.stem for p in SWEEP_PRESETS_DIR.glob("[!_]*.yaml"))
    assert len(names) == 11
    for name in names:
        sweep = load_sweep(name)
        assert sweep.base_config().evaluation.enabled


def test_signed_temperature_is_a_sign_times_a_log_uniform_magnitude(tmp_path: Path) -> None:
    path = sweep_file(
        tmp_path,
        "  space:\n    method.dro.temperature: {type: signed_loguniform, low: 0.5, high: 10}\n"
        "  points_to_evaluate: [{method.dro.temperature: -2.0}]\n",
    )
    sweep = load_sweep(path)
    params = tune_parameters({"method.dro.temperature": -2.0}, sweep.settings.space)
    assert params == {"method.dro.temperature.sign": -1, "method.dro.temperature.magnitude": 2.0}
    assert trial_point(params) == {"method.dro.temperature": -2.0}
    assert sweep.trial_config(params).method.dro.temperature == -2.0
    assert sweep.settings.space["method.dro.temperature"].corners() == [-0.5, -10.0, 0.5, 10.0]


@pytest.mark.parametrize(
    ("sweep", "fragment"),
    [
        ("  space:\n    data.forget_split: {type: grid, values: [forget01]}\n", "cannot vary between trials"),
        ("  space:\n    trainer.lr: {type: loguniform, low: 0, high: 1}\n", "needs low > 0"),
        (
            "  space:\n    trainer.lr: {type: grid, values: [1.0e-3, -1]}\n",
            "the value -1 makes an invalid run",
        ),
        ("  search: grid\n  space:\n    trainer.lr: {type: uniform, low: 0.1, high: 1}\n", "every dimension"),
        ("  search: tpe\n  space:\n    trainer.lr: {type: grid, values: [0.1]}\n", "use 'choice'"),
        ("  space: {}\n", "space is empty"),
        (
            "  space:\n    trainer.lr: {type: grid, values: [0.1]}\n  points_to_evaluate: [{trainer.epochs: 2}]\n",
            "not in sweep.space",
        ),
        ("  space:\n    trainer.lr: {type: grid, values: [0.1]}\n  schedular: asha\n", "sweep.schedular"),
    ],
)
def test_bad_sweeps_fail_with_one_clear_error(tmp_path: Path, sweep: str, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        load_sweep(sweep_file(tmp_path, sweep))


def test_a_searched_setting_the_base_aggregation_ignores_is_an_error(tmp_path: Path) -> None:
    path = sweep_file(
        tmp_path, "  space:\n    method.dro.sampling_ratio: {type: uniform, low: 0.1, high: 0.9}\n"
    )
    with pytest.raises(ConfigError, match="only matters with method.dro.type='group'"):
        load_sweep(path)
    assert load_sweep(path, ["method.dro.type=group"]).base_config().method.dro.type == "group"


def test_a_sweep_without_its_section_or_file_is_an_error(tmp_path: Path) -> None:
    plain = tmp_path / "run.yaml"
    plain.write_text(f"extends: {PRESETS_DIR / 'embedded_npo_dv.yaml'}\n")
    with pytest.raises(ConfigError, match="needs a 'sweep:' section"):
        load_sweep(plain)
    with pytest.raises(ConfigError, match="not a packaged sweep preset"):
        load_sweep("no_such_sweep")


def test_pareto_front_by_hand() -> None:
    points = [(0.1, 0.9), (0.5, 0.5), (0.4, 0.4), (0.9, 0.1), (0.9, 0.05), (math.nan, 1.0), (0.5, 0.5)]
    # (0.4, 0.4) is dominated by (0.5, 0.5); (0.9, 0.05) by (0.9, 0.1); NaN never on the front; ties both stay
    assert pareto_front(points) == [0, 1, 6, 3]


def test_reference_grid_points() -> None:
    assert on_reference_grid(load_config("embedded_npo_dv", ["method.dro.temperature=-5"]))
    assert not on_reference_grid(load_config("embedded_npo_dv", ["method.dro.temperature=5"]))
    assert on_reference_grid(load_config("embedded_npo_g"))
    assert not on_reference_grid(load_config("embedded_npo"))


def test_concurrent_trials_follow_the_cluster_and_the_trial_size() -> None:
    config = load_config("embedded_npo_dv")  # 2 workers x 1 CPU, 2 replicas x 1 CPU
    assert max_concurrent_trials(config, {"CPU": 2.0}) == 1
    assert max_concurrent_trials(config, {"CPU": 9.0}) == 4
    gpu = load_config("embedded_npo_dv", ["trainer.use_gpu=true", "evaluation.use_gpu=true"])
    assert max_concurrent_trials(gpu, {"CPU": 64.0, "GPU": 8.0}) == 4
    assert max_concurrent_trials(gpu, {"CPU": 64.0}) == 1  # an autoscaler adds GPU nodes on demand
