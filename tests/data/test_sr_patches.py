"""SR training data: 8-bit LR images, HR/LR pairs read from COCO files, object-centred and uniform patches."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from sod.data.sr_patches import PatchDataset, SRImage, collate_pairs, load_split, make_lr
from sod.errors import DataError, SodError
from sod.io import save_png, write_json


def test_lr_is_an_8bit_antialiased_downscale() -> None:
    hr = torch.zeros(3, 8, 8, dtype=torch.uint8)
    hr[:, :, ::2] = 255  # 1 px stripes: antialiasing averages them to grey instead of aliasing
    lr = make_lr(hr, 2)
    assert lr.dtype == torch.uint8 and lr.shape == (3, 4, 4)
    assert 100 < int(lr[0, 1, 1]) < 155


def _coco(root: Path, annotations: list[dict]) -> Path:
    """One 13×10 image (width × height) of value 7 under ``root/images``, with ``annotations`` on image id 5."""
    save_png(root / "images/a.png", np.full((10, 13, 3), 7, dtype=np.uint8))
    path = root / "train.json"
    write_json(path, {"images": [{"id": 5, "file_name": "images/a.png"}], "annotations": annotations, "categories": []})
    return path


def test_load_split_crops_to_the_scale_and_keeps_only_small_boxes(tmp_path: Path) -> None:
    anns = [
        {"image_id": 5, "bbox": [1, 2, 3, 4], "area": 12},  # small: kept as xyxy [1, 2, 4, 6]
        {"image_id": 5, "bbox": [0, 0, 32, 32], "area": 1024},  # area 32² is medium in COCO
        {"image_id": 5, "bbox": [0, 0, 2, 2], "area": 4, "iscrowd": 1},  # crowd regions are not objects
    ]
    (im,) = load_split(_coco(tmp_path, anns), scale=3)
    # 13 × 10 px cropped at the right and bottom to multiples of 3: 12 × 9; LR 4 × 3; a flat image stays flat.
    assert im.hr.shape == (3, 9, 12) and im.hr.dtype == torch.uint8
    assert im.lr.shape == (3, 3, 4) and bool((im.lr == 7).all())
    assert im.small_boxes_xyxy.tolist() == [[1.0, 2.0, 4.0, 6.0]]


def test_load_split_names_the_bad_record(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="annotation #0"):
        load_split(_coco(tmp_path, [{"image_id": 5, "bbox": "x", "area": 1}]), scale=2)
    with pytest.raises(DataError, match="smaller than the scale factor 11"):
        load_split(_coco(tmp_path, []), scale=11)
    (tmp_path / "images/a.png").unlink()
    with pytest.raises(DataError, match=r"image #0 \(.*a\.png\) cannot be read"):
        load_split(tmp_path / "train.json", scale=2)


def test_object_patches_hold_a_small_object() -> None:
    hr = torch.zeros(3, 40, 60, dtype=torch.uint8)
    boxes = torch.tensor([[50.0, 2.0, 58.0, 8.0]])  # centre (54, 5) in HR px = (27, 2.5) in LR px
    im = SRImage(hr=hr, lr=make_lr(hr, 2), small_boxes_xyxy=boxes)
    ds = PatchDataset([im], patch=6, scale=2, objects=True, length=50)
    torch.manual_seed(0)
    for _ in range(50):
        lr, target = ds[0]
        assert lr.shape == (3, 6, 6) and target["hr"].shape == (3, 12, 12)
    # Mark the object's centre pixel and check that every patch contains it.
    hr[:, 5, 54] = 255
    im = SRImage(hr=hr, lr=hr[:, ::2, ::2].clone(), small_boxes_xyxy=boxes)
    ds = PatchDataset([im], patch=6, scale=2, objects=True, length=50)
    assert all(float(ds[0][1]["hr"].max()) == 1.0 for _ in range(50))


def test_uniform_patches_are_aligned_lr_hr_crops() -> None:
    # HR pixel value = 2·row + col/2 (integers): an aligned pair has LR = HR[::2, ::2] at the same place.
    rows, cols = torch.meshgrid(torch.arange(20), torch.arange(24), indexing="ij")
    hr = (2 * rows + cols // 2).to(torch.uint8).expand(3, -1, -1).contiguous()
    im = SRImage(hr=hr, lr=hr[:, ::2, ::2].clone(), small_boxes_xyxy=torch.zeros(0, 4))
    ds = PatchDataset([im], patch=4, scale=2, objects=False, length=3)
    assert len(ds) == 3
    torch.manual_seed(1)
    for _ in range(20):
        lr, target = ds[0]
        assert torch.equal(lr, target["hr"][:, ::2, ::2])


def test_objects_sampling_without_small_objects_is_an_error() -> None:
    hr = torch.zeros(3, 16, 16, dtype=torch.uint8)
    im = SRImage(hr=hr, lr=make_lr(hr, 2), small_boxes_xyxy=torch.zeros(0, 4))
    with pytest.raises(SodError, match="no small object"):
        PatchDataset([im], patch=4, scale=2, objects=True, length=1)


def test_collate_pairs_keeps_images_and_targets_apart() -> None:
    a, b = torch.zeros(3, 2, 2), torch.ones(3, 2, 2)
    images, targets = collate_pairs([(a, {"hr": b}), (b, {"hr": a})])
    assert images[0] is a and images[1] is b and targets[0]["hr"] is b and targets[1]["hr"] is a
