"""Oversampling: hand-counted copies for the ratio rule, the repeat-factor rule, ids and traceability."""

from __future__ import annotations

import copy
import math
from typing import Any

import numpy as np
import pytest

from sod.data.oversample import oversample, ratio_copies, repeat_factors, small_classes_per_image, stochastic_round


def _coco(boxes_per_image: list[list[tuple[float, float, int]]]) -> dict[str, Any]:
    """Images 10, 20, ...; each box given as ``(w, h, category_id)`` at (1, 1)."""
    coco: dict[str, Any] = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "a"}, {"id": 2}]}
    for i, boxes in enumerate(boxes_per_image):
        coco["images"].append({"id": 10 * (i + 1), "file_name": f"{i}.png", "width": 100, "height": 100})
        for w, h, cat in boxes:
            coco["annotations"].append(
                {
                    "id": 100 + len(coco["annotations"]),
                    "image_id": 10 * (i + 1),
                    "category_id": cat,
                    "bbox": [1.0, 1.0, w, h],
                    "area": w * h,
                    "iscrowd": 0,
                }
            )
    return coco


# image 10: one small (10×10); image 20: large only (40×40 = 1600 ≥ 1024); image 30: small (31×33 = 1023) + large
COCO3 = _coco([[(10, 10, 1)], [(40, 40, 1)], [(31, 33, 2), (50, 50, 1)]])


def test_small_classes_per_image_uses_strict_area_threshold() -> None:
    small = small_classes_per_image(COCO3, 1024)
    assert small == {10: {1}, 20: set(), 30: {2}}
    assert small_classes_per_image(COCO3, 1023)[30] == set()  # 1023 is not < 1023


def test_a_small_crowd_region_makes_no_small_object_image() -> None:
    crowd = _coco([[(10, 10, 1)], [(10, 10, 1), (40, 40, 2)]])
    crowd["annotations"][0]["iscrowd"] = 1  # image 10's only small box is a crowd/ignore region
    assert small_classes_per_image(crowd, 1024) == {10: set(), 20: {1}}


def test_ratio_two_doubles_exactly_the_small_object_images() -> None:
    out, stats = oversample(COCO3, "ratio", 1024, 2.0, 0.3, seed=0)
    assert out["images"][:3] == COCO3["images"] and out["annotations"][:4] == COCO3["annotations"]
    repeats = out["images"][3:]
    assert [r["sod_repeat_of"] for r in repeats] == [10, 30]
    assert [r["id"] for r in repeats] == [31, 32]  # after the largest id in use
    assert all(
        r["file_name"] == orig["file_name"]
        for r, orig in zip(repeats, [COCO3["images"][0], COCO3["images"][2]], strict=True)
    )
    # image 10's one annotation and image 30's two, copied with new ids 104, 105, 106
    new = out["annotations"][4:]
    assert [(a["id"], a["image_id"]) for a in new] == [(104, 31), (105, 32), (106, 32)]
    assert [a["bbox"] for a in new] == [[1.0, 1.0, 10, 10], [1.0, 1.0, 31, 33], [1.0, 1.0, 50, 50]]
    assert stats == {"method": "ratio", "small_images": 2, "repeats_added": 2}


@pytest.mark.parametrize(("method", "ratio"), [("none", 3.0), ("ratio", 1.0)])
def test_none_and_ratio_one_reproduce_the_input(method: str, ratio: float) -> None:
    before = copy.deepcopy(COCO3)
    out, stats = oversample(COCO3, method, 1024, ratio, 0.3, seed=0)
    assert out == COCO3 and before == COCO3  # equal output, input untouched
    assert stats["repeats_added"] == 0


def test_ratio_copies_by_hand() -> None:
    rng = np.random.default_rng(0)
    assert ratio_copies([True, False, True, True], 2.0, rng) == [2, 1, 2, 2]
    assert ratio_copies([True, False, True, True], 3.0, rng) == [3, 1, 3, 3]


def test_fractional_ratio_adds_exactly_round_frac_times_n_and_is_deterministic() -> None:
    has_small = [True] * 8 + [False] * 2
    a = ratio_copies(has_small, 1.5, np.random.default_rng(5))
    assert sum(c - 1 for c in a) == 4  # round(0.5 * 8) extra copies
    assert set(a[:8]) == {1, 2} and a[8:] == [1, 1]
    assert ratio_copies(has_small, 1.5, np.random.default_rng(5)) == a
    out1, _ = oversample(COCO3, "ratio", 1024, 1.5, 0.3, seed=1)
    out2, _ = oversample(COCO3, "ratio", 1024, 1.5, 0.3, seed=1)
    assert out1 == out2 and len(out1["images"]) == 4  # round(0.5 * 2) = 1 extra


def test_repeat_factors_favour_rarer_small_classes() -> None:
    # class 1 is small in all 4 images (f = 1), class 2 in 1 of 4 (f = 0.25); t = 0.5
    factors = repeat_factors([{1}, {1}, {1, 2}, {1}], 0.5)
    assert factors[0] == factors[1] == factors[3] == 1.0  # max(1, sqrt(0.5 / 1))
    assert factors[2] == pytest.approx(math.sqrt(2))  # sqrt(0.5 / 0.25)
    assert repeat_factors([set(), {1}], 0.5) == [1.0, 1.0]  # sqrt(0.5 / 0.5) = 1; no small object → 1


def test_stochastic_round_keeps_whole_factors_and_rounds_fractions_to_neighbours() -> None:
    counts = stochastic_round([1.0, 3.0, 2.5] * 200, np.random.default_rng(0))
    assert counts[0::3] == [1] * 200 and counts[1::3] == [3] * 200
    assert set(counts[2::3]) == {2, 3}
    assert np.mean(counts[2::3]) == pytest.approx(2.5, abs=0.1)  # 200 Bernoulli(0.5): sd of the mean 0.035


def test_repeat_factor_method_repeats_the_rare_class_image_most() -> None:
    # class 2 small only in image 30 (f = 1/4), class 1 small in 3 of 4 → with t = 1: r = 2 and sqrt(4/3)
    coco = _coco([[(10, 10, 1)], [(10, 10, 1)], [(10, 10, 2)], [(10, 10, 1)]])
    out, stats = oversample(coco, "repeat_factor", 1024, 2.0, 1.0, seed=0)
    per_orig = {im["id"]: 1 for im in coco["images"]}
    for im in out["images"][4:]:
        per_orig[im["sod_repeat_of"]] += 1
    assert per_orig[30] == 2  # r = 2 exactly: always 2 copies
    assert all(per_orig[i] in (1, 2) for i in (10, 20, 40))  # r = 1.155: 1 or 2
    assert stats["repeats_added"] == len(out["images"]) - 4


def test_oversampling_changes_the_share_of_small_object_images_the_sampler_draws() -> None:
    """Two of four images hold a small object. Ratio 3 gives 2 × 3 + 2 = 8 entries, 6 of them with a small
    object: whole passes of the epoch sampler draw small-object images 6/8 = 75 % of the time, against
    2/4 = 50 % without oversampling, at the same number of samples per epoch."""
    from sod.engine import EpochSampler

    coco = _coco([[(10, 10, 1)], [(40, 40, 1)], [(8, 8, 2)], [(60, 60, 2)]])

    def drawn_share(method: str) -> float:
        out, _ = oversample(coco, method, small_area=1024, ratio=3.0, repeat_thresh=0.3, seed=0)
        small = small_classes_per_image(out, 1024)
        ids = [im["id"] for im in out["images"]]
        draws = list(EpochSampler(len(ids), num_samples=48, seed=5))  # 48: whole passes over 4 and 8 entries
        return sum(bool(small[ids[i]]) for i in draws) / len(draws)

    assert drawn_share("none") == pytest.approx(2 / 4)
    assert drawn_share("ratio") == pytest.approx(6 / 8)
