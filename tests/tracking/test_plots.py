"""PNG figures from small hand-built tables: valid images, padding and gaps handled, missing columns named."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib.image
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from baldro_ray.tracking.plots import plot_dro_weights, plot_epoch_metrics, plot_forgetting_curves

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _trajectory() -> pa.Table:
    """4 forget samples + a padding dummy, 2 per batch, 2 epochs of 2 steps; the hard sample forgets slowest."""
    rows = []
    batches = {1: (0, 1), 2: (2, 3), 3: (1, 2), 4: (3, 0)}  # reshuffled in epoch 2
    for step, batch in batches.items():
        epoch = 1 if step <= 2 else 2
        for sample in batch:
            nll = 0.2 + step * (0.1 if sample == 0 else 0.8)
            rows.append(
                {
                    "sample_id": sample,
                    "epoch": epoch,
                    "step": step,
                    "loss": nll,
                    "avg_nll": nll,
                    "dro_weight": 0.5,
                }
            )
        rows.append(
            {"sample_id": -1, "epoch": epoch, "step": step, "loss": 0.0, "avg_nll": 0.0, "dro_weight": 0.0}
        )
    rows[1]["avg_nll"] = math.nan  # an unscored sample: plotted without that point
    rows[0]["dro_weight"], rows[1]["dro_weight"] = 0.8, 0.2
    schema = pa.schema(
        [("sample_id", pa.int64()), ("epoch", pa.int32()), ("step", pa.int64())]
        + [(name, pa.float64()) for name in ("loss", "avg_nll", "dro_weight")]
    )
    return pa.Table.from_pylist(rows, schema=schema)


def _assert_png(path: Path) -> None:
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 300
    assert np.ptp(image[..., :3]) > 0  # not a blank canvas
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # no temp file left


def test_forgetting_curves(tmp_path: Path) -> None:
    out = plot_forgetting_curves(
        _trajectory(), {0: "hard", 1: "easy", 2: "easy"}, tmp_path / "figs" / "forget.png"
    )
    assert out == tmp_path / "figs" / "forget.png"
    _assert_png(out)
    pq.write_table(_trajectory(), tmp_path / "trajectory.parquet")
    _assert_png(
        plot_forgetting_curves(tmp_path / "trajectory.parquet", None, tmp_path / "forget_nogroups.png")
    )


def test_dro_weights(tmp_path: Path) -> None:
    _assert_png(plot_dro_weights(_trajectory(), tmp_path / "weights.png"))
    _assert_png(
        plot_dro_weights(_trajectory().slice(0, 0), tmp_path / "empty.png")
    )  # no rows: still an image


def test_epoch_metrics(tmp_path: Path) -> None:
    rows = [
        {"epoch": 1, "forget_quality": 1e-5, "forget_ks_statistic": 0.4, "model_utility": 0.5, "score": 1.1},
        {"epoch": 2, "forget_quality": 0.02, "model_utility": 0.45, "score": 1.3},
        {"epoch": 3, "model_utility": math.nan},
        {"epoch": 4, "forget_quality": 0.0},
    ]
    _assert_png(plot_epoch_metrics(rows, tmp_path / "epochs.png"))
    _assert_png(plot_epoch_metrics([{"epoch": 1}], tmp_path / "bare.png"))


@pytest.mark.parametrize("column", ["sample_id", "step", "avg_nll", "dro_weight"])
def test_missing_column_is_named(tmp_path: Path, column: str) -> None:
    table = _trajectory().drop_columns([column])
    with pytest.raises(ValueError, match=repr(column)):
        if column == "dro_weight":
            plot_dro_weights(table, tmp_path / "x.png")
        else:
            plot_forgetting_curves(table, None, tmp_path / "x.png")
    with pytest.raises(ValueError, match="'epoch'"):
        plot_epoch_metrics([{"epoch": 1, "model_utility": 0.5}, {"model_utility": 0.4}], tmp_path / "y.png")
    assert not list(tmp_path.iterdir())


def test_epoch_metrics_of_muse_plot_privleak_and_retain_knowmem(tmp_path: Path) -> None:
    rows = [
        {"epoch": 1, "privleak": -90.0, "retain_knowmem_ROUGE": 0.8, "score": 0.1},
        {"epoch": 2, "privleak": -40.0, "retain_knowmem_ROUGE": 0.6, "score": 0.4},
    ]
    _assert_png(plot_epoch_metrics(rows, tmp_path / "muse.png"))
