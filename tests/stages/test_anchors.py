"""`sod anchors` on a tiny COCO JSON (no images needed): outputs, input scaling, determinism, errors."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from sod.cli import main
from sod.config import load_params
from sod.io import read_json
from sod.models.anchors import anchor_metrics, default_anchors_wh, grid_metrics
from sod.stages.anchors import load_boxes

PARAMS = Path(__file__).resolve().parents[2] / "params.yaml"
# method kmeans: these tests are about the fitted anchors the file then holds (params.yaml's default is
# torchvision's, with the fit only reported).
FAST = [
    "anchors.method=kmeans",
    "anchors.kmeans_iters=30",
    "anchors.evolve_generations=60",
    "anchors.anchors_per_level=3",
]
FG = load_params(PARAMS).detector.fg_iou_thresh


def _tiny_coco(path: Path, n_boxes: int = 120, seed: int = 0) -> Path:
    """Three images of different sizes; mostly small boxes with a few medium and large ones, anywhere in them."""
    rng = np.random.default_rng(seed)
    images = [
        {"id": 1, "file_name": "a.png", "width": 320, "height": 320},
        {"id": 2, "file_name": "b.png", "width": 640, "height": 480},
        {"id": 3, "file_name": "c.png", "width": 200, "height": 100},
    ]
    annotations = []
    for i in range(n_boxes):
        side = float(np.exp(rng.uniform(np.log(5), np.log(120))))
        aspect = float(np.exp(rng.normal(0, 0.3)))
        w, h = round(side * aspect**0.5, 2), round(side / aspect**0.5, 2)
        img = images[i % 3]
        w, h = min(w, img["width"] - 1), min(h, img["height"] - 1)
        x, y = round(float(rng.uniform(0, img["width"] - w)), 2), round(float(rng.uniform(0, img["height"] - h)), 2)
        annotations.append(
            {
                "id": i + 1,
                "image_id": img["id"],
                "category_id": 1,
                "bbox": [x, y, w, h],
                "area": w * h,
                "iscrowd": 0,
            }
        )
    path.write_text(
        json.dumps(
            {"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "x", "supercategory": "x"}]}
        )
    )
    return path


def _run(tmp_path: Path, train: Path, name: str, extra: list[str] | None = None) -> tuple[int, dict[str, Path]]:
    paths = {
        "out": tmp_path / name / "models" / "anchors.json",
        "report": tmp_path / name / "reports" / "anchors.json",
        "plot": tmp_path / name / "reports" / "plots" / "anchors.png",
    }
    argv = ["anchors", "--params", str(PARAMS), "-q", "--train", str(train)]
    argv += ["--out", str(paths["out"]), "--report", str(paths["report"]), "--plot", str(paths["plot"])]
    for s in FAST + (extra or []):
        argv += ["--set", s]
    return main(argv), paths


def _digest(paths: dict[str, Path]) -> dict[str, str]:
    return {k: hashlib.sha256(p.read_bytes()).hexdigest() for k, p in paths.items()}


def test_stage_writes_three_files_and_is_deterministic(tmp_path: Path) -> None:
    train = _tiny_coco(tmp_path / "train.json")
    code, paths = _run(tmp_path, train, "run1")
    assert code == 0
    anchors = read_json(paths["out"])
    assert list(anchors) == ["method", "levels", "strides", "anchors_wh", "min_size", "max_size"]
    assert anchors["method"] == "kmeans"
    levels = load_params(PARAMS).detector.levels
    assert anchors["levels"] == levels and anchors["strides"] == [2**level for level in levels]
    assert [len(level) for level in anchors["anchors_wh"]] == [3] * len(levels)
    for stride, level in zip(anchors["strides"], anchors["anchors_wh"], strict=True):
        assert all(w >= stride / 2 and h >= stride / 2 for w, h in level)

    report = read_json(paths["report"])
    assert report["num_boxes"] == 120
    keys = ["bpr", "mean_best_iou", "bpr_small", "bpr_medium", "bpr_large", "bpr_grid", "positives_per_gt",
            "matched_per_gt"]  # fmt: skip
    assert list(report["default"]) == keys and list(report["tuned"]) == keys
    assert report["fg_iou_thresh"] == FG
    buckets = ["all", "small", "medium", "large", "under_12px"]
    assert list(report["tuned"]["bpr_grid"]) == buckets and list(report["tuned"]["positives_per_gt"]) == buckets
    assert report["tuned"]["bpr_grid"]["small"] > report["default"]["bpr_grid"]["small"]
    assert paths["plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The report describes exactly the anchors written (no rounding after measuring).
    boxes = load_boxes(train, 320, 320)
    per_level = [np.array(level) for level in anchors["anchors_wh"]]
    assert anchor_metrics(boxes.wh, boxes.areas, np.concatenate(per_level), FG).items() <= report["tuned"].items()
    det = load_params(PARAMS).detector  # positives are counted under the configured assignment
    grid = grid_metrics(boxes, anchors["strides"], per_level, FG, det.assigner, det.atss_topk)
    assert grid.items() <= report["tuned"].items()

    code, again = _run(tmp_path, train, "run2")
    assert code == 0
    assert _digest(again) == _digest(paths)


def test_crowd_regions_are_not_fitted(tmp_path: Path) -> None:
    train = _tiny_coco(tmp_path / "train.json", n_boxes=30)
    raw = read_json(train)
    n = len(load_boxes(train, 320, 320).wh)
    raw["annotations"][0]["iscrowd"] = 1
    train.write_text(json.dumps(raw))
    assert len(load_boxes(train, 320, 320).wh) == n - 1


def test_method_default_writes_torchvision_anchors(tmp_path: Path) -> None:
    train = _tiny_coco(tmp_path / "train.json", n_boxes=30)
    code, paths = _run(tmp_path, train, "default", ["anchors.method=default", "detector.levels=[2,3,4,5]"])
    assert code == 0
    anchors = read_json(paths["out"])
    assert anchors["method"] == "default" and anchors["strides"] == [4, 8, 16, 32]
    expected = [level.tolist() for level in default_anchors_wh([2, 3, 4, 5])]
    assert anchors["anchors_wh"] == expected
    assert [len(level) for level in anchors["anchors_wh"]] == [9, 9, 9, 9]
    # The fit still runs and is reported (what tuning would buy), but the detector gets torchvision's.
    report = read_json(paths["report"])
    assert report["method"] == "default"
    assert report["tuned"] != report["default"]


def test_boxes_are_scaled_like_the_detector_input(tmp_path: Path) -> None:
    train = _tiny_coco(tmp_path / "train.json", n_boxes=3)
    raw = json.loads(train.read_text())
    for ann, (w, h) in zip(raw["annotations"], [(40.0, 20.0), (40.0, 20.0), (40.0, 20.0)], strict=True):
        ann["bbox"] = [0.5, 0.5, w, h]
        ann["area"] = w * h
    train.write_text(json.dumps(raw))
    boxes = load_boxes(train, 320, 320)
    # 320x320: scale 1; 640x480: min(320/480, 320/640) = 0.5; 200x100: min(3.2, 1.6) = 1.6.
    np.testing.assert_allclose(boxes.wh, [[40, 20], [20, 10], [64, 32]], rtol=1e-6)
    # The corner (0.5, 0.5) moves with the same factors: where the box sits on the anchor grid.
    np.testing.assert_allclose(boxes.boxes_xyxy[:, :2], [[0.5, 0.5], [0.25, 0.25], [0.8, 0.8]], rtol=1e-6)
    # Padded input: 320x320; 320x240 -> 320x256; 320x160 -> 320x160 (multiples of 32).
    np.testing.assert_array_equal(boxes.input_wh, [[320, 320], [320, 256], [320, 160]])
    np.testing.assert_array_equal(boxes.image_index, [0, 1, 2])
    np.testing.assert_array_equal(boxes.areas, [800, 800, 800])  # original scale for the COCO buckets
    np.testing.assert_array_equal(boxes.long_sides, [40, 40, 40])


def test_no_boxes_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    train = _tiny_coco(tmp_path / "train.json", n_boxes=0)
    code, paths = _run(tmp_path, train, "empty")
    assert code == 2
    err = capsys.readouterr().err
    assert "no annotations with boxes" in err and "train.json" in err
    assert not paths["out"].exists()


def test_bad_bbox_names_the_annotation(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    train = _tiny_coco(tmp_path / "train.json", n_boxes=5)
    raw = json.loads(train.read_text())
    raw["annotations"][3]["bbox"] = [1, 1, 0, 5]
    train.write_text(json.dumps(raw))
    code, _ = _run(tmp_path, train, "bad")
    assert code == 2
    assert "annotations[3] (id=4)" in capsys.readouterr().err


def test_unknown_image_id_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    train = _tiny_coco(tmp_path / "train.json", n_boxes=5)
    raw = json.loads(train.read_text())
    raw["annotations"][0]["image_id"] = 99
    train.write_text(json.dumps(raw))
    code, _ = _run(tmp_path, train, "bad")
    assert code == 2
    assert "unknown image_id 99" in capsys.readouterr().err


def test_fewer_boxes_than_anchors_still_writes_a_full_set(tmp_path: Path) -> None:
    train = _tiny_coco(tmp_path / "train.json", n_boxes=4)
    code, paths = _run(tmp_path, train, "few")
    assert code == 0
    assert [len(level) for level in read_json(paths["out"])["anchors_wh"]] == [3] * len(
        load_params(PARAMS).detector.levels
    )
    assert read_json(paths["report"])["tuned"]["bpr"] == 1.0  # every box shape became an anchor


def test_tuned_anchors_beat_default_on_the_embedded_data(tiny_pipeline: Path) -> None:
    """On real embedded scenes (through prepare and augment): grid BPR of small boxes up."""
    report = read_json(tiny_pipeline / "reports" / "anchors.json")
    default, tuned = report["default"], report["tuned"]
    # On the stride grid (the tiny pipeline evolves for only 20 generations, so the margin is small).
    assert tuned["bpr_grid"]["small"] > default["bpr_grid"]["small"]
    assert tuned["bpr"] > default["bpr"]  # shape-only
