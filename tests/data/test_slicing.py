"""Training on tiles (sod/data/slicing.py): hand-computed tiles and boxes, then through ``sod prepare``.

The hand-made case: one 500 x 300 image, tile 200, overlap 0.2. The step is floor(200 * 0.8) = 160 px, so
x origins 0, 160 and 300 (the last aligned to the right border: 500 - 200), y origins 0 and 100 (300 - 200):
six 200 x 200 tiles. Boxes (COCO xywh) and where each lands, ratio = area inside / box area:

  A [10, 10, 20, 20]    inside tile (0, 0) only.
  B [190, 50, 20, 10]   x 190–210: tile (0, 0) holds x 190–200, ratio 0.5, kept cut; whole in (160, 0).
  C [150, 20, 60, 10]   x 150–210: (0, 0) holds 150–200 (50/60), (160, 0) holds 160–210 (50/60): cut in both.
  D [195, 250, 100, 20] y 250–270 (bottom row only): (0, 100) holds x 195–200, ratio 0.05 < 0.1, dropped;
                        whole in (160, 100).
  E [350, 190, 40, 100] x 350–390, y 190–290: (160, 0) holds 10 x 10 = 100 / 4000 = 0.025, dropped;
                        (300, 0) holds 40 x 10 = 0.1 exactly, kept (≥); (160, 100) holds 10 x 100 = 0.25,
                        kept; whole in (300, 100).

Tile (0, 100) keeps nothing (D's sliver is dropped): it is the one empty tile.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sod.cli import main
from sod.config import SliceConfig
from sod.data.slicing import SliceCounts, cut_boxes, plan_tiles
from sod.io import read_json

BOXES = {
    "A": [10, 10, 20, 20],
    "B": [190, 50, 20, 10],
    "C": [150, 20, 60, 10],
    "D": [195, 250, 100, 20],
    "E": [350, 190, 40, 100],
}
ANN_ID = {name: i for i, name in enumerate(BOXES, start=1)}
# Tile offset -> {box: bbox in the tile's pixels}, by hand from the module docstring.
EXPECTED = {
    (0, 0): {"A": [10, 10, 20, 20], "B": [190, 50, 10, 10], "C": [150, 20, 50, 10]},
    (160, 0): {"B": [30, 50, 20, 10], "C": [0, 20, 50, 10]},
    (300, 0): {"E": [50, 190, 40, 10]},
    (0, 100): {},
    (160, 100): {"D": [35, 150, 100, 20], "E": [190, 90, 10, 100]},
    (300, 100): {"E": [50, 90, 40, 100]},
}
CUT_KEPT = 5  # B and C in (0, 0), C in (160, 0), E in (300, 0) and (160, 100)
CUT_DROPPED = 2  # E in (160, 0), D in (0, 100)


def _anns() -> list[dict]:
    return [
        {"id": ANN_ID[n], "image_id": 1, "category_id": 1, "bbox": [float(v) for v in b], "area": b[2] * b[3],
         "iscrowd": 0}
        for n, b in BOXES.items()
    ]  # fmt: skip


def _cfg(**kw: float) -> SliceConfig:
    return SliceConfig(**{"tile": 200, "overlap": 0.2, "min_area_ratio": 0.1, "keep_empty": 1.0, **kw})


def _as_table(plans: list) -> dict[tuple[int, int], dict[str, list[float]]]:
    name = {i: n for n, i in ANN_ID.items()}
    return {p.offset: {name[a["source_annotation_id"]]: a["bbox"] for a in p.annotations} for p in plans}


# ----------------------------------------------------------------------------------------------- unit
def test_tiles_and_boxes_match_the_hand_computed_case() -> None:
    counts = SliceCounts()
    plans = plan_tiles(500, 300, _anns(), _cfg(), 1.0, np.random.default_rng(0), counts)
    assert _as_table(plans) == EXPECTED
    assert all((p.width, p.height) == (200, 200) for p in plans)
    assert counts.boxes_cut_kept == CUT_KEPT and counts.boxes_cut_dropped == CUT_DROPPED
    assert counts.empty_tiles_kept == 1 and counts.empty_tiles_dropped == 0 and counts.boxes_lost == 0
    # Area is the clipped box's: E keeps 40 x 10 px of (300, 0).
    (e,) = [a for p in plans if p.offset == (300, 0) for a in p.annotations]
    assert e["area"] == 400.0 and e["iscrowd"] == 0 and e["category_id"] == 1


def test_tile_boxes_map_back_to_their_source_box() -> None:
    """Provenance: tile box + offset is the source box clipped to the tile."""
    plans = plan_tiles(500, 300, _anns(), _cfg(), 1.0, np.random.default_rng(0), SliceCounts())
    name = {i: n for n, i in ANN_ID.items()}
    for p in plans:
        ox, oy = p.offset
        for a in p.annotations:
            x, y, w, h = BOXES[name[a["source_annotation_id"]]]
            tx, ty, tw, th = a["bbox"]
            x1, y1 = max(x, ox), max(y, oy)
            x2, y2 = min(x + w, ox + p.width), min(y + h, oy + p.height)
            assert [tx + ox, ty + oy, tx + ox + tw, ty + oy + th] == [x1, y1, x2, y2]


def test_keep_empty_zero_drops_the_empty_tile() -> None:
    counts = SliceCounts()
    plans = plan_tiles(500, 300, _anns(), _cfg(keep_empty=0.0), 1.0, np.random.default_rng(0), counts)
    assert _as_table(plans) == {k: v for k, v in EXPECTED.items() if k != (0, 100)}
    assert counts.empty_tiles_kept == 0 and counts.empty_tiles_dropped == 1


def test_a_higher_ratio_loses_a_box_kept_in_no_tile() -> None:
    """At 0.9, C (50/60 = 0.83 in both its tiles) is kept nowhere; B (0.5 in one, 1 in the other) survives."""
    counts = SliceCounts()
    plans = plan_tiles(500, 300, _anns(), _cfg(min_area_ratio=0.9), 1.0, np.random.default_rng(0), counts)
    kept = {n for boxes in _as_table(plans).values() for n in boxes}
    assert kept == {"A", "B", "D", "E"} and counts.boxes_lost == 1
    # Dropped by the ratio: B in (0, 0), C twice, D in (0, 100), E in (160, 0), (300, 0), (160, 100).
    assert counts.boxes_cut_dropped == 7 and counts.boxes_cut_kept == 0


def test_cut_boxes_drops_thin_slivers_and_ignores_touching_boxes() -> None:
    boxes = torch.tensor([[195.5, 10, 10, 10], [200, 10, 10, 10], [-20, 0, 30, 30]], dtype=torch.float64)
    cut = cut_boxes(boxes, (0, 0, 200, 200), min_area_ratio=0.0, min_side=1.0)
    # Row 0 keeps 4.5 x 10 (ratio 0.45): kept; row 1 only touches the border x = 200: not in the tile;
    # row 2 keeps 10 x 30 of 30 x 30.
    assert cut.index.tolist() == [0, 2] and cut.cut.tolist() == [True, True]
    assert cut.boxes_xywh.tolist() == [[195.5, 10, 4.5, 10], [0, 0, 10, 30]]
    thin = cut_boxes(boxes[:1], (0, 0, 200, 200), min_area_ratio=0.0, min_side=5.0)
    assert len(thin.index) == 0 and thin.dropped_subpixel == 1 and thin.dropped_ratio == 0


def test_polygons_move_with_the_tile_and_their_area_is_the_part_inside() -> None:
    ann = {**_anns()[2], "segmentation": [[150, 20, 210, 20, 210, 30, 150, 30]]}  # C's box as a polygon
    plans = plan_tiles(500, 300, [ann], _cfg(keep_empty=0.0), 1.0, np.random.default_rng(0), SliceCounts())
    (right,) = [p for p in plans if p.offset == (160, 0)]
    (a,) = right.annotations
    assert a["segmentation"] == [[-10, 20, 50, 20, 50, 30, -10, 30]]
    assert a["area"] == pytest.approx(500, abs=60)  # rasterised: 50 x 10 px inside, give or take the edges


# ---------------------------------------------------------------------------------------- the stage
def _write_coco(root: Path) -> tuple[Path, Path, Path]:
    """Train: a 500 x 300 image (the hand-made case) and a 150 x 100 one; val: a 500 x 300 image."""
    images = root / "images"
    images.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name, (w, h) in {"big.png": (500, 300), "small.png": (150, 100), "valbig.png": (500, 300)}.items():
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(images / name)
    cats = [{"id": 1, "name": "thing"}]
    train = {
        "images": [
            {"id": 1, "file_name": "big.png", "width": 500, "height": 300},
            {"id": 2, "file_name": "small.png", "width": 150, "height": 100},
        ],
        "annotations": [*_anns(), {"id": 6, "image_id": 2, "category_id": 1, "bbox": [5, 5, 10, 10]}],
        "categories": cats,
    }
    val = {
        "images": [{"id": 3, "file_name": "valbig.png", "width": 500, "height": 300}],
        "annotations": [{"id": 7, "image_id": 3, "category_id": 1, "bbox": [190, 50, 20, 10]}],
        "categories": cats,
    }
    (root / "train.json").write_text(json.dumps(train))
    (root / "val.json").write_text(json.dumps(val))
    return root / "train.json", root / "val.json", images


def _prepare(tmp: Path, coco: tuple[Path, Path, Path], *sets: str, name: str = "out") -> tuple[Path, dict]:
    train, val, images = coco
    argv = ["prepare", "-q", "--out", str(tmp / name), "--report", str(tmp / f"{name}.json"),
            "--sizes-csv", str(tmp / f"{name}.csv"), "--sizes-png", str(tmp / f"{name}.png")]  # fmt: skip
    base = ["data.source=coco", f"data.coco.train_annotations={train}", f"data.coco.train_images={images}",
            f"data.coco.val_annotations={val}", f"data.coco.val_images={images}", "prepare.slice.tile=200",
            "prepare.slice.overlap=0.2", "prepare.slice.keep_empty=1"]  # fmt: skip
    for s in [*base, *sets]:
        argv += ["--set", s]
    assert main(argv) == 0
    return tmp / name, read_json(tmp / f"{name}.json")


def _digests(out: Path) -> dict[str, str]:
    files = sorted(p for p in out.rglob("*") if p.is_file())
    return {str(p.relative_to(out)): hashlib.md5(p.read_bytes()).hexdigest() for p in files}


@pytest.fixture(scope="module")
def coco_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    return _write_coco(tmp_path_factory.mktemp("coco"))


def test_prepare_writes_tiles_of_the_original_pixels(coco_files: tuple[Path, Path, Path], tmp_path: Path) -> None:
    out, report = _prepare(tmp_path, coco_files)
    train = read_json(out / "train.json")
    # The small image passes through: same record, same bytes.
    assert train["images"][0] == {"id": 2, "file_name": "images/train/small.png", "width": 150, "height": 100}
    assert (out / "images/train/small.png").read_bytes() == (coco_files[2] / "small.png").read_bytes()
    assert not (out / "images/train/big.png").exists()  # replaced by its tiles
    tiles = train["images"][1:]
    assert [tuple(t["offset"]) for t in tiles] == list(EXPECTED)
    # Ids after every input id (images 1–3, annotations 1–7), in tile order.
    assert [t["id"] for t in tiles] == [4, 5, 6, 7, 8, 9]
    source = np.asarray(Image.open(coco_files[2] / "big.png"))
    for t in tiles:
        x, y = t["offset"]
        assert t["source_image_id"] == 1 and t["source_file_name"] == "big.png"
        assert t["file_name"] == f"images/train_tiles/big_x{x}_y{y}.png" and (t["width"], t["height"]) == (200, 200)
        assert np.array_equal(np.asarray(Image.open(out / t["file_name"])), source[y : y + 200, x : x + 200])
    by_tile = {t["id"]: tuple(t["offset"]) for t in tiles}
    name = {i: n for n, i in ANN_ID.items()}
    got: dict[tuple[int, int], dict[str, list[float]]] = {off: {} for off in EXPECTED}
    for a in train["annotations"][1:]:
        got[by_tile[a["image_id"]]][name[a["source_annotation_id"]]] = a["bbox"]
        assert a["area"] == a["bbox"][2] * a["bbox"][3]
    assert got == EXPECTED
    assert [a["id"] for a in train["annotations"][1:]] == list(range(8, 8 + 9))
    assert report["slicing"] == {
        "images_sliced": 1,
        "images_passed_through": 1,
        "tiles_written": 6,
        "empty_tiles_kept": 1,
        "empty_tiles_dropped": 0,
        "boxes_cut_kept": CUT_KEPT,
        "boxes_cut_dropped": CUT_DROPPED,
        "boxes_dropped_subpixel": 0,
        "boxes_lost": 0,
        "segmentations_dropped": 0,
    }
    assert report["train"]["images"] == 7 and report["train"]["instances"] == 10
    # Val is never sliced, though larger than the tile.
    val = read_json(out / "val.json")
    assert val["images"] == [{"id": 3, "file_name": "images/val/valbig.png", "width": 500, "height": 300}]
    assert (out / "images/val/valbig.png").read_bytes() == (coco_files[2] / "valbig.png").read_bytes()
    assert not (out / "images/val_tiles").exists()


def test_keep_empty_zero_and_same_seed_same_bytes(coco_files: tuple[Path, Path, Path], tmp_path: Path) -> None:
    out, report = _prepare(tmp_path, coco_files, "prepare.slice.keep_empty=0", name="a")
    assert report["slicing"]["tiles_written"] == 5 and report["slicing"]["empty_tiles_dropped"] == 1
    assert not (out / "images/train_tiles/big_x0_y100.png").exists()
    again, _ = _prepare(tmp_path, coco_files, "prepare.slice.keep_empty=0", name="b")
    assert _digests(out) == _digests(again)


def test_keep_empty_is_a_seeded_fraction(tmp_path: Path) -> None:
    """An empty 2,000 x 2,000 image: 13 x 13 = 169 tiles at tile 200 (step 150 at overlap 0.25), ~half kept."""
    ann = [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0.0, 0.0, 5.0, 5.0], "area": 25.0, "iscrowd": 0}]
    cfg = _cfg(overlap=0.25, keep_empty=0.5)
    seeds = (3, 3, 4)
    runs = [SliceCounts() for _ in seeds]
    plans = [plan_tiles(2000, 2000, ann, cfg, 1.0, np.random.default_rng(s), runs[i]) for i, s in enumerate(seeds)]
    assert runs[0].empty_tiles_kept + runs[0].empty_tiles_dropped == 168  # the tile at (0, 0) holds the box
    assert 60 < runs[0].empty_tiles_kept < 108  # Binomial(168, 0.5): ± 3.7 sd
    assert [p.offset for p in plans[0]] == [p.offset for p in plans[1]]
    assert [p.offset for p in plans[0]] != [p.offset for p in plans[2]]


def test_disabled_or_larger_tile_leaves_prepare_unchanged(coco_files: tuple[Path, Path, Path], tmp_path: Path) -> None:
    """No train image larger than the tile (the embedded default's case): byte for byte what slicing off gives."""
    off, _ = _prepare(tmp_path, coco_files, "prepare.slice.enabled=false", name="off")
    big, report = _prepare(tmp_path, coco_files, "prepare.slice.tile=640", name="big")
    assert _digests(off) == _digests(big)
    assert report["slicing"]["images_passed_through"] == 2 and report["slicing"]["tiles_written"] == 0
    assert read_json(off / "train.json")["images"][0]["file_name"] == "images/train/big.png"
