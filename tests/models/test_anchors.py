"""Anchor geometry, torchvision's default anchors, BPR/IoU metrics, k-means, evolution and level assignment."""

from __future__ import annotations

from dataclasses import fields

import numpy as np
import pytest
import torch
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.retinanet import _default_anchorgen
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import box_iou

from sod.models import anchors as anc

# ---------------------------------------------------------------------------------------- geometry


def test_shape_iou_by_hand() -> None:
    boxes = np.array([[10.0, 10.0], [10.0, 20.0], [20.0, 20.0]])
    anchors = np.array([[20.0, 20.0], [20.0, 10.0]])
    iou = anc.shape_iou(boxes, anchors)
    # 10x10 inside 20x20: 100 / 400; inside 20x10: 100 / 200; 10x20 vs 20x10 cross: 100 / (200 + 200 - 100).
    expected = np.array([[0.25, 0.5], [0.5, 100 / 300], [1.0, 0.5]])
    np.testing.assert_allclose(iou, expected, rtol=1e-12)
    np.testing.assert_allclose(anc.best_iou(boxes, anchors), [0.5, 0.5, 1.0], rtol=1e-12)


@pytest.mark.parametrize(
    ("height", "width", "min_size", "max_size"),
    [(97, 131, 320, 1000), (50, 300, 320, 400), (480, 640, 320, 320), (333, 333, 320, 320)],
)
def test_input_scale_matches_generalized_rcnn_transform(height: int, width: int, min_size: int, max_size: int) -> None:
    transform = GeneralizedRCNNTransform(min_size, max_size, image_mean=[0.0] * 3, image_std=[1.0] * 3).eval()
    boxes_xyxy = torch.tensor([[1.0, 2.0, 1.0 + 17.5, 2.0 + 9.25], [0.0, 0.0, width, height]])
    _, targets = transform([torch.zeros(3, height, width)], [{"boxes": boxes_xyxy, "labels": torch.ones(2)}])
    out = targets[0]["boxes"]
    ratio_w, ratio_h = anc.input_scale(width, height, min_size, max_size)
    np.testing.assert_allclose((out[:, 2] - out[:, 0]).numpy(), [17.5 * ratio_w, width * ratio_w], rtol=1e-5)
    np.testing.assert_allclose((out[:, 3] - out[:, 1]).numpy(), [9.25 * ratio_h, height * ratio_h], rtol=1e-5)


def test_input_scale_uses_the_floored_image_size() -> None:
    # 131 px at scale 320/97 = 432.16 -> 432 px: the box factor is 432/131, not 320/97.
    ratio_w, ratio_h = anc.input_scale(131, 97, 320, 1000)
    assert ratio_w == pytest.approx(432 / 131, rel=1e-6)
    assert ratio_h == pytest.approx(320 / 97, rel=1e-6)


# ------------------------------------------------------------------------------------------ default


def test_default_anchor_sizes_follow_retinanet_rule() -> None:
    # x = 4 * stride; int(x * 2^(1/3)), int(x * 2^(2/3)).
    assert anc.default_anchor_sizes([2, 3]) == ((16, 20, 25), (32, 40, 50))


def test_default_anchors_by_hand_for_stride_8() -> None:
    (level3,) = anc.default_anchors_wh([3])
    # Ratio h/w = 0.5 at size 32: w = 32*sqrt(2) = 45.25 -> corners ±22.63 round to ±23 -> 46; h -> 22.
    expected = [[46, 22], [56, 28], [70, 36], [32, 32], [40, 40], [50, 50], [22, 46], [28, 56], [36, 70]]
    np.testing.assert_array_equal(level3, expected)


def test_default_anchors_equal_torchvision_retinanet_cell_anchors() -> None:
    cells = _default_anchorgen().cell_anchors  # levels 3..7 (P3-P7)
    ours = anc.default_anchors_wh([3, 4, 5, 6, 7])
    for cell, wh in zip(cells, ours, strict=True):
        np.testing.assert_array_equal(torch.stack([cell[:, 2] - cell[:, 0], cell[:, 3] - cell[:, 1]], 1), wh)
        # The cell anchors are centred, so (w, h) pairs describe them completely.
        np.testing.assert_array_equal(cell[:, :2].numpy(), -cell[:, 2:].numpy())
    # A stride-4 level uses the same rule with base 16.
    cell = AnchorGenerator(((16, 20, 25),), ((0.5, 1.0, 2.0),)).cell_anchors[0]
    np.testing.assert_array_equal(
        torch.stack([cell[:, 2] - cell[:, 0], cell[:, 3] - cell[:, 1]], 1), anc.default_anchors_wh([2])[0]
    )


# ------------------------------------------------------------------------------------------ metrics

# Hand-made set: best IoUs 1 (exact), 0.5 (20x20 vs 40x20: 400/800), 0.25 (5x5 in 10x10), 1, 0.08 (800/10000).
BOXES = np.array([[10.0, 10.0], [20.0, 20.0], [5.0, 5.0], [40.0, 20.0], [100.0, 100.0]])
ANCHORS = np.array([[10.0, 10.0], [40.0, 20.0]])
AREAS = np.array([100.0, 400.0, 25.0, 2000.0, 10000.0])  # small, small, small, medium, large


def test_anchor_metrics_by_hand() -> None:
    m = anc.anchor_metrics(BOXES, AREAS, ANCHORS, fg_iou_thresh=0.5)
    assert m["bpr"] == pytest.approx(3 / 5)
    assert m["mean_best_iou"] == pytest.approx((1 + 0.5 + 0.25 + 1 + 0.08) / 5)
    assert m["bpr_small"] == pytest.approx(2 / 3, abs=1e-6)
    assert m["bpr_medium"] == 1.0
    assert m["bpr_large"] == 0.0
    # A stricter threshold drops the 0.5 box.
    assert anc.anchor_metrics(BOXES, AREAS, ANCHORS, fg_iou_thresh=0.6)["bpr"] == pytest.approx(2 / 5)


def test_anchor_metrics_buckets_use_original_area_and_empty_bucket_is_none() -> None:
    # Same shapes, but all original areas small: the buckets follow `areas`, not the input-scale shapes.
    m = anc.anchor_metrics(BOXES, np.full(5, 100.0), ANCHORS, fg_iou_thresh=0.5)
    assert m["bpr_small"] == pytest.approx(3 / 5)
    assert m["bpr_medium"] is None and m["bpr_large"] is None


# ------------------------------------------------------------------------------------- the stride grid
# Hand-made: 64 px images (grid 8 x 8 at stride 8: anchor centres 0, 8, ..., 56 on each axis), one 8x8 anchor.
STRIDE8 = ([8], [np.array([[8.0, 8.0]])])


def _grid_boxes(boxes_xyxy: list[list[float]], image: list[int], areas: list[float] | None = None) -> anc.GridBoxes:
    xyxy = np.array(boxes_xyxy, dtype=float)
    wh = xyxy[:, 2:] - xyxy[:, :2]
    return anc.GridBoxes(
        boxes_xyxy=xyxy,
        input_wh=np.full((len(xyxy), 2), 64),
        image_index=np.array(image),
        areas=np.array(areas) if areas is not None else wh.prod(axis=1),
        long_sides=wh.max(axis=1),
    )


# A: 8x8 on the anchor at (8, 8): IoU 1, its neighbours touch it only along an edge (IoU 0).
# B: 8x8 centred at (10, 8): (8, 8) overlaps 6x8 = 48 / (64 + 64 - 48) = 0.6; (16, 8) 2x8 = 16 / 112.
# C: 24x24 at 12..36: the anchor lies inside it at centres 16, 24, 32 per axis: 9 anchors tied at 64 / 576.
# D: 6x8 at the right edge, 58..64: the nearest centre, 64, is off the grid (last: 56): 2x8 = 16 / 96.
HAND = [[4, 4, 12, 12], [6, 4, 14, 12], [12, 12, 36, 36], [58, 28, 64, 36]]


def test_grid_positives_by_hand() -> None:
    boxes = _grid_boxes(HAND, [0, 1, 2, 3])
    best, count = anc.grid_positives(boxes, *STRIDE8, iou_thresh=0.5)
    np.testing.assert_allclose(best, [1.0, 0.6, 64 / 576, 16 / 96], rtol=1e-12)
    np.testing.assert_array_equal(count, [1, 1, 0, 0])
    # At 0.1 the 9 anchors inside C count, and B's second neighbour (16 / 112 = 0.143) too.
    _, count = anc.grid_positives(boxes, *STRIDE8, iou_thresh=0.1)
    np.testing.assert_array_equal(count, [1, 2, 9, 1])


def test_match_on_grid_by_hand_with_the_low_quality_fallback() -> None:
    best, positives, matched = anc.match_on_grid(_grid_boxes(HAND, [0, 1, 2, 3]), *STRIDE8, fg_iou_thresh=0.5)
    np.testing.assert_allclose(best, [1.0, 0.6, 64 / 576, 16 / 96], rtol=1e-6)  # float32, as in training
    np.testing.assert_array_equal(positives, [1, 1, 0, 0])
    # C gets its 9 tied anchors from the fallback, D its one edge anchor.
    np.testing.assert_array_equal(matched, [1, 1, 9, 1])


def test_match_on_grid_with_atss_by_hand() -> None:
    # ATSS, 5 candidates (one level): the 5 grid centres nearest each box's centre.
    # A (8, 8): IoUs [1, 0, 0, 0, 0], threshold 0.2 + 0.447: the anchor at (8, 8).
    # B (10, 8): [0.6, 0.143, 0, 0, 0], threshold 0.149 + 0.260 = 0.408: (8, 8).
    # C (24, 24): the centre and its 4 neighbours, all inside C at 64 / 576: std 0, so all 5 are positive,
    #   where the IoU matcher makes none (C's 9 tied anchors come only from its fallback).
    # D (61, 32): only (56, 32) overlaps (16 / 96, above 0.033 + 0.075) but its centre is outside D (x 56 < 58):
    #   no candidate passes, and D keeps its best one.
    boxes = _grid_boxes(HAND, [0, 1, 2, 3])
    best, positives, matched = anc.match_on_grid(boxes, *STRIDE8, fg_iou_thresh=0.5, assigner="atss", atss_topk=5)
    np.testing.assert_allclose(best, [1.0, 0.6, 64 / 576, 16 / 96], rtol=1e-6)
    np.testing.assert_array_equal(positives, [1, 1, 5, 1])
    np.testing.assert_array_equal(matched, positives)


def test_match_on_grid_boxes_of_one_image_compete() -> None:
    # E, 5..13, reaches 0.778 (7x8 = 56 / 72) with the anchor at (8, 8), which A (IoU 1) takes: E has a grid
    # anchor above 0.5 (bpr) but no positive, and its fallback anchor goes to A too.
    boxes = _grid_boxes([[4, 4, 12, 12], [5, 4, 13, 12]], [0, 0])
    best, positives, matched = anc.match_on_grid(boxes, *STRIDE8, fg_iou_thresh=0.5)
    np.testing.assert_allclose(best, [1.0, 56 / 72], rtol=1e-6)
    np.testing.assert_array_equal(positives, [1, 0])
    np.testing.assert_array_equal(matched, [1, 0])
    # In two images they do not compete.
    _, positives, _ = anc.match_on_grid(_grid_boxes([[4, 4, 12, 12], [5, 4, 13, 12]], [0, 1]), *STRIDE8, 0.5)
    np.testing.assert_array_equal(positives, [1, 1])


def test_grid_metrics_by_hand() -> None:
    # Areas: A, B small; C medium; D under 12 px long side (6x8) and small.
    boxes = _grid_boxes(HAND, [0, 1, 2, 3], areas=[64, 64, 2000, 48])
    m = anc.grid_metrics(boxes, *STRIDE8, fg_iou_thresh=0.5)
    # Long sides 8, 8, 24, 8: A, B, D are under 12 px (and small).
    third = pytest.approx(2 / 3, abs=1e-4)
    assert m["bpr_grid"] == {"all": 0.5, "small": third, "medium": 0.0, "large": None, "under_12px": third}
    assert m["positives_per_gt"] == {"all": 0.5, "small": third, "medium": 0.0, "large": None, "under_12px": third}
    assert m["matched_per_gt"]["all"] == 3.0  # (1 + 1 + 9 + 1) / 4
    # At 0.15 D's edge anchor (0.167) becomes a positive; B's second anchor (0.143) does not.
    low = anc.grid_metrics(boxes, *STRIDE8, fg_iou_thresh=0.15)
    assert low["positives_per_gt"]["under_12px"] == 1.0 and low["bpr_grid"]["under_12px"] == 1.0


def test_two_levels_by_hand() -> None:
    # A 16x16 box centred at (16, 16), a stride-8 level with an 8x8 anchor and a stride-16 level with 16x16:
    # stride 8: the 8x8 anchors inside it (centres 12..20 -> 16 only per axis) have IoU 64 / 256 = 0.25;
    # stride 16: the anchor at (16, 16) is the box (IoU 1), its neighbours at 0 and 32 only touch it.
    boxes = _grid_boxes([[8, 8, 24, 24]], [0])
    levels = ([8, 16], [np.array([[8.0, 8.0]]), np.array([[16.0, 16.0]])])
    best, count = anc.grid_positives(boxes, *levels, iou_thresh=0.2)
    assert best[0] == 1.0 and count[0] == 2


def _random_boxes(n: int, seed: int, size: int = 96) -> anc.GridBoxes:
    """One box per image (no competition), centres anywhere in a size x size image, sides 3-60 px."""
    rng = np.random.default_rng(seed)
    wh = np.exp(rng.uniform(np.log(3), np.log(60), (n, 2)))
    centre = rng.uniform(0, size, (n, 2))
    xyxy = np.clip(np.concatenate([centre - wh / 2, centre + wh / 2], axis=1), 0, size)
    wh = xyxy[:, 2:] - xyxy[:, :2]
    return anc.GridBoxes(xyxy, np.full((n, 2), size), np.arange(n), wh.prod(axis=1), wh.max(axis=1))


@pytest.mark.parametrize("fg", [0.3, 0.5])
def test_fast_window_count_equals_the_matcher_on_every_anchor(fg: float) -> None:
    """grid_positives (windows) against torchvision's own anchors, box_iou over ALL of them and its Matcher."""
    from torchvision.models.detection._utils import Matcher
    from torchvision.models.detection.image_list import ImageList

    from sod.models.detector import PyramidAnchorGenerator

    boxes = _random_boxes(300, seed=1)
    strides, anchors_wh = [4, 8, 16, 32], anc.default_anchors_wh([2, 3, 4, 5])
    anchors_wh[1] = np.array([[5.5, 9.25], [12.0, 7.0], [30.0, 30.0]])  # fractional, tuned-like shapes
    anchors_wh = [a[:3] for a in anchors_wh]
    gen = PyramidAnchorGenerator.from_wh(strides, anchors_wh)
    feats = [torch.zeros(1, 1, -(-96 // s), -(-96 // s)) for s in strides]
    every = gen(ImageList(torch.zeros(1, 3, 96, 96), [(96, 96)]), feats)[0]  # all anchors of the detector
    iou = box_iou(torch.as_tensor(boxes.boxes_xyxy, dtype=torch.float32), every)
    best, count = anc.grid_positives(boxes, strides, anchors_wh, fg)
    np.testing.assert_allclose(best, iou.max(dim=1).values.numpy(), atol=1e-6)
    np.testing.assert_array_equal(count, (iou >= fg).sum(dim=1).numpy())
    # match_on_grid: the same, and the matcher's own positives (one box per image: no competition).
    m_best, positives, matched = anc.match_on_grid(boxes, strides, anchors_wh, fg)
    np.testing.assert_allclose(m_best, best, atol=1e-6)
    np.testing.assert_array_equal(positives, count)
    matcher = Matcher(fg, fg, allow_low_quality_matches=True)
    expected = [int((matcher(iou[i : i + 1]) == 0).sum()) for i in range(len(boxes))]
    np.testing.assert_array_equal(matched, expected)


def test_match_on_grid_skips_repeated_images_but_scores_them() -> None:
    boxes = _grid_boxes(HAND[:2] * 2, [0, 0, 1, 1])  # image 1 repeats image 0 (oversampling)
    _, positives, matched = anc.match_on_grid(boxes, *STRIDE8, fg_iou_thresh=0.5)
    np.testing.assert_array_equal(positives, [1, 0, 1, 0])  # A takes the anchor B also reaches
    np.testing.assert_array_equal(matched, [1, 0, 1, 0])


def test_padded_input_size_rounds_up_to_32() -> None:
    # 131x97 at min 320 / max 1000: scale 320/97 -> 432x320 (see test_input_scale_uses_the_floored_image_size).
    assert anc.padded_input_size(131, 97, 320, 1000) == (448, 320)
    assert anc.padded_input_size(320, 320, 320, 320) == (320, 320)


def test_grid_fitness_by_hand() -> None:
    # Group 0 (small): min(0/3, 1), min(3/3, 1) -> 0.5; group 1: 6/30 = 0.2. Mean of groups: 0.35.
    assert anc.grid_fitness(np.array([0, 3, 6]), np.array([3, 3, 30]), np.array([0, 0, 1])) == pytest.approx(0.35)
    # Counts above the target do not count more.
    assert anc.grid_fitness(np.array([9]), np.array([3]), np.array([0])) == 1.0


# --------------------------------------------------------------------------------------- assignment


def test_assign_levels_orders_by_size_and_clamps_to_half_stride() -> None:
    shuffled = np.array([[30, 30], [2, 40], [5, 5], [12, 12], [3, 3], [100, 50]], dtype=float)
    p3, p4, p5 = anc.assign_levels(shuffled, [3, 4, 5], 2)
    # By sqrt(w*h): 3x3, 5x5 | 2x40, 12x12 | 30x30, 100x50. Then sides >= 4, 8, 16 px.
    np.testing.assert_array_equal(p3, [[4, 4], [5, 5]])
    np.testing.assert_array_equal(p4, [[12, 12], [8, 40]])  # 2x40 -> 8x40 (area 320) now sorts after 12x12
    np.testing.assert_array_equal(p5, [[30, 30], [100, 50]])


def test_assign_levels_rejects_a_wrong_count() -> None:
    with pytest.raises(ValueError, match="do not fill"):
        anc.assign_levels(np.ones((5, 2)), [3, 4], 3)


# ------------------------------------------------------------------------------------------ k-means

SHAPES = np.array([[8.0, 8.0], [30.0, 15.0], [20.0, 60.0]])  # sorted by sqrt(w*h): 8, 21.2, 34.6


def _clustered(rng: np.random.Generator, per_shape: int = 100, noise: float = 0.05) -> np.ndarray:
    boxes = np.repeat(SHAPES, per_shape, axis=0)
    return boxes * np.exp(rng.normal(0.0, noise, boxes.shape))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kmeans_recovers_three_known_shapes(seed: int) -> None:
    boxes = _clustered(np.random.default_rng(100 + seed))
    centres = anc.kmeans_iou(boxes, 3, iters=50, rng=np.random.default_rng(seed))
    np.testing.assert_allclose(centres, SHAPES, rtol=0.05)


def test_kmeans_is_deterministic_for_a_seed() -> None:
    boxes = _clustered(np.random.default_rng(7))
    a = anc.kmeans_iou(boxes, 5, iters=50, rng=np.random.default_rng(3))
    b = anc.kmeans_iou(boxes, 5, iters=50, rng=np.random.default_rng(3))
    np.testing.assert_array_equal(a, b)


def test_kmeans_needs_k_distinct_shapes() -> None:
    with pytest.raises(ValueError, match="distinct"):
        anc.kmeans_iou(np.array([[5.0, 5.0]] * 10 + [[9.0, 9.0]]), 3, iters=10, rng=np.random.default_rng(0))


# ---------------------------------------------------------------------------------------- evolution


def _shape_fitness(boxes_wh: np.ndarray):  # noqa: ANN202
    """A fitness on shapes alone (mean best IoU): evolution does not care what it optimises."""
    return lambda flat: float(anc.best_iou(boxes_wh, flat).mean())


def test_evolution_never_lowers_fitness_and_improves_a_poor_start() -> None:
    boxes = _clustered(np.random.default_rng(5), per_shape=60, noise=0.15)
    start = SHAPES * 1.3
    fitness = _shape_fitness(boxes)
    best, history = anc.evolve_anchors(start, [3], 3, fitness, generations=80, sigma=0.1, rng=np.random.default_rng(0))
    assert len(history) == 81
    assert all(b >= a for a, b in zip(history, history[1:], strict=False))
    assert history[-1] > history[0]
    assert fitness(best) == history[-1]
    assert history[0] == fitness(start)  # sides >= 4: the clamp changes nothing


def test_evolution_keeps_candidates_clamped() -> None:
    boxes = np.array([[2.0, 2.0], [3.0, 2.5], [40.0, 40.0]] * 20)
    best, _ = anc.evolve_anchors(
        np.array([[2.0, 2.0], [3.0, 3.0], [40.0, 40.0]]), levels=[3, 4, 5], anchors_per_level=1,
        fitness=_shape_fitness(boxes), generations=30, sigma=0.2, rng=np.random.default_rng(0),
    )  # fmt: skip
    assert (best[0] >= 4).all() and (best[1] >= 8).all() and (best[2] >= 16).all()


# ------------------------------------------------------------------------------------------- tuning


def _small_object_boxes(n: int = 400, seed: int = 0, lo: float = 5, hi: float = 40) -> anc.GridBoxes:
    """Boxes with sides lo-hi px (mostly COCO-small by default), anywhere in 320 px images, 20 per image."""
    rng = np.random.default_rng(seed)
    side = np.exp(rng.uniform(np.log(lo), np.log(hi), n))
    aspect = np.exp(rng.normal(0.0, 0.3, n))
    wh = np.minimum(np.stack([side * np.sqrt(aspect), side / np.sqrt(aspect)], axis=1), 300)
    corner = rng.uniform(0, 320 - wh)
    xyxy = np.concatenate([corner, corner + wh], axis=1)
    return anc.GridBoxes(xyxy, np.full((n, 2), 320), np.arange(n) // 20, wh.prod(axis=1), wh.max(axis=1))


def test_tuned_anchors_give_small_objects_positives_on_the_grid() -> None:
    boxes = _small_object_boxes()
    levels, strides = [3, 4, 5], [8, 16, 32]
    tuned = anc.tune_anchors(boxes, levels, 3, 0.5, 50, 100, 0.1, seed=0)
    m_default = anc.grid_metrics(boxes, strides, anc.default_anchors_wh(levels), 0.5)
    m_tuned = anc.grid_metrics(boxes, strides, tuned, 0.5)
    # The default 22-px minimum side misses most boxes under 32² px, on the grid too.
    assert m_default["bpr_grid"]["small"] < 0.3
    assert m_tuned["bpr_grid"]["small"] > m_default["bpr_grid"]["small"] + 0.2
    # Boxes under 12 px have no positive with the default anchors; the tuned ones give them some.
    assert m_default["positives_per_gt"]["under_12px"] == 0.0
    assert m_tuned["positives_per_gt"]["under_12px"] > 0.1


def test_tuning_from_the_default_start_keeps_medium_positives() -> None:
    """With 9 anchors per level torchvision's set is a start: medium boxes keep their positives."""
    small, medium = _small_object_boxes(300, seed=2), _small_object_boxes(100, seed=3, lo=35, hi=90)
    boxes = anc.GridBoxes(*(np.concatenate([getattr(small, f.name), getattr(medium, f.name)]) for f in fields(small)))
    levels, strides = [3, 4, 5], [8, 16, 32]
    tuned = anc.tune_anchors(boxes, levels, 9, 0.5, 30, 60, 0.1, seed=0)
    m_default = anc.grid_metrics(boxes, strides, anc.default_anchors_wh(levels), 0.5)
    m_tuned = anc.grid_metrics(boxes, strides, tuned, 0.5)
    assert m_tuned["positives_per_gt"]["small"] > m_default["positives_per_gt"]["small"]
    assert m_tuned["positives_per_gt"]["medium"] >= 0.9 * m_default["positives_per_gt"]["medium"]


def test_tune_anchors_layout_clamp_and_determinism() -> None:
    boxes = _small_object_boxes(300, seed=1)
    a = anc.tune_anchors(boxes, [3, 4, 5], 2, 0.5, 30, 40, 0.1, seed=4)
    b = anc.tune_anchors(boxes, [3, 4, 5], 2, 0.5, 30, 40, 0.1, seed=4)
    assert [x.shape for x in a] == [(2, 2)] * 3
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    for stride, level in zip([8, 16, 32], a, strict=True):
        assert (level >= stride / 2).all()
    sizes = [np.sqrt(level.prod(axis=1)) for level in a]
    assert all((np.diff(s) >= 0).all() for s in sizes)  # sorted within a level


def test_tune_anchors_with_fewer_shapes_than_anchors() -> None:
    wh = np.array([[20.0, 12.0], [20.0, 12.0], [60.0, 80.0]])
    boxes = anc.GridBoxes(np.c_[np.zeros((3, 2)) + 100, 100 + wh], np.full((3, 2), 320), np.arange(3),
                          wh.prod(axis=1), wh.max(axis=1))  # fmt: skip
    flat = np.concatenate(anc.tune_anchors(boxes, [3, 4, 5], 3, 0.5, 10, 0, 0.1, seed=0))
    assert flat.shape == (9, 2)
    # Before evolution each distinct shape is an anchor of its own.
    np.testing.assert_array_equal(anc.best_iou(wh, flat), [1.0, 1.0, 1.0])
    # Evolution keeps every box's positive on the grid (it only takes candidates that score higher).
    evolved = anc.tune_anchors(boxes, [3, 4, 5], 3, 0.5, 10, 20, 0.1, seed=0)
    assert (anc.grid_positives(boxes, [8, 16, 32], evolved, 0.5)[1] >= 1).all()


def test_tune_anchors_refuses_no_boxes() -> None:
    empty = anc.GridBoxes(np.zeros((0, 4)), np.zeros((0, 2), int), np.zeros(0, int), np.zeros(0), np.zeros(0))
    with pytest.raises(ValueError, match="no boxes"):
        anc.tune_anchors(empty, [3], 3, 0.5, 10, 10, 0.1, seed=0)
