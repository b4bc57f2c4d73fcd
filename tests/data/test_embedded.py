"""Tests for sod.data.embedded: determinism, valid COCO output, the size mix, real pasted objects."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools.coco import COCO
from torchvision.ops import box_iou

from sod.config import COCO_SMALL_AREA, EmbeddedConfig
from sod.data.embedded import (
    _finish,
    build_embedded,
    category_names,
    load_sources,
    render_scene,
    scene_without_small,
)


def _small_cfg(**overrides) -> EmbeddedConfig:
    return EmbeddedConfig(**{"seed": 3, "images": 6, "image_size": 160, **overrides})


def _scenes(cfg: EmbeddedConfig, n: int):
    sources = load_sources()
    return [render_scene(cfg, np.random.default_rng([cfg.seed, i]), sources) for i in range(n)]


def _xyxy(boxes_xywh: list[list[float]]) -> torch.Tensor:
    b = torch.tensor(boxes_xywh, dtype=torch.float64).reshape(-1, 4)
    return torch.cat([b[:, :2], b[:, :2] + b[:, 2:]], dim=1)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_category_names_follow_the_config() -> None:
    assert category_names(EmbeddedConfig()) == ["digit", "face"]
    assert category_names(EmbeddedConfig(classes="digits")) == [f"digit_{d}" for d in range(10)] + ["face"]
    assert category_names(EmbeddedConfig(classes="digits", digits=[7, 2], faces=False)) == ["digit_2", "digit_7"]
    assert category_names(EmbeddedConfig(digits=[7, 2], faces=False)) == ["digit"]
    assert category_names(EmbeddedConfig(digits=[], faces=True)) == ["face"]


def test_default_dataset_is_small_object_dominated_with_half_the_scenes_free_of_small_objects() -> None:
    """The default's design targets (README): ≥ 60 % COCO-small, ≥ 15 % under 12 px, ~half the scenes
    without a small object, both kinds of object present."""
    cfg = EmbeddedConfig()
    sources = load_sources()
    n = 80
    flags = [scene_without_small(cfg, i) for i in range(n)]
    scenes = [render_scene(cfg, np.random.default_rng([cfg.seed, i]), sources, f) for i, f in enumerate(flags)]
    boxes = np.array([b for s in scenes for b in s.boxes_xywh])
    area, long_side = boxes[:, 2] * boxes[:, 3], boxes[:, 2:].max(axis=1)
    assert (area < COCO_SMALL_AREA).mean() >= 0.6
    assert (long_side < 12).mean() >= 0.15
    has_small = [any(b[2] * b[3] < COCO_SMALL_AREA for b in s.boxes_xywh) for s in scenes]
    assert 0.35 <= 1 - np.mean(has_small) <= 0.65
    # a scene drawn without small objects holds none; the others all hold some
    assert all(not h for h, f in zip(has_small, flags, strict=True) if f)
    assert all(h for h, f in zip(has_small, flags, strict=True) if not f)
    assert set(c for s in scenes for c in s.category_ids) == {1, 2}


def test_scenes_without_small_zero_keeps_small_objects_in_every_scene() -> None:
    cfg = EmbeddedConfig(scenes_without_small=0.0)
    assert not any(scene_without_small(cfg, i) for i in range(50))
    assert all(scene_without_small(EmbeddedConfig(scenes_without_small=1.0), i) for i in range(50))


def test_same_seed_gives_identical_bytes_and_another_seed_differs(tmp_path: Path) -> None:
    cfg = _small_cfg()
    build_embedded(cfg, tmp_path / "a")
    build_embedded(cfg, tmp_path / "b")
    build_embedded(_small_cfg(seed=4), tmp_path / "c")
    a, b, c = (_files(tmp_path / d) for d in "abc")
    assert sorted(a) == ["annotations.json"] + [f"images/{i:06d}.png" for i in range(6)]
    assert a == b
    assert a.keys() == c.keys()
    assert a["annotations.json"] != c["annotations.json"]
    assert all(a[k] != c[k] for k in a if k.startswith("images/"))


def test_output_is_valid_coco_with_rgb_images(tmp_path: Path) -> None:
    cfg = _small_cfg()
    ann_path, images_root = build_embedded(cfg, tmp_path)
    assert (ann_path, images_root) == (tmp_path / "annotations.json", tmp_path / "images")
    coco = COCO(str(ann_path))
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == category_names(cfg)
    assert coco.getCatIds() == list(range(1, len(category_names(cfg)) + 1))
    assert sorted(coco.getImgIds()) == list(range(1, 7))
    for img in coco.loadImgs(coco.getImgIds()):
        with Image.open(images_root / img["file_name"]) as im:
            assert (im.format, im.mode, im.size) == ("PNG", "RGB", (160, 160))
        assert (img["width"], img["height"]) == (160, 160)
    anns = coco.loadAnns(coco.getAnnIds())
    assert anns, "six scenes with 6..16 objects each produced no annotation"
    assert len({a["id"] for a in anns}) == len(anns)
    for a in anns:
        x, y, w, h = a["bbox"]
        assert w > 0 and h > 0 and x >= 0 and y >= 0 and x + w <= 160 and y + h <= 160, a
        assert a["area"] == w * h and a["iscrowd"] == 0
        assert 1 <= a["category_id"] <= 11


def test_object_count_and_classes_follow_the_config() -> None:
    # Three tiny faces always fit on a 160 px scene: every scene has exactly three, all class 1.
    cfg = _small_cfg(
        digits=[], objects_min=3, objects_max=3, distractors_min=0, distractors_max=0, frac_tiny=1.0, frac_small=0.0
    )
    for scene in _scenes(cfg, 5):
        assert scene.category_ids == [1, 1, 1]
        assert scene.distractor_boxes_xywh == []
        assert all(max(w, h) <= 13 for _, _, w, h in scene.boxes_xywh)


def test_large_objects_are_capped_by_a_small_image() -> None:
    # All large (100–170 px) on a 128 px scene: capped to 0.6 × 128 ≈ 77 px, still inside the image.
    cfg = _small_cfg(image_size=128, frac_tiny=0.0, frac_small=0.0, frac_medium=0.0, objects_min=1, objects_max=3)
    boxes = [b for s in _scenes(cfg, 4) for b in s.boxes_xywh]
    assert boxes
    assert all(max(w, h) <= 0.6 * 128 + 2 and x + w <= 128 and y + h <= 128 for x, y, w, h in boxes)


def test_labelled_objects_barely_overlap_and_distractors_stay_clear() -> None:
    for scene in _scenes(_small_cfg(objects_min=12, objects_max=16, distractors_min=6, distractors_max=10), 6):
        labelled = _xyxy(scene.boxes_xywh)
        iou = box_iou(labelled, labelled).fill_diagonal_(0)
        assert iou.max() <= 0.1
        # A distractor's whole rectangle avoids every labelled box (box_iou 0 = no shared area).
        assert scene.distractor_boxes_xywh
        assert box_iou(_xyxy(scene.distractor_boxes_xywh), labelled).max() == 0


def test_pasted_objects_really_change_the_pixels_in_their_box() -> None:
    # Sensor noise alone (σ ≤ 3) moves a pixel by ~2.4 grey levels on average; a pasted digit or face
    # changes its box far more, since ink is pushed away from the ground's luminance.
    for scene in _scenes(_small_cfg(), 6):
        assert scene.boxes_xywh
        for x, y, w, h in scene.boxes_xywh:
            sl = np.s_[int(y) : int(y + h), int(x) : int(x + w)]
            diff = np.abs(scene.image[sl].astype(np.float32) - scene.background[sl].astype(np.float32))
            assert diff.mean() > 6.0, (x, y, w, h)


def test_tight_box_is_where_alpha_is_visible() -> None:
    alpha = np.zeros((10, 12), np.float32)
    alpha[3:6, 4:9] = 0.9
    alpha[2, 4] = 0.2  # a faint fringe below the visibility threshold (0.25) is not part of the box
    sprite = _finish(None, alpha)
    assert sprite is not None and sprite.tight == (4, 3, 9, 6)
    assert _finish(None, np.full((4, 4), 0.2, np.float32)) is None


@pytest.mark.parametrize(
    ("frac_tiny", "frac_small", "frac_medium"),
    [(0.3, 0.5, 0.15), (0.1, 0.2, 0.5)],
    ids=["default-mix", "medium-heavy"],
)
def test_size_mix_follows_the_configured_fractions(frac_tiny: float, frac_small: float, frac_medium: float) -> None:
    cfg = EmbeddedConfig(seed=11, image_size=320, frac_tiny=frac_tiny, frac_small=frac_small, frac_medium=frac_medium)
    boxes = np.array([b for s in _scenes(cfg, 40) for b in s.boxes_xywh])
    long_side, area = boxes[:, 2:].max(axis=1), boxes[:, 2] * boxes[:, 3]
    assert len(boxes) > 300  # 40 scenes × 6..16 objects, few failed placements
    # Buckets on the measured long side (the gaps 30–34 and 90–100 go to the smaller bucket).
    measured = [
        (long_side < 12).mean(),
        ((long_side >= 12) & (long_side < 34)).mean(),
        ((long_side >= 34) & (long_side < 100)).mean(),
        (long_side >= 100).mean(),
    ]
    wanted = [frac_tiny, frac_small, frac_medium, 1 - frac_tiny - frac_small - frac_medium]
    assert np.allclose(measured, wanted, atol=0.08), (measured, wanted)
    if (frac_tiny, frac_small) == (0.3, 0.5):  # the default mix, drawn in every scene, meets the targets
        assert (area < COCO_SMALL_AREA).mean() >= 0.6
        assert (long_side < 12).mean() >= 0.15
        assert ((area >= COCO_SMALL_AREA) & (area < 96**2)).any() and (area >= 96**2).any()
