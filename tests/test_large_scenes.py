"""The DAG end to end on large embedded scenes: prepare slices the 640 px train scenes into 160 px tiles, the
detector trains on the tiles, evaluate scores the whole 640 px val scenes, full image and sliced, with the
tiles run at the training tiles' scale (``train_tile`` in :mod:`sod.evaluation.sliced`)."""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

import pandas as pd
import pytest
import torch

import sod.stages.evaluate as evaluate_stage
from sod.io import read_json
from sod.models.detector import load_detector
from tests.stages.conftest import build_pipeline
from tests.stages.test_evaluate import KEYS, _evaluate
from tests.stages.test_train_detector import _train

SCENE, TILE, INPUT = 640, 160, 128  # scene side, prepare's and evaluate's tile side, detector min/max size (px)
# After the stage tests' tiny overrides (tests/stages/conftest.py TINY: 128 px input, one epoch of 8 samples):
# 4 scenes of 640 px, half of them val; train scenes cut into 160 px tiles, and val scored with 160 px tiles.
LARGE = [
    "data.embedded.images=4",
    f"data.embedded.image_size={SCENE}",
    "prepare.val_fraction=0.5",
    "prepare.slice.enabled=true",
    f"prepare.slice.tile={TILE}",
    f"detector.min_size={INPUT}",
    f"detector.max_size={INPUT}",
    "evaluate.sliced.enabled=true",
    f"evaluate.sliced.tile={TILE}",
    "evaluate.sliced.overlap=0.25",
    "evaluate.sliced.upscale=null",
    "evaluate.sliced.include_full=true",
    "evaluate.scales=[1.0]",
]
SETS = tuple(a for s in LARGE for a in ("--set", s))
# prepare.slice.overlap 0.2: origins every floor(160 * 0.8) = 128 px, the last one aligned to the border (480).
TRAIN_ORIGINS = {0, 128, 256, 384, 480}
# evaluate.sliced.overlap 0.25: origins every 120 px, 0..480, so 5 x 5 tiles per val scene.
EVAL_TILES = 25


@pytest.fixture(scope="module")
def large(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """prepare → augment → anchors → train-detector → evaluate on the large scenes; the shapes (H, W) of every
    image the evaluated detector's backbone saw, in order."""
    root = build_pipeline(tmp_path_factory.mktemp("large"), *SETS)
    # Score threshold 0: the one-epoch model's scores sit near the focal prior; keep them all.
    code, trained = _train(root, "detector", *SETS, "--set", "detector.score_thresh=0.0")
    assert code == 0
    seen: list[tuple[int, int]] = []

    def load_and_watch(*args: Any, **kwargs: Any) -> tuple[torch.nn.Module, dict[str, Any]]:
        model, meta = load_detector(*args, **kwargs)
        # The backbone gets the batch after the detector's own resize: [B, 3, H, W], what the network sees.
        model.backbone.register_forward_pre_hook(lambda _m, inp: seen.extend([tuple(inp[0].shape[-2:])] * len(inp[0])))
        return model, meta

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(evaluate_stage, "load_detector", load_and_watch)
        evaluated = _evaluate(root, trained["out"], "evaluate", *SETS)
    return {"root": root, "trained": trained, "evaluated": evaluated, "seen": seen}


def test_prepare_cuts_the_large_train_scenes_into_tiles(large: dict[str, Any]) -> None:
    prepared = large["root"] / "data/prepared"
    train, val = read_json(prepared / "train.json"), read_json(prepared / "val.json")
    slicing = read_json(large["root"] / "reports/prepare.json")["slicing"]
    # Both train scenes are larger than the tile: none passes through, each is replaced by its tiles.
    assert slicing["images_sliced"] == 2 and slicing["images_passed_through"] == 0
    assert len(train["images"]) == slicing["tiles_written"] > 2
    val_ids = {im["id"] for im in val["images"]}
    sources = {im["source_image_id"] for im in train["images"]}
    assert len(sources) == 2 and not sources & val_ids  # no tile of a val scene in train
    for im in train["images"]:
        # A 640 px scene has only whole tiles; the offsets are the grid's.
        assert (im["width"], im["height"]) == (TILE, TILE)
        assert set(im["offset"]) <= TRAIN_ORIGINS and im["source_file_name"].endswith(".png")
    assert train["annotations"] and all("source_annotation_id" in a for a in train["annotations"])
    for a in train["annotations"]:  # boxes in the tile's pixels
        x, y, w, h = a["bbox"]
        assert 0 <= x < x + w <= TILE and 0 <= y < y + h <= TILE


def test_the_detector_trains_on_the_tiles(large: dict[str, Any]) -> None:
    trained, root = large["trained"], large["root"]
    augmented = read_json(root / "data/augmented/train.json")
    assert {(im["width"], im["height"]) for im in augmented["images"]} == {(TILE, TILE)}  # augment keeps tiles
    report = read_json(trained["report"])
    assert report["epochs"] == 1 and report["train_images"] == len(augmented["images"])
    assert math.isfinite(report["final_loss"]) and report["final_loss"] > 0
    curve = pd.read_csv(trained["csv"])
    assert len(curve) == 1 and curve[["loss", "classification", "bbox_regression"]].map(math.isfinite).all().all()
    model, meta = load_detector(trained["out"])
    assert meta["anchors"] == read_json(root / "models/anchors.json")
    assert int(model.transform.min_size[-1]) == int(model.transform.max_size) == INPUT


def test_evaluate_scores_the_whole_scenes_full_and_sliced_at_the_training_tile_scale(large: dict[str, Any]) -> None:
    val = read_json(large["root"] / "data/prepared/val.json")
    # Val is never sliced: two whole scenes, scored against their full-image ground truth.
    assert len(val["images"]) == 2
    assert all((im["width"], im["height"]) == (SCENE, SCENE) and "offset" not in im for im in val["images"])
    report = read_json(large["evaluated"]["report"])
    for section in (report, report["sliced"]):
        assert section["images"] == 2 and section["gt_instances"] == len(val["annotations"]) > 0
        assert all(k in section for k in KEYS) and "images_per_s" not in section  # speeds: MLflow, not the file
    assert read_json(large["evaluated"]["errors"]).keys() == {"full", "sliced"}
    # Per val scene: the full pass (1 input) and the sliced pass (the full image again, include_full, and 25
    # tiles). The full image runs at 128 / 640 = 0.2; its 160 px tiles at the training tiles' factor
    # 128 / 160 = 0.8, so also 128 px. At the full image's factor they would shrink to 32 px.
    assert Counter(large["seen"]) == {(INPUT, INPUT): 2 * (1 + 1 + EVAL_TILES)}
