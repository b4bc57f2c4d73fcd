"""Training on tiles of the original pixels: SAHI's slicing-aided fine-tuning (Akyon et al. 2022).

A detector resizes every input to ``detector.min_size``; a 4,000 px aerial image trained whole shrinks its
8 px objects below one pixel. ``prepare`` therefore replaces every train image larger than
``prepare.slice.tile`` (in either side) by overlapping tiles cut from its original pixels:

* the tiles are :func:`sod.evaluation.sliced.tile_grid`'s (the grid sliced inference uses): origins every
  ``floor(tile * (1 - overlap))`` px, the last tile of a row/column aligned to the image border, a side
  shorter than ``tile`` taken whole (no padding: a training tile holds only real pixels);
* a box that lies in a tile is kept, clipped to the tile, when at least ``min_area_ratio`` of its area
  lies inside (SAHI's rule); a cut box below that is dropped and counted, and so is a clipped box thinner
  than ``prepare.min_box_side``. A box cut by a border is kept in every tile that holds enough of it;
* a tile that keeps no box is kept with probability ``keep_empty`` (seeded, in tile order);
* each tile is a COCO image of its own with ``source_image_id``, ``source_file_name`` (the ``file_name`` of
  the image it was cut from, as the input gave it) and ``offset: [x, y]`` (its top-left corner in the
  source's pixels); each of its annotations has ``source_annotation_id``. So ``tile box + offset`` is
  the source box clipped to the tile.

Images no larger than the tile pass through unchanged (``prepare`` writes them as before). Val is never
sliced: it is scored against its full-image ground truth.

Box format: COCO ``[x, y, w, h]`` in pixels everywhere here, in and out; source boxes in the source's
pixels, tile boxes in the tile's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import torch
from PIL import Image
from pycocotools import mask as mask_utils
from torch import Tensor
from torchvision.ops import box_area, box_convert, clip_boxes_to_image

from sod.config import SliceConfig
from sod.data.coco import CleanImage, to_rgb8
from sod.errors import DataError
from sod.evaluation.sliced import tile_grid
from sod.io import save_png
from sod.progress import progress_bar


@dataclass
class SliceCounts:
    """What slicing did to a split; every field lands in ``reports/prepare.json`` under ``slicing``."""

    images_sliced: int = 0  # source images replaced by their tiles
    images_passed_through: int = 0  # no larger than the tile: written unchanged
    tiles_written: int = 0  # tiles kept (with objects, plus the empty ones kept)
    empty_tiles_kept: int = 0  # tiles without a kept box, kept by keep_empty
    empty_tiles_dropped: int = 0
    boxes_cut_kept: int = 0  # tile boxes clipped by a tile border and kept (one per tile that keeps it)
    boxes_cut_dropped: int = 0  # tile boxes with less than min_area_ratio of their area inside the tile
    boxes_dropped_subpixel: int = 0  # clipped boxes thinner than prepare.min_box_side
    boxes_lost: int = 0  # source boxes kept in no tile at all (e.g. larger than min_area_ratio of a tile allows)
    segmentations_dropped: int = 0  # RLE masks, or polygons covering no pixel of the tile: box kept, mask not

    def as_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


@dataclass
class BoxCut:
    """The boxes one tile keeps, from :func:`cut_boxes`.

    Attributes:
        index: ``LongTensor[K]``, the kept boxes' rows in the input.
        boxes_xywh: ``Tensor[K, 4]`` float64, COCO xywh in the tile's pixels, clipped to the tile.
        cut: ``BoolTensor[K]``, the kept box was clipped by the tile border.
        dropped_ratio: boxes in the tile with less than ``min_area_ratio`` of their area inside.
        dropped_subpixel: boxes kept by the ratio but thinner than ``min_side`` once clipped.
    """

    index: Tensor
    boxes_xywh: Tensor
    cut: Tensor
    dropped_ratio: int
    dropped_subpixel: int


def cut_boxes(boxes_xywh: Tensor, tile_xyxy: Sequence[int], min_area_ratio: float, min_side: float = 0.0) -> BoxCut:
    """Clip boxes to one tile and keep those with enough of their area inside.

    Args:
        boxes_xywh: ``Tensor[N, 4]`` float64, COCO xywh in the source image's pixels, positive width and height.
        tile_xyxy: the tile ``(x1, y1, x2, y2)`` in the same pixels (a row of ``tile_grid``).
        min_area_ratio: keep a box when ``area inside the tile / box area ≥`` this; a box must overlap the
            tile by a positive area to count at all (touching edges do not).
        min_side: drop a kept box whose clipped width or height is below this, px.

    Returns:
        The kept boxes in the tile's pixels and the counts of the dropped ones (:class:`BoxCut`).
    """
    x1, y1, x2, y2 = (int(v) for v in tile_xyxy)
    xyxy = box_convert(boxes_xywh.reshape(-1, 4), "xywh", "xyxy") - boxes_xywh.new_tensor([x1, y1, x1, y1])
    clipped = clip_boxes_to_image(xyxy, (y2 - y1, x2 - x1))  # [N, 4] tile xyxy; outside boxes collapse to area 0
    inside = box_area(clipped)
    in_tile = inside > 0
    enough = in_tile & (inside / box_area(xyxy) >= min_area_ratio)
    wh = clipped[:, 2:] - clipped[:, :2]
    kept = enough & (wh >= min_side).all(dim=1)
    index = kept.nonzero().flatten()
    return BoxCut(
        index=index,
        boxes_xywh=box_convert(clipped[index], "xyxy", "xywh"),
        cut=(clipped[index] != xyxy[index]).any(dim=1),
        dropped_ratio=int((in_tile & ~enough).sum()),
        dropped_subpixel=int((enough & ~kept).sum()),
    )


@dataclass
class TilePlan:
    """One kept tile of a source image: ``offset`` (x, y) and size in px, annotations in tile pixels."""

    offset: tuple[int, int]
    width: int
    height: int
    annotations: list[dict[str, Any]] = field(default_factory=list)  # no ``id``/``image_id`` yet


def plan_tiles(
    width: int,
    height: int,
    annotations: list[dict[str, Any]],
    cfg: SliceConfig,
    min_side: float,
    rng: np.random.Generator,
    counts: SliceCounts,
) -> list[TilePlan]:
    """The tiles one image larger than ``cfg.tile`` is replaced by, and their annotations.

    Args:
        width, height: the source image's size, px.
        annotations: its cleaned COCO annotations (``bbox`` xywh in its pixels, ``area``, ``iscrowd``, maybe
            ``segmentation``).
        cfg: ``prepare.slice``; ``min_side``: ``prepare.min_box_side``.
        rng: draws one number per tile without a box (``keep_empty``), in tile order.
        counts: updated in place.

    Returns:
        The kept tiles, row by row. Each tile annotation is ``{"category_id", "bbox" (xywh, tile px), "area",
        "iscrowd", ["segmentation"], "source_annotation_id"}``; ``area`` is the clipped box's, or the
        polygon's area inside the tile.
    """
    boxes_xywh = torch.tensor([a["bbox"] for a in annotations], dtype=torch.float64).reshape(-1, 4)
    used = torch.zeros(len(annotations), dtype=torch.bool)
    plans = []
    for tile_xyxy in tile_grid(height, width, cfg.tile, cfg.overlap).tolist():
        x1, y1, x2, y2 = tile_xyxy
        cut = cut_boxes(boxes_xywh, tile_xyxy, cfg.min_area_ratio, min_side)
        counts.boxes_cut_dropped += cut.dropped_ratio
        counts.boxes_dropped_subpixel += cut.dropped_subpixel
        if len(cut.index) == 0:
            if rng.random() >= cfg.keep_empty:
                counts.empty_tiles_dropped += 1
                continue
            counts.empty_tiles_kept += 1
        used[cut.index] = True
        counts.boxes_cut_kept += int(cut.cut.sum())
        plan = TilePlan((x1, y1), x2 - x1, y2 - y1)
        for i, box in zip(cut.index.tolist(), cut.boxes_xywh.tolist(), strict=True):
            plan.annotations.append(_tile_annotation(annotations[i], box, plan, counts))
        plans.append(plan)
    counts.boxes_lost += int((~used).sum())
    return plans


def _tile_annotation(ann: dict[str, Any], box_xywh: list[float], tile: TilePlan, counts: SliceCounts) -> dict:
    """``ann`` moved into ``tile``: clipped box, area recomputed, polygons shifted (pycocotools clips them)."""
    out: dict[str, Any] = {
        "category_id": ann["category_id"],
        "bbox": box_xywh,
        "area": box_xywh[2] * box_xywh[3],
        "iscrowd": ann["iscrowd"],
    }
    seg = ann.get("segmentation")
    if isinstance(seg, list) and seg:
        ox, oy = tile.offset
        shifted = [[v - (ox if i % 2 == 0 else oy) for i, v in enumerate(poly)] for poly in seg]
        # The area pycocotools will compute for this annotation in the tile: the polygon rasterised on it.
        area = float(mask_utils.area(mask_utils.merge(mask_utils.frPyObjects(shifted, tile.height, tile.width))))
        if area > 0:
            out["segmentation"], out["area"] = shifted, area
        else:
            counts.segmentations_dropped += 1
    elif seg:  # RLE: cropping it means decoding the whole source mask; the box is what detection trains on
        counts.segmentations_dropped += 1
    out["source_annotation_id"] = ann["id"]
    return out


def tile_file_name(rel: PurePosixPath, split: str, offset: tuple[int, int]) -> PurePosixPath:
    """Where a tile is written, relative to prepare's output: ``images/<split>_tiles/<dir>/<stem>_x<x>_y<y>.png``.

    A folder of their own keeps tile names from colliding with the split's pass-through images.
    """
    return PurePosixPath("images", f"{split}_tiles", *rel.parent.parts, f"{rel.stem}_x{offset[0]}_y{offset[1]}.png")


def write_tiles(
    images: list[CleanImage],
    out_dir: Path,
    split: str,
    cfg: SliceConfig,
    min_side: float,
    first_image_id: int,
    first_annotation_id: int,
    counts: SliceCounts,
    progress: bool = True,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Cut ``images`` (each larger than ``cfg.tile``) into tiles, write them as PNG under ``out_dir``.

    Args:
        images: validated source images, in the order their tiles get ids.
        first_image_id, first_annotation_id: tiles and their annotations are numbered from these up.
        counts: updated in place.

    Returns:
        ``(coco_images, coco_annotations)`` of the tiles; ``file_name`` relative to ``out_dir``.

    Raises:
        DataError: two source images whose tiles would get the same file name (e.g. ``a.jpg`` and ``a.png``).
    """
    rng = np.random.default_rng(cfg.seed)
    coco_images: list[dict[str, Any]] = []
    coco_anns: list[dict[str, Any]] = []
    written: dict[PurePosixPath, Path] = {}
    image_id, ann_id = first_image_id, first_annotation_id
    for im in progress_bar(images, desc=f"slicing {split}", unit="image", enabled=progress):
        plans = plan_tiles(im.width, im.height, im.annotations, cfg, min_side, rng, counts)
        counts.images_sliced += 1
        if not plans:
            continue
        with Image.open(im.src) as pil:
            pixels = np.asarray(to_rgb8(pil))  # (H, W, 3) uint8, the original pixels
        for plan in plans:
            file_name = tile_file_name(im.rel, split, plan.offset)
            if written.setdefault(file_name, im.src) != im.src:
                raise DataError(f"{im.src} and {written[file_name]} would both write tile {file_name}: rename one")
            x, y = plan.offset
            save_png(out_dir / file_name, np.ascontiguousarray(pixels[y : y + plan.height, x : x + plan.width]))
            coco_images.append(
                {
                    "id": image_id,
                    "file_name": str(file_name),
                    "width": plan.width,
                    "height": plan.height,
                    "source_image_id": im.id,
                    "source_file_name": str(im.rel),
                    "offset": [x, y],
                }
            )
            for ann in plan.annotations:
                coco_anns.append({"id": ann_id, "image_id": image_id, **ann})
                ann_id += 1
            image_id += 1
            counts.tiles_written += 1
    return coco_images, coco_anns
