"""Shared fixtures: ``tiny_coco`` writes a hand-specified sod COCO dataset (noise images) into a tmp dir."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from sod.io import save_png, write_json

# Non-contiguous category ids, so tests see the id ↔ label mapping at work.
CATEGORIES = [{"id": 3, "name": "a", "supercategory": "obj"}, {"id": 7, "name": "b", "supercategory": "obj"}]


def write_tiny_coco(root: Path, images: Sequence[dict[str, Any]]) -> Path:
    """Write ``root/train.json`` and ``root/images/train/NNN.png`` (random uint8 pixels, seeded by index).

    Args:
        root: the directory of the COCO file (like ``data/prepared``).
        images: one dict per image: ``size`` ``(w, h)``, ``boxes`` a list of ``(x, y, w, h, category_id)``,
            optional ``segs`` ``{box index: [polygon]}`` (COCO polygons, absolute px).

    Returns:
        The path of ``train.json``. Image ids are 1.., annotation ids 1.. in order; ``area = w * h``.
    """
    coco: dict[str, Any] = {"images": [], "annotations": [], "categories": CATEGORIES}
    for i, spec in enumerate(images):
        w, h = spec["size"]
        name = f"images/train/{i:03d}.png"
        save_png(root / name, np.random.default_rng(i).integers(0, 256, (h, w, 3), dtype=np.uint8))
        coco["images"].append({"id": i + 1, "file_name": name, "width": w, "height": h})
        for j, (x, y, bw, bh, cat) in enumerate(spec.get("boxes", [])):
            ann = {
                "id": len(coco["annotations"]) + 1,
                "image_id": i + 1,
                "category_id": cat,
                "bbox": [float(x), float(y), float(bw), float(bh)],
                "area": float(bw * bh),
                "iscrowd": 0,
            }
            if j in spec.get("segs", {}):
                ann["segmentation"] = spec["segs"][j]
            coco["annotations"].append(ann)
    path = root / "train.json"
    write_json(path, coco)
    return path


@pytest.fixture(autouse=True, scope="session")
def _mlflow_tracking_off() -> Iterator[None]:
    """Stages run by tests log nothing to MLflow (no mlflow.db in the repo); tracking tests turn it back on."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SOD_TRACKING", "off")
        yield


@pytest.fixture
def tiny_coco(tmp_path: Path) -> Callable[..., Path]:
    """``tiny_coco(images, name="prepared")`` → ``tmp_path/name/train.json`` (see :func:`write_tiny_coco`)."""

    def make(images: Sequence[dict[str, Any]], name: str = "prepared") -> Path:
        return write_tiny_coco(tmp_path / name, images)

    return make


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Run a test with one torch thread, restoring the previous count afterwards."""
    import torch

    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(prev)
