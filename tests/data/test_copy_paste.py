"""Copy-paste: placement rules, exact pixels without jitter, masks, tight boxes after rotation, counts;
the planner, the per-image paster and the id bookkeeping alone; determinism."""

from __future__ import annotations

import copy
import json
from typing import Any

import numpy as np
import pytest

from sod.config import CopyPasteConfig
from sod.data.copy_paste import (
    AnnotationLedger,
    Patch,
    Placement,
    Source,
    annotations_by_image,
    copy_paste,
    extract_patch,
    find_position,
    find_sources,
    image_rng,
    intersects,
    make_alpha,
    paste_into_image,
    pasted_annotation,
    plan_pastes,
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


# --- planner ----------------------------------------------------------------------------------------------


def test_find_sources_keeps_small_unoccluded_objects_in_order() -> None:
    # image 1: small free (id 1), large free (id 2), two small overlapping (ids 3, 4); image 2: none;
    # image 3: small free (id 5). small_area 1024 (_run's): 40 × 40 = 1600 is not small.
    coco, _ = _dataset(
        [
            ((100, 100), [(0, 0, 10, 10), (50, 50, 40, 40), (20, 0, 10, 10), (25, 5, 10, 10)]),
            ((50, 50), []),
            ((50, 50), [(30, 30, 8, 8)]),
        ]
    )
    sources, occluded = find_sources(coco["images"], annotations_by_image(coco), small_area=1024)
    assert [(s.image_index, s.annotation["id"]) for s in sources] == [(0, 1), (2, 5)]
    assert occluded == 2


def test_find_sources_skips_crowd_regions() -> None:
    coco, _ = _dataset([((100, 100), [(0, 0, 10, 10), (50, 50, 10, 10)])])
    coco["annotations"][0]["iscrowd"] = 1
    sources, occluded = find_sources(coco["images"], annotations_by_image(coco), small_area=1024)
    assert [s.annotation["id"] for s in sources] == [coco["annotations"][1]["id"]] and occluded == 0


def test_plan_same_sends_each_object_times_to_its_own_image() -> None:
    a, b = Source(2, {"id": 7}), Source(0, {"id": 9})
    plan = plan_pastes([a, b], num_images=5, times=2, source="same", seed=0)
    assert list(plan) == [0, 2]  # target order ascending, whatever the source order
    assert plan == {0: [b, b], 2: [a, a]}


def test_plan_any_orders_jobs_by_source_then_paste() -> None:
    a, b = Source(0, {"id": 1}), Source(1, {"id": 2})
    # one image: every target is image 0, so the order is all there is: a's pastes, then b's
    assert plan_pastes([a, b], num_images=1, times=3, source="any", seed=4) == {0: [a, a, a, b, b, b]}


def test_plan_any_draws_per_source_in_order_and_depends_on_the_seed_only() -> None:
    srcs = [Source(i, {"id": i}) for i in range(6)]
    plan = plan_pastes(srcs, num_images=50, times=4, source="any", seed=3)
    assert list(plan) == sorted(plan)
    jobs = [s.annotation["id"] for t in plan for s in plan[t]]
    assert sorted(jobs) == sorted(list(range(6)) * 4)  # each object exactly `times` times
    # Sequential draws: the plan of the first two objects is the full plan restricted to them.
    head = plan_pastes(srcs[:2], num_images=50, times=4, source="any", seed=3)
    restricted = {t: [s for s in js if s.annotation["id"] < 2] for t, js in plan.items()}
    assert head == {t: js for t, js in restricted.items() if js}
    assert plan_pastes(srcs, 50, 4, "any", seed=3) == plan
    assert plan_pastes(srcs, 50, 4, "any", seed=4) != plan


# --- paster -----------------------------------------------------------------------------------------------


def _square_patch(ann_id: int, side: int, value: int) -> Patch:
    rgb = np.full((side, side, 3), value, dtype=np.uint8)
    return Patch(rgb=rgb, mask=np.ones((side, side), dtype=bool), annotation={"id": ann_id})


def test_paste_into_image_places_in_order_and_avoids_earlier_pastes() -> None:
    cfg = CopyPasteConfig(margin=2, max_tries=50, **EXACT)
    patches = {1: _square_patch(1, 6, 200), 2: _square_patch(2, 4, 90)}
    jobs = [Source(0, {"id": 1}), Source(0, {"id": 2}), Source(0, {"id": 1})]
    canvas = np.zeros((40, 40, 3), dtype=np.uint8)
    own_xyxy = np.array([[0.0, 0.0, 20.0, 20.0]])
    placed, rejected = paste_into_image(canvas, own_xyxy, jobs, patches, cfg, image_rng(0, 0))
    assert rejected == [] and [p.source.annotation["id"] for p in placed] == [1, 2, 1]
    boxes = np.array([[x, y, x + w, y + h] for x, y, w, h in (p.box_xywh for p in placed)], dtype=float)
    hit = intersects(boxes, np.concatenate([boxes, own_xyxy]))
    np.fill_diagonal(hit[:, : len(boxes)], False)
    assert not hit.any()  # neither each other nor the image's own box
    for p in placed:
        x, y, w, h = p.box_xywh
        assert (p.scale, p.angle) == (1.0, 0.0)
        assert (w, h) == patches[p.source.annotation["id"]].mask.shape
        assert np.all(canvas[y : y + h, x : x + w] == patches[p.source.annotation["id"]].rgb)


def test_paste_into_image_reports_why_each_paste_failed() -> None:
    cfg = CopyPasteConfig(margin=5, max_tries=5, **EXACT)
    patches = {1: _square_patch(1, 31, 1), 2: _square_patch(2, 4, 1)}
    canvas = np.zeros((40, 40, 3), dtype=np.uint8)
    wall = np.array([[0.0, 0.0, 40.0, 40.0]])
    jobs = [Source(0, {"id": 1}), Source(0, {"id": 2})]
    placed, rejected = paste_into_image(canvas, wall, jobs, patches, cfg, image_rng(0, 0))
    assert placed == [] and rejected == ["no_room", "overlap"]  # 31 > 40 - 2 × 5; the wall covers all
    assert not canvas.any()


def test_paste_into_image_is_a_function_of_its_generator() -> None:
    cfg = CopyPasteConfig()  # jitter, rotation and feathering on
    patches = {1: _square_patch(1, 9, 180)}
    jobs = [Source(0, {"id": 1})] * 4

    def once(seed: int) -> tuple[np.ndarray, list[Placement]]:
        canvas = np.full((64, 64, 3), 30, dtype=np.uint8)
        placed, _ = paste_into_image(canvas, np.zeros((0, 4)), jobs, patches, cfg, image_rng(seed, 3))
        return canvas, placed

    (c1, p1), (c2, p2), (_, p3) = once(0), once(0), once(1)
    assert np.array_equal(c1, c2) and p1 == p2
    assert p1 != p3


# --- bookkeeping ------------------------------------------------------------------------------------------


def test_pasted_annotation_is_box_only_with_its_provenance() -> None:
    src = Source(4, {"id": 12, "category_id": 3, "bbox": [1.0, 2.0, 3.0, 4.0]})
    ann = pasted_annotation(Placement(src, 1.12345678, -7.0000004, (10, 20, 6, 5)), source_image_id=40)
    assert ann == {
        "category_id": 3,
        "bbox": [10.0, 20.0, 6.0, 5.0],
        "area": 30.0,
        "iscrowd": 0,
        "sod_paste": {"source_annotation_id": 12, "source_image_id": 40, "scale": 1.123457, "angle": -7.0},
    }


def _ledger_coco() -> dict[str, Any]:
    return {
        "images": [
            {"id": 5, "file_name": "a.png", "width": 30, "height": 20},
            {"id": 9, "file_name": "b.png", "width": 8, "height": 6},
        ],
        "annotations": [
            {"id": 7, "image_id": 9, "category_id": 1, "bbox": [0, 0, 2, 2], "area": 4.0},
            {"id": 3, "image_id": 5, "category_id": 1, "bbox": [1, 1, 2, 2], "area": 4.0},
        ],
    }


def test_ledger_add_mode_numbers_new_images_and_annotations_after_the_largest() -> None:
    coco = _ledger_coco()
    ledger = AnnotationLedger.after(coco)
    assert (ledger.next_image_id, ledger.next_annotation_id) == (10, 8)
    pasted = [{"category_id": 1, "bbox": [3.0, 3.0, 1.0, 1.0]}, {"category_id": 2, "bbox": [4.0, 4.0, 1.0, 1.0]}]
    target, own = coco["images"][1], [coco["annotations"][0]]
    entry = ledger.record(target, own, pasted, "add", replaced_entry={})
    assert entry == {"id": 10, "file_name": "", "width": 8, "height": 6, "sod_copy_paste_of": 9}
    assert ledger.images == [entry]
    # the copy of annotation 7 (id 8), then the pastes (ids 9, 10), all on image 10; keys in file order
    assert [(a["id"], a["image_id"]) for a in ledger.annotations] == [(8, 10), (9, 10), (10, 10)]
    assert list(ledger.annotations[0]) == ["id", "image_id", "category_id", "bbox", "area"]
    assert list(ledger.annotations[1]) == ["id", "image_id", "category_id", "bbox"]
    assert coco == _ledger_coco()  # the input is not touched
    second = ledger.record(coco["images"][0], [], pasted[:1], "add", replaced_entry={})
    assert second["id"] == 11 and ledger.annotations[-1]["id"] == 11


def test_ledger_replace_mode_keeps_the_image_and_adds_only_the_pastes() -> None:
    coco = _ledger_coco()
    ledger = AnnotationLedger.after(coco)
    out_entry = dict(coco["images"][0])
    entry = ledger.record(coco["images"][0], [coco["annotations"][1]], [{"category_id": 1}], "replace", out_entry)
    assert entry is out_entry and entry["id"] == 5 and entry["sod_copy_paste_of"] == 5
    assert ledger.images == [] and ledger.annotations == [{"id": 8, "image_id": 5, "category_id": 1}]
    assert ledger.next_image_id == 10


# --- determinism ------------------------------------------------------------------------------------------

VARIANTS = [
    {},
    {"source": "any", "times": 3},
    {"mode": "replace", "times": 2},
    {"source": "any", "mode": "replace", "blend": "gaussian"},
    {"blend": "none", "rotation": 90.0, "scale_jitter": 0.5},
]


def _rich_dataset() -> tuple[dict[str, Any], dict[int, Any]]:
    return _dataset(
        [
            ((80, 60), [(5, 5, 10, 12), (50, 30, 9, 9), (20, 40, 30, 15)]),
            ((64, 64), [(30, 30, 6, 7)]),
            ((70, 50), []),
            ((90, 90), [(10, 10, 40, 40), (60, 60, 12, 8), (62, 62, 5, 5)]),
        ]
    )


@pytest.mark.parametrize("cfg", VARIANTS, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()) or "default")
def test_same_seed_same_output_twice_including_call_order(cfg: dict[str, Any]) -> None:
    coco, pixels = _rich_dataset()

    def run() -> tuple[str, list[tuple[str, int]], list[bytes], dict[str, Any]]:
        calls: list[tuple[str, int]] = []
        written: list[bytes] = []

        def load(im: dict[str, Any]) -> np.ndarray:
            calls.append(("load", im["id"]))
            return pixels[im["id"]]

        def write(im: dict[str, Any], canvas: np.ndarray) -> str:
            calls.append(("write", im["id"]))
            written.append(canvas.tobytes())
            return f"new/{im['id']}.png"

        out, stats = copy_paste(coco, load, write, CopyPasteConfig(seed=11, **cfg), small_area=1024)
        return json.dumps(out), calls, written, stats.as_dict()

    first, second = run(), run()
    assert first == second
    assert first[3]["pastes_placed"] > 0  # the comparison covered real pastes


def test_an_images_pastes_do_not_depend_on_other_images() -> None:
    # source: same: image 2's pastes must not change when image 1, augmented before it, gains objects
    # (each image has its own generator, not a share of one stream).
    fixed = ((80, 60), [(5, 5, 10, 12), (50, 30, 9, 9)])
    results = []
    for first in (((64, 64), []), ((64, 64), [(3, 3, 5, 5), (40, 40, 9, 9), (20, 20, 4, 4)])):
        coco, pixels = _dataset([first, fixed])
        out, _, written = _run(coco, pixels, times=3, seed=2)
        new_id = next(im["id"] for im in out["images"] if im.get("sod_copy_paste_of") == 2)
        boxes = [a["bbox"] for a in out["annotations"] if a["image_id"] == new_id and "sod_paste" in a]
        results.append((boxes, written[new_id]))
    assert len(results[0][0]) == 6
    assert results[0][0] == results[1][0] and np.array_equal(results[0][1], results[1][1])
