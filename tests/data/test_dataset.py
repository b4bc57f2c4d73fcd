"""The training Dataset and its v2 transforms: labels, empty images, boxes that follow the pixels."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision import tv_tensors

from sod.config import OnlineAugmentConfig
from sod.data.dataset import CocoDetectionDataset, collate_fn, eval_transforms, train_transforms
from sod.errors import DataError
from sod.io import load_rgb, write_json

SPECS = [
    {"size": (40, 30), "boxes": [(4, 5, 10, 6, 7), (20, 10, 8, 8, 3)]},
    {"size": (32, 32), "boxes": []},
]


def test_sample_as_stored(tiny_coco: Callable[..., Path]) -> None:
    path = tiny_coco(SPECS)
    ds = CocoDetectionDataset(path)
    assert len(ds) == 2 and ds.num_classes == 2
    # 1..K, 0 being torchvision's background.
    assert ds.category_to_label == {3: 1, 7: 2} and ds.label_to_category == {1: 3, 2: 7}
    image, target = ds[0]
    assert isinstance(image, tv_tensors.Image) and image.dtype == torch.uint8 and image.shape == (3, 30, 40)
    np.testing.assert_array_equal(image.permute(1, 2, 0).numpy(), load_rgb(path.parent / "images/train/000.png"))
    boxes = target["boxes"]
    assert isinstance(boxes, tv_tensors.BoundingBoxes) and boxes.format == tv_tensors.BoundingBoxFormat.XYXY
    assert tuple(boxes.canvas_size) == (30, 40)
    assert boxes.tolist() == [[4, 5, 14, 11], [20, 10, 28, 18]]
    assert target["labels"].dtype == torch.int64 and target["labels"].tolist() == [2, 1]
    assert target["image_id"] == 1


def test_image_without_boxes_works_through_the_train_transforms(tiny_coco: Callable[..., Path]) -> None:
    ds = CocoDetectionDataset(tiny_coco(SPECS), transforms=train_transforms(OnlineAugmentConfig()))
    image, target = ds[1]
    assert image.dtype == torch.float32 and target["boxes"].shape == (0, 4) and target["labels"].shape == (0,)
    images, targets = collate_fn([ds[0], ds[1]])
    assert len(images) == len(targets) == 2 and [t["image_id"] for t in targets] == [1, 2]


def test_hflip_moves_box_with_pixels(tiny_coco: Callable[..., Path]) -> None:
    cfg = OnlineAugmentConfig(hflip_prob=1.0, scale_min=1.0, scale_max=1.0, photometric=0.0)
    path = tiny_coco(SPECS)
    raw, _ = CocoDetectionDataset(path)[0]
    image, target = CocoDetectionDataset(path, transforms=train_transforms(cfg))[0]
    # x' = W - x: [4, 5, 14, 11] → [26, 5, 36, 11] in a 40 px wide image
    assert target["boxes"].tolist() == [[26, 5, 36, 11], [12, 10, 20, 18]]
    torch.testing.assert_close(image, raw.flip(-1).float() / 255)
    assert target["labels"].tolist() == [2, 1]


def test_scale_jitter_zooms_box_about_the_centre(tiny_coco: Callable[..., Path]) -> None:
    # zoom ×2 about the centre (20, 15): x → 2x - 20, y → 2y - 15; box 2 [20, 10, 28, 18] → [20, 5, 36, 21]
    cfg = OnlineAugmentConfig(hflip_prob=0.0, scale_min=2.0, scale_max=2.0, photometric=0.0)
    _, target = CocoDetectionDataset(tiny_coco(SPECS), transforms=train_transforms(cfg))[0]
    # box 1 [4, 5, 14, 11] → [-12, -5, 8, 7] clipped to [0, 0, 8, 7]
    torch.testing.assert_close(target["boxes"], torch.tensor([[0.0, 0, 8, 7], [20, 5, 36, 21]]), atol=1.0, rtol=0)


def test_scale_jitter_resamples_bilinearly() -> None:
    """A ×2 zoom of a one-pixel-wide stripe pattern gives in-between grey values (bilinear), not only the
    input's two values (nearest neighbour, which aliases tiny objects)."""
    cfg = OnlineAugmentConfig(hflip_prob=0.0, scale_min=2.0, scale_max=2.0, photometric=0.0)
    stripes = torch.zeros(3, 32, 32, dtype=torch.uint8)
    stripes[:, :, ::2] = 255
    image = tv_tensors.Image(stripes)
    boxes = tv_tensors.BoundingBoxes([[8, 8, 24, 24]], format="XYXY", canvas_size=(32, 32))
    out, _ = train_transforms(cfg)(image, {"boxes": boxes, "labels": torch.tensor([1])})
    values = torch.unique((out * 255).round())
    assert ((values > 0) & (values < 255)).any(), values


def test_eval_transforms_only_scale_the_pixels(tiny_coco: Callable[..., Path]) -> None:
    path = tiny_coco(SPECS)
    raw, raw_t = CocoDetectionDataset(path)[0]
    image, target = CocoDetectionDataset(path, transforms=eval_transforms())[0]
    torch.testing.assert_close(image, raw.float() / 255)
    assert target["boxes"].tolist() == raw_t["boxes"].tolist()


def test_unknown_category_is_a_data_error(tmp_path: Path) -> None:
    coco = {
        "images": [{"id": 1, "file_name": "a.png", "width": 8, "height": 8}],
        "annotations": [{"id": 5, "image_id": 1, "category_id": 9, "bbox": [0, 0, 2, 2], "area": 4, "iscrowd": 0}],
        "categories": [{"id": 1, "name": "x", "supercategory": ""}],
    }
    write_json(tmp_path / "t.json", coco)
    with pytest.raises(DataError, match="annotation 5: category_id 9"):
        CocoDetectionDataset(tmp_path / "t.json")
    coco["annotations"][0]["category_id"] = 1
    write_json(tmp_path / "t.json", coco)
    with pytest.raises(DataError, match="image 1: cannot read"):
        CocoDetectionDataset(tmp_path / "t.json")[0]


def test_crowd_annotations_are_no_training_targets(tiny_coco: Callable[..., Path]) -> None:
    # A crowd region (iscrowd: 1) is no object to find: pycocotools ignores detections in it, and it must
    # not teach the detector to fire on the whole region either.
    path = tiny_coco(SPECS)
    coco = json.loads(path.read_text())
    coco["annotations"][0]["iscrowd"] = 1
    path.write_text(json.dumps(coco))
    ds = CocoDetectionDataset(path)
    _, target = ds[0]
    assert target["boxes"].tolist() == [[20, 10, 28, 18]] and target["labels"].tolist() == [1]
    assert ds.crowd_dropped == 1
