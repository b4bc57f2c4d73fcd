"""CocoEvaluator on hand-made GT and detections with hand-computed AP/AR."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from sod.errors import DataError
from sod.evaluation.coco_eval import CocoEvaluator


def _ann(ann_id: int, image_id: int, cat: int, bbox_xywh: list[float], area: float | None = None) -> dict:
    x, y, w, h = bbox_xywh
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": cat,
        "bbox": [float(v) for v in bbox_xywh],
        "area": float(w * h if area is None else area),
        "iscrowd": 0,
    }


def _gt(tmp_path: Path, n_images: int, anns: list[dict], cats: tuple[int, ...] = (1,), size: int = 400) -> Path:
    gt = {
        "images": [{"id": i, "file_name": f"{i}.png", "width": size, "height": size} for i in range(1, n_images + 1)],
        "annotations": anns,
        "categories": [{"id": c, "name": f"c{c}", "supercategory": "x"} for c in cats],
    }
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(gt))
    return path


def _out(boxes_xywh: list[list[float]], scores: list[float], labels: list[int]) -> dict[str, torch.Tensor]:
    """A torchvision-style output from COCO xywh boxes (converted to xyxy)."""
    b = torch.tensor(boxes_xywh, dtype=torch.float32).reshape(-1, 4)
    return {
        "boxes": torch.cat([b[:, :2], b[:, :2] + b[:, 2:]], dim=1),
        "scores": torch.tensor(scores, dtype=torch.float32),
        "labels": torch.tensor(labels, dtype=torch.int64),
    }


def _perfect(anns: list[dict], image_id: int, score: float = 0.9) -> dict[str, torch.Tensor]:
    mine = [a for a in anns if a["image_id"] == image_id]
    return _out([a["bbox"] for a in mine], [score] * len(mine), [a["category_id"] for a in mine])


def test_perfect_detector_scores_one_and_undefined_buckets_are_none(tmp_path: Path) -> None:
    anns = [
        _ann(1, 1, 1, [10, 10, 20, 20]),
        _ann(2, 1, 1, [100, 100, 16, 24]),
        _ann(3, 2, 2, [50, 60, 12, 8]),
    ]
    ev = CocoEvaluator(_gt(tmp_path, 2, anns, cats=(1, 2, 3)), max_dets=300)
    ev.process([{"image_id": 1}, {"image_id": torch.tensor(2)}], [_perfect(anns, 1), _perfect(anns, 2)])
    r = ev.evaluate()
    for key in ("AP", "AP50", "AP75", "AP_small", "AR_10", "AR_100", "AR_300", "AR_small"):
        assert r[key] == pytest.approx(1.0), key
    # Every GT is small (area < 32²): the medium and large buckets have no GT, so they are undefined.
    for key in ("AP_medium", "AP_large", "AR_medium", "AR_large"):
        assert r[key] is None, key
    # AR_1 allows one detection per image and category: category 1 finds 1 of its 2 boxes, category 2 its
    # only one: (1/2 + 1) / 2 = 0.75 (category 3 has no GT and is left out).
    assert r["AR_1"] == pytest.approx(0.75)
    assert (r["max_dets"], r["images"], r["gt_instances"], r["detections"]) == (300, 2, 3, 3)
    json.dumps(r)  # no NaN, no numpy types

    table = ev.per_class_table()
    assert table["category_id"].tolist() == [1, 2, 3]
    assert table["gt_instances"].tolist() == [2, 1, 0]
    assert table["AP"].iloc[:2].tolist() == pytest.approx([1.0, 1.0])
    assert np.isnan(table["AP"].iloc[2])  # no GT for category 3

    pr = ev.pr_curves()
    assert set(pr["bucket"]) == {"all", "small"}  # no rows for buckets without GT
    assert len(pr) == 2 * 101
    assert pr["precision"].tolist() == pytest.approx([1.0] * len(pr))


def test_one_false_positive_above_every_true_positive(tmp_path: Path) -> None:
    # 4 GT boxes, 4 exact detections at scores 0.8..0.5 and one FP (no overlap with any GT) at 0.9.
    # Ranked by score: FP, TP, TP, TP, TP → cumulative TP 0,1,2,3,4 and FP 1,1,1,1,1, so
    # recall = 0, 1/4, 2/4, 3/4, 1 and precision = 0, 1/2, 2/3, 3/4, 4/5.
    # COCO makes precision monotone from the right (p[i] = max(p[i:])) → 4/5 at every rank, then reads it
    # at the 101 recall points 0, 0.01, ..., 1 (each takes the first rank whose recall ≥ the point): 4/5
    # at all 101 points, at every IoU threshold (the TPs are exact). AP = 4/5 instead of 1.
    anns = [_ann(i, 1, 1, [20 + 50 * i, 20, 20, 20]) for i in range(1, 5)]
    out = _out([a["bbox"] for a in anns] + [[300, 300, 20, 20]], [0.8, 0.7, 0.6, 0.5, 0.9], [1] * 5)
    ev = CocoEvaluator(_gt(tmp_path, 1, anns), max_dets=100)
    ev.process([{"image_id": 1}], [out])
    r = ev.evaluate()
    assert r["AP"] == pytest.approx(0.8)
    assert r["AP50"] == pytest.approx(0.8)
    assert r["AP_small"] == pytest.approx(0.8)
    assert r["AR_100"] == pytest.approx(1.0)  # recall does not care about the FP

    # The same FP ranked below every TP costs nothing: precision is 1 up to recall 1.
    out["scores"][-1] = 0.1
    ev.reset()
    ev.process([{"image_id": 1}], [out])
    assert ev.evaluate()["AP"] == pytest.approx(1.0)


def test_size_buckets_use_gt_area_and_coco_ranges(tmp_path: Path) -> None:
    # Buckets come from the annotation's `area` (e.g. a mask area), not from the box:
    #   A: box 40x40 (1600 px², medium by box) but area 900 < 32²     → small
    #   B: box 20x20 (400 px², small by box) but area 2000 in 32²..96² → medium
    #   C: box 100x100, area 10000 > 96²                               → large
    anns = [
        _ann(1, 1, 1, [10, 10, 40, 40], area=900),
        _ann(2, 1, 1, [100, 100, 20, 20], area=2000),
        _ann(3, 1, 1, [200, 200, 100, 100]),
    ]
    ev = CocoEvaluator(_gt(tmp_path, 1, anns))
    # Detect A and C exactly, miss B.
    ev.process([{"image_id": 1}], [_out([anns[0]["bbox"], anns[2]["bbox"]], [0.9, 0.8], [1, 1])])
    r = ev.evaluate()
    assert r["AP_small"] == pytest.approx(1.0)  # A found (by box it would be medium)
    assert r["AP_medium"] == pytest.approx(0.0)  # B missed (by box it would be small)
    assert r["AP_large"] == pytest.approx(1.0)
    assert (r["AR_small"], r["AR_medium"], r["AR_large"]) == pytest.approx((1.0, 0.0, 1.0))

    # Recall versus sqrt(area): A (30 px) and C (100 px) matched, B (44.7 px) missed.
    rs = ev.recall_vs_size(bins=(0, 32, 96, float("inf")))
    assert rs[["size_min", "size_max"]].values.tolist() == [[0, 32], [32, 96], [96, float("inf")]]
    assert rs["gt_instances"].tolist() == [1, 1, 1]
    assert rs["recall"].tolist() == [1.0, 0.0, 1.0]


# Recall points of pycocotools' 101-point grid at or below recall r: 0, 0.01, ..., r.
def _points_upto(r: float) -> int:
    return round(r * 100) + 1


def test_aitod_buckets_split_cocos_small_by_gt_area(tmp_path: Path) -> None:
    # One image, one category; every GT is COCO-small. AI-TOD buckets by GT area: 6x6 (36 px²) very tiny,
    # 12x12 (144) tiny, 24x24 (576) small16.
    #   V1, V2: 6 px at x = 10, 50      T1: 12 px at x = 100      S1, S2: 24 px at x = 200, 300
    # Detections (exact boxes, so every IoU threshold behaves alike): FP (7x7 = 49 px², on no GT) 0.95,
    # S1 0.9, V1 0.8, T1 0.7. V2 and S2 are missed.
    anns = [
        _ann(1, 1, 1, [10, 10, 6, 6]),
        _ann(2, 1, 1, [50, 10, 6, 6]),
        _ann(3, 1, 1, [100, 10, 12, 12]),
        _ann(4, 1, 1, [200, 10, 24, 24]),
        _ann(5, 1, 1, [300, 10, 24, 24]),
    ]
    out = _out([[10, 200, 7, 7], anns[3]["bbox"], anns[0]["bbox"], anns[2]["bbox"]], [0.95, 0.9, 0.8, 0.7], [1] * 4)
    ev = CocoEvaluator(_gt(tmp_path, 1, anns))
    ev.process([{"image_id": 1}], [out])
    r = ev.evaluate()
    # very tiny (GT V1, V2; T1, S1, S2 ignored): the FP's area (49) is in range, so it counts; the S1 and T1
    # detections match ignored GT and are ignored. Ranked: FP, TP → recall 0, 1/2, precision 0, 1/2 →
    # monotone 1/2 up to recall 1/2 (51 of 101 points), 0 beyond.
    assert r["AP_vt"] == pytest.approx(0.5 * _points_upto(0.5) / 101)
    assert r["AR_vt"] == pytest.approx(0.5)
    # tiny (GT T1): the FP's area (49 < 8²) is out of range, an unmatched detection there is ignored; the S1
    # and V1 detections match ignored GT. Only the TP on T1 is left → AP 1.
    assert r["AP_t"] == pytest.approx(1.0)
    assert r["AR_t"] == pytest.approx(1.0)
    # small16 (GT S1, S2): the TP on S1 alone, at precision 1 up to recall 1/2.
    assert r["AP_s16"] == pytest.approx(_points_upto(0.5) / 101)
    assert r["AR_s16"] == pytest.approx(0.5)
    # COCO's small bucket holds all five: FP, TP, TP, TP → recall 0, 1/5, 2/5, 3/5 and precision 0, 1/2, 2/3,
    # 3/4 → monotone 3/4 up to recall 3/5 (61 points). Unchanged by the three buckets added beside it.
    assert r["AP_small"] == r["AP"] == pytest.approx(0.75 * _points_upto(0.6) / 101)
    assert r["AR_small"] == pytest.approx(0.6)
    assert r["AP_medium"] is None and r["AP_large"] is None

    table = ev.per_class_table()
    assert table.loc[0, ["AP_vt", "AP_t", "AP_s16"]].tolist() == pytest.approx([r["AP_vt"], r["AP_t"], r["AP_s16"]])


def test_aitod_bucket_without_gt_is_none_and_borders_count_twice(tmp_path: Path) -> None:
    # GT of 12 px and exactly 16 px (area 256 = 16²: tiny and small16, pycocotools includes both ends), both
    # found; no GT below 8 px.
    anns = [_ann(1, 1, 1, [10, 10, 12, 12]), _ann(2, 1, 1, [100, 10, 16, 16]), _ann(3, 1, 2, [200, 10, 24, 24])]
    ev = CocoEvaluator(_gt(tmp_path, 1, anns, cats=(1, 2)))
    ev.process([{"image_id": 1}], [_perfect(anns, 1)])
    r = ev.evaluate()
    assert r["AP_vt"] is None and r["AR_vt"] is None  # no very tiny GT: undefined, not 0
    assert (r["AP_t"], r["AR_t"], r["AP_s16"], r["AR_s16"]) == pytest.approx((1.0, 1.0, 1.0, 1.0))
    json.dumps(r)

    # Miss the 16 px box: it is one of two tiny GT (category 1) and one of two small16 GT (one per category).
    ev.reset()
    ev.process([{"image_id": 1}], [_out([anns[0]["bbox"], anns[2]["bbox"]], [0.9, 0.8], [1, 2])])
    r = ev.evaluate()
    assert r["AR_t"] == pytest.approx(0.5)  # category 1: 1 of 2
    assert r["AR_s16"] == pytest.approx((0.0 + 1.0) / 2)  # category 1: 0 of 1, category 2: 1 of 1
    table = ev.per_class_table().set_index("category_id")
    assert np.isnan(table.loc[2, "AP_vt"]) and np.isnan(table.loc[2, "AP_t"])  # category 2 has only a 24 px box
    assert table.loc[2, "AP_s16"] == pytest.approx(1.0)
    assert table.loc[1, "AP_s16"] == pytest.approx(0.0)


def _crowd_gt() -> list[dict]:
    """One object (20x20 at 10, 10) and one crowd region (60x60 at 100, 100) on image 1."""
    return [_ann(1, 1, 1, [10, 10, 20, 20]), {**_ann(2, 1, 1, [100, 100, 60, 60]), "iscrowd": 1}]


def test_detection_inside_crowd_gt_is_neither_tp_nor_fp(tmp_path: Path) -> None:
    anns = _crowd_gt()
    # The object found at 0.5; above it a 10x10 detection inside the crowd region at 0.9. Crowd IoU is
    # intersection over the detection's area: 1, so it matches the crowd GT and pycocotools ignores it.
    out = _out([[120, 120, 10, 10], anns[0]["bbox"]], [0.9, 0.5], [1, 1])
    ev = CocoEvaluator(_gt(tmp_path, 1, anns))
    ev.process([{"image_id": 1}], [out])
    r = ev.evaluate()
    assert r["AP"] == pytest.approx(1.0) and r["AR_300"] == pytest.approx(1.0)
    assert r["gt_instances"] == 1  # the crowd region is not an object to find
    # The crowd region's area (3600) is medium, but a bucket with only crowd GT has nothing to find.
    assert r["AP_medium"] is None

    # Without the crowd annotation the same detection is a FP that outranks the TP: precision 1/2 throughout.
    path = _gt(tmp_path, 1, anns[:1])
    ev = CocoEvaluator(path)
    ev.process([{"image_id": 1}], [out])
    assert ev.evaluate()["AP"] == pytest.approx(0.5)


def test_crowd_gt_reaches_pycocotools_through_prepare(tmp_path: Path) -> None:
    """A val file as ``sod prepare`` writes it keeps ``iscrowd: 1`` (given as ``true`` here), so the evaluator
    of ``sod evaluate`` (which reads that file) ignores a detection on the crowd region."""
    from PIL import Image

    from sod.data import coco

    src = tmp_path / "src"
    (src / "images").mkdir(parents=True)
    Image.new("RGB", (200, 200)).save(src / "images" / "a.png")
    anns = _crowd_gt()
    anns[1]["iscrowd"] = True
    raw = {
        "images": [{"id": 1, "file_name": "images/a.png", "width": 200, "height": 200}],
        "annotations": anns,
        "categories": [{"id": 1, "name": "c1"}],
    }
    dataset = coco.validate(raw, src, src / "val.json")
    val = coco.write_split(dataset, dataset.images, tmp_path / "prepared", "val")
    assert [(a["id"], a["bbox"], a["iscrowd"]) for a in val["annotations"]] == [
        (1, [10.0, 10.0, 20.0, 20.0], 0),
        (2, [100.0, 100.0, 60.0, 60.0], 1),
    ]
    val_json = tmp_path / "prepared" / "val.json"
    val_json.write_text(json.dumps(val))
    ev = CocoEvaluator(val_json)
    ev.process([{"image_id": 1}], [_out([[120, 120, 10, 10], anns[0]["bbox"]], [0.9, 0.5], [1, 1])])
    assert ev.evaluate()["AP"] == pytest.approx(1.0)


def _grid_gt(n: int) -> list[dict]:
    """n boxes of 10x10 px on a 20 px grid, 15 per row."""
    return [_ann(i + 1, 1, 1, [20 * (i % 15), 20 * (i // 15), 10, 10]) for i in range(n)]


def test_max_dets_above_100_counts_detections_beyond_the_100th(tmp_path: Path) -> None:
    anns = _grid_gt(150)
    gt = _gt(tmp_path, 1, anns)
    out = _out([a["bbox"] for a in anns], [1.0 - i / 1000 for i in range(150)], [1] * 150)

    ev = CocoEvaluator(gt, max_dets=300)
    ev.process([{"image_id": 1}], [out])
    r = ev.evaluate()
    assert r["AP"] == pytest.approx(1.0)
    assert r["AR_300"] == pytest.approx(1.0)
    assert r["AR_100"] == pytest.approx(100 / 150)  # the standard COCO cap, reported alongside
    assert len(ev.detections()) == 150

    # With max_dets = 100 only the 100 best count: precision 1 up to recall 2/3, then nothing.
    # The recall points 0, 0.01, ..., 0.66 (67 of 101) are ≤ 2/3 → AP = 67/101.
    ev = CocoEvaluator(gt, max_dets=100)
    ev.process([{"image_id": 1}], [out])
    r = ev.evaluate()
    assert r["AP"] == pytest.approx(67 / 101)
    assert r["AR_100"] == pytest.approx(100 / 150)
    assert "AR_300" not in r
    assert len(ev.detections()) == 100


def test_no_detections_scores_zero_not_minus_one(tmp_path: Path) -> None:
    anns = [_ann(1, 1, 1, [10, 10, 20, 20]), _ann(2, 2, 1, [10, 10, 50, 50])]
    ev = CocoEvaluator(_gt(tmp_path, 2, anns))
    ev.process([{"image_id": 1}, {"image_id": 2}], [_out([], [], []), _out([], [], [])])
    r = ev.evaluate()
    for key in ("AP", "AP50", "AP75", "AP_small", "AP_medium", "AR_1", "AR_300", "AR_small", "AR_medium"):
        assert r[key] == 0.0, key
    assert r["AP_large"] is None  # no large GT: undefined, not 0
    assert r["detections"] == 0
    assert ev.detections() == []
    assert ev.per_class_table()["AP"].tolist() == [0.0]


def test_empty_val_set_gives_none_metrics(tmp_path: Path) -> None:
    ev = CocoEvaluator(_gt(tmp_path, 0, []))
    r = ev.evaluate()
    assert r["images"] == 0
    assert r["AP"] is None and r["AP_small"] is None and r["AR_300"] is None
    assert r["max_dets"] == 300
    json.dumps(r)
    assert ev.pr_curves().empty
    assert ev.recall_vs_size().empty
    assert ev.per_class_table()["AP"].isna().all()


def test_images_without_gt(tmp_path: Path) -> None:
    # Image 1 holds the only GT box; image 2 holds none. A detection on image 2 is a FP that outranks
    # the TP: ranks FP, TP → precision 0, 1/2 → monotone 1/2 at every recall point → AP = 1/2.
    anns = [_ann(1, 1, 1, [10, 10, 20, 20])]
    gt = _gt(tmp_path, 2, anns)
    ev = CocoEvaluator(gt)
    ev.process([{"image_id": 1}, {"image_id": 2}], [_perfect(anns, 1, 0.5), _out([[5, 5, 20, 20]], [0.9], [1])])
    assert ev.evaluate()["AP"] == pytest.approx(0.5)

    # Only GT-free images processed: nothing to recall, every metric undefined, no crash.
    ev.reset()
    ev.process([{"image_id": 2}], [_out([[5, 5, 20, 20]], [0.9], [1])])
    r = ev.evaluate()
    assert r["AP"] is None and r["AR_1"] is None
    assert (r["images"], r["gt_instances"], r["detections"]) == (1, 0, 1)


def test_label_mapping_and_bad_ids(tmp_path: Path) -> None:
    anns = [_ann(1, 1, 7, [10, 10, 20, 20]), _ann(2, 1, 3, [50, 50, 20, 20])]
    gt = _gt(tmp_path, 1, anns, cats=(3, 7))
    # Model labels 0..K-1 follow the sorted category ids: 0 → 3, 1 → 7.
    ev = CocoEvaluator(gt, label_to_category={0: 3, 1: 7})
    ev.process([{"image_id": 1}], [_out([a["bbox"] for a in anns], [0.9, 0.8], [1, 0])])
    assert ev.evaluate()["AP"] == pytest.approx(1.0)
    assert [d["category_id"] for d in ev.detections()] == [7, 3]

    with pytest.raises(DataError, match="label 5"):
        ev.process([{"image_id": 1}], [_out([[0, 0, 5, 5]], [0.9], [5])])
    with pytest.raises(DataError, match="image_id 99"):
        ev.process([{"image_id": 99}], [_out([], [], [])])
    with pytest.raises(DataError, match="category_id 4"):
        CocoEvaluator(gt).process([{"image_id": 1}], [_out([[0, 0, 5, 5]], [0.9], [4])])
    with pytest.raises(DataError, match="not found"):
        CocoEvaluator(tmp_path / "missing.json")


def _plain_pycocotools(
    gt: Path, dets_json: Path, max_dets: list[int], area_rng: list[list[float]] | None = None
) -> COCOeval:
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO(str(gt))
        coco_dt = coco_gt.loadRes(str(dets_json))
        e = COCOeval(coco_gt, coco_dt, "bbox")
        e.params.maxDets = max_dets
        if area_rng is not None:
            e.params.areaRng = area_rng
            e.params.areaRngLbl = [str(i) for i in range(len(area_rng))]
        e.evaluate()
        e.accumulate()
        if area_rng is None:  # summarize() reads COCO's bucket labels
            e.summarize()
    return e


@pytest.mark.parametrize("max_dets", [100, 300])
def test_detections_rescored_by_plain_pycocotools_match(tmp_path: Path, max_dets: int) -> None:
    rng = np.random.default_rng(0)
    anns: list[dict[str, Any]] = []
    outputs = []
    for image_id in (1, 2, 3):
        n_gt = 60
        xy = rng.uniform(0, 350, size=(n_gt, 2))
        wh = rng.uniform(4, 60, size=(n_gt, 2))
        cats = rng.integers(1, 3, size=n_gt)
        for (x, y), (w, h), c in zip(xy, wh, cats, strict=True):
            anns.append(_ann(len(anns) + 1, image_id, int(c), [x, y, w, h]))
        # Jittered copies of the GT (some miss at high IoU) plus random FPs: 190 detections per image, so
        # the per-image cap matters at max_dets = 100.
        jit = np.concatenate([xy, wh], axis=1) + rng.normal(0, 2, size=(n_gt, 4))
        fp = np.concatenate([rng.uniform(0, 350, (130, 2)), rng.uniform(4, 60, (130, 2))], axis=1)
        boxes = np.concatenate([jit, fp]).tolist()
        labels = np.concatenate([cats, rng.integers(1, 3, size=130)]).tolist()
        outputs.append(_out(boxes, rng.uniform(0.05, 1, size=len(boxes)).tolist(), labels))
    gt = _gt(tmp_path, 3, anns, cats=(1, 2))
    ev = CocoEvaluator(gt, max_dets=max_dets)
    ev.process([{"image_id": i} for i in (1, 2, 3)], outputs)
    r = ev.evaluate()
    dets_json = tmp_path / "detections.json"
    dets_json.write_text(json.dumps(ev.detections()))

    e = _plain_pycocotools(gt, dets_json, [1, 10, max_dets])
    if max_dets == 100:  # the textbook path: summarize()'s stats
        assert (r["AP"], r["AP_small"]) == pytest.approx((e.stats[0], e.stats[3]), abs=1e-12)
    p = e.eval["precision"]
    assert r["AP"] == pytest.approx(np.mean(p[:, :, :, 0, -1][p[:, :, :, 0, -1] > -1]), abs=1e-12)
    assert r["AP_small"] == pytest.approx(np.mean(p[:, :, :, 1, -1][p[:, :, :, 1, -1] > -1]), abs=1e-12)
    assert 0 < r["AP"] < 1

    # AI-TOD's buckets: a separate plain COCOeval with only AI-TOD's area ranges gives the same numbers.
    e = _plain_pycocotools(gt, dets_json, [1, 10, max_dets], area_rng=[[0, 8**2], [8**2, 16**2], [16**2, 32**2]])
    p, rec = e.eval["precision"], e.eval["recall"]
    for a, name in enumerate(("vt", "t", "s16")):
        assert r[f"AP_{name}"] == pytest.approx(np.mean(p[:, :, :, a, -1][p[:, :, :, a, -1] > -1]), abs=1e-12)
        assert r[f"AR_{name}"] == pytest.approx(np.mean(rec[:, :, a, -1][rec[:, :, a, -1] > -1]), abs=1e-12)
    # Every bucket has GT (sides 4..60 px); 2 px jitter misses most 4..8 px boxes, but not the larger ones.
    assert r["AP_vt"] is not None and 0 < r["AP_t"] < 1 and 0 < r["AP_s16"] < 1
