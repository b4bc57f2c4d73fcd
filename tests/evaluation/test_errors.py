"""TIDE error breakdown on hand-made GT and detections, with every AP and dAP computed by hand.

pycocotools' AP at IoU 0.5 samples the interpolated precision at the 101 recall points 0, 0.01, ..., 1: a
precision p held up to recall r contributes p for each point ≤ r (51 points up to 0.5, 34 up to 1/3, 67 up
to 2/3). Boxes are COCO [x, y, w, h]; a 20 × 20 box shifted by 10 px has IoU 200 / 600 = 1/3 with the original.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from pycocotools.coco import COCO

from sod.evaluation.errors import (
    ERROR_COLORS,
    ERROR_TYPES,
    TABLE_COLUMNS,
    assign_errors,
    error_breakdown,
    errors_table,
    fix_errors,
    plot_errors,
)
from tests.evaluation.test_plots import _assert_png, _pixels

A = [10.0, 10.0, 20.0, 20.0]  # a small GT box (400 px²)
A_SHIFTED = [20.0, 10.0, 20.0, 20.0]  # IoU 1/3 with A
B = [60.0, 60.0, 20.0, 20.0]  # far from A
NOWHERE = [100.0, 100.0, 20.0, 20.0]  # on no GT box
EPS = 1e-9


def _coco(anns: list[tuple[int, list[float]]], n_images: int = 1) -> COCO:
    """A GT COCO of 128 px images with categories 1 and 2; ``anns`` are ``(category_id, bbox_xywh)`` on image 1."""
    coco = COCO()
    coco.dataset = {
        "images": [{"id": i, "file_name": f"{i}.png", "width": 128, "height": 128} for i in range(1, n_images + 1)],
        "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}],
        "annotations": [
            {"id": i, "image_id": 1, "category_id": c, "bbox": b, "area": b[2] * b[3], "iscrowd": 0}
            for i, (c, b) in enumerate(anns, start=1)
        ],
    }
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _det(cat: int, bbox: list[float], score: float, image_id: int = 1) -> dict[str, Any]:
    return {"image_id": image_id, "category_id": cat, "bbox": bbox, "score": score}


def _dap(breakdown: dict[str, dict[str, Any]], bucket: str = "all") -> dict[str, float | None]:
    return {e: breakdown[bucket][e] for e in ERROR_TYPES}


def _only(error: str, value: float) -> dict[str, float]:
    return {e: value if e == error else 0.0 for e in ERROR_TYPES}


def _assert_dap(got: dict[str, float | None], want: dict[str, float | None]) -> None:
    for e in ERROR_TYPES:
        if want[e] is None:
            assert got[e] is None, e
        else:
            assert got[e] == pytest.approx(want[e], abs=EPS), e


def test_right_box_wrong_class_is_cls_and_its_fix_gives_ap_one() -> None:
    gt = _coco([(1, A)])
    dets = [_det(2, A, 0.9)]
    assignment = assign_errors(gt, dets, [1])
    assert assignment.kind == {1: "Cls"} and assignment.fixed_to == {1: 1} and assignment.missed == []
    _, fixed = fix_errors(gt, dets, assignment, "Cls")
    assert fixed == [_det(1, A, 0.9)]  # the GT's class and box, its own score
    b = error_breakdown(gt, dets, [1])
    # Category 1 has a GT box and no true positive (AP 0); category 2 has no GT (left out of the mean).
    assert b["all"]["AP50"] == 0.0
    _assert_dap(_dap(b), _only("Cls", 1.0))  # the box the fix would find is not a Miss
    assert b["all"]["counts"] == {"GT": 1, "TP": 0, "Cls": 1, "Loc": 0, "Both": 0, "Dupe": 0, "Bkg": 0, "Miss": 0}


def test_right_class_iou_one_third_is_loc() -> None:
    gt = _coco([(1, A)])
    dets = [_det(1, A_SHIFTED, 0.9)]
    assignment = assign_errors(gt, dets, [1])
    assert assignment.kind == {1: "Loc"} and assignment.fixed_to == {1: 1}
    b = error_breakdown(gt, dets, [1])
    assert b["all"]["AP50"] == 0.0
    _assert_dap(_dap(b), _only("Loc", 1.0))
    # Small box: the same numbers in the small bucket; no GT of the other sizes, so nothing defined there.
    _assert_dap(_dap(b, "small"), _only("Loc", 1.0))
    assert b["medium"]["AP50"] is None and all(v is None for v in _dap(b, "medium").values())


def test_loc_fix_of_an_already_found_box_removes_the_detection() -> None:
    """A mislocalized box on a GT box that a true positive holds would be a duplicate once fixed: removed."""
    gt = _coco([(1, A)])
    dets = [_det(1, A_SHIFTED, 0.9), _det(1, A, 0.5)]
    assignment = assign_errors(gt, dets, [1])
    assert assignment.kind == {1: "Loc", 2: "TP"} and assignment.fixed_to == {}
    assert fix_errors(gt, dets, assignment, "Loc")[1] == [dets[1]]
    b = error_breakdown(gt, dets, [1])
    # FP (0.9) then TP (0.5): precision 1/2 at recall 1 → AP 0.5; without the FP AP 1.
    assert b["all"]["AP50"] == pytest.approx(0.5, abs=EPS)
    _assert_dap(_dap(b), _only("Loc", 0.5))


def test_two_loc_errors_on_one_gt_box_fix_only_the_best_scoring_one() -> None:
    gt = _coco([(1, A)])
    dets = [_det(1, A_SHIFTED, 0.8), _det(1, [0.0, 10.0, 20.0, 20.0], 0.9)]  # both IoU 1/3 with A
    assignment = assign_errors(gt, dets, [1])
    assert assignment.kind == {1: "Loc", 2: "Loc"} and assignment.fixed_to == {2: 1}
    assert fix_errors(gt, dets, assignment, "Loc")[1] == [_det(1, A, 0.9)]
    _assert_dap(_dap(error_breakdown(gt, dets, [1])), _only("Loc", 1.0))


def test_second_detection_on_one_gt_box_is_dupe() -> None:
    """GT A and B; dets: A at 0.9 (TP), A again at 0.8 (Dupe), B at 0.7 (TP).

    PR: TP (P 1, R 1/2), FP (P 1/2, R 1/2), TP (P 2/3, R 1) → interpolated P 1 up to R 1/2 (51 points), 2/3 above
    (50 points): AP = (51 + 50·2/3) / 101. Without the duplicate AP = 1.
    """
    gt = _coco([(1, A), (1, B)])
    dets = [_det(1, A, 0.9), _det(1, [11.0, 11.0, 20.0, 20.0], 0.8), _det(1, B, 0.7)]  # IoU 361/439 with A
    assignment = assign_errors(gt, dets, [1])
    assert assignment.kind == {1: "TP", 2: "Dupe", 3: "TP"} and assignment.gt_of[2] == 1
    b = error_breakdown(gt, dets, [1])
    ap = (51 + 50 * 2 / 3) / 101
    assert b["all"]["AP50"] == pytest.approx(ap, abs=EPS)
    _assert_dap(_dap(b), _only("Dupe", 1 - ap))
    assert b["all"]["counts"]["TP"] == 2 and b["all"]["counts"]["Dupe"] == 1


def test_detection_on_nothing_is_bkg() -> None:
    """FP at 0.9 on nothing, TP at 0.5: AP 0.5; without the FP AP 1."""
    gt = _coco([(1, A)])
    dets = [_det(1, NOWHERE, 0.9), _det(1, A, 0.5)]
    assert assign_errors(gt, dets, [1]).kind == {1: "Bkg", 2: "TP"}
    b = error_breakdown(gt, dets, [1])
    assert b["all"]["AP50"] == pytest.approx(0.5, abs=EPS)
    _assert_dap(_dap(b), _only("Bkg", 0.5))


def test_detections_on_an_image_without_gt_are_bkg() -> None:
    gt = _coco([(1, A)], n_images=2)
    dets = [_det(1, A, 0.9, image_id=2), _det(1, A, 0.5)]
    assert assign_errors(gt, dets, [1, 2]).kind == {1: "Bkg", 2: "TP"}
    # Scoring image 1 only leaves image 2's detection out of everything.
    assert assign_errors(gt, dets, [1]).kind == {2: "TP"}
    _assert_dap(_dap(error_breakdown(gt, dets, [1])), _only("Bkg", 0.0))


def test_gt_box_without_detection_is_miss() -> None:
    """Two GT boxes, one found: P 1 up to R 1/2 → AP 51/101; without the missed box AP 1."""
    gt = _coco([(1, A), (1, B)])
    dets = [_det(1, A, 0.9)]
    assignment = assign_errors(gt, dets, [1])
    assert assignment.missed == [2]
    fixed_gt, fixed_dets = fix_errors(gt, dets, assignment, "Miss")
    assert sorted(fixed_gt.anns) == [1] and fixed_dets == dets and sorted(gt.anns) == [1, 2]  # input untouched
    b = error_breakdown(gt, dets, [1])
    assert b["all"]["AP50"] == pytest.approx(51 / 101, abs=EPS)
    _assert_dap(_dap(b), _only("Miss", 50 / 101))


def test_wrong_class_and_box_off_is_both() -> None:
    """GT A (class 1) and B (class 2). Dets: class 2 at IoU 1/3 with A (0.9, Both), B (0.5, TP).

    Class 1: A never found, AP 0. Class 2: FP then TP, AP 0.5. AP = 0.25. Removing the Both detection: class 2
    AP 1 → 0.5 (dAP 0.25). A is a Miss (no fix of a detection finds it): without it class 1 has no GT and
    leaves the mean → AP 0.5 (dAP 0.25).
    """
    gt = _coco([(1, A), (2, B)])
    dets = [_det(2, A_SHIFTED, 0.9), _det(2, B, 0.5)]
    assignment = assign_errors(gt, dets, [1])
    assert assignment.kind == {1: "Both", 2: "TP"} and assignment.missed == [1]
    b = error_breakdown(gt, dets, [1])
    assert b["all"]["AP50"] == pytest.approx(0.25, abs=EPS)
    _assert_dap(_dap(b), {**_only("Both", 0.25), "Miss": 0.25})


def test_size_buckets_tell_missed_small_from_mislocalized_large() -> None:
    """Small GT s1 missed, small GT s2 found (0.5), large GT L (100 × 100) with a class-1 box at IoU 1/3 (0.9).

    all: FP (0.9), TP (0.5) with 3 GT → P 1/2 up to R 1/3 (34 points): AP 17/101.
      Loc fix → TP, TP: P 1 up to R 2/3 (67 points): 67/101. Miss fix (s1 gone): P 1/2 up to R 1/2: 25.5/101.
    small (s1, s2; the large detection is out of range and ignored): TP → AP 51/101; Loc fix changes nothing;
      Miss fix → AP 1.
    large (L; the TP on s2 is ignored): FP only → AP 0; Loc fix → 1; Miss fix changes nothing.
    """
    s1, s2, big = [0.0, 0.0, 10.0, 10.0], [20.0, 0.0, 10.0, 10.0], [0.0, 20.0, 100.0, 100.0]
    gt = _coco([(1, s1), (1, s2), (1, big)])
    dets = [_det(1, [50.0, 20.0, 100.0, 100.0], 0.9), _det(1, s2, 0.5)]
    b = error_breakdown(gt, dets, [1])
    assert b["all"]["AP50"] == pytest.approx(17 / 101, abs=EPS)
    _assert_dap(_dap(b), {**_only("Loc", 50 / 101), "Miss": 8.5 / 101})
    assert b["small"]["AP50"] == pytest.approx(51 / 101, abs=EPS)
    _assert_dap(_dap(b, "small"), _only("Miss", 50 / 101))
    assert b["large"]["AP50"] == 0.0
    _assert_dap(_dap(b, "large"), _only("Loc", 1.0))
    assert b["medium"]["AP50"] is None
    zero = dict.fromkeys(("TP", *ERROR_TYPES), 0)
    assert b["small"]["counts"] == {**zero, "GT": 2, "TP": 1, "Miss": 1}
    assert b["large"]["counts"] == {**zero, "GT": 1, "Loc": 1}
    assert b["medium"]["counts"] == {**zero, "GT": 0}
    assert b["all"]["counts"] == {**zero, "GT": 3, "TP": 1, "Loc": 1, "Miss": 1}


def test_a_perfect_detector_loses_nothing_and_no_images_define_nothing() -> None:
    gt = _coco([(1, A), (2, B)])
    dets = [_det(1, A, 0.9), _det(2, B, 0.8)]
    b = error_breakdown(gt, dets, [1])
    assert b["all"]["AP50"] == pytest.approx(1.0, abs=EPS)
    _assert_dap(_dap(b), dict.fromkeys(ERROR_TYPES, 0.0))
    empty = error_breakdown(gt, dets, [])
    assert all(v is None for bucket in empty.values() for k, v in bucket.items() if k != "counts")
    assert empty["all"]["counts"]["GT"] == 0


def test_unknown_error_type_is_refused() -> None:
    gt = _coco([(1, A)])
    with pytest.raises(ValueError, match="FalsePos"):
        fix_errors(gt, [], assign_errors(gt, [], [1]), "FalsePos")


def test_table_and_figure(tmp_path: Path) -> None:
    gt = _coco([(1, A), (1, B)])
    full = error_breakdown(gt, [_det(1, A, 0.9)], [1])  # Miss only
    sliced = error_breakdown(gt, [_det(1, A_SHIFTED, 0.9), _det(1, B, 0.5)], [1])  # Loc only
    table = errors_table({"full": full, "sliced": sliced})
    assert list(table.columns) == TABLE_COLUMNS and len(table) == 2 * 4 * len(ERROR_TYPES)
    row = table[(table["pass"] == "full") & (table["bucket"] == "small") & (table["error"] == "Miss")].iloc[0]
    assert row["dAP"] == pytest.approx(50 / 101, abs=EPS) and row["count"] == 1 and row["gt_instances"] == 2
    assert table[table["bucket"] == "medium"]["dAP"].isna().all()
    path = tmp_path / "errors.png"
    plot_errors(table, path)
    _assert_png(path)
    first = path.read_bytes()
    plot_errors(table, path)
    assert path.read_bytes() == first  # same table, same bytes (DVC hashes stay stable)
    # The bars drawn: Miss (full) and Loc (sliced) are bars; Dupe has dAP 0 everywhere, so only its legend patch.
    miss, loc, dupe = (_pixels(path, ERROR_COLORS[e]) for e in ("Miss", "Loc", "Dupe"))
    assert miss > 10 * dupe and loc > 10 * dupe > 0


def test_figure_without_passes(tmp_path: Path) -> None:
    path = tmp_path / "errors.png"
    plot_errors(pd.DataFrame(columns=TABLE_COLUMNS), path)
    _assert_png(path)
    assert not any(_pixels(path, c) for c in ERROR_COLORS.values())  # no pass, no bars
