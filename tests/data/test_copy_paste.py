"""Copy-paste: placement rules, exact pixels without jitter, masks, tight boxes after rotation, counts."""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import pytest

from sod.config import CopyPasteConfig
from sod.data.copy_paste import (
    copy_paste,
    extract_patch,
    find_position,
    intersects,
    make_alpha,
    transform_patch,
    unoccluded,
    xywh_to_xyxy,
)

EXACT = {"scale_jitter": 0.0, "rotation": 0.0, "blend": "none"}


def _dataset(specs: list[tuple[tuple[int, int], list[tuple[float, ...]]]]) -> tuple[dict[str, Any], dict[int, Any]]:
    """COCO dict + pixels (random, seeded by image) from ``[((w, h), [(x, y, bw, bh), ...]), ...]``."""
    coco: dict[str, Any] = {"images": [], "annotations": [], "categories": [{"id": 3, "name": "a"}]}
    pixels = {}
    for i, ((w, h), boxes) in enumerate(specs):
        coco["images"].append({"id": i + 1, "file_name": f"{i}.png", "width": w, "height": h})
        pixels[i + 1] = np.random.default_rng(i).integers(0, 256, (h, w, 3), dtype=np.uint8)
        for b in boxes:
            n = len(coco["annotations"]) + 1
            ann = {"id": n, "image_id": i + 1, "category_id": 3, "bbox": [float(v) for v in b[:4]]}
            coco["annotations"].append({**ann, "area": float(b[2] * b[3]), "iscrowd": 0})
    return coco, pixels


def _run(coco: dict[str, Any], pixels: dict[int, Any], **cfg: Any) -> tuple[dict[str, Any], Any, dict[int, Any]]:
    written: dict[int, np.ndarray] = {}

    def write(im: dict[str, Any], canvas: np.ndarray) -> str:
        written[im["id"]] = canvas.copy()
        return f"new/{im['id']}.png"

    out, stats = copy_paste(coco, lambda im: pixels[im["id"]], write, CopyPasteConfig(**cfg), small_area=1024)
    return out, stats, written


def test_intersects_needs_positive_area() -> None:
    a = np.array([[0, 0, 10, 10]], dtype=float)
    b = np.array([[10, 0, 20, 10], [9, 9, 12, 12], [0, 10, 10, 20], [20, 20, 30, 30]], dtype=float)
    assert intersects(a, b).tolist() == [[False, True, False, False]]  # edge contact is not overlap


def test_unoccluded_marks_boxes_that_overlap_another() -> None:
    boxes = xywh_to_xyxy([[0, 0, 10, 10], [5, 5, 10, 10], [30, 30, 5, 5]])
    assert unoccluded(boxes).tolist() == [False, False, True]


def test_find_position_respects_margin_and_reports_why_it_fails() -> None:
    def margin_ok(start: int, size: int, side: int) -> bool:
        return start >= 5 and start + size <= side - 5

    rng = np.random.default_rng(0)
    for _ in range(50):
        x, y = find_position((10, 6), (40, 30), np.zeros((0, 4)), margin=5, max_tries=3, rng=rng)
        assert margin_ok(x, 10, 40) and margin_ok(y, 6, 30)
    # 40 - 2 * 5 = 30 px of room: a 31 px box does not fit, a 30 px box fits at x = 5 only
    assert find_position((31, 6), (40, 30), np.zeros((0, 4)), 5, 3, rng) == "no_room"
    assert find_position((30, 20), (40, 30), np.zeros((0, 4)), 5, 3, rng) == (5, 5)
    wall = np.array([[0, 0, 40, 30]], dtype=float)
    assert find_position((5, 5), (40, 30), wall, 5, 10, rng) == "overlap"


def test_pasted_pixels_equal_the_source_without_rotation_scale_or_blending() -> None:
    coco, pixels = _dataset([((64, 48), [(10, 12, 6, 5), (40, 30, 20, 15)])])  # 20×15 = 300 px² is small too
    out, stats, written = _run(coco, pixels, times=1, **EXACT)
    src, canvas = pixels[1], written[2]
    pasted = [a for a in out["annotations"] if "sod_paste" in a]
    assert [a["sod_paste"]["source_annotation_id"] for a in pasted] == [1, 2]
    changed = np.zeros(canvas.shape[:2], dtype=bool)
    for a, (sx, sy, sw, sh) in zip(pasted, [(10, 12, 6, 5), (40, 30, 20, 15)], strict=True):
        x, y, w, h = map(int, a["bbox"])
        assert (w, h) == (sw, sh) and a["area"] == sw * sh
        assert a["sod_paste"]["scale"] == 1.0 and a["sod_paste"]["angle"] == 0.0
        np.testing.assert_array_equal(canvas[y : y + h, x : x + w], src[sy : sy + sh, sx : sx + sw])
        changed[y : y + h, x : x + w] = True
    np.testing.assert_array_equal(canvas[~changed], src[~changed])  # nothing else moved
    assert stats.pastes_placed == 2 and stats.images_augmented == 1


def test_no_pasted_box_overlaps_any_box_and_all_keep_the_margin() -> None:
    boxes = [(8 + 20 * i, 8 + 22 * j, 9, 12) for i in range(4) for j in range(3)]
    coco, pixels = _dataset([((120, 90), boxes), ((100, 100), [(50, 50, 20, 14), (5, 80, 8, 8)])])
    out, stats, _ = _run(coco, pixels, times=3, margin=5)  # default ±20 % scale, ±15° rotation, feather
    assert stats.pastes_placed > 0
    sizes = {im["id"]: (im["width"], im["height"]) for im in out["images"]}
    for im in out["images"]:
        anns = [a for a in out["annotations"] if a["image_id"] == im["id"]]
        b = xywh_to_xyxy([a["bbox"] for a in anns])
        hit = intersects(b, b)
        np.fill_diagonal(hit, False)
        is_pasted = np.array(["sod_paste" in a for a in anns])
        assert not hit[is_pasted].any() and not hit[:, is_pasted].any()
        w, h = sizes[im["id"]]
        for x1, y1, x2, y2 in b[is_pasted]:
            assert x1 >= 5 and y1 >= 5 and x2 <= w - 5 and y2 <= h - 5


def test_counts_add_up_and_occluded_sources_are_skipped() -> None:
    # image 1: two overlapping small boxes (occluded) + one free; image 2: a large box only
    coco, pixels = _dataset(
        [((60, 60), [(5, 5, 10, 10), (10, 10, 10, 10), (40, 40, 8, 8)]), ((60, 60), [(0, 0, 40, 40)])]
    )
    out, stats, written = _run(coco, pixels, times=4, margin=2)
    assert (stats.sources, stats.sources_occluded) == (1, 2)
    assert stats.pastes_placed + sum(stats.pastes_rejected.values()) == 1 * 4
    pasted = [a for a in out["annotations"] if "sod_paste" in a]
    assert len(pasted) == stats.pastes_placed
    assert {a["sod_paste"]["source_annotation_id"] for a in pasted} == {3}
    # add mode: originals unchanged first, then the augmented image with copies of its 3 annotations
    assert out["images"][:2] == coco["images"] and out["annotations"][:4] == coco["annotations"]
    assert out["images"][2]["sod_copy_paste_of"] == 1 and out["images"][2]["id"] == 3
    ids = [a["id"] for a in out["annotations"]]
    assert len(ids) == len(set(ids)) == 4 + 3 + stats.pastes_placed
    assert list(written) == [3]


def test_times_zero_returns_the_input() -> None:
    coco, pixels = _dataset([((60, 60), [(5, 5, 10, 10)])])
    before = copy.deepcopy(coco)
    out, stats, written = _run(coco, pixels, times=0)
    assert out == before == coco and not written and stats.pastes_placed == 0


def test_replace_mode_keeps_ids_and_swaps_the_file() -> None:
    coco, pixels = _dataset([((60, 60), [(5, 5, 10, 10)]), ((60, 60), [])])
    out, stats, written = _run(coco, pixels, times=2, mode="replace", **EXACT)
    assert [im["id"] for im in out["images"]] == [1, 2]
    assert out["images"][0]["file_name"] == "new/1.png" and out["images"][0]["sod_copy_paste_of"] == 1
    assert out["images"][1] == coco["images"][1]  # no source: untouched
    assert out["annotations"][0] == coco["annotations"][0]
    assert [a["image_id"] for a in out["annotations"][1:]] == [1, 1] and list(written) == [1]


def test_source_any_pastes_objects_into_other_images() -> None:
    coco, pixels = _dataset([((60, 60), [(5, 5, 10, 10)])] + [((60, 60), [])] * 5)
    out, stats, written = _run(coco, pixels, times=6, source="any", seed=3, **EXACT)
    pasted = [a for a in out["annotations"] if "sod_paste" in a]
    targets = {
        out["images"][[im["id"] for im in out["images"]].index(a["image_id"])]["sod_copy_paste_of"] for a in pasted
    }
    assert len(targets) > 1 and all(a["sod_paste"]["source_image_id"] == 1 for a in pasted)
    for a in pasted:  # the source's pixels, in another image
        x, y, w, h = map(int, a["bbox"])
        np.testing.assert_array_equal(written[a["image_id"]][y : y + h, x : x + w], pixels[1][5:15, 5:15])


def test_same_seed_same_output_other_seed_other_output() -> None:
    coco, pixels = _dataset([((80, 80), [(5, 5, 10, 12), (50, 50, 9, 9)])])
    a, _, wa = _run(coco, pixels, times=2, seed=1)
    b, _, wb = _run(coco, pixels, times=2, seed=1)
    c, _, _ = _run(coco, pixels, times=2, seed=2)
    assert a == b and all(np.array_equal(wa[k], wb[k]) for k in wa)
    assert a != c


def test_polygon_mask_pastes_only_the_object_pixels() -> None:
    # right triangle with legs on the box's top and left edges: the bottom-right corner is background
    coco, pixels = _dataset([((60, 60), [(10, 10, 12, 12)])])
    coco["annotations"][0]["segmentation"] = [[10, 10, 22, 10, 10, 22]]
    patch = extract_patch(pixels[1], coco["annotations"][0])
    assert patch.mask.shape == (12, 12) and patch.mask[1, 1] and not patch.mask[11, 11]
    out, _, written = _run(coco, pixels, times=1, **EXACT)
    # the pasted box is the tight box of the mask (pixel centres inside the triangle)
    rows, cols = np.nonzero(patch.mask)
    m = patch.mask[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    src = pixels[1][10 + rows.min() : 11 + rows.max(), 10 + cols.min() : 11 + cols.max()]
    x, y, w, h = map(int, out["annotations"][-1]["bbox"])
    assert (h, w) == m.shape
    region = written[2][y : y + h, x : x + w]
    np.testing.assert_array_equal(region[m], src[m])
    np.testing.assert_array_equal(region[~m], pixels[1][y : y + h, x : x + w][~m])


def test_rotation_gives_the_tight_box_of_the_rotated_object() -> None:
    rgb = np.full((4, 10, 3), 200, dtype=np.uint8)
    mask = np.ones((4, 10), dtype=bool)
    out = transform_patch(rgb, mask.astype(np.float32), mask, scale=1.0, angle=90.0, hard=True)
    assert out is not None and out[1].shape == (10, 4)  # a 10×4 box turned a quarter: 4×10
    rgb45, alpha45 = transform_patch(rgb, mask.astype(np.float32), mask, scale=1.0, angle=45.0, hard=True)
    # The rotated 10×4 rectangle spans (10 + 4) / √2 ≈ 9.9 px each way; rasterised at pixel centres (mask ≥ 0.5)
    # its two thin tips lose up to a pixel each. The box is tight: every border row and column holds the object.
    assert all(8 <= s <= 10 for s in alpha45.shape)
    assert alpha45[0].any() and alpha45[-1].any() and alpha45[:, 0].any() and alpha45[:, -1].any()
    assert np.all(np.abs(rgb45[alpha45 > 0] - 200) < 1)  # no dark rim from the transparent corners
    bigger = transform_patch(rgb, mask.astype(np.float32), mask, scale=2.0, angle=0.0, hard=True)
    assert bigger is not None and bigger[1].shape == (8, 20)


def test_alpha_blends() -> None:
    mask = np.ones((12, 12), dtype=bool)
    assert np.array_equal(make_alpha(mask, "none"), np.ones((12, 12)))
    feather = make_alpha(mask, "feather")  # k = 2: edge 1/3, next 2/3, inside 1
    assert feather[0, 6] == pytest.approx(1 / 3) and feather[1, 6] == pytest.approx(2 / 3) and feather[6, 6] == 1
    gauss = make_alpha(mask, "gaussian")
    assert gauss[0, 0] < gauss[0, 6] < gauss[6, 6] and gauss[6, 6] > 0.99
