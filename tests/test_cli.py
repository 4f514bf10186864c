"""The console script, run in-process and as a real subprocess."""

from __future__ import annotations

import subprocess
import sys

import pytest

from baldro_ray.cli import main

pytestmark = pytest.mark.usefixtures("cli_console")


def test_objectives_demo_prints_every_aggregation(capsys) -> None:
    assert main(["objectives-demo"]) == 0
    out = capsys.readouterr().out
    for label in ("mean (NPO)", "G  ratio=0.5", "DV t=-1 (reference)", "DV t=+1 (textbook)"):
        assert label in out
    # the reference form puts most weight on the most-forgotten sample (last column)
    reference_row = next(line for line in out.splitlines() if line.startswith("DV t=-1 "))
    weights = [float(x) for x in reference_row.split(")")[1].split()[:6]]
    assert weights[-1] == max(weights) and abs(sum(weights) - 1) < 1e-2


def test_config_command_prints_resolved_yaml(capsys) -> None:
    assert main(["config", "method.name=SimNPO"]) == 0
    assert "beta: 4.5" in capsys.readouterr().out


def test_config_error_exits_2_with_one_message(capsys) -> None:
    assert main(["config", "trainer.lrr=1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("baldro-ray: error: invalid configuration") and "did you mean 'trainer.lr'?" in err


def test_console_script_entry_point_runs() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "baldro_ray.cli", "objectives-demo"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0 and "ESS" in result.stdout


def test_epoch_line_and_quickstart_table_follow_the_benchmark() -> None:
    from baldro_ray.eval.epochs import eval_line
    from baldro_ray.quickstart import COLUMNS, format_table

    muse = {
        "epoch": 2,
        "eval/forget_verbmem_ROUGE": 0.3456,
        "eval/forget_knowmem_ROUGE": 0.5,
        "eval/retain_knowmem_ROUGE": 0.75,
        "eval/privleak": -42.04,
        "eval/score": 0.5,
    }
    assert eval_line(muse) == (
        "epoch 2: verbmem 0.346, knowmem forget 0.500 / retain 0.750, privleak -42.0, score 0.500"
    )
    tofu = {
        "epoch": 1,
        "eval/forget_quality": 0.01,
        "eval/forget_ks_statistic": 0.2,
        "eval/model_utility": 0.6,
    }
    assert eval_line(tofu).startswith("epoch 1: forget quality 0.01 (KS 0.200), model utility 0.600")
    table = format_table({"NPO (baseline)": muse}, "MUSE").splitlines()
    assert table[0].startswith("| model | verbmem forget | knowmem forget | knowmem retain | privleak |")
    assert table[2].startswith("| NPO (baseline) | 0.346 | 0.500 | 0.750 | -42.0 |  | 0.500 |")
    assert len(table[0].split("|")) == len(COLUMNS["MUSE"]) + 3
