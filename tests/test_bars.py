"""Progress off a terminal: periodic plain lines, the training view's epoch lines, the CLI's --verbose (no Ray)."""

from __future__ import annotations

import io
import logging
import math
import os
import subprocess
import sys

import pytest

from baldro_ray import console
from baldro_ray.bars import PlainBar, format_duration, open_bar, plain_line
from baldro_ray.cli import build_parser
from baldro_ray.train.progress import StepEvent, TrainingView


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def metrics(loss: float) -> dict[str, float]:
    return {
        "train/loss": loss,
        "train/forget_loss": loss / 2,
        "train/retain_loss": math.nan,
        "train/dro_ess": 3.5,
        "train/lr": 1e-3,
    }


def test_plain_line_has_count_percent_rate_and_eta() -> None:
    assert plain_line("unlearning", 10, 40, "step", 2.0, "loss 1") == (
        "unlearning 10/40 (25%) loss 1 | 2.00 step/s, ETA 15s"
    )
    assert plain_line("evaluating", 0, 8, "request", None) == "evaluating 0/8 (0%)"
    assert [format_duration(s) for s in (4.4, 65, 7620)] == ["4s", "1m05s", "2h07m"]


def test_plain_bar_prints_at_each_fraction_after_a_quiet_spell_and_at_the_end() -> None:
    out, clock = io.StringIO(), Clock()
    bar = PlainBar(20, "unlearning", "step", out=out, clock=clock, fraction=0.25, seconds=30)
    for done in range(1, 21):
        clock.now = done * 0.5  # 2 steps/s
        bar.update_to(done, f"loss {done}")
    lines = out.getvalue().splitlines()
    assert [line.split()[1] for line in lines] == ["5/20", "10/20", "15/20", "20/20"]
    assert lines[0] == "unlearning 5/20 (25%) loss 5 | 2.00 step/s, ETA 8s"
    assert lines[-1].endswith("ETA 0s")

    out, clock = io.StringIO(), Clock()
    bar = PlainBar(1000, "slow", "step", out=out, clock=clock, fraction=0.25, seconds=30)
    clock.now = 31.0
    bar.update_to(3)
    clock.now = 40.0
    bar.update_to(4)  # neither a quarter nor 30 s since the last line
    bar.update_to(4)
    assert out.getvalue().splitlines() == ["slow 3/1000 (0%) | 0.10 step/s, ETA 2h51m"]


def test_plain_bar_starts_over_when_a_resumed_run_goes_back() -> None:
    out, clock = io.StringIO(), Clock()
    bar = PlainBar(10, "unlearning", "step", initial=4, out=out, clock=clock, fraction=0.5)
    clock.now = 1.0
    bar.update_to(9)
    clock.now = 2.0
    bar.update_to(5)  # a restarted worker resumed from the checkpoint after step 5
    clock.now = 3.0
    bar.update_to(10)
    assert out.getvalue().splitlines() == [
        "unlearning 9/10 (90%) | 5.00 step/s, ETA 0s",
        "unlearning 10/10 (100%) | 5.00 step/s, ETA 0s",
    ]


def test_no_bar_where_the_console_is_not_live(capsys: pytest.CaptureFixture[str]) -> None:
    bar = open_bar(3, "evaluating", "request")
    bar.update_to(3)
    bar.write("epoch line")
    assert capsys.readouterr() == ("", "")


def test_training_view_prints_each_epoch_line_once(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # As the CLI's configure leaves it; stderr here is no terminal.
    monkeypatch.setattr(console, "_live", True)
    view = TrainingView()
    for epoch in (1, 2):
        for step in range(1, 5):
            view(StepEvent(epoch, 2, step, 4, metrics(float(epoch * 10 + step))))
    view.close()
    lines = capsys.readouterr().out.splitlines()
    epoch_lines = [line for line in lines if line.startswith("epoch ")]
    assert epoch_lines == [
        "epoch 1/2 step 4/4 loss 14.0000 forget 7.0000 ess 3.50 lr 1.00e-03",
        "epoch 2/2 step 4/4 loss 24.0000 forget 12.0000 ess 3.50 lr 1.00e-03",
    ]
    bar_lines = [line for line in lines if line.startswith("unlearning ")]
    assert [line.split()[1] for line in bar_lines] == ["2/8", "4/8", "6/8", "8/8"]
    assert bar_lines[1].startswith("unlearning 4/8 (50%) loss 14.0000 forget 7.0000 ess 3.50 lr 1.00e-03")


@pytest.mark.parametrize(
    ("argv", "verbose"),
    [(["quickstart"], False), (["--verbose", "quickstart"], True), (["quickstart", "--verbose"], True)],
)
def test_verbose_flag_before_or_after_the_command(argv: list[str], verbose: bool) -> None:
    assert build_parser().parse_known_args(argv)[0].verbose is verbose


def test_quiet_env_reaches_workers_and_verbose_drops_it(monkeypatch: pytest.MonkeyPatch) -> None:
    from baldro_ray.cluster import worker_env

    monkeypatch.delenv(console.VERBOSE_ENV, raising=False)
    quiet = worker_env()
    assert quiet[console.VERBOSE_ENV] == "0" and quiet["TRANSFORMERS_VERBOSITY"] == "error"
    assert quiet["RAY_TRAIN_ENABLE_PRINT_PATCH"] == "0"
    monkeypatch.setenv(console.VERBOSE_ENV, "1")
    loud = worker_env()
    assert loud[console.VERBOSE_ENV] == "1" and "TRANSFORMERS_VERBOSITY" not in loud
    assert console.train_log_level() == "INFO"


def test_ray_data_lines_stay_in_its_log_files_unless_verbose(monkeypatch: pytest.MonkeyPatch) -> None:
    """The logging config the quiet env names is Ray Data's own default with the console at WARNING: a process
    that reads it (a split coordinator, say) prints no dataset plans but still writes them to ray-data.log."""
    monkeypatch.delenv(console.VERBOSE_ENV, raising=False)
    code = (
        "import logging, ray.data._internal.logging as L; L.configure_logging(); "
        "h = {type(x).__name__: logging.getLevelName(x.level) for x in logging.getLogger('ray.data').handlers}; "
        "print(h['PlainRayHandler'], h['SessionFileHandler'], logging.getLogger('ray.data').level)"
    )
    env = {**os.environ, "RAY_DATA_LOGGING_CONFIG": console.process_env()["RAY_DATA_LOGGING_CONFIG"]}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["WARNING", "NOTSET", str(logging.DEBUG)]
