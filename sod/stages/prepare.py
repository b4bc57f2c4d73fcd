"""``sod prepare``: the dataset in (embedded or the user's COCO), validated, cleaned, split, described.

Outputs (paths from the command line):
  * ``out_dir/train.json``, ``out_dir/val.json``: COCO, ``file_name`` relative to ``out_dir``;
  * ``out_dir/images/{train,val}/...``: 8-bit RGB images;
  * ``out_dir/.sod-owner``: the marker that lets a rerun replace ``out_dir`` (see :func:`sod.io.replace_dir`);
  * ``out_dir/images/train_tiles/...``: tiles of the train images larger than ``prepare.slice.tile``, which
    ``train.json`` lists instead of those images (see :mod:`sod.data.slicing`);
  * ``report``: per split ``images``, ``instances``, ``frac_small/medium/large``, ``per_class``, under
    ``cleaning`` every validation count (see :mod:`sod.data.coco`) and under ``slicing`` what slicing did;
  * ``sizes_csv`` / ``sizes_png``: histogram of object sizes (sqrt of area) per split.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from sod.config import COCO_MEDIUM_AREA, COCO_SMALL_AREA, Params
from sod.data import coco
from sod.data.slicing import SliceCounts, write_tiles
from sod.errors import DataError
from sod.io import check_owner, replace_dir, save_figure, write_csv, write_json

log = logging.getLogger(__name__)

# Histogram bin edges for sqrt(area) in px: fine where small objects live, COCO's 32/96 px are edges.
SIZE_BINS = [0, 4, 8, 12, 16, 20, 24, 28, 32, 40, 48, 64, 80, 96, 128, 192, 256, 384, 512, 1024, np.inf]


def run(
    params: Params,
    out_dir: Path,
    report: Path,
    sizes_csv: Path,
    sizes_png: Path,
    progress: bool = True,
) -> dict[str, Any]:
    """Run the stage; returns the report dict (also written to ``report``).

    Raises:
        DataError: unusable input data, or ``out_dir`` is neither new, empty nor a previous ``prepare`` output.
    """
    pcfg = params.prepare
    check_owner(out_dir, "prepare", replace=True)  # before minutes of work; replace_dir checks again
    with tempfile.TemporaryDirectory(prefix="sod-prepare-") as tmp:
        if params.data.source == "embedded":
            from sod.data.embedded import build_embedded

            log.info("building the embedded dataset (%d scenes)", params.data.embedded.images)
            ann_path, img_root = build_embedded(params.data.embedded, Path(tmp) / "embedded", progress=progress)
            sources = [(ann_path, img_root)]
        else:
            c = params.data.coco
            sources = [(Path(c.train_annotations), Path(c.train_images))]
            if c.val_annotations is not None:
                sources.append((Path(c.val_annotations), Path(c.val_images)))

        datasets: list[coco.CleanDataset] = []
        for ann_path, img_root in sources:
            log.info("validating %s", ann_path)
            raw = coco.load_coco_json(ann_path)
            datasets.append(
                coco.validate(
                    raw,
                    img_root,
                    ann_path,
                    on_bad_image=pcfg.on_bad_image,
                    min_box_side=pcfg.min_box_side,
                    categories=datasets[0].categories if datasets else None,
                )
            )
        if params.data.source == "coco" and params.data.coco.ignore_category is not None:
            datasets = coco.apply_ignore_category(datasets, params.data.coco.ignore_category)
        for ds, (ann_path, _) in zip(datasets, sources, strict=True):
            if not ds.images:
                raise DataError(f"{ann_path}: no usable image left after validation")

        if len(datasets) == 2:
            splits = {"train": datasets[0].images, "val": datasets[1].images}
        else:
            splits = split_images(datasets[0].images, pcfg.val_fraction, pcfg.seed)
        # Sliced after the split, by source image, so no tile of a val image lands in train; val is never sliced.
        to_slice = [im for im in splits["train"] if pcfg.slice.enabled and max(im.width, im.height) > pcfg.slice.tile]
        if to_slice:
            sliced_ids = {im.id for im in to_slice}
            splits["train"] = [im for im in splits["train"] if im.id not in sliced_ids]

        # Write into a sibling staging dir, then swap it in: a killed run never leaves half a dataset.
        staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=_parent(out_dir)))
        try:
            cocos = {split: coco.write_split(datasets[0], images, staging, split) for split, images in splits.items()}
            slicing = SliceCounts(images_passed_through=len(splits["train"]))
            if to_slice:
                # Tiles are numbered after every id the input uses, so none collides with a val image's.
                next_image = 1 + max(im.id for ds in datasets for im in ds.images)
                next_ann = 1 + max((a["id"] for ds in datasets for im in ds.images for a in im.annotations), default=0)
                tile_images, tile_anns = write_tiles(
                    to_slice, staging, "train", pcfg.slice, pcfg.min_box_side, next_image, next_ann, slicing, progress
                )
                cocos["train"]["images"].extend(tile_images)
                cocos["train"]["annotations"].extend(tile_anns)
                if not cocos["train"]["images"]:
                    raise DataError(
                        f"no train image left after slicing ({slicing.empty_tiles_dropped} empty tiles dropped): "
                        "raise prepare.slice.keep_empty or prepare.slice.tile"
                    )
            for split, d in cocos.items():
                write_json(staging / f"{split}.json", d)
            replace_dir(staging, out_dir, "prepare")
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    counts = datasets[0].counts
    for ds in datasets[1:]:
        counts = counts.add(ds.counts)
    result: dict[str, Any] = {
        "source": params.data.source,
        "train": split_stats(cocos["train"]),
        "val": split_stats(cocos["val"]),
        "cleaning": counts.as_dict(),
        "slicing": slicing.as_dict(),
    }
    write_json(report, result)
    table = size_histogram(cocos)
    write_csv(sizes_csv, table)
    plot_size_histogram(cocos, sizes_png)
    return result


def split_images(images: list[coco.CleanImage], val_fraction: float, seed: int) -> dict[str, list[coco.CleanImage]]:
    """Deterministic random split by image: ``round(n * val_fraction)`` images (≥ 1 each side) go to val."""
    n = len(images)
    if n < 2:
        raise DataError(f"need at least 2 images to split train/val, found {n}")
    n_val = min(max(1, round(n * val_fraction)), n - 1)
    order = np.random.default_rng(seed).permutation(n)
    val_idx = set(order[:n_val].tolist())
    return {
        "train": [im for i, im in enumerate(images) if i not in val_idx],
        "val": [im for i, im in enumerate(images) if i in val_idx],
    }


def split_stats(d: dict[str, Any]) -> dict[str, Any]:
    """Image/instance counts, COCO size-bucket fractions (by ``area``) and per-class counts of a split.

    Crowd/ignore regions (``iscrowd: 1``) are no instances; they are counted as ``crowd_regions``.
    """
    objects = [a for a in d["annotations"] if not coco.is_crowd(a)]
    areas = np.array([a["area"] for a in objects], dtype=np.float64)
    n = len(areas)
    names = {c["id"]: c["name"] for c in d["categories"]}
    per_class = Counter(names[a["category_id"]] for a in objects)

    def frac(mask: np.ndarray) -> float:
        return round(float(mask.sum()) / n, 4) if n else 0.0

    return {
        "images": len(d["images"]),
        "instances": n,
        "frac_small": frac(areas < COCO_SMALL_AREA),
        "frac_medium": frac((areas >= COCO_SMALL_AREA) & (areas < COCO_MEDIUM_AREA)),
        "frac_large": frac(areas >= COCO_MEDIUM_AREA),
        "per_class": {c["name"]: per_class.get(c["name"], 0) for c in d["categories"]},
        "crowd_regions": len(d["annotations"]) - n,
    }


def size_histogram(cocos: dict[str, dict[str, Any]]) -> pd.DataFrame:
    """Instances per sqrt(area) bin and split: columns ``size_px`` (bin's lower edge), one per split."""
    table = pd.DataFrame({"size_px": SIZE_BINS[:-1]})
    for split, d in cocos.items():
        sizes = np.sqrt([a["area"] for a in d["annotations"] if not coco.is_crowd(a)])
        table[split] = np.histogram(sizes, bins=SIZE_BINS)[0]
    return table


def plot_size_histogram(cocos: dict[str, dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    bins = np.geomspace(2, 1024, 40)
    for split, d in cocos.items():
        sizes = np.sqrt([a["area"] for a in d["annotations"] if not coco.is_crowd(a)])
        ax.hist(np.clip(sizes, 2, 1024), bins=bins, alpha=0.6, label=f"{split} ({len(sizes)})")
    for edge, name in ((32, "small | medium"), (96, "medium | large")):
        ax.axvline(edge, color="k", ls="--", lw=1)
        ax.text(edge * 1.04, ax.get_ylim()[1] * 0.95, name, fontsize=8, va="top")
    ax.set_xscale("log")
    ax.set_xlabel("object size: sqrt(area) in px (COCO buckets at 32 and 96)")
    ax.set_ylabel("instances")
    ax.set_title("Object sizes per split")
    ax.legend()
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


def _parent(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.parent
