"""Copy-paste of small objects (Kisantal et al. 2019, "Augmentation for small object detection").

Each small object (``area < small_area``) whose box overlaps no other box is a *source*; occluded objects
are skipped because their patch would carry part of the occluder. Each source is pasted ``times`` times,
into its own image (``source: same``) or into training images drawn at random (``source: any``):

1. cut the patch: the object's box rounded outwards to whole pixels; its mask is the COCO polygon
   segmentation where there is one (pycocotools), else the whole rectangle;
2. alpha: ``none`` = the hard mask; ``feather`` = the mask times a linear ramp over the outer
   ``max(1, min(h, w) // 6)`` px of the patch; ``gaussian`` = the mask, zero-padded and blurred with
   ``sigma = max(0.5, min(h, w) / 8)``;
3. scale by ``1 + U(-scale_jitter, scale_jitter)`` and rotate by ``U(-rotation, rotation)`` degrees
   (counter-clockwise, canvas expanded) with ``torchvision.transforms.v2.functional``; colour is resampled
   premultiplied by alpha so the transparent corners do not darken the edges;
4. the new box is the tight box of the transformed mask (≥ 0.5); the patch is cropped to it, so no pasted
   pixel lies outside the pasted box;
5. place it at a uniformly random integer position at least ``margin`` px from every border whose box
   overlaps (positive intersection area) no box of the image, original or pasted; ``max_tries`` positions
   are drawn at once and the first free one wins;
6. composite ``alpha * patch + (1 - alpha) * image``. With ``blend: none``, no rotation and no scale jitter
   the pasted pixels equal the source pixels exactly.

A paste is rejected (and counted by reason) when the patch does not fit between the margins
(``no_room``), when every tried position overlaps a box (``overlap``), or when scaling leaves no mask pixel
(``degenerate``). Every pasted annotation carries ``sod_paste``: ``source_annotation_id``,
``source_image_id``, ``scale`` and ``angle`` (degrees); every augmented image carries ``sod_copy_paste_of``
(the id of the image it was made from). Pasted annotations are box-only (``area = w * h``, no segmentation).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from pycocotools import mask as mask_utils
from torchvision.transforms import InterpolationMode
from tqdm import tqdm

from sod.config import CopyPasteConfig

REJECT_REASONS = ("overlap", "no_room", "degenerate")


@dataclass
class Patch:
    """An object cut out of its image.

    Attributes:
        rgb: ``(h, w, 3) uint8`` pixels of the box rounded outwards to whole pixels.
        mask: ``(h, w) bool``: the object's pixels (all True for a box-only annotation).
        annotation: the source COCO annotation.
    """

    rgb: np.ndarray
    mask: np.ndarray
    annotation: dict[str, Any]


@dataclass
class CopyPasteStats:
    """Counts for ``reports/augment.json``; ``sources * times == pastes_placed + sum(pastes_rejected)``."""

    sources: int = 0  # small objects used as sources
    sources_occluded: int = 0  # small objects skipped: their box overlaps another box
    pastes_placed: int = 0
    pastes_rejected: dict[str, int] = field(default_factory=lambda: dict.fromkeys(REJECT_REASONS, 0))
    images_augmented: int = 0  # images that received at least one paste

    def as_dict(self) -> dict[str, Any]:
        return {
            "sources": self.sources,
            "sources_occluded": self.sources_occluded,
            "pastes_placed": self.pastes_placed,
            "pastes_rejected": dict(self.pastes_rejected),
            "pastes_rejected_total": sum(self.pastes_rejected.values()),
            "images_augmented": self.images_augmented,
        }


def xywh_to_xyxy(boxes_xywh: np.ndarray) -> np.ndarray:
    """``(N, 4)`` COCO ``[x, y, w, h]`` → ``(N, 4)`` ``[x1, y1, x2, y2]`` (float64)."""
    b = np.asarray(boxes_xywh, dtype=np.float64).reshape(-1, 4)
    return np.concatenate([b[:, :2], b[:, :2] + b[:, 2:]], axis=1)


def intersects(a_xyxy: np.ndarray, b_xyxy: np.ndarray) -> np.ndarray:
    """``(T, N) bool``: box ``a[t]`` and box ``b[n]`` share a positive area (touching edges do not count)."""
    w = np.minimum(a_xyxy[:, None, 2], b_xyxy[None, :, 2]) - np.maximum(a_xyxy[:, None, 0], b_xyxy[None, :, 0])
    h = np.minimum(a_xyxy[:, None, 3], b_xyxy[None, :, 3]) - np.maximum(a_xyxy[:, None, 1], b_xyxy[None, :, 1])
    return (w > 0) & (h > 0)


def unoccluded(boxes_xyxy: np.ndarray) -> np.ndarray:
    """``(N,) bool``: box ``i`` overlaps no other box of the same image."""
    hit = intersects(boxes_xyxy, boxes_xyxy)
    np.fill_diagonal(hit, False)
    return ~hit.any(axis=1)


def extract_patch(image_rgb: np.ndarray, ann: dict[str, Any]) -> Patch:
    """Cut ``ann``'s box (rounded outwards, clipped to the image) and its mask out of ``image_rgb (H, W, 3)``."""
    height, width = image_rgb.shape[:2]
    x, y, w, h = ann["bbox"]
    x0, y0 = max(0, math.floor(x)), max(0, math.floor(y))
    x1, y1 = min(width, math.ceil(x + w)), min(height, math.ceil(y + h))
    rgb = image_rgb[y0:y1, x0:x1].copy()
    mask = np.ones((y1 - y0, x1 - x0), dtype=bool)
    seg = ann.get("segmentation")
    if isinstance(seg, list) and seg:
        # Rasterise the polygons in patch coordinates: decoding at full image size would cost H×W per object.
        shifted = [[v - (x0 if i % 2 == 0 else y0) for i, v in enumerate(poly)] for poly in seg]
        rle = mask_utils.merge(mask_utils.frPyObjects(shifted, y1 - y0, x1 - x0))
        polygon_mask = mask_utils.decode([rle])[:, :, 0].astype(bool)  # a list: no numpy-2 copy warning
        if polygon_mask.any():  # a polygon that covers no pixel centre: fall back to the box
            mask = polygon_mask
    return Patch(rgb=rgb, mask=mask, annotation=ann)


def make_alpha(mask: np.ndarray, blend: str) -> np.ndarray:
    """Opacity ``(h, w) float32`` in 0..1 of a patch with ``mask (h, w) bool`` (module docstring, step 2)."""
    m = mask.astype(np.float32)
    h, w = m.shape
    if blend == "none":
        return m
    if blend == "feather":
        k = max(1, min(h, w) // 6)

        def ramp(n: int) -> np.ndarray:
            i = np.arange(n)
            return np.clip((np.minimum(i, n - 1 - i) + 1) / (k + 1), 0, 1).astype(np.float32)

        return m * ramp(h)[:, None] * ramp(w)[None, :]
    sigma = max(0.5, min(h, w) / 8)
    r = math.ceil(2 * sigma)
    # Zero padding: blurring with the default reflect padding would leave a full rectangle at 1 everywhere.
    padded = torch.from_numpy(np.pad(m, r))[None]
    blurred = TF.gaussian_blur(padded, kernel_size=[2 * r + 1, 2 * r + 1], sigma=[sigma, sigma])
    return (blurred[0, r : r + h, r : r + w] * torch.from_numpy(m)).numpy()


def transform_patch(
    rgb: np.ndarray, alpha: np.ndarray, mask: np.ndarray, scale: float, angle: float, hard: bool
) -> tuple[np.ndarray, np.ndarray] | None:
    """Scale and rotate a patch; crop it to the tight box of its transformed mask.

    Args:
        rgb: ``(h, w, 3) uint8``.
        alpha: ``(h, w) float32`` in 0..1.
        mask: ``(h, w) bool``.
        scale: size factor (1 = unchanged; no resampling).
        angle: degrees, counter-clockwise (0 = unchanged; no resampling).
        hard: return the thresholded mask as alpha (``blend: none``).

    Returns:
        ``(rgb (h', w', 3) float32 0..255, alpha (h', w') float32 0..1)`` cropped to the mask's tight box,
        or None when no mask pixel is left.
    """
    a = torch.from_numpy(alpha)
    # One resampling pass for all planes; colour premultiplied by alpha (see the module docstring).
    planes = torch.cat([torch.from_numpy(rgb).permute(2, 0, 1).float() * a, a[None], torch.from_numpy(mask)[None]])
    if scale != 1:
        h, w = mask.shape
        size = [max(1, round(h * scale)), max(1, round(w * scale))]
        planes = TF.resize(planes, size, interpolation=InterpolationMode.BILINEAR, antialias=True)
    if angle != 0:
        planes = TF.rotate(planes, angle, interpolation=InterpolationMode.BILINEAR, expand=True, fill=0.0)
    hard_mask = planes[4] >= 0.5
    rows, cols = torch.nonzero(hard_mask.any(dim=1)), torch.nonzero(hard_mask.any(dim=0))
    if len(rows) == 0:
        return None
    y0, y1, x0, x1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    planes, hard_mask = planes[:, y0:y1, x0:x1], hard_mask[y0:y1, x0:x1]
    a = planes[3].clamp(0, 1)
    colour = planes[:3] / a.clamp_min(1e-6)  # un-premultiply
    out_alpha = hard_mask.float() if hard else a
    return colour.permute(1, 2, 0).clamp(0, 255).numpy(), out_alpha.numpy()


def find_position(
    size_wh: tuple[int, int],
    image_wh: tuple[int, int],
    boxes_xyxy: np.ndarray,
    margin: int,
    max_tries: int,
    rng: np.random.Generator,
) -> tuple[int, int] | str:
    """A free top-left corner for a ``size_wh`` box, or the reason there is none.

    Args:
        size_wh: the pasted box's width and height, px.
        image_wh: the image's width and height, px.
        boxes_xyxy: ``(N, 4)`` boxes the paste must not overlap.
        margin: px between the pasted box and every border.
        max_tries: random positions drawn (always all of them, so the generator's state does not depend
            on the boxes).
        rng: the image's generator.

    Returns:
        ``(x, y)``, or ``"no_room"`` / ``"overlap"``.
    """
    (bw, bh), (width, height) = size_wh, image_wh
    hi_x, hi_y = width - margin - bw, height - margin - bh
    if hi_x < margin or hi_y < margin:
        return "no_room"
    xs = rng.integers(margin, hi_x + 1, size=max_tries)
    ys = rng.integers(margin, hi_y + 1, size=max_tries)
    cand = np.stack([xs, ys, xs + bw, ys + bh], axis=1).astype(np.float64)
    free = ~intersects(cand, boxes_xyxy).any(axis=1) if len(boxes_xyxy) else np.ones(max_tries, dtype=bool)
    if not free.any():
        return "overlap"
    i = int(np.argmax(free))
    return int(xs[i]), int(ys[i])


def composite(canvas: np.ndarray, rgb: np.ndarray, alpha: np.ndarray, x: int, y: int) -> None:
    """Blend ``rgb (h, w, 3)`` with ``alpha (h, w)`` into ``canvas (H, W, 3) uint8`` at top-left ``(x, y)``."""
    h, w = alpha.shape
    region = canvas[y : y + h, x : x + w].astype(np.float32)
    a = alpha[:, :, None]
    canvas[y : y + h, x : x + w] = np.rint(a * rgb + (1 - a) * region).clip(0, 255).astype(np.uint8)


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the block with ``n`` torch intra-op threads, then restore the previous count.

    Patches are a few dozen pixels: with several threads, torch's thread-pool hand-offs cost ~7× the work.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def copy_paste(
    coco: dict[str, Any],
    load_image: Callable[[dict[str, Any]], np.ndarray],
    write_image: Callable[[dict[str, Any], np.ndarray], str],
    cfg: CopyPasteConfig,
    small_area: float,
    progress: bool = False,
) -> tuple[dict[str, Any], CopyPasteStats]:
    """Paste every unoccluded small object ``cfg.times`` times (module docstring).

    Args:
        coco: a COCO dict; not modified. Boxes ``bbox`` are ``[x, y, w, h]`` px.
        load_image: image entry → ``(H, W, 3) uint8`` pixels.
        write_image: (new image entry, ``(H, W, 3) uint8`` pixels) → the ``file_name`` to record; called once
            per augmented image, in order.
        cfg: ``augment.copy_paste``.
        small_area: px²; an object is small when ``area < small_area``.
        progress: show a tqdm bar.

    Returns:
        ``(coco_out, stats)``. ``mode: add``: the input images and annotations unchanged and in order, then
        each augmented image (new id after the largest in use, ``sod_copy_paste_of``) with copies of its
        original annotations (new ids) and its pasted ones. ``mode: replace``: the same image list with
        augmented images' ``file_name`` replaced, then the pasted annotations. ``times: 0`` returns a copy
        of the input.
    """
    out = copy.deepcopy(coco)
    stats = CopyPasteStats()
    images = coco["images"]
    anns_by_image: dict[int, list[dict[str, Any]]] = {im["id"]: [] for im in images}
    for ann in coco["annotations"]:
        anns_by_image[ann["image_id"]].append(ann)

    sources: list[tuple[int, dict[str, Any]]] = []  # (index of the source's image, annotation)
    for idx, im in enumerate(images):
        anns = anns_by_image[im["id"]]
        free = unoccluded(xywh_to_xyxy([a["bbox"] for a in anns])) if anns else np.zeros(0, dtype=bool)
        for ann, ok in zip(anns, free, strict=True):
            if ann["area"] < small_area:
                if ok:
                    sources.append((idx, ann))
                else:
                    stats.sources_occluded += 1
    stats.sources = len(sources)
    if cfg.times == 0 or not sources:
        return out, stats

    # Jobs per target image, in source order then paste order: the plan depends on the seed alone.
    jobs: dict[int, list[tuple[int, dict[str, Any]]]] = {}
    assign = np.random.default_rng([cfg.seed, 0])
    for src_idx, ann in sources:
        targets = [src_idx] * cfg.times if cfg.source == "same" else assign.integers(0, len(images), cfg.times)
        for t in targets:
            jobs.setdefault(int(t), []).append((src_idx, ann))

    patches: dict[int, Patch] = {}
    if cfg.source == "any":
        for src_idx in sorted({i for i, _ in sources}):
            pixels = load_image(images[src_idx])
            for i, ann in sources:
                if i == src_idx:
                    patches[ann["id"]] = extract_patch(pixels, ann)

    next_image_id = max(im["id"] for im in images) + 1
    next_ann_id = max((a["id"] for a in coco["annotations"]), default=0) + 1
    added_images: list[dict[str, Any]] = []
    added_anns: list[dict[str, Any]] = []
    for t_idx in tqdm(sorted(jobs), desc="copy-paste", unit="img", disable=not progress):
        target = images[t_idx]
        canvas = load_image(target).copy()
        if cfg.source == "same":  # cut before anything is pasted over the image
            patches = {ann["id"]: extract_patch(canvas, ann) for _, ann in jobs[t_idx]}
        rng = np.random.default_rng([cfg.seed, 1, t_idx])
        boxes = xywh_to_xyxy([a["bbox"] for a in anns_by_image[target["id"]]])
        pasted: list[dict[str, Any]] = []
        for src_idx, ann in jobs[t_idx]:
            scale = 1 + float(rng.uniform(-cfg.scale_jitter, cfg.scale_jitter))
            angle = float(rng.uniform(-cfg.rotation, cfg.rotation))
            patch = patches[ann["id"]]
            with torch_threads(1):
                alpha = make_alpha(patch.mask, cfg.blend)
                done = transform_patch(patch.rgb, alpha, patch.mask, scale, angle, hard=cfg.blend == "none")
            if done is None:
                stats.pastes_rejected["degenerate"] += 1
                continue
            rgb, alpha = done
            bh, bw = alpha.shape
            pos = find_position((bw, bh), (target["width"], target["height"]), boxes, cfg.margin, cfg.max_tries, rng)
            if isinstance(pos, str):
                stats.pastes_rejected[pos] += 1
                continue
            x, y = pos
            composite(canvas, rgb, alpha, x, y)
            boxes = np.concatenate([boxes, [[x, y, x + bw, y + bh]]])
            pasted.append(
                {
                    "category_id": ann["category_id"],
                    "bbox": [float(x), float(y), float(bw), float(bh)],
                    "area": float(bw * bh),
                    "iscrowd": 0,
                    "sod_paste": {
                        "source_annotation_id": ann["id"],
                        "source_image_id": images[src_idx]["id"],
                        "scale": round(scale, 6),
                        "angle": round(angle, 6),
                    },
                }
            )
        if not pasted:
            continue
        stats.pastes_placed += len(pasted)
        stats.images_augmented += 1
        if cfg.mode == "add":
            entry = {"id": next_image_id, "file_name": "", "width": target["width"], "height": target["height"]}
            next_image_id += 1
            for ann in anns_by_image[target["id"]]:
                added_anns.append({**copy.deepcopy(ann), "id": next_ann_id, "image_id": entry["id"]})
                next_ann_id += 1
        else:
            entry = out["images"][t_idx]
        entry["sod_copy_paste_of"] = target["id"]
        for p in pasted:
            added_anns.append({"id": next_ann_id, "image_id": entry["id"], **p})
            next_ann_id += 1
        entry["file_name"] = write_image(entry, canvas)
        if cfg.mode == "add":
            added_images.append(entry)
    out["images"].extend(added_images)
    out["annotations"].extend(added_anns)
    return out, stats
