"""The training/evaluation ``Dataset`` over a sod COCO file, and its torchvision v2 transforms.

A sample is ``(image, target)``:

* ``image``: ``tv_tensors.Image`` ``[3, H, W]``. The dataset itself returns ``uint8`` 0..255;
  :func:`train_transforms` and :func:`eval_transforms` end with ``ToDtype(float32, scale=True)``, so
  with either of them it is ``float32`` in 0..1 (what torchvision's detectors and :mod:`sod.engine` expect).
* ``target``: ``{"boxes": tv_tensors.BoundingBoxes [N, 4] XYXY px with canvas_size (H, W),
  "labels": int64 Tensor[N] in 1..K, "image_id": int}``; ``N`` may be 0.

Labels are 1 + the index of the category among the categories sorted by id (torchvision's convention:
0 is background, see ``sod.models.detector``); ``category_to_label`` and ``label_to_category`` map
between them and COCO ``category_id``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2

from sod.config import OnlineAugmentConfig
from sod.data.coco import image_path, is_crowd, load_coco_json
from sod.errors import DataError
from sod.io import load_rgb

Sample = tuple[tv_tensors.Image, dict[str, Any]]


class CocoDetectionDataset(Dataset):
    """Images and boxes of a sod COCO file (``file_name`` relative to the JSON file's directory).

    Args:
        json_path: the COCO file, e.g. ``data/augmented/train.json``.
        transforms: called as ``transforms(image, target)`` on every sample (e.g. :func:`train_transforms`);
            None returns the ``uint8`` image and the boxes as stored.

    Attributes:
        categories: the COCO categories sorted by id; label ``i`` is ``categories[i - 1]``.
        category_to_label: COCO ``category_id`` → label 1..K.
        label_to_category: label 1..K → COCO ``category_id``.
        num_classes: K.
        images: the image entries, in file order (index ``i`` of the dataset is ``images[i]``).
        crowd_dropped: ``iscrowd: 1`` annotations left out of the targets. A crowd region is no object to
            find (pycocotools ignores detections inside it); torchvision's RetinaNet matcher has no ignore
            label for such regions, so they are not made targets at all (anchors inside them may still be
            negatives).

    Raises:
        DataError: unreadable JSON, or an annotation whose image or category is not in the file.
    """

    def __init__(self, json_path: str | Path, transforms: Callable[..., Any] | None = None) -> None:
        self.json_path = Path(json_path)
        self.transforms = transforms
        coco = load_coco_json(self.json_path)
        self.categories: list[dict[str, Any]] = sorted(coco["categories"], key=lambda c: c["id"])
        self.category_to_label = {c["id"]: i for i, c in enumerate(self.categories, start=1)}
        self.label_to_category = {i: c["id"] for i, c in enumerate(self.categories, start=1)}
        self.images: list[dict[str, Any]] = list(coco["images"])
        boxes: dict[int, list[list[float]]] = {im["id"]: [] for im in self.images}
        labels: dict[int, list[int]] = {im["id"]: [] for im in self.images}
        self.crowd_dropped = 0
        for ann in coco["annotations"]:
            if ann["image_id"] not in boxes:
                raise DataError(f"{self.json_path}: annotation {ann['id']}: image_id {ann['image_id']} is not an image")
            if ann["category_id"] not in self.category_to_label:
                raise DataError(
                    f"{self.json_path}: annotation {ann['id']}: category_id {ann['category_id']} is not a category"
                )
            if is_crowd(ann):
                self.crowd_dropped += 1
                continue
            x, y, w, h = ann["bbox"]
            boxes[ann["image_id"]].append([x, y, x + w, y + h])
            labels[ann["image_id"]].append(self.category_to_label[ann["category_id"]])
        # Tensors built once here: __getitem__ then only decodes the image.
        self._boxes_xyxy = {k: torch.tensor(v, dtype=torch.float32).reshape(-1, 4) for k, v in boxes.items()}
        self._labels = {k: torch.tensor(v, dtype=torch.int64) for k, v in labels.items()}

    @property
    def num_classes(self) -> int:
        return len(self.categories)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> Sample:
        im = self.images[index]
        path = image_path(self.json_path, im["file_name"])
        try:
            # PIL, not torchvision.io: its decoders are deprecated since torchvision 0.29.
            pixels = torch.from_numpy(load_rgb(path).copy()).permute(2, 0, 1)
        except OSError as exc:
            raise DataError(f"{self.json_path}: image {im['id']}: cannot read {path}: {exc}") from None
        image = tv_tensors.Image(pixels)
        target = {
            "boxes": tv_tensors.BoundingBoxes(
                self._boxes_xyxy[im["id"]].clone(),
                format=tv_tensors.BoundingBoxFormat.XYXY,
                canvas_size=tuple(pixels.shape[-2:]),
            ),
            "labels": self._labels[im["id"]].clone(),
            "image_id": im["id"],
        }
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target


def train_transforms(cfg: OnlineAugmentConfig) -> v2.Compose:
    """Random flip, scale jitter and photometric jitter, then drop degenerate boxes and scale to float.

    Scale jitter zooms the content inside the same canvas (``RandomAffine(scale=...)``): the detector
    resizes every input to ``detector.min_size``, which would undo a resize of the whole image. Boxes
    pushed partly outside are clipped; boxes left under 1 px are dropped with their labels.

    Args:
        cfg: ``augment.online``.

    Returns:
        A ``v2.Compose`` taking and returning ``(image, target)``; the image comes out ``float32`` 0..1.
    """
    steps: list[v2.Transform] = []
    if cfg.hflip_prob > 0:
        steps.append(v2.RandomHorizontalFlip(p=cfg.hflip_prob))
    if (cfg.scale_min, cfg.scale_max) != (1.0, 1.0):
        # Bilinear, not torchvision's nearest default: nearest-neighbour resampling breaks the strokes of a
        # 6–12 px object into aliased pixels that val images never show.
        steps.append(
            v2.RandomAffine(
                degrees=0, scale=(cfg.scale_min, cfg.scale_max), interpolation=v2.InterpolationMode.BILINEAR
            )
        )
    if cfg.photometric > 0:
        s = cfg.photometric
        steps.append(v2.ColorJitter(brightness=s, contrast=s, saturation=s))
    steps += [v2.ClampBoundingBoxes(), v2.SanitizeBoundingBoxes(), v2.ToDtype(torch.float32, scale=True)]
    return v2.Compose(steps)


def eval_transforms() -> v2.Compose:
    """No randomness: the image as ``float32`` 0..1, boxes unchanged."""
    return v2.Compose([v2.ToDtype(torch.float32, scale=True)])


def collate_fn(batch: list[Sample]) -> tuple[list[tv_tensors.Image], list[dict[str, Any]]]:
    """Keep images and targets as lists: images differ in size and targets in box count."""
    images, targets = zip(*batch, strict=True)
    return list(images), list(targets)
