"""``bench/sliced.py``'s large-scene summary and rows, on hand-made timings (no detector, no SAHI), and the
README rows they become."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench._results import machine_info, write_result
from bench.sliced import Run, case_rows, large_scene_summary
from sod.readme import render_benchmarks


def _runs(small_ap_small: float | None) -> list[Run]:
    # 4 images: SAHI 8 s (0.5 images/s), SAHI with folded norms 5 s (0.8), sod all 4 s (1.0), sod small 1 s
    # (4.0 = 8× SAHI, 5× SAHI given the folded model).
    return [
        Run("sahi", 8.0, {"AP": 0.20, "AP_small": 0.30}, tiles=484),
        Run("sahi_folded", 5.0, {"AP": 0.20, "AP_small": 0.30}, tiles=484),
        Run("all", 4.0, {"AP": 0.21, "AP_small": 0.305}, tiles=484),
        Run("small", 1.0, {"AP": 0.19, "AP_small": small_ap_small}, tiles=40),
    ]


def test_large_scene_summary_meets_target_when_fast_and_ap_small_close() -> None:
    s = large_scene_summary(_runs(0.295), images=4, image_size=1280, tile_scale=1.0)
    assert s["ratio"] == pytest.approx(8.0)
    assert s["ratio_select_all"] == pytest.approx(2.0)
    assert s["ratio_vs_sahi_folded"] == pytest.approx(5.0) and s["sahi_folded_images_per_s"] == 0.8
    assert (s["sod_images_per_s"], s["sod_all_images_per_s"], s["sahi_images_per_s"]) == (4.0, 1.0, 0.5)
    assert s["tiles_per_image"] == {"sahi": 121.0, "all": 121.0, "small": 10.0}
    assert s["skip_cost"]["AP"] == pytest.approx(0.02)  # all 0.21 − small 0.19
    assert s["skip_cost"]["AP_small"] == pytest.approx(0.01)  # all 0.305 − small 0.295
    assert (s["sod_AP_small"], s["sahi_AP_small"]) == (0.295, 0.30)
    assert s["met"] is True  # 8× ≥ 3× and 0.295 ≥ 0.30 − 0.01
    # Above SAHI is no accuracy cost: 0.35 meets too.
    assert large_scene_summary(_runs(0.35), images=4, image_size=1280, tile_scale=1.0)["met"] is True


@pytest.mark.parametrize("ap_small", [0.28, None])
def test_large_scene_summary_fails_when_skipping_tiles_loses_ap_small(ap_small: float | None) -> None:
    s = large_scene_summary(_runs(ap_small), images=4, image_size=1280, tile_scale=1.0)
    assert s["ratio"] == pytest.approx(8.0)
    assert s["met"] is False


def test_case_rows_and_their_readme_rows(tmp_path: Path) -> None:
    rows = case_rows(_runs(0.28), images=4, prefix="1280 px scenes: ")
    by = {r["measure"]: r for r in rows}
    assert by["1280 px scenes: images/s, SAHI given the folded model"]["ratio"] == 1.6  # 0.8 / 0.5
    assert "1280 px scenes: AP_small, select=sahi_folded" not in by  # the peers get no sod rows
    assert by["1280 px scenes: images/s, select=all"]["met"] is False  # 1.0 < 3 × 0.5
    assert by["1280 px scenes: images/s, select=small"]["ratio"] == 8.0
    assert by["1280 px scenes: AP_small, select=all"]["met"] is True  # 0.305 ≥ 0.30 − 0.01
    assert by["1280 px scenes: AP_small, select=small"]["met"] is False  # 0.02 below
    assert by["1280 px scenes: tiles per image, select=small"]["sod"] == 10.0
    assert by["1280 px scenes: tiles per image, select=small"]["peer"] == 121.0

    root = tmp_path
    (root / "bench").mkdir()
    (root / "bench" / "sliced.py").write_text("")
    summary = large_scene_summary(_runs(0.28), images=4, image_size=1280, tile_scale=1.0)
    write_result(
        "sliced", rows, sod="sod", peer="SAHI", target="ratio ≥ 3×", machine=machine_info("cpu", threads=1),
        results_dir=root / "bench" / "results", argv=["--case", "large"], extra={"large_scene": summary},
    )  # fmt: skip
    written = json.loads((root / "bench" / "results" / "sliced.json").read_text())
    assert written["large_scene"]["ratio"] == 8.0 and written["large_scene"]["met"] is False
    out = render_benchmarks(root)
    first = "| `bench/sliced.py` | 1280 px scenes: images/s, SAHI given the folded model | 0.8 images/s | 0.5 images/s"
    first += " | 1.6× |"
    assert first in out
    assert "|  | 1280 px scenes: images/s, select=all | 1 images/s | 0.5 images/s | 2× | ≥ 3× | ✗ |" in out
    assert "|  | 1280 px scenes: images/s, select=small | 4 images/s | 0.5 images/s | 8× | ≥ 3× | ✓ |" in out
    assert "|  | 1280 px scenes: AP_small, select=small | 0.28 AP_small | 0.3 AP_small | — | ≥ peer − 0.01 | ✗ |" in out


def test_extra_entries_cannot_replace_the_format(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="rows"):
        write_result(
            "sliced", [], sod="s", peer="p", target="t", machine={}, results_dir=tmp_path, argv=[],
            extra={"rows": []},
        )  # fmt: skip
    assert not (tmp_path / "sliced.json").exists()
