"""Tests for sod.data.embedded: determinism, valid COCO output, the size mix, real pasted objects, large
clustered scenes, and the default's bytes pinned to those of the generator before large scenes existed."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools.coco import COCO
from torchvision.ops import box_iou

from sod.config import COCO_SMALL_AREA, EmbeddedConfig, load_params
from sod.data.embedded import (
    Sources,
    _background,
    _finish,
    build_embedded,
    category_names,
    load_sources,
    render_scene,
    scene_layout,
    scene_without_small,
)
from sod.errors import ConfigError


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


# ------------------------------------------------------------------------------------ the pinned default
# Digests of build_embedded(EmbeddedConfig(images=4)), computed with main's code at cc51de4, before the
# clusters layout and the background-size rule existed. The default (320 px, uniform) must not move by a
# byte: the committed results were trained on it. If only _FILES_SHA256 fails, the PNG encoder (Pillow's
# zlib) changed, not the scenes; never update these digests from the new code without that proof.
_PIXELS_AND_ANNOTATIONS_SHA256 = "91f25058942993ff76131fea295e79995c08eb0232c99fcf42cca976b4499c3f"
_FILES_SHA256 = "085a136e654b14e3bb58bba06dfc6aca9bf81eae04ed4221b0259f576e997600"


def test_default_config_is_byte_identical_to_the_generator_before_large_scenes(tmp_path: Path) -> None:
    cfg = EmbeddedConfig(images=4)
    assert scene_layout(cfg) == "uniform"
    build_embedded(cfg, tmp_path)
    pixels = hashlib.sha256((tmp_path / "annotations.json").read_bytes())
    files = hashlib.sha256()
    for p in sorted(tmp_path.rglob("*")):
        if p.is_file():
            files.update(str(p.relative_to(tmp_path)).encode() + b"\0" + hashlib.sha256(p.read_bytes()).digest())
            if p.suffix == ".png":
                with Image.open(p) as im:
                    pixels.update(np.asarray(im).tobytes())
    assert pixels.hexdigest() == _PIXELS_AND_ANNOTATIONS_SHA256, "the default scenes or boxes changed"
    assert files.hexdigest() == _FILES_SHA256, "same pixels, other PNG bytes: the encoder changed"


def test_params_yaml_embedded_section_is_the_default() -> None:
    # The pinned digest above is of EmbeddedConfig(); the DAG reads params.yaml: they must agree.
    params = load_params(Path(__file__).resolve().parents[2] / "params.yaml")
    assert params.data.embedded == EmbeddedConfig()


# ------------------------------------------------------------------------------------------ large scenes
def _nn_ratio(boxes_xywh: np.ndarray, size: int) -> float:
    """Mean nearest-neighbour distance of the box centres over its expectation for as many points drawn
    uniformly in the square: 0.5 · size / √n (Poisson points of density n / size²; edges make it a bit
    larger). About 1 for a uniform layout, well below 1 for clusters."""
    centres = boxes_xywh[:, :2] + boxes_xywh[:, 2:] / 2
    d = torch.cdist(torch.from_numpy(centres), torch.from_numpy(centres)).fill_diagonal_(float("inf"))
    return float(d.min(dim=1).values.mean()) / (0.5 * size / np.sqrt(len(centres)))


def _size_shares(long_side: np.ndarray) -> np.ndarray:
    """Shares of the buckets tiny, small (+ the 30–34 gap), medium (+ the 90–100 gap), large."""
    return np.array(
        [
            (long_side < 12).mean(),
            ((long_side >= 12) & (long_side < 34)).mean(),
            ((long_side >= 34) & (long_side < 100)).mean(),
            (long_side >= 100).mean(),
        ]
    )


def test_layout_auto_clusters_above_320_px_only() -> None:
    assert [scene_layout(EmbeddedConfig(image_size=s)) for s in (160, 320, 321, 1280)] == [
        "uniform",
        "uniform",
        "clusters",
        "clusters",
    ]
    assert scene_layout(EmbeddedConfig(image_size=1280, layout="uniform")) == "uniform"
    assert scene_layout(EmbeddedConfig(image_size=160, layout="clusters")) == "clusters"


def test_1280_px_scenes_keep_the_pixel_sizes_and_cluster_the_small_objects() -> None:
    big = EmbeddedConfig(seed=5, image_size=1280, scenes_without_small=0.0)
    scenes = _scenes(big, 6)
    boxes = [np.array(s.boxes_xywh) for s in scenes]
    all_boxes = np.concatenate(boxes)
    assert scene_layout(big) == "clusters" and len(all_boxes) > 6 * 2 * 6 // 2  # ≥ 2 clusters of ≥ 6, few lost

    # Every box inside the 1280 px image.
    x, y, w, h = all_boxes.T
    assert (w > 0).all() and (h > 0).all() and (x >= 0).all() and (y >= 0).all()
    assert (x + w <= 1280).all() and (y + h <= 1280).all()

    # Same px sizes as the 320 px default: the same 6..170 px range (±2 px of tight-box rounding) and the
    # same bucket shares as 24 default scenes, within sampling noise (~250 boxes: σ ≤ 0.03 per share).
    long_side = all_boxes[:, 2:].max(axis=1)
    ref_cfg = EmbeddedConfig(seed=5, scenes_without_small=0.0)
    ref = np.concatenate([np.array(s.boxes_xywh) for s in _scenes(ref_cfg, 24)])
    ref_long = ref[:, 2:].max(axis=1)
    assert 6 - 2 <= long_side.min() < 12 and 100 <= long_side.max() <= 170 + 2, (long_side.min(), long_side.max())
    assert ref_long.min() >= 6 - 2 and ref_long.max() <= 170 + 2
    assert np.allclose(_size_shares(long_side), _size_shares(ref_long), atol=0.08)

    # Clustered: the COCO-small objects (σ ≤ 3 × 30 px around ≤ 4 centres) lie far closer to each other
    # than as many uniform points would; the same count drawn uniformly gives a ratio near 1.
    small = [b[b[:, 2] * b[:, 3] < COCO_SMALL_AREA] for b in boxes]
    assert all(_nn_ratio(b, 1280) < 0.6 for b in small), [_nn_ratio(b, 1280) for b in small]
    uniform = _scenes(EmbeddedConfig(seed=5, image_size=1280, layout="uniform", objects_min=40, objects_max=40), 3)
    uniform_small = [np.array(s.boxes_xywh) for s in uniform]
    uniform_small = [b[b[:, 2] * b[:, 3] < COCO_SMALL_AREA] for b in uniform_small]
    assert np.mean([_nn_ratio(b, 1280) for b in uniform_small]) > 0.8

    # Mostly empty: a drawn object's box covers at most 0.3·12² + 0.5·30² + 0.15·90² + 0.05·170² ≈ 3,150 px²
    # on average and a scene holds 3 × 11 objects on average: ≤ 104,000 px², 6 % of 1280². Bound: 10 %.
    cover = [float((b[:, 2] * b[:, 3]).sum()) / 1280**2 for b in boxes]
    assert np.mean(cover) < 0.10, cover

    # Labelled objects keep the overlap limit of the uniform layout, and distractors stay clear.
    for scene in scenes:
        labelled = _xyxy(scene.boxes_xywh)
        assert box_iou(labelled, labelled).fill_diagonal_(0).max() <= 0.1
        assert box_iou(_xyxy(scene.distractor_boxes_xywh), labelled).max() == 0


def test_clusters_count_objects_per_cluster_and_distractors_per_320_px_square() -> None:
    # Two clusters of three tiny faces on a 640 px scene: tiny objects always find a place, so exactly six.
    # Distractors: 2 per 320² px → 2 × (640 / 320)² = 8 draws (a digit fragment may draw nothing visible).
    cfg = EmbeddedConfig(
        seed=1,
        image_size=640,
        digits=[],
        clusters_min=2,
        clusters_max=2,
        objects_min=3,
        objects_max=3,
        distractors_min=2,
        distractors_max=2,
        frac_tiny=1.0,
        frac_small=0.0,
        frac_medium=0.0,
        scenes_without_small=0.0,
    )
    for scene in _scenes(cfg, 4):
        assert scene.category_ids == [1] * 6
        assert 2 < len(scene.distractor_boxes_xywh) <= 8


def test_large_scenes_are_deterministic() -> None:
    cfg = EmbeddedConfig(seed=2, image_size=1280)
    a, b = _scenes(cfg, 2), _scenes(cfg, 2)
    for sa, sb in zip(a, b, strict=True):
        assert np.array_equal(sa.image, sb.image)
        assert (sa.boxes_xywh, sa.category_ids) == (sb.boxes_xywh, sb.category_ids)


def test_a_2048_px_scene_generates() -> None:
    (scene,) = _scenes(EmbeddedConfig(seed=0, image_size=2048, scenes_without_small=0.0), 1)
    assert scene.image.shape == (2048, 2048, 3) and scene.image.dtype == np.uint8
    boxes = np.array(scene.boxes_xywh)
    assert len(boxes) >= 6
    assert (boxes[:, :2] >= 0).all() and (boxes[:, :2] + boxes[:, 2:] <= 2048).all()
    assert boxes[:, 2:].max() <= 170 + 2


def test_backgrounds_are_never_upscaled_more_than_4x() -> None:
    # One 100 px red background and one 600 px blue one: 100 · 4 = 400, so scenes up to 400 px draw both,
    # larger ones only the blue one.
    small_red = np.zeros((100, 100, 3), np.uint8)
    small_red[..., 0] = 200
    big_blue = np.zeros((600, 600, 3), np.uint8)
    big_blue[..., 2] = 200
    empty = np.zeros((0, 1, 1), np.float32)
    sources = Sources(empty, np.zeros(0, np.int64), empty, empty, (small_red, big_blue))
    reds = [_background(np.random.default_rng(i), sources, 400)[..., 0].mean() > 50 for i in range(20)]
    assert any(reds) and not all(reds)
    for i in range(20):
        img = _background(np.random.default_rng(i), sources, 401)
        assert img.shape == (401, 401, 3) and img[..., 0].max() == 0 and img[..., 2].min() > 0


def test_cluster_counts_are_checked() -> None:
    with pytest.raises(ConfigError, match="'data.embedded.clusters_min' = 5 exceeds 'data.embedded.clusters_max' = 4"):
        load_params(None, ["data.embedded.clusters_min=5"])
    with pytest.raises(ConfigError, match="'data.embedded.layout'"):
        load_params(None, ["data.embedded.layout=grid"])
