"""The run folder's contract: the best-epoch rule, the summary round trip and the atomic folder publish."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from baldro_ray.atomic import copy_dir, staging_dir, write_json
from baldro_ray.run_folder import RunSummary, best_epoch


def _evals(*scores: float) -> list[dict[str, float]]:
    return [{"epoch": i + 1, "eval/score": s} for i, s in enumerate(scores)]


def test_best_epoch_is_the_highest_score_earliest_on_ties_and_never_nan() -> None:
    assert best_epoch(_evals(0.2, 0.5, 0.5, 0.1)) == 2
    assert best_epoch(_evals(math.nan, 0.1, math.nan)) == 2
    assert best_epoch(_evals(0.3)) == 1  # a one-epoch run: its only epoch
    assert best_epoch(_evals(math.nan, math.nan)) is None
    assert best_epoch([]) is None


def test_summary_round_trips(tmp_path: Path) -> None:
    summary = RunSummary("run", "/m", 1.5, {"train/loss": 0.25}, _evals(0.1, 0.4), 2, None)
    summary.write(tmp_path)
    assert RunSummary.read(tmp_path) == summary


def test_a_failed_staging_leaves_the_published_folder_as_it_was(tmp_path: Path) -> None:
    out = tmp_path / "run"
    with staging_dir(out) as staging:
        write_json(staging / "a.json", {"v": 1})
    with pytest.raises(RuntimeError), staging_dir(out) as staging:
        write_json(staging / "a.json", {"v": 2})
        raise RuntimeError("boom")
    assert (out / "a.json").read_text().strip().endswith("}") and '"v": 1' in (out / "a.json").read_text()
    copy_dir(out, tmp_path / "copy")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["copy", "run"]  # no temporary sibling left
