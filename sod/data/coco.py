"""COCO input: load, validate every record, clean what can be cleaned (and count it), write sod's layout.

What is an error (DataError naming the record) and what is a counted cleaning step:

================================================  =====================================================
input                                             outcome
================================================  =====================================================
JSON that does not parse, missing top-level list  error
record missing a required field / wrong type      error (names the record and the field)
duplicate image, annotation or category id        error
annotation whose image_id is not an image         error
annotation with an unknown category_id            error
``file_name`` absolute or escaping the image root error (path traversal)
missing or unreadable image file                  ``prepare.on_bad_image``: error, or skip (counted)
width/height that disagree with the file          fixed from the file (counted)
grayscale / RGBA / palette / 16-bit / CMYK image  converted to 8-bit RGB (counted by kind)
box partly outside the image                      clipped to the image (counted)
box with zero or negative width/height            dropped (counted)
box entirely outside the image                    dropped (counted)
box thinner than ``prepare.min_box_side`` px      dropped as sub-pixel (counted)
malformed segmentation polygon                    segmentation removed, box kept (counted)
================================================  =====================================================

sod's own COCO files (``data/prepared/*.json`` and later stages) hold 8-bit RGB images whose
``file_name`` is relative to the directory that holds the JSON file; see :func:`image_path`.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError
from pycocotools import mask as mask_utils

from sod.errors import DataError
from sod.io import image_pixel_limit, open_image

# Modes PIL opens for the image kinds we convert, mapped to the name we count them under.
_MODE_KIND = {
    "L": "grayscale",
    "LA": "grayscale",
    "1": "grayscale",
    "RGBA": "rgba",
    "P": "palette",
    "PA": "palette",
    "I;16": "16bit",
    "I;16B": "16bit",
    "I;16L": "16bit",
    "I": "16bit",
    "F": "16bit",
    "CMYK": "cmyk",
    "YCbCr": "ycbcr",
}
# Files in these formats and mode RGB are copied byte for byte; anything else is re-encoded as PNG.
_COPY_FORMATS = {"PNG", "JPEG"}


def image_path(json_path: str | Path, file_name: str) -> Path:
    """Where a sod COCO file's image lies: ``file_name`` is relative to the JSON file's directory."""
    return Path(json_path).parent / file_name


@dataclass
class CleaningCounts:
    """What validation fixed or dropped; every field lands in ``reports/prepare.json``."""

    boxes_clipped: int = 0
    boxes_dropped_degenerate: int = 0  # zero or negative width/height as given
    boxes_dropped_outside: int = 0  # no overlap with the image at all
    boxes_dropped_subpixel: int = 0  # thinner than prepare.min_box_side after clipping
    segmentations_dropped: int = 0
    images_skipped_missing: int = 0
    images_skipped_corrupt: int = 0
    images_skipped_too_large: int = 0  # over prepare.max_pixels, else PIL's decompression-bomb limit
    annotations_dropped_with_skipped_images: int = 0
    images_size_fixed: int = 0
    images_converted: dict[str, int] = field(default_factory=dict)  # kind -> count
    ignore_regions: int = 0  # boxes of data.coco.ignore_category, made iscrowd regions of every category

    def add(self, other: CleaningCounts) -> CleaningCounts:
        out = CleaningCounts()
        for name in self.__dataclass_fields__:
            a, b = getattr(self, name), getattr(other, name)
            setattr(out, name, dict(Counter(a) + Counter(b)) if isinstance(a, dict) else a + b)
        return out

    def as_dict(self) -> dict[str, Any]:
        d = {name: getattr(self, name) for name in self.__dataclass_fields__}
        d["images_converted"] = dict(sorted(self.images_converted.items()))
        d["images_converted_total"] = sum(self.images_converted.values())
        return d


@dataclass
class CleanImage:
    """One validated image: where it is, how to write it, and its cleaned annotations."""

    id: int
    src: Path  # the file in the user's image root
    rel: PurePosixPath  # normalised file_name under the image root
    width: int
    height: int
    convert: str | None  # None: copy bytes; otherwise the kind converted to 8-bit RGB PNG
    annotations: list[dict[str, Any]]


@dataclass
class CleanDataset:
    categories: list[dict[str, Any]]
    images: list[CleanImage]
    counts: CleaningCounts


def is_crowd(ann: dict[str, Any]) -> bool:
    """A crowd/ignore region (``iscrowd: 1``): no object to learn, find, paste or fit anchors to."""
    return ann.get("iscrowd") in (1, True)


def apply_ignore_category(datasets: list[CleanDataset], name: str) -> list[CleanDataset]:
    """Turn category ``name`` (e.g. VisDrone's "ignored regions") into ignore regions of every other category.

    pycocotools ignores a detection that lies mostly inside an ``iscrowd: 1`` box of *its own* category
    (crowd IoU = intersection / detection area), so each box of ``name`` becomes one ``iscrowd: 1`` annotation
    per remaining category, same box, new ids (after every id in ``datasets``): detections of any class
    inside it are neither true nor false positives. ``name`` leaves ``categories``; training leaves crowd
    regions out of its targets (:mod:`sod.data.dataset`). Counted as ``ignore_regions`` (boxes, not copies).

    Raises:
        DataError: no category of that name, or it is the only one.
    """
    cats = datasets[0].categories
    ignored = [c for c in cats if c["name"] == name]
    if not ignored:
        raise DataError(
            f"data.coco.ignore_category {name!r} is not a category name (names: {', '.join(c['name'] for c in cats)})"
        )
    keep = [c for c in cats if c["name"] != name]
    if not keep:
        raise DataError(f"data.coco.ignore_category {name!r} is the only category: nothing left to detect")
    cid = ignored[0]["id"]
    next_id = 1 + max((a["id"] for ds in datasets for im in ds.images for a in im.annotations), default=0)
    out = []
    for ds in datasets:
        counts = replace(ds.counts)
        images = []
        for im in ds.images:
            anns = []
            for a in im.annotations:
                if a["category_id"] != cid:
                    anns.append(a)
                    continue
                counts.ignore_regions += 1
                region = {k: v for k, v in a.items() if k != "segmentation"}
                for c in keep:
                    anns.append({**region, "id": next_id, "category_id": c["id"], "iscrowd": 1})
                    next_id += 1
            images.append(CleanImage(im.id, im.src, im.rel, im.width, im.height, im.convert, anns))
        out.append(CleanDataset(keep, images, counts))
    return out


# ------------------------------------------------------------------------------------------- reading
def load_coco_json(path: str | Path) -> dict[str, Any]:
    """Read a COCO annotation file; malformed JSON or a missing top-level list is a DataError."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"annotation file not found: {path}")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    if not isinstance(raw, dict):
        raise DataError(f"{path}: expected a JSON object with 'images', 'annotations', 'categories'")
    for key in ("images", "annotations", "categories"):
        if key not in raw:
            raise DataError(f"{path}: missing required top-level field {key!r}")
        if not isinstance(raw[key], list):
            raise DataError(f"{path}: {key!r} must be a list, got {type(raw[key]).__name__}")
    return raw


def _require(record: Any, where: str, name: str, kinds: tuple[type, ...], source: Path) -> Any:
    if not isinstance(record, dict):
        raise DataError(f"{source}: {where} is not a JSON object")
    if name not in record:
        raise DataError(f"{source}: {where} is missing required field {name!r}")
    value = record[name]
    # bool is an int in Python, never a valid id or size here.
    if isinstance(value, bool) or not isinstance(value, kinds):
        want = " or ".join(k.__name__ for k in kinds)
        raise DataError(f"{source}: {where} field {name!r} must be {want}, got {value!r}")
    return value


def _label(kind: str, index: int, record: Any) -> str:
    rid = record.get("id") if isinstance(record, dict) else None
    return f"{kind}[{index}] (id={rid})" if rid is not None else f"{kind}[{index}]"


def safe_relative(file_name: str, root: Path, source: Path, where: str) -> PurePosixPath:
    """Normalise ``file_name`` under ``root``; reject absolute paths and anything escaping the root.

    Symlinks are resolved too, so a link inside the root that points outside it is refused.
    """
    if not file_name or "\x00" in file_name:
        raise DataError(f"{source}: {where} has an empty or invalid file_name {file_name!r}")
    if PurePosixPath(file_name).is_absolute() or PureWindowsPath(file_name).drive or file_name.startswith("\\"):
        raise DataError(
            f"{source}: {where} file_name {file_name!r} is absolute (path traversal); "
            "use a path relative to the image root"
        )
    norm = PurePosixPath(os.path.normpath(file_name.replace("\\", "/")))
    if norm.parts and norm.parts[0] == "..":
        raise DataError(f"{source}: {where} file_name {file_name!r} escapes the image root {root} (path traversal)")
    resolved = (root / norm).resolve()
    if not resolved.is_relative_to(root.resolve()):
        raise DataError(
            f"{source}: {where} file_name {file_name!r} resolves outside the image root {root} (path traversal)"
        )
    return norm


# ---------------------------------------------------------------------------------------- validation
def validate(
    raw: dict[str, Any],
    image_root: str | Path,
    source: str | Path,
    *,
    on_bad_image: str = "error",
    min_box_side: float = 1.0,
    categories: list[dict[str, Any]] | None = None,
) -> CleanDataset:
    """Validate a loaded COCO dict against its images and clean it.

    Args:
        raw: the parsed JSON (see :func:`load_coco_json`).
        image_root: directory that ``file_name`` is relative to.
        source: the annotation file, named in error messages.
        on_bad_image: "error" raises on a missing/corrupt image, "skip" drops it (and its annotations) and counts it.
        min_box_side: boxes narrower or shorter than this many pixels after clipping are dropped.
        categories: if given (the train split's), this split's categories must be the same set.

    Returns:
        A :class:`CleanDataset` whose boxes are COCO ``bbox_xywh`` in pixels, inside their image.
    """
    source = Path(source)
    root = Path(image_root)
    if not root.is_dir():
        raise DataError(f"image directory not found: {root} (for {source})")
    counts = CleaningCounts()

    cats: list[dict[str, Any]] = []
    cat_ids: set[int] = set()
    for i, c in enumerate(raw["categories"]):
        where = _label("categories", i, c)
        cid = _require(c, where, "id", (int,), source)
        name = _require(c, where, "name", (str,), source)
        if cid in cat_ids:
            raise DataError(f"{source}: {where}: duplicate category id {cid}")
        cat_ids.add(cid)
        cats.append({"id": cid, "name": name, "supercategory": str(c.get("supercategory", ""))})
    if not cats:
        raise DataError(f"{source}: 'categories' is empty")
    cats.sort(key=lambda c: c["id"])
    if categories is not None and [(c["id"], c["name"]) for c in cats] != [(c["id"], c["name"]) for c in categories]:
        raise DataError(
            f"{source}: categories differ from the train annotations' categories (ids and names must match)"
        )

    images: dict[int, dict[str, Any]] = {}
    for i, im in enumerate(raw["images"]):
        where = _label("images", i, im)
        iid = _require(im, where, "id", (int,), source)
        if iid in images:
            raise DataError(f"{source}: {where}: duplicate image id {iid}")
        file_name = _require(im, where, "file_name", (str,), source)
        width = _require(im, where, "width", (int,), source)
        height = _require(im, where, "height", (int,), source)
        if width <= 0 or height <= 0:
            raise DataError(f"{source}: {where}: width and height must be positive, got {width}×{height}")
        rel = safe_relative(file_name, root, source, where)
        images[iid] = {"id": iid, "rel": rel, "width": width, "height": height, "where": where}

    anns_by_image: dict[int, list[dict[str, Any]]] = {iid: [] for iid in images}
    ann_ids: set[int] = set()
    for i, a in enumerate(raw["annotations"]):
        where = _label("annotations", i, a)
        aid = _require(a, where, "id", (int,), source)
        if aid in ann_ids:
            raise DataError(f"{source}: {where}: duplicate annotation id {aid}")
        ann_ids.add(aid)
        iid = _require(a, where, "image_id", (int,), source)
        cid = _require(a, where, "category_id", (int,), source)
        bbox = _require(a, where, "bbox", (list,), source)
        if iid not in images:
            raise DataError(f"{source}: {where}: image_id {iid} is not in 'images'")
        if cid not in cat_ids:
            raise DataError(f"{source}: {where}: unknown category_id {cid} (known: {sorted(cat_ids)})")
        if len(bbox) != 4 or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in bbox):
            raise DataError(f"{source}: {where}: bbox must be 4 numbers [x, y, width, height], got {bbox!r}")
        if not all(math.isfinite(v) for v in bbox):
            raise DataError(f"{source}: {where}: bbox has a non-finite value {bbox!r}")
        anns_by_image[iid].append(a)

    clean: list[CleanImage] = []
    for iid in sorted(images):
        info = images[iid]
        checked = _check_image(root / info["rel"], info, source, on_bad_image, counts)
        if checked is None:
            counts.annotations_dropped_with_skipped_images += len(anns_by_image[iid])
            continue
        width, height, convert = checked
        anns = [
            ann
            for a in sorted(anns_by_image[iid], key=lambda a: a["id"])
            if (ann := _clean_annotation(a, width, height, min_box_side, counts)) is not None
        ]
        clean.append(CleanImage(iid, root / info["rel"], info["rel"], width, height, convert, anns))
    return CleanDataset(cats, clean, counts)


def _check_image(
    path: Path, info: dict[str, Any], source: Path, on_bad_image: str, counts: CleaningCounts
) -> tuple[int, int, str | None] | None:
    """Open the image fully; return (width, height, conversion kind or None), or None when skipped."""
    problem = None
    if not path.is_file():
        problem, counter = "is missing", "images_skipped_missing"
    else:
        try:
            with open_image(path) as im:
                im.load()  # decodes everything: catches truncated files that open() accepts
                width, height, mode, fmt = im.width, im.height, im.mode, im.format
        except Image.DecompressionBombError:
            # Over PIL's decompression-bomb guard (2 × MAX_IMAGE_PIXELS) or prepare.max_pixels: a named refusal,
            # not a traceback.
            problem = (
                f"has more than {image_pixel_limit():,} pixels (PIL's decompression-bomb limit, or "
                "prepare.max_pixels when set); raise prepare.max_pixels to read it, or cut it into smaller images"
            )
            counter = "images_skipped_too_large"
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
            problem, counter = f"cannot be read ({type(exc).__name__}: {exc})", "images_skipped_corrupt"
    if problem is not None:
        if on_bad_image == "error":
            raise DataError(
                f"{source}: {info['where']}: image file {path} {problem}; "
                "fix it or set prepare.on_bad_image=skip to drop such images"
            )
        setattr(counts, counter, getattr(counts, counter) + 1)
        return None
    if (width, height) != (info["width"], info["height"]):
        counts.images_size_fixed += 1
    convert = None
    if mode != "RGB":
        convert = _MODE_KIND.get(mode, mode.lower())
    elif fmt not in _COPY_FORMATS:
        convert = f"format_{str(fmt).lower()}"
    if convert is not None:
        counts.images_converted[convert] = counts.images_converted.get(convert, 0) + 1
    return width, height, convert


def _clean_annotation(
    a: dict[str, Any], width: int, height: int, min_side: float, counts: CleaningCounts
) -> dict[str, Any] | None:
    """Clip the box to the image; None when it must be dropped (the reason is counted)."""
    x, y, w, h = (float(v) for v in a["bbox"])
    if w <= 0 or h <= 0:
        counts.boxes_dropped_degenerate += 1
        return None
    x1, y1 = max(x, 0.0), max(y, 0.0)
    x2, y2 = min(x + w, float(width)), min(y + h, float(height))
    if x2 <= x1 or y2 <= y1:
        counts.boxes_dropped_outside += 1
        return None
    if (x1, y1, x2, y2) != (x, y, x + w, y + h):
        counts.boxes_clipped += 1
    bw, bh = x2 - x1, y2 - y1
    if bw < min_side or bh < min_side:
        counts.boxes_dropped_subpixel += 1
        return None
    out: dict[str, Any] = {
        "id": a["id"],
        "image_id": a["image_id"],
        "category_id": a["category_id"],
        "bbox": [x1, y1, bw, bh],
        "area": bw * bh,
        "iscrowd": 1 if a.get("iscrowd") in (1, True) else 0,
    }
    seg = a.get("segmentation")
    if seg:
        area = _segmentation_area(seg, width, height)
        if area is None or area <= 0:
            counts.segmentations_dropped += 1
        else:
            out["segmentation"] = seg
            # COCO buckets objects by this area, so it must match what pycocotools will compute.
            out["area"] = area
    return out


def _segmentation_area(seg: Any, width: int, height: int) -> float | None:
    """Area of a polygon list or RLE within the image, or None when it is malformed."""
    try:
        if isinstance(seg, list):
            if not all(
                isinstance(p, list) and len(p) >= 6 and len(p) % 2 == 0 and all(isinstance(v, int | float) for v in p)
                for p in seg
            ):
                return None
            rles = mask_utils.frPyObjects(seg, height, width)
            return float(mask_utils.area(mask_utils.merge(rles)))
        if isinstance(seg, dict) and "counts" in seg and "size" in seg:
            rle = mask_utils.frPyObjects(seg, height, width) if isinstance(seg["counts"], list) else seg
            return float(mask_utils.area(rle))
    except (TypeError, ValueError, KeyError):
        return None
    return None


# --------------------------------------------------------------------------------------------- writing
def to_rgb8(im: Image.Image) -> Image.Image:
    """Any PIL image as 8-bit RGB. 16-bit and float data are scaled to 0..255, alpha is dropped."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(im, dtype=np.float64)
        # 16-bit files hold 0..65535; 32-bit int/float ones are scaled by their own maximum.
        top = 65535.0 if im.mode.startswith("I;16") or arr.max() <= 65535 else float(arr.max())
        arr8 = np.clip(np.round(arr / max(top, 1.0) * 255.0), 0, 255).astype(np.uint8)
        return Image.fromarray(arr8).convert("RGB")
    if im.mode in ("P", "PA"):
        im = im.convert("RGBA")
    return im.convert("RGB")


def write_split(dataset: CleanDataset, images: list[CleanImage], out_dir: Path, split: str) -> dict[str, Any]:
    """Write a split's images under ``out_dir/images/<split>/`` and return its COCO dict.

    Images already 8-bit RGB PNG/JPEG are copied byte for byte; others are re-encoded as PNG.
    """
    coco_images, coco_anns = [], []
    written: dict[PurePosixPath, Path] = {}
    for im in images:
        rel = im.rel if im.convert is None else im.rel.with_suffix(".png")
        file_name = PurePosixPath("images", split, *rel.parts)
        if written.setdefault(file_name, im.src) != im.src:
            raise DataError(f"{im.src} and {written[file_name]} would both be written as {file_name}: rename one")
        dst = out_dir / file_name
        dst.parent.mkdir(parents=True, exist_ok=True)
        if im.convert is None:
            shutil.copyfile(im.src, dst)
        else:
            with Image.open(im.src) as pil:
                to_rgb8(pil).save(dst, format="PNG")
        coco_images.append({"id": im.id, "file_name": str(file_name), "width": im.width, "height": im.height})
        coco_anns.extend(im.annotations)
    return {"images": coco_images, "annotations": coco_anns, "categories": dataset.categories}
