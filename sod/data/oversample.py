"""Oversampling of images that hold small objects (Kisantal et al. 2019; LVIS repeat-factor sampling).

Two ways to decide how many times each image appears in the augmented training set:

* ``ratio``: every image holding at least one small object (``area < small_area``) appears ``r`` times,
  other images once. A fractional ``r`` gives ``floor(r)`` copies to each such image and one more copy
  to exactly ``round(frac(r) * n_small)`` of them, drawn without replacement by the seeded generator.
* ``repeat_factor``: the LVIS / Detectron2 rule applied to the small bucket. For class ``c``,
  ``f_c`` = fraction of images holding a small object of class ``c`` and ``r_c = max(1, sqrt(t / f_c))``;
  an image's factor is the largest ``r_c`` over the classes of its small objects (1 without any), and
  its copy count is ``floor(r) + Bernoulli(frac(r))`` (stochastic rounding, seeded).

Repeats reference the same image file: only new image and annotation records are made, marked with
``sod_repeat_of`` (the id of the image entry they repeat) so a user can trace them.
"""

from __future__ import annotations

import copy
import math
from collections import Counter
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

from sod.data.coco import is_crowd


def small_classes_per_image(coco: dict[str, Any], small_area: float) -> dict[int, set[int]]:
    """The category ids of the small objects (``area < small_area``) of every image.

    Args:
        coco: a COCO dict (``images``, ``annotations``).
        small_area: px²; COCO small is ``area < 32²``.

    Returns:
        ``{image_id: {category_id, ...}}`` for every image, an empty set where it holds no small object.
    """
    out: dict[int, set[int]] = {im["id"]: set() for im in coco["images"]}
    for ann in coco["annotations"]:
        if ann["area"] < small_area and not is_crowd(ann):  # a crowd/ignore region is no object
            out[ann["image_id"]].add(ann["category_id"])
    return out


def ratio_copies(has_small: Sequence[bool], ratio: float, rng: np.random.Generator) -> list[int]:
    """Copy counts (≥ 1, original included) for the ``ratio`` rule.

    Args:
        has_small: per image (in dataset order), whether it holds a small object.
        ratio: ``r ≥ 1``.
        rng: draws which small-object images get the extra copy of a fractional ``r``.

    Returns:
        Copies per image: 1 without a small object; ``floor(r)`` or ``floor(r) + 1`` with one, the
        ``+ 1`` given to exactly ``round(frac(r) * n_small)`` images.
    """
    base = math.floor(ratio)
    small_idx = np.flatnonzero(np.asarray(has_small, dtype=bool))
    n_extra = round((ratio - base) * len(small_idx))
    extra = set(rng.choice(small_idx, size=n_extra, replace=False).tolist()) if n_extra else set()
    return [(base + (i in extra)) if s else 1 for i, s in enumerate(has_small)]


def repeat_factors(small_classes: Sequence[set[int]], repeat_thresh: float) -> list[float]:
    """Per-image repeat factor of the ``repeat_factor`` rule (LVIS, restricted to small objects).

    Args:
        small_classes: per image, the category ids of its small objects.
        repeat_thresh: ``t`` in ``r_c = max(1, sqrt(t / f_c))``.

    Returns:
        ``r_i = max(r_c for c in small classes of i)``, 1.0 for images without a small object.
    """
    n = len(small_classes)
    freq = Counter(c for classes in small_classes for c in classes)
    r_class = {c: max(1.0, math.sqrt(repeat_thresh / (k / n))) for c, k in freq.items()}
    return [max((r_class[c] for c in classes), default=1.0) for classes in small_classes]


def stochastic_round(factors: Sequence[float], rng: np.random.Generator) -> list[int]:
    """``floor(r) + Bernoulli(r - floor(r))`` for each factor (its expectation is ``r``)."""
    u = rng.random(len(factors))
    return [math.floor(r) + int(u[i] < r - math.floor(r)) for i, r in enumerate(factors)]


def oversample(
    coco: dict[str, Any],
    method: Literal["none", "ratio", "repeat_factor"],
    small_area: float,
    ratio: float,
    repeat_thresh: float,
    seed: int,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Repeat images of ``coco`` by the chosen rule.

    Args:
        coco: a COCO dict; not modified.
        method: ``none`` returns a copy of the input; ``ratio`` or ``repeat_factor`` (module docstring).
        small_area: px²; an object is small when ``area < small_area``.
        ratio: ``augment.oversample_ratio`` (``ratio`` rule).
        repeat_thresh: ``augment.repeat_thresh`` (``repeat_factor`` rule).
        seed: seeds the draws; same seed → same output.

    Returns:
        ``(coco_out, stats)``. ``coco_out`` holds the input images and annotations unchanged and in
        order, then the repeats: for each input image in order, its extra copies, each a new image id
        (after the largest id in use) with ``sod_repeat_of`` = the repeated image's id, and copies of its
        annotations with new annotation ids. ``stats``: ``method``, ``small_images`` (input images holding
        a small object), ``repeats_added`` (new image entries).
    """
    out = copy.deepcopy(coco)
    small = small_classes_per_image(coco, small_area)
    per_image = [small[im["id"]] for im in coco["images"]]
    stats = {"method": method, "small_images": sum(bool(s) for s in per_image), "repeats_added": 0}
    if method == "none" or not coco["images"]:
        return out, stats
    rng = np.random.default_rng(seed)
    if method == "ratio":
        copies = ratio_copies([bool(s) for s in per_image], ratio, rng)
    else:
        copies = stochastic_round(repeat_factors(per_image, repeat_thresh), rng)

    anns_by_image: dict[int, list[dict[str, Any]]] = {}
    for ann in coco["annotations"]:
        anns_by_image.setdefault(ann["image_id"], []).append(ann)
    next_image_id = max(im["id"] for im in coco["images"]) + 1
    next_ann_id = max((a["id"] for a in coco["annotations"]), default=0) + 1
    for im, n in zip(coco["images"], copies, strict=True):
        for _ in range(n - 1):
            rep = {**copy.deepcopy(im), "id": next_image_id, "sod_repeat_of": im["id"]}
            out["images"].append(rep)
            for ann in anns_by_image.get(im["id"], []):
                out["annotations"].append({**copy.deepcopy(ann), "id": next_ann_id, "image_id": next_image_id})
                next_ann_id += 1
            next_image_id += 1
            stats["repeats_added"] += 1
    return out, stats
