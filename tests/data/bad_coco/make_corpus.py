"""Regenerate the bad-COCO corpus in this folder: ``python tests/data/bad_coco/make_corpus.py``.

One JSON file per bad-input case; tests/data/test_coco.py holds what each must produce. Every file
shares a base of two good images so that only the named defect differs.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).parent
IMAGES = HERE / "images"


def base() -> dict:
    return {
        "images": [
            {"id": 1, "file_name": "good.png", "width": 64, "height": 48},
            {"id": 2, "file_name": "good2.jpg", "width": 64, "height": 48},
        ],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 8, 6], "area": 48, "iscrowd": 0},
            {"id": 2, "image_id": 2, "category_id": 2, "bbox": [20, 5, 30, 30], "area": 900, "iscrowd": 0},
        ],
        "categories": [{"id": 1, "name": "car"}, {"id": 2, "name": "person"}],
    }


def with_image(file_name: str, width: int = 64, height: int = 48) -> dict:
    d = base()
    d["images"].append({"id": 3, "file_name": file_name, "width": width, "height": height})
    d["annotations"].append(
        {"id": 3, "image_id": 3, "category_id": 1, "bbox": [1, 1, 10, 10], "area": 100, "iscrowd": 0}
    )
    return d


def with_box(bbox: list) -> dict:
    d = base()
    d["annotations"].append({"id": 3, "image_id": 1, "category_id": 1, "bbox": bbox, "area": 1, "iscrowd": 0})
    return d


def make_images() -> None:
    IMAGES.mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(IMAGES / "good.png")
    Image.fromarray(rgb).save(IMAGES / "good2.jpg", quality=90)
    Image.fromarray(rgb[..., 0]).save(IMAGES / "gray.png")
    Image.fromarray(np.dstack([rgb, np.full((48, 64), 128, np.uint8)])).save(IMAGES / "rgba.png")
    Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=16).save(IMAGES / "palette.png")
    Image.fromarray(rgb[..., 0].astype(np.uint16) * 257).save(IMAGES / "gray16.png")
    # CMYK comes as JPEG (print workflows; PNG cannot hold CMYK). Pillow's RGB -> CMYK is C = 255 - R, ...,
    # K = 0, so the RGB pixels come back up to JPEG's loss.
    Image.fromarray(rgb).convert("CMYK").save(IMAGES / "cmyk.jpg", quality=95)
    # A PNG cut in half: PIL opens the header but fails to decode.
    full = (IMAGES / "good.png").read_bytes()
    (IMAGES / "corrupt.png").write_bytes(full[: len(full) // 2])
    (IMAGES / "not_an_image.png").write_text("this is text, not a PNG\n")


def cases() -> dict[str, dict | str]:
    c: dict[str, dict | str] = {}
    c["malformed_json"] = '{"images": [{"id": 1, "file_name": "good.png",'
    d = base()
    del d["annotations"]
    c["missing_annotations_list"] = d
    d = base()
    del d["annotations"][1]["bbox"]
    c["missing_bbox"] = d
    d = base()
    del d["images"][0]["file_name"]
    c["missing_file_name"] = d
    d = base()
    d["images"][0]["id"] = "1"
    c["string_image_id"] = d
    d = base()
    d["images"][1]["id"] = 1
    c["duplicate_image_id"] = d
    d = base()
    d["annotations"][1]["id"] = 1
    c["duplicate_annotation_id"] = d
    d = base()
    d["annotations"][1]["category_id"] = 7
    c["unknown_category"] = d
    d = base()
    d["annotations"][1]["image_id"] = 99
    c["unknown_image_id"] = d
    d = base()
    d["annotations"][1]["bbox"] = [1, 2, 3]
    c["short_bbox"] = d
    c["box_partly_outside"] = with_box([-5, 40, 20, 20])
    c["box_fully_outside"] = with_box([100, 100, 10, 10])
    c["box_zero_area"] = with_box([5, 5, 0, 10])
    c["box_negative_size"] = with_box([5, 5, 10, -3])
    c["box_subpixel"] = with_box([5, 5, 0.4, 12])
    c["traversal_dotdot"] = with_image("../../secret.png")
    c["traversal_absolute"] = with_image("/etc/passwd")
    c["traversal_windows_drive"] = with_image("C:\\Windows\\win.ini")
    c["missing_image_file"] = with_image("nowhere.png")
    c["corrupt_image_truncated"] = with_image("corrupt.png")
    c["corrupt_image_not_image"] = with_image("not_an_image.png")
    c["wrong_size_in_json"] = with_image("good.png", width=640, height=480)
    c["grayscale_image"] = with_image("gray.png")
    c["rgba_image"] = with_image("rgba.png")
    c["palette_image"] = with_image("palette.png")
    c["gray16_image"] = with_image("gray16.png")
    c["cmyk_image"] = with_image("cmyk.jpg")
    d = with_box([10, 10, 20, 20])
    d["annotations"][-1]["segmentation"] = [[10, 10, 30]]
    c["malformed_segmentation"] = d
    d = base()
    d["categories"].append({"id": 1, "name": "truck"})
    c["duplicate_category_id"] = d
    return c


def main() -> None:
    make_images()
    for name, content in cases().items():
        text = content if isinstance(content, str) else json.dumps(copy.deepcopy(content), indent=1)
        (HERE / f"{name}.json").write_text(text + "\n")


if __name__ == "__main__":
    main()
