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
