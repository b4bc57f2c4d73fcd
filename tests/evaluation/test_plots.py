"""Evaluation figures: valid, deterministic PNGs; the missed-small-object test behind the preview grid."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from sod.evaluation.plots import (
    PreviewItem,
    missed_small,
    plot_detection_grid,
    plot_pr_curves,
    plot_recall_vs_size,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _assert_png(path: Path) -> None:
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    with Image.open(path) as im:
        im.verify()
    assert not list(path.parent.glob(".*.tmp"))  # written atomically, nothing left behind


def _item() -> PreviewItem:
    image = np.zeros((64, 96, 3), dtype=np.uint8)
    gt = np.array(
        [
            [4, 4, 14, 14],  # small, found by an exact prediction
            [30, 30, 40, 40],  # small, only a low-score prediction → missed
            [50, 5, 60, 15],  # small, a prediction of another class → missed when labels are given
            [0, 20, 60, 60],  # large (2400 px² ≥ 32²), not predicted → missed but not small
        ],
        dtype=float,
    )
    pred = np.array([[4, 4, 14, 14], [30, 30, 40, 40], [50, 5, 60, 15]], dtype=float)
    return PreviewItem(
        image=image,
        gt_boxes_xyxy=gt,
        pred_boxes_xyxy=pred,
        pred_scores=np.array([0.9, 0.1, 0.8]),
        gt_labels=np.array([1, 1, 1, 2]),
        pred_labels=np.array([1, 1, 2]),
        title="img 1",
    )


def test_missed_small() -> None:
    item = _item()
    assert missed_small(item, score_thresh=0.3).tolist() == [False, True, True, False]
    # Class-agnostic without labels: the third GT is found.
    item.gt_labels = item.pred_labels = None
    assert missed_small(item, score_thresh=0.3).tolist() == [False, True, False, False]
    # A GT 'area' field overrides the box area: declared large → never a missed *small* object.
    item.gt_areas = np.array([100, 5000, 100, 2400])
    assert missed_small(item, score_thresh=0.3).tolist() == [False, False, False, False]
    # No prediction above the threshold: every small GT is missed.
    assert missed_small(_item(), score_thresh=0.95).tolist() == [True, True, True, False]


def test_detection_grid_writes_a_deterministic_png(tmp_path: Path) -> None:
    items = [_item(), _item(), _item()]
    plot_detection_grid(items, tmp_path / "a.png", cols=2)
    plot_detection_grid(items, tmp_path / "b.png", cols=2)
    _assert_png(tmp_path / "a.png")
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()
    plot_detection_grid([], tmp_path / "empty.png")
    _assert_png(tmp_path / "empty.png")


def test_curve_plots_write_pngs_also_when_empty(tmp_path: Path) -> None:
    recall = np.linspace(0, 1, 101)
    pr = pd.DataFrame(
        {
            "bucket": ["all"] * 101 + ["small"] * 101,
            "recall": np.concatenate([recall, recall]),
            "precision": np.concatenate([1 - recall / 2, 1 - recall]),
            "precision_50": np.concatenate([1 - recall / 4, 1 - recall / 2]),
        }
    )
    plot_pr_curves(pr, tmp_path / "pr.png")
    _assert_png(tmp_path / "pr.png")
    rs = pd.DataFrame(
        {
            "size_min": [0.0, 16.0, 32.0, 96.0],
            "size_max": [16.0, 32.0, 96.0, float("inf")],
            "gt_instances": [5, 7, 3, 1],
            "matched": [1, 4, 3, 1],
            "recall": [0.2, 4 / 7, 1.0, 1.0],
        }
    )
    plot_recall_vs_size(rs, tmp_path / "rs.png")
    _assert_png(tmp_path / "rs.png")
    plot_pr_curves(pr.iloc[:0], tmp_path / "pr_empty.png")
    plot_recall_vs_size(rs.iloc[:0], tmp_path / "rs_empty.png")
    _assert_png(tmp_path / "pr_empty.png")
    _assert_png(tmp_path / "rs_empty.png")
