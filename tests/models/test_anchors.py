"""Anchor geometry, torchvision's default anchors, BPR/IoU metrics, k-means, evolution and level assignment."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.retinanet import _default_anchorgen
from torchvision.models.detection.transform import GeneralizedRCNNTransform

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


def test_anchor_fitness_by_hand() -> None:
    # Boxes below the threshold count 0: (1 + 0.5 + 0 + 1 + 0) / 5.
    assert anc.anchor_fitness(BOXES, ANCHORS, 0.5) == pytest.approx(0.5)


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


def test_evolution_never_lowers_fitness_and_improves_a_poor_start() -> None:
    boxes = _clustered(np.random.default_rng(5), per_shape=60, noise=0.15)
    start = SHAPES * 1.3  # IoU 1/1.69 with the cluster centres: above 0.5, room to improve
    best, history = anc.evolve_anchors(
        boxes, start, [3], 3, fg_iou_thresh=0.5, generations=80, sigma=0.1, rng=np.random.default_rng(0)
    )
    assert len(history) == 81
    assert all(b >= a for a, b in zip(history, history[1:], strict=False))
    assert history[-1] > history[0]
    assert anc.anchor_fitness(boxes, best, 0.5) == history[-1]
    assert history[0] == anc.anchor_fitness(boxes, start, 0.5)  # sides >= 4: the clamp changes nothing


def test_evolution_keeps_candidates_clamped() -> None:
    boxes = np.array([[2.0, 2.0], [3.0, 2.5], [40.0, 40.0]] * 20)
    best, _ = anc.evolve_anchors(
        boxes, np.array([[2.0, 2.0], [3.0, 3.0], [40.0, 40.0]]), levels=[3, 4, 5], anchors_per_level=1,
        fg_iou_thresh=0.5, generations=30, sigma=0.2, rng=np.random.default_rng(0),
    )  # fmt: skip
    assert (best[0] >= 4).all() and (best[1] >= 8).all() and (best[2] >= 16).all()


# ------------------------------------------------------------------------------------------- tuning


def _small_object_boxes(n: int = 400, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Mostly COCO-small boxes (sides 5-40 px, aspect jitter) at scale 1, so area = w*h."""
    rng = np.random.default_rng(seed)
    side = np.exp(rng.uniform(np.log(5), np.log(40), n))
    aspect = np.exp(rng.normal(0.0, 0.3, n))
    wh = np.stack([side * np.sqrt(aspect), side / np.sqrt(aspect)], axis=1)
    return wh, wh.prod(axis=1)


def test_tuned_anchors_beat_default_on_small_objects() -> None:
    boxes, areas = _small_object_boxes()
    levels = [3, 4, 5]
    tuned = anc.tune_anchors(boxes, levels, 3, 0.5, 50, 100, 0.1, seed=0)
    m_default = anc.anchor_metrics(boxes, areas, np.concatenate(anc.default_anchors_wh(levels)), 0.5)
    m_tuned = anc.anchor_metrics(boxes, areas, np.concatenate(tuned), 0.5)
    assert m_tuned["bpr"] >= m_default["bpr"]
    assert m_tuned["mean_best_iou"] > m_default["mean_best_iou"]
    # The default 22-px minimum side misses most boxes under 32² px.
    assert m_default["bpr_small"] < 0.5
    assert m_tuned["bpr_small"] > m_default["bpr_small"] + 0.4


def test_tune_anchors_layout_clamp_and_determinism() -> None:
    boxes, _ = _small_object_boxes(300, seed=1)
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
    boxes = np.array([[20.0, 12.0], [20.0, 12.0], [60.0, 80.0]])
    tuned = anc.tune_anchors(boxes, [3, 4, 5], 3, 0.5, 10, 20, 0.1, seed=0)
    flat = np.concatenate(tuned)
    assert flat.shape == (9, 2)
    # Each distinct shape got an anchor of its own, and evolution cannot lower a fitness of 1.
    np.testing.assert_array_equal(anc.best_iou(boxes, flat), [1.0, 1.0, 1.0])


def test_tune_anchors_refuses_no_boxes() -> None:
    with pytest.raises(ValueError, match="no boxes"):
        anc.tune_anchors(np.zeros((0, 2)), [3], 3, 0.5, 10, 10, 0.1, seed=0)
