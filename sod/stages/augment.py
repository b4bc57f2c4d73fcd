"""``sod augment``: more small objects in the training split, by copy-paste then oversampling.

Order: copy-paste first (:mod:`sod.data.copy_paste`), on the prepared images; then oversampling
(:mod:`sod.data.oversample`) of the result, so augmented images that hold small objects are repeated too.
The val split is never read.

Outputs (paths from the command line):
  * ``out_dir/train.json``: COCO; ``file_name`` relative to ``out_dir``. Original images are referenced
    where they lie (e.g. ``../prepared/images/train/000001.png``), repeats reference the same file as the
    image they repeat (``sod_repeat_of``), pasted images (``sod_copy_paste_of``) are new files
    ``out_dir/images/<id>.png``; pasted annotations carry ``sod_paste``. ``out_dir/.sod-owner`` marks the
    directory as this stage's, so a rerun may replace it.
  * ``report``: ``images_before``, ``images_after``, ``small_instances_before``, ``small_instances_after``,
    ``instances_before``, ``instances_after``, the copy-paste counts (``pastes_placed``,
    ``pastes_rejected`` by reason, ...) and the oversampling counts.
  * ``preview``: a PNG grid of augmented images, original boxes green, pasted boxes red.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from sod.config import Params
from sod.data.coco import image_path, load_coco_json
from sod.data.copy_paste import copy_paste
from sod.data.oversample import oversample
from sod.errors import ConfigError, DataError
from sod.io import check_owner, load_rgb, replace_dir, save_png, write_json

log = logging.getLogger(__name__)

_PREVIEW_TILE = 256  # px, long side of each preview image
_GREEN, _RED = (0, 220, 0), (255, 40, 40)


def run(
    params: Params, train_json: Path, out_dir: Path, report: Path, preview: Path, progress: bool = True
) -> dict[str, Any]:
    """Run the stage; returns the report dict (also written to ``report``).

    Raises:
        ConfigError: ``augment.copy_paste.margin`` leaves no room in some image.
        DataError: unreadable ``train_json``, or ``out_dir`` is neither new, empty nor a previous ``augment``
            output (its ``.sod-owner`` marker; see :func:`sod.io.replace_dir`).
    """
    cfg = params.augment
    cp = cfg.copy_paste
    train_json, out_dir = Path(train_json), Path(out_dir)
    coco = load_coco_json(train_json)
    if not coco["images"]:
        raise DataError(f"{train_json}: no images")
    if cp.times > 0:
        for im in coco["images"]:
            if 2 * cp.margin >= min(im["width"], im["height"]):
                raise ConfigError(
                    f"'augment.copy_paste.margin' = {cp.margin} leaves no room in image {im['id']} "
                    f"({im['width']}×{im['height']} px): it must be less than half the shorter side"
                )

    if out_dir.resolve() == train_json.parent.resolve():
        raise DataError(f"--out {out_dir} is the directory of --train {train_json}: choose another one")
    check_owner(out_dir, "augment", replace=True)  # before the work; replace_dir checks again

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:

        def load_image(im: dict[str, Any]) -> np.ndarray:
            """Pasted images from staging, the others from the prepared split (not yet rewritten)."""
            path = staging / im["file_name"] if "sod_copy_paste_of" in im else image_path(train_json, im["file_name"])
            try:
                return load_rgb(path)
            except OSError as exc:
                raise DataError(f"{train_json}: image {im['id']}: cannot read {path}: {exc}") from None

        def write_image(im: dict[str, Any], pixels: np.ndarray) -> str:
            name = f"images/{im['id']:08d}.png"
            save_png(staging / name, pixels)
            return name

        pasted, cp_stats = copy_paste(coco, load_image, write_image, cp, cfg.small_area, progress=progress)
        result, os_stats = oversample(
            pasted, cfg.oversample, cfg.small_area, cfg.oversample_ratio, cfg.repeat_thresh, cfg.seed
        )
        draw_preview(result, _preview_choice(result, cfg.preview_images), load_image, preview)
        # Original images stay where they are: reference them relative to out_dir (no pixel copies).
        rel_root = Path(os.path.relpath(os.path.abspath(train_json.parent), os.path.abspath(out_dir)))
        for im in result["images"]:
            if "sod_copy_paste_of" not in im:
                im["file_name"] = (rel_root / im["file_name"]).as_posix()
        write_json(staging / "train.json", result)
        replace_dir(staging, out_dir, "augment")
    finally:
        shutil.rmtree(staging, ignore_errors=True)

    def small(d: dict[str, Any]) -> int:
        return sum(a["area"] < cfg.small_area for a in d["annotations"])

    metrics: dict[str, Any] = {
        "images_before": len(coco["images"]),
        "images_after": len(result["images"]),
        "instances_before": len(coco["annotations"]),
        "instances_after": len(result["annotations"]),
        "small_instances_before": small(coco),
        "small_instances_after": small(result),
        "images_added_copy_paste": len(pasted["images"]) - len(coco["images"]),
        "copy_paste": {"mode": cp.mode, "source": cp.source, "times": cp.times, **cp_stats.as_dict()},
        "oversample": os_stats,
    }
    write_json(report, metrics)
    return metrics


def _preview_choice(coco: dict[str, Any], n: int) -> list[dict[str, Any]]:
    """The first ``n`` pasted images (not repeats); the first ``n`` images when nothing was pasted."""
    pasted = [im for im in coco["images"] if "sod_copy_paste_of" in im and "sod_repeat_of" not in im]
    return (pasted or coco["images"])[:n]


def draw_preview(coco: dict[str, Any], images: list[dict[str, Any]], load: Any, path: Path) -> None:
    """A grid (4 columns) of ``images`` with their boxes: original green, pasted (``sod_paste``) red.

    Args:
        coco: the COCO dict the images belong to.
        images: the image entries to draw; none gives a small blank PNG.
        load: image entry → ``(H, W, 3) uint8``.
        path: the PNG to write.
    """
    anns: dict[int, list[dict[str, Any]]] = {}
    for a in coco["annotations"]:
        anns.setdefault(a["image_id"], []).append(a)
    tiles = []
    for im in images:
        pil = Image.fromarray(load(im))
        s = _PREVIEW_TILE / max(pil.size)
        pil = pil.resize((max(1, round(pil.width * s)), max(1, round(pil.height * s))), Image.BILINEAR)
        draw = ImageDraw.Draw(pil)
        for a in anns.get(im["id"], []):
            x, y, w, h = (v * s for v in a["bbox"])
            draw.rectangle([x, y, x + w, y + h], outline=_RED if "sod_paste" in a else _GREEN, width=1)
        tiles.append(np.asarray(pil))
    cols = min(4, max(1, len(tiles)))
    rows = max(1, -(-len(tiles) // cols))
    grid = np.full((rows * (_PREVIEW_TILE + 4), cols * (_PREVIEW_TILE + 4), 3), 255, dtype=np.uint8)
    for i, t in enumerate(tiles):
        r, c = divmod(i, cols)
        grid[r * (_PREVIEW_TILE + 4) : r * (_PREVIEW_TILE + 4) + t.shape[0], c * (_PREVIEW_TILE + 4) :][
            :, : t.shape[1]
        ] = t
    save_png(path, grid)
