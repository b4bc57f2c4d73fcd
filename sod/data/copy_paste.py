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

Three parts, each testable alone: :func:`plan_pastes` decides which object goes into which image (generator
``[seed, 0]``); :func:`paste_into_image` pastes one image's jobs (generator ``[seed, 1, image index]``: each
paste's scale and angle, then its positions); :class:`AnnotationLedger` assigns the new image and annotation
ids. Same input and seed → the same output, byte for byte; an image's pixels depend on the seed, its index and
its own jobs only.
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

from sod.config import CopyPasteConfig
from sod.data.coco import is_crowd
from sod.progress import progress_bar

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


# --- planning: which object goes into which image ---------------------------------------------------------


@dataclass(frozen=True)
class Source:
    """A small, unoccluded object to paste.

    Attributes:
        image_index: position of the object's image in ``coco["images"]``.
        annotation: its COCO annotation (``bbox`` is ``[x, y, w, h]`` px).
    """

    image_index: int
    annotation: dict[str, Any]


def annotations_by_image(coco: dict[str, Any]) -> dict[int, list[dict[str, Any]]]:
    """Image id → its annotations in file order (every image present, possibly with none)."""
    grouped: dict[int, list[dict[str, Any]]] = {im["id"]: [] for im in coco["images"]}
    for ann in coco["annotations"]:
        grouped[ann["image_id"]].append(ann)
    return grouped


def find_sources(
    images: list[dict[str, Any]], anns_by_image: dict[int, list[dict[str, Any]]], small_area: float
) -> tuple[list[Source], int]:
    """The objects to paste, in image order then annotation order, and the count of occluded small ones.

    Args:
        images: COCO image entries.
        anns_by_image: image id → annotations (:func:`annotations_by_image`).
        small_area: px²; an object is small when ``area < small_area``.

    Returns:
        ``(sources, occluded)``: every small annotation whose box overlaps no other box of its image, and
        the number of small annotations skipped because their box does.
    """
    sources: list[Source] = []
    occluded = 0
    for idx, im in enumerate(images):
        anns = anns_by_image[im["id"]]
        free = unoccluded(xywh_to_xyxy([a["bbox"] for a in anns])) if anns else np.zeros(0, dtype=bool)
        for ann, ok in zip(anns, free, strict=True):
            if ann["area"] < small_area and not is_crowd(ann):  # a crowd/ignore region is no object to paste
                if ok:
                    sources.append(Source(idx, ann))
                else:
                    occluded += 1
    return sources, occluded


def plan_pastes(sources: list[Source], num_images: int, times: int, source: str, seed: int) -> dict[int, list[Source]]:
    """Which objects are pasted into which image, in the order they will be pasted.

    ``source: same`` sends each object ``times`` times to its own image; ``any`` draws ``times`` target
    indices per object, uniform in ``[0, num_images)``, from the generator ``[seed, 0]``, one draw of
    ``times`` per object in ``sources`` order. The plan depends on the seed and the sources alone, never
    on what a paste later does.

    Args:
        sources: the objects (:func:`find_sources`).
        num_images: images that can receive a paste (``source: any``).
        times: pastes per object.
        source: ``"same"`` or ``"any"``.
        seed: ``augment.copy_paste.seed``.

    Returns:
        Target image index → its jobs, in source order then paste order; keys ascending, targets without
        a job absent.
    """
    jobs: dict[int, list[Source]] = {}
    assign = np.random.default_rng([seed, 0])
    for src in sources:
        targets = [src.image_index] * times if source == "same" else assign.integers(0, num_images, times)
        for t in targets:
            jobs.setdefault(int(t), []).append(src)
    return {t: jobs[t] for t in sorted(jobs)}


# --- pasting: one image at a time -------------------------------------------------------------------------


@dataclass(frozen=True)
class Placement:
    """A paste that landed.

    Attributes:
        source: the pasted object.
        scale: size factor drawn for it (1 = unchanged).
        angle: rotation drawn for it, degrees counter-clockwise.
        box_xywh: ``(x, y, w, h)`` integer px of the pasted box in the target image.
    """

    source: Source
    scale: float
    angle: float
    box_xywh: tuple[int, int, int, int]


def image_rng(seed: int, image_index: int) -> np.random.Generator:
    """The generator of the pastes into image ``image_index``: ``[seed, 1, image_index]``.

    One generator per target image, so an image's pastes depend on the seed, its index and its own jobs
    only, whatever happens in other images.
    """
    return np.random.default_rng([seed, 1, image_index])


def draw_transform(rng: np.random.Generator, scale_jitter: float, rotation: float) -> tuple[float, float]:
    """``(scale, angle)``: ``1 + U(-scale_jitter, scale_jitter)`` and ``U(-rotation, rotation)`` degrees.

    Both are always drawn (also when the range is 0), so the generator advances the same way whatever the
    config.
    """
    scale = 1 + float(rng.uniform(-scale_jitter, scale_jitter))
    angle = float(rng.uniform(-rotation, rotation))
    return scale, angle


def cut_patches(image_rgb: np.ndarray, anns: list[dict[str, Any]]) -> dict[int, Patch]:
    """Annotation id → :func:`extract_patch` of it, from ``image_rgb (H, W, 3) uint8``."""
    return {ann["id"]: extract_patch(image_rgb, ann) for ann in anns}


def cut_source_patches(
    images: list[dict[str, Any]], sources: list[Source], load_image: Callable[[dict[str, Any]], np.ndarray]
) -> dict[int, Patch]:
    """Annotation id → patch for every source, loading each source image once, in image order."""
    by_image: dict[int, list[dict[str, Any]]] = {}
    for src in sources:
        by_image.setdefault(src.image_index, []).append(src.annotation)
    patches: dict[int, Patch] = {}
    for idx in sorted(by_image):
        patches.update(cut_patches(load_image(images[idx]), by_image[idx]))
    return patches


def paste_patch(
    canvas: np.ndarray,
    boxes_xyxy: np.ndarray,
    patch: Patch,
    scale: float,
    angle: float,
    cfg: CopyPasteConfig,
    rng: np.random.Generator,
) -> tuple[int, int, int, int] | str:
    """Transform ``patch``, find it a free place and composite it into ``canvas`` (module docstring, 2–6).

    Args:
        canvas: ``(H, W, 3) uint8``, modified in place when the paste lands.
        boxes_xyxy: ``(N, 4)`` boxes the paste must not overlap.
        patch: the object.
        scale: size factor.
        angle: degrees, counter-clockwise.
        cfg: ``augment.copy_paste`` (``blend``, ``margin``, ``max_tries``).
        rng: the image's generator (:func:`image_rng`); positions are drawn from it.

    Returns:
        The pasted box ``(x, y, w, h)`` integer px, or the reason it was rejected (``REJECT_REASONS``).
    """
    alpha = make_alpha(patch.mask, cfg.blend)
    done = transform_patch(patch.rgb, alpha, patch.mask, scale, angle, hard=cfg.blend == "none")
    if done is None:
        return "degenerate"
    rgb, alpha = done
    bh, bw = alpha.shape
    height, width = canvas.shape[:2]
    pos = find_position((bw, bh), (width, height), boxes_xyxy, cfg.margin, cfg.max_tries, rng)
    if isinstance(pos, str):
        return pos
    x, y = pos
    composite(canvas, rgb, alpha, x, y)
    return x, y, bw, bh


def paste_into_image(
    canvas: np.ndarray,
    boxes_xyxy: np.ndarray,
    jobs: list[Source],
    patches: dict[int, Patch],
    cfg: CopyPasteConfig,
    rng: np.random.Generator,
) -> tuple[list[Placement], list[str]]:
    """Paste ``jobs`` into one image, in order; each placed box joins the boxes later pastes must avoid.

    Each job draws its scale and angle (:func:`draw_transform`) and then its positions
    (:func:`find_position`) from ``rng``. They cannot be drawn ahead in the planner: how many position draws
    a job makes (none when the patch vanishes or does not fit) and their range depend on the transformed
    patch's size, so one stream interleaves them.

    Args:
        canvas: ``(H, W, 3) uint8`` pixels of the target image; modified in place.
        boxes_xyxy: ``(N, 4)`` the image's own boxes.
        jobs: the image's jobs (:func:`plan_pastes`).
        patches: annotation id → patch, for every job.
        cfg: ``augment.copy_paste``.
        rng: the image's generator (:func:`image_rng`).

    Returns:
        ``(placed, rejected)``: the pastes that landed, in job order, and the reason of each that did not.
    """
    placed: list[Placement] = []
    rejected: list[str] = []
    boxes_xyxy = np.asarray(boxes_xyxy, dtype=np.float64).reshape(-1, 4)
    with torch_threads(1):
        for src in jobs:
            scale, angle = draw_transform(rng, cfg.scale_jitter, cfg.rotation)
            box = paste_patch(canvas, boxes_xyxy, patches[src.annotation["id"]], scale, angle, cfg, rng)
            if isinstance(box, str):
                rejected.append(box)
                continue
            x, y, w, h = box
            boxes_xyxy = np.concatenate([boxes_xyxy, [[x, y, x + w, y + h]]])
            placed.append(Placement(src, scale, angle, box))
    return placed, rejected


# --- bookkeeping: ids, boxes, areas -----------------------------------------------------------------------


def pasted_annotation(placement: Placement, source_image_id: int) -> dict[str, Any]:
    """The COCO annotation of a paste, without ``id`` and ``image_id``: box-only, ``area = w * h``.

    ``bbox`` is ``[x, y, w, h]`` px (floats); ``sod_paste`` records the source and the transform (rounded
    to 6 decimals).
    """
    x, y, w, h = placement.box_xywh
    src = placement.source.annotation
    return {
        "category_id": src["category_id"],
        "bbox": [float(x), float(y), float(w), float(h)],
        "area": float(w * h),
        "iscrowd": 0,
        "sod_paste": {
            "source_annotation_id": src["id"],
            "source_image_id": source_image_id,
            "scale": round(placement.scale, 6),
            "angle": round(placement.angle, 6),
        },
    }


@dataclass
class AnnotationLedger:
    """New ids and the images and annotations to append, in the order images are augmented.

    Attributes:
        next_image_id: the id the next added image gets.
        next_annotation_id: the id the next added annotation gets.
        images: image entries to append (``mode: add``).
        annotations: annotations to append.
    """

    next_image_id: int
    next_annotation_id: int
    images: list[dict[str, Any]] = field(default_factory=list)
    annotations: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def after(cls, coco: dict[str, Any]) -> AnnotationLedger:
        """A ledger whose ids start after the largest image and annotation ids of ``coco`` (≥ 1 image)."""
        return cls(
            next_image_id=max(im["id"] for im in coco["images"]) + 1,
            next_annotation_id=max((a["id"] for a in coco["annotations"]), default=0) + 1,
        )

    def _add_annotation(self, fields: dict[str, Any], image_id: int) -> None:
        """Append ``fields`` under a new id; the keys ``id`` and ``image_id`` take the first places."""
        self.annotations.append({"id": self.next_annotation_id, "image_id": image_id, **fields})
        self.next_annotation_id += 1

    def record(
        self,
        target: dict[str, Any],
        original_anns: list[dict[str, Any]],
        pasted_anns: list[dict[str, Any]],
        mode: str,
        replaced_entry: dict[str, Any],
    ) -> dict[str, Any]:
        """Book one augmented image; returns its entry (``file_name`` still to set).

        Args:
            target: the input image entry the augmented image was made from.
            original_anns: ``target``'s annotations.
            pasted_anns: :func:`pasted_annotation` of each paste, in order.
            mode: ``"add"``: a new entry (next image id, same size) with copies of ``original_anns`` under
                new ids, then the pastes; ``"replace"``: ``replaced_entry`` (the output's entry for
                ``target``) keeps its id and annotations and gains the pastes.
            replaced_entry: see ``mode``; unused for ``"add"``.

        Returns:
            The entry, with ``sod_copy_paste_of = target["id"]``.
        """
        if mode == "add":
            entry = {"id": self.next_image_id, "file_name": "", "width": target["width"], "height": target["height"]}
            self.next_image_id += 1
            self.images.append(entry)
            for ann in original_anns:
                # The copy keeps the original's key order; only its id and image id change.
                self.annotations.append({**copy.deepcopy(ann), "id": self.next_annotation_id, "image_id": entry["id"]})
                self.next_annotation_id += 1
        else:
            entry = replaced_entry
        entry["sod_copy_paste_of"] = target["id"]
        for fields in pasted_anns:
            self._add_annotation(fields, entry["id"])
        return entry


# --- the whole pass ---------------------------------------------------------------------------------------


def copy_paste(
    coco: dict[str, Any],
    load_image: Callable[[dict[str, Any]], np.ndarray],
    write_image: Callable[[dict[str, Any], np.ndarray], str],
    cfg: CopyPasteConfig,
    small_area: float,
    progress: bool = False,
) -> tuple[dict[str, Any], CopyPasteStats]:
    """Paste every unoccluded small object ``cfg.times`` times (module docstring).

    Plan (:func:`plan_pastes`), paste image by image (:func:`paste_into_image`), book ids
    (:class:`AnnotationLedger`). The same input and seed give the same output, byte for byte.

    Args:
        coco: a COCO dict; not modified. Boxes ``bbox`` are ``[x, y, w, h]`` px.
        load_image: image entry → ``(H, W, 3) uint8`` pixels.
        write_image: (new image entry, ``(H, W, 3) uint8`` pixels) → the ``file_name`` to record; called once
            per augmented image, in order.
        cfg: ``augment.copy_paste``.
        small_area: px²; an object is small when ``area < small_area``.
        progress: show progress (see :mod:`sod.progress`).

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
    anns_by_image = annotations_by_image(coco)
    sources, stats.sources_occluded = find_sources(images, anns_by_image, small_area)
    stats.sources = len(sources)
    if cfg.times == 0 or not sources:
        return out, stats

    plan = plan_pastes(sources, len(images), cfg.times, cfg.source, cfg.seed)
    # source: any cuts every patch up front, from unaltered images; source: same cuts from each target
    # just before pasting into it, so one image is in memory at a time.
    patches = cut_source_patches(images, sources, load_image) if cfg.source == "any" else {}
    ledger = AnnotationLedger.after(coco)
    for t_idx, jobs in progress_bar(plan.items(), desc="copy-paste", unit="img", enabled=progress):
        target = images[t_idx]
        own_anns = anns_by_image[target["id"]]
        canvas = load_image(target).copy()
        if cfg.source == "same":
            patches = cut_patches(canvas, [src.annotation for src in jobs])
        boxes_xyxy = xywh_to_xyxy([a["bbox"] for a in own_anns])
        placed, rejected = paste_into_image(canvas, boxes_xyxy, jobs, patches, cfg, image_rng(cfg.seed, t_idx))
        for reason in rejected:
            stats.pastes_rejected[reason] += 1
        if not placed:
            continue
        stats.pastes_placed += len(placed)
        stats.images_augmented += 1
        pasted = [pasted_annotation(p, images[p.source.image_index]["id"]) for p in placed]
        entry = ledger.record(target, own_anns, pasted, cfg.mode, out["images"][t_idx])
        entry["file_name"] = write_image(entry, canvas)
    out["images"].extend(ledger.images)
    out["annotations"].extend(ledger.annotations)
    return out, stats
