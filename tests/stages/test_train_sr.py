"""`train_sr` on a few tiny images: every output written, resume after a kill, patch sampling, scoring windows."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data

from sod import engine
from sod.config import load_params
from sod.errors import SodError
from sod.io import save_png
from sod.models import pretrained
from sod.models.sr import load_sr
from sod.stages import train_sr
from sod.stages.train_sr import PatchDataset, SRImage, make_lr, small_window

# Small boxes (COCO xywh, area < 32²) of the tiny images; the second image has none.
BOXES = {1: [[10.0, 12.0, 14.0, 9.0], [40.0, 30.0, 8.0, 8.0]], 2: [], 3: [[20.0, 20.0, 12.0, 16.0]]}


@pytest.fixture(autouse=True)
def _one_thread(one_thread: None) -> None:
    """Small models: one thread is faster and leaves the other core to the rest of the suite."""


def _write_split(root: Path, name: str, image_ids: list[int]) -> Path:
    """64×64 crops of a real photograph as a sod COCO file (file_name relative to the JSON's dir)."""
    photo = data.astronaut()
    images, anns = [], []
    for i in image_ids:
        rel = f"images/{name}/{i:06d}.png"
        save_png(root / rel, np.ascontiguousarray(photo[40 * i : 40 * i + 64, 60 * i : 60 * i + 64]))
        images.append({"id": i, "file_name": rel, "width": 64, "height": 64})
        for x, y, w, h in BOXES[i]:
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": i,
                    "category_id": 1,
                    "bbox": [x, y, w, h],
                    "area": w * h,
                    "iscrowd": 0,
                }
            )
    path = root / f"{name}.json"
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": [{"id": 1, "name": "x"}]}))
    return path


def _overrides() -> list[str]:
    # The perceptual term runs only where its ImageNet weights are installed; its own tests cover it.
    have = pretrained.packaged_path(pretrained.IMAGENET_WEIGHTS["mobilenet_v2"]) is not None
    return [
        "sr.epochs=2",
        "sr.patches_per_epoch=8",
        "sr.batch_size=4",
        "sr.patch_size=12",
        "sr.device=cpu",
        f"sr.perceptual.weight={0.01 if have else 0}",
    ]


def _paths(root: Path) -> dict[str, Path]:
    return {
        "out": root / "models" / "sr.pt",
        "report": root / "reports" / "train_sr.json",
        "preview": root / "reports" / "train_sr.png",
        "checkpoint": root / "ckpt" / "train_sr.pt",
    }


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("data")
    return _write_split(root, "train", [1, 2, 3]), _write_split(root, "val", [1, 3])


def test_writes_model_report_and_preview(dataset: tuple[Path, Path], tmp_path: Path) -> None:
    train, val = dataset
    paths = _paths(tmp_path)
    result = train_sr.run(load_params(None, _overrides()), train, val, **paths, progress=False)

    report = json.loads(paths["report"].read_text())
    assert report == result
    for key in ("psnr_bicubic", "psnr_sr", "ssim_bicubic", "ssim_sr"):
        assert isinstance(report[key], float) and isinstance(report["small_objects"][key], float)
    assert report["small_objects"]["windows"] == 3  # the three small boxes of the val images
    assert [h["epoch"] for h in report["history"]] == [0, 1]
    assert report["train"]["small_objects"] == 3

    up = load_sr(paths["out"])
    assert up(torch.rand(1, 3, 10, 10)).shape == (1, 3, 20, 20)
    with Image.open(paths["preview"]) as im:
        assert im.size == (4 * train_sr.PREVIEW_CELL, 16 + 3 * train_sr.PREVIEW_CELL)


def test_rerun_resumes_from_checkpoint(
    dataset: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    train, val = dataset
    params = load_params(None, _overrides())
    full = _paths(tmp_path / "full")
    train_sr.run(params, train, val, **full, progress=False)

    # A run killed while saving epoch 1's checkpoint: epoch 0's checkpoint is on disk, nothing else.
    killed = _paths(tmp_path / "killed")
    real_save = engine.save_checkpoint
    saves = []

    def save_then_die(path: Path, state: dict) -> None:
        saves.append(state["epoch"])
        if state["epoch"] == 1:
            raise KeyboardInterrupt
        real_save(path, state)

    monkeypatch.setattr(engine, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train_sr.run(params, train, val, **killed, progress=False)
    monkeypatch.setattr(engine, "save_checkpoint", real_save)
    assert torch.load(killed["checkpoint"], weights_only=True)["epoch"] == 0
    assert not killed["report"].exists()

    trained_epochs = []
    real_epoch = engine.train_one_epoch

    def counting_epoch(*args, **kwargs):
        trained_epochs.append(kwargs["epoch"])
        return real_epoch(*args, **kwargs)

    monkeypatch.setattr(engine, "train_one_epoch", counting_epoch)
    train_sr.run(params, train, val, **killed, progress=False)
    assert trained_epochs == [1]
    # The resumed run ends exactly where the uninterrupted one did.
    assert killed["report"].read_bytes() == full["report"].read_bytes()
    assert killed["out"].read_bytes() == full["out"].read_bytes()
    assert killed["preview"].read_bytes() == full["preview"].read_bytes()


def test_checkpoint_from_other_params_is_refused(dataset: tuple[Path, Path], tmp_path: Path) -> None:
    train, val = dataset
    paths = _paths(tmp_path)
    train_sr.run(load_params(None, [*_overrides(), "sr.epochs=1"]), train, val, **paths, progress=False)
    with pytest.raises(SodError, match="differs in: lr"):
        train_sr.run(
            load_params(None, [*_overrides(), "sr.epochs=1", "sr.lr=0.01"]), train, val, **paths, progress=False
        )


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


def test_objects_sampling_without_small_objects_is_an_error() -> None:
    hr = torch.zeros(3, 16, 16, dtype=torch.uint8)
    im = SRImage(hr=hr, lr=make_lr(hr, 2), small_boxes_xyxy=torch.zeros(0, 4))
    with pytest.raises(SodError, match="no small object"):
        PatchDataset([im], patch=4, scale=2, objects=True, length=1)


def test_small_window_is_square_with_context_inside_the_shaved_image() -> None:
    # 10 px box near the corner: the 32 px minimum window, pushed inside the 2 px border.
    assert small_window([10, 10, 20, 20], 100, 100, 2) == (2, 2, 32)
    # 40 px wide box: side 40 + 2·8 = 56, centred at (70, 55) → left 42, top 27; left fits exactly (42 + 56 = 98).
    assert small_window([50, 50, 90, 60], 100, 100, 2) == (27, 42, 56)
    # An image smaller than the window: the side shrinks to the shaved height (20 − 2·2), centred at x = 22.5
    # → left 14.5 rounds to 14, then is pushed back to 30 − 2 − 16 = 12.
    assert small_window([20, 5, 25, 10], 20, 30, 2) == (2, 12, 16)


def test_lr_is_an_8bit_antialiased_downscale() -> None:
    hr = torch.zeros(3, 8, 8, dtype=torch.uint8)
    hr[:, :, ::2] = 255  # 1 px stripes: antialiasing averages them to grey instead of aliasing
    lr = make_lr(hr, 2)
    assert lr.dtype == torch.uint8 and lr.shape == (3, 4, 4)
    assert 100 < int(lr[0, 1, 1]) < 155
