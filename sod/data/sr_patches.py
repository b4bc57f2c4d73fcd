"""Super-resolution training data: aligned HR/LR image pairs and random patch pairs cut from them.

Every image is cropped at its right and bottom to a multiple of the scale (the HR image) and downscaled by the
scale with antialiased bicubic interpolation, then rounded to 8 bits (the LR image, as a camera or a JPEG would
hold it). Training pairs are aligned crops: an LR patch of ``patch`` px and the HR patch ``scale`` times larger
at the same place, placed either around the centre of a random COCO-small object (``area`` < 32²) or anywhere
in a random image. Positions come from torch's global RNG, which :func:`sod.engine.fit` seeds per epoch, so a
resumed run draws the same patches as an uninterrupted one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from sod.config import COCO_SMALL_AREA
from sod.data import coco
from sod.errors import DataError
from sod.evaluation.sr_metrics import to_8bit
from sod.io import load_rgb
from sod.models.sr import bicubic_resize


@dataclass
class SRImage:
    """One image as an aligned HR/LR pair, plus its COCO-small boxes.

    Attributes:
        hr: ``uint8 Tensor[3, H, W]``, H and W multiples of the scale.
        lr: ``uint8 Tensor[3, H / scale, W / scale]``, antialiased bicubic downscale of ``hr``.
        small_boxes_xyxy: ``float Tensor[N, 4]`` in HR pixels, boxes of area < 32².
    """

    hr: torch.Tensor
    lr: torch.Tensor
    small_boxes_xyxy: torch.Tensor


def make_lr(hr: torch.Tensor, scale: int) -> torch.Tensor:
    """The LR image of ``uint8 Tensor[3, H, W]`` (H, W multiples of ``scale``): antialiased bicubic, 8-bit."""
    h, w = hr.shape[-2] // scale, hr.shape[-1] // scale
    lr = bicubic_resize(hr[None].float() / 255, (h, w))[0]
    return (to_8bit(lr) * 255).round().to(torch.uint8)


def load_split(json_path: Path, scale: int, limit: int | None = None) -> list[SRImage]:
    """Read a sod COCO file's images as HR/LR pairs (in file order; the first ``limit`` images if given).

    Raises:
        DataError: unreadable JSON, a malformed record, or a missing/unreadable image (named).
    """
    raw = coco.load_coco_json(json_path)
    small: dict[Any, list[list[float]]] = {}
    for i, ann in enumerate(raw["annotations"]):
        try:
            if coco.is_crowd(ann) or float(ann["area"]) >= COCO_SMALL_AREA:
                continue
            x, y, w, h = (float(v) for v in ann["bbox"])
            small.setdefault(ann["image_id"], []).append([x, y, x + w, y + h])
        except (KeyError, TypeError, ValueError, AttributeError):
            raise DataError(f"{json_path}: annotation #{i} has no numeric 'bbox' [x, y, w, h] and 'area'") from None
    images = raw["images"] if limit is None else raw["images"][:limit]
    out = []
    for i, rec in enumerate(images):
        if not isinstance(rec, dict) or not isinstance(rec.get("file_name"), str):
            raise DataError(f"{json_path}: image #{i} has no 'file_name'")
        path = coco.image_path(json_path, rec["file_name"])
        try:
            rgb = load_rgb(path)
        except (OSError, ValueError) as exc:
            raise DataError(f"{json_path}: image #{i} ({path}) cannot be read: {exc}") from None
        h, w = (rgb.shape[0] // scale) * scale, (rgb.shape[1] // scale) * scale
        if h == 0 or w == 0:
            raise DataError(f"{json_path}: image #{i} ({path}) is smaller than the scale factor {scale}")
        hr = torch.from_numpy(rgb[:h, :w].copy()).permute(2, 0, 1).contiguous()  # load_rgb's array is read-only
        boxes = torch.tensor(small.get(rec.get("id"), []), dtype=torch.float32).reshape(-1, 4)
        out.append(SRImage(hr=hr, lr=make_lr(hr, scale), small_boxes_xyxy=boxes))
    return out


class PatchDataset(Dataset):
    """``length`` random aligned (LR, HR) patch pairs, drawn from torch's global RNG at every access.

    Items are ``(lr Tensor[3, p, p], {"hr": Tensor[3, p·s, p·s]})``, floats in 0..1, the engine's
    ``(image, target)`` convention.

    Args:
        images: training pairs; each must be at least ``patch`` LR pixels on each side.
        patch: LR patch side (px).
        scale: upscaling factor.
        objects: centre every patch near a random small object (the images must hold at least one).
        length: items per epoch.

    Raises:
        DataError: ``objects`` with no small object in ``images``.
    """

    def __init__(self, images: list[SRImage], patch: int, scale: int, objects: bool, length: int) -> None:
        self.images, self.patch, self.scale, self.length = images, patch, scale, length
        # (image index, box index) of every small object, for object-centred sampling.
        self.objects = [(i, j) for i, im in enumerate(images) for j in range(len(im.small_boxes_xyxy))]
        if objects and not self.objects:
            raise DataError("sr.patch_sampling is 'objects' but the training images hold no small object")
        self.use_objects = objects

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        p, s = self.patch, self.scale
        if self.use_objects:
            i, j = self.objects[int(torch.randint(len(self.objects), ()))]
            im = self.images[i]
            x0, y0, x1, y1 = (im.small_boxes_xyxy[j] / s).tolist()
            # Any LR position whose patch covers the pixel holding the box centre (clamping below keeps it).
            left = math.floor((x0 + x1) / 2) - int(torch.randint(p, ()))
            top = math.floor((y0 + y1) / 2) - int(torch.randint(p, ()))
        else:
            im = self.images[int(torch.randint(len(self.images), ()))]
            left = int(torch.randint(im.lr.shape[-1] - p + 1, ()))
            top = int(torch.randint(im.lr.shape[-2] - p + 1, ()))
        left = min(max(left, 0), im.lr.shape[-1] - p)
        top = min(max(top, 0), im.lr.shape[-2] - p)
        lr = im.lr[:, top : top + p, left : left + p]
        hr = im.hr[:, top * s : (top + p) * s, left * s : (left + p) * s]
        return lr.float() / 255, {"hr": hr.float() / 255}


def collate_pairs(
    batch: list[tuple[torch.Tensor, dict[str, torch.Tensor]]],
) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    """A batch of :class:`PatchDataset` items as the engine's ``(images, targets)`` lists."""
    return [b[0] for b in batch], [b[1] for b in batch]
