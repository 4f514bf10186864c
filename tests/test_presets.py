"""The packaged presets: every one loads and validates, the paper's reference hyperparameters are where the bases put
them, every listed name is documented in configs/README.md and packaged, and a wrong key fails with a clear message."""

from __future__ import annotations

import fnmatch
import shutil
import tomllib
from pathlib import Path

import pytest

from baldro_ray import config as config_module
from baldro_ray.config import PRESETS_DIR, ConfigError, RunConfig, list_presets, load_config

REPO = Path(__file__).resolve().parents[1]
PRESETS = list_presets()
SPLITS = {
    "01": ("forget01", "retain99", "holdout01"),
    "05": ("forget05", "retain95", "holdout05"),
    "10": ("forget10", "retain90", "holdout10"),
}
FORGET01_ROWS = 40  # the smallest TOFU forget split
METHODS = {"npo": "NPO", "simnpo": "SimNPO", "satimp": "SatImp"}


def test_the_paper_grid_is_there() -> None:
    for family in ("tofu_llama2", "tofu_llama32_1b"):
        for method in METHODS:
            for variant in ("", "_g", "_dv"):
                for split in SPLITS:
                    assert f"{family}/{method}{variant}_forget{split}" in PRESETS
    for corpus in ("news", "books"):
        for method in METHODS:
            for variant in ("", "_g", "_dv"):
                assert f"muse_llama2/{corpus}_{method}{variant}" in PRESETS
    assert {"embedded_npo", "embedded_npo_dv", "embedded_npo_g"} <= set(PRESETS)
    assert not [
        name for name in PRESETS if "/_" in name or name.startswith(("_", "sweeps/"))
    ]  # bases: not runs


@pytest.mark.parametrize("name", PRESETS)
def test_every_preset_loads_and_validates(name: str) -> None:
    assert isinstance(load_config(name), RunConfig)


@pytest.mark.parametrize(
    "path",
    sorted(p for p in PRESETS_DIR.rglob("*.yaml") if p.relative_to(PRESETS_DIR).parts[0] != "sweeps"),
    ids=lambda p: str(p.relative_to(PRESETS_DIR)),
)
def test_every_base_is_a_valid_partial_config(path: Path) -> None:
    assert isinstance(load_config(path), RunConfig)


@pytest.mark.parametrize("split", SPLITS)
@pytest.mark.parametrize("family", ["tofu_llama2", "tofu_llama32_1b"])
def test_tofu_presets_carry_the_reference_settings(family: str, split: str) -> None:
    _forget, retain, _holdout = SPLITS[split]
    for method, name in METHODS.items():
        base, group, dv = (load_config(f"{family}/{method}{v}_forget{split}") for v in ("", "_g", "_dv"))
        for config in (base, group, dv):
            assert config.method.name == name and config.data.source == "tofu"
            assert (config.data.forget_split, config.data.retain_split, config.data.holdout_split) == SPLITS[
                split
            ]
            assert config.evaluation.retain_model is not None and config.evaluation.retain_model.endswith(
                retain
            )
            trainer = config.trainer
            assert (trainer.lr, trainer.weight_decay, trainer.seed, trainer.max_length) == (
                1e-5,
                0.01,
                0,
                512,
            )
            assert (trainer.warmup_epochs, trainer.schedule) == (1.0, "linear")
            assert trainer.epochs == (5 if name == "SatImp" else 10)
            # The reference's 16 forget rows per optimizer step (8 per device x 2 accumulation on one GPU) ...
            rows = trainer.num_workers * trainer.per_device_batch_size * trainer.gradient_accumulation_steps
            assert rows == 16
            # ... and a micro-step's rows fit in the smallest forget split (resolve_run checks this too).
            assert trainer.num_workers * trainer.per_device_batch_size <= FORGET01_ROWS
            assert trainer.use_gpu and trainer.deepspeed.bf16 and trainer.dtype == "bfloat16"
            assert config.evaluation.use_gpu and config.evaluation.replicas == trainer.num_workers
        assert (
            base.method.dro.type == "mean" and group.method.dro.type == "group" and dv.method.dro.type == "dv"
        )
        assert group.method.dro.sampling_ratio == 0.5
        assert dv.method.dro.temperature == -1.0  # the reference form, tau = 1
        # The reference Dr classes use the mean of per-sequence retain sums for NPO and SatImp, not for SimNPO.
        assert dv.method.retain_reduction == ("token_mean" if name == "SimNPO" else "sequence_sum_mean")
        assert base.method.retain_reduction == group.method.retain_reduction == "token_mean"
    assert load_config(f"{family}/npo_forget{split}").method.beta == 0.1
    simnpo = load_config(f"{family}/simnpo_forget{split}").method
    assert (simnpo.beta, simnpo.delta, simnpo.gamma, simnpo.alpha) == (4.5, 0.0, 0.125, 1.0)
    satimp = load_config(f"{family}/satimp_forget{split}").method
    assert (satimp.beta1, satimp.beta2, satimp.gamma, satimp.alpha) == (5.0, 1.0, 0.1, 1.0)


def test_model_sizes_and_zero_stages() -> None:
    llama2 = load_config("tofu_llama2/npo_dv_forget10")
    assert llama2.model.name_or_path == "open-unlearning/tofu_Llama-2-7b-chat-hf_full"
    assert llama2.model.template == "llama2-chat"
    assert (llama2.trainer.num_workers, llama2.trainer.deepspeed.zero_stage) == (8, 3)
    small = load_config("tofu_llama32_1b/npo_dv_forget10")
    assert small.model.name_or_path == "open-unlearning/tofu_Llama-3.2-1B-Instruct_full"
    assert (small.trainer.num_workers, small.trainer.deepspeed.zero_stage) == (4, 2)


@pytest.mark.parametrize("corpus", ["news", "books"])
def test_muse_presets_carry_the_reference_settings(corpus: str) -> None:
    config = load_config(f"muse_llama2/{corpus}_npo_dv")
    assert config.data.source == "muse" and config.data.location == f"muse-bench/MUSE-{corpus.capitalize()}"
    assert config.model.name_or_path == f"muse-bench/MUSE-{corpus}_target"
    assert config.evaluation.retain_model == f"muse-bench/MUSE-{corpus}_retrain"
    trainer = config.trainer
    assert trainer.num_workers * trainer.per_device_batch_size * trainer.gradient_accumulation_steps == 32
    assert (trainer.lr, trainer.epochs, trainer.schedule, trainer.warmup_epochs) == (
        1e-5,
        10,
        "constant",
        0.0,
    )
    assert (config.data.forget_split, config.data.retain_split) == ("raw/forget", "raw/retain1")


def test_every_preset_is_listed_in_the_configs_readme() -> None:
    readme = (REPO / "configs" / "README.md").read_text()
    families = {name.split("/")[0] for name in PRESETS if "/" in name}
    for name in PRESETS:
        if "/" not in name:
            assert f"`{name}`" in readme, name
    for family in families:
        assert f"`{family}/" in readme, family


def test_every_preset_file_is_package_data() -> None:
    patterns = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    for path in PRESETS_DIR.rglob("*.yaml"):
        relative = path.relative_to(PRESETS_DIR.parent).as_posix()
        # setuptools globs do not cross folders with '*'
        assert any(
            fnmatch.fnmatch(relative, p) and relative.count("/") == p.count("/")
            for p in patterns["baldro_ray"]
        ), relative


def test_a_wrong_key_in_a_user_config_names_the_key_and_the_fix(tmp_path: Path) -> None:
    path = tmp_path / "mine.yaml"
    path.write_text("extends: tofu_llama2/npo_dv_forget10\ntrainer:\n  lrr: 2.0e-5\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    text = str(err.value)
    assert (
        "mine.yaml" in text and "unknown key 'trainer.lrr'" in text and "did you mean 'trainer.lr'?" in text
    )


def test_a_wrong_key_in_a_packaged_base_fails_loading_the_preset(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    presets = tmp_path / "presets"
    shutil.copytree(PRESETS_DIR, presets)
    base = presets / "_methods" / "npo.yaml"
    base.write_text(base.read_text().replace("  beta: 0.1", "  betta: 0.1"))
    monkeypatch.setattr(config_module, "PRESETS_DIR", presets)
    with pytest.raises(ConfigError) as err:
        load_config("tofu_llama2/npo_forget10")
    text = str(err.value)
    assert "invalid configuration tofu_llama2/npo_forget10" in text and "npo_forget10.yaml" in text
    assert "unknown key 'method.betta'" in text and "did you mean 'method.beta'?" in text


def test_an_unknown_preset_name_suggests_the_closest() -> None:
    with pytest.raises(ConfigError, match=r"did you mean 'tofu_llama2/npo_dv_forget10'") as err:
        load_config("tofu_llama2/npo_dv_forget1O")
    assert "_methods" not in str(err.value) and "_base" not in str(err.value)  # bases are not offered
