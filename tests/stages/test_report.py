"""`sod report`: the ablation table and figures from hand-made variant results."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from sod.cli import main
from sod.config import Params
from sod.errors import DataError
from sod.io import OWNER_MARKER, read_json, write_json, write_owner_marker
from sod.stages import report
from sod.stages.report import effect_verdict, within_noise

PIPELINE = {"augment.oversample": "ratio", "augment.oversample_ratio": 2.0, "detector.focal.gamma": 2.0, "x": 1}


def _write(runs: Path, name: str, params: dict[str, Any], ap_small: float, sliced: bool = True) -> None:
    ev: dict[str, Any] = {"AP": 0.3, "AP50": 0.5, "AP_small": ap_small, "AP_medium": 0.4, "AP_large": None}
    if sliced:
        ev["sliced"] = {**ev, "AP_small": ap_small + 0.1}
    write_json(runs / f"{name}.json", {"variant": name, "changed": {}, "params": params, "evaluate": ev})


@pytest.fixture
def runs(tmp_path: Path) -> Path:
    d = tmp_path / "runs"
    _write(d, "pipeline", PIPELINE, 0.2)
    _write(d, "baseline", {**PIPELINE, "augment.oversample": "none", "detector.focal.gamma": 0.0}, 0.05, sliced=False)
    _write(d, "a_ratio_4", {**PIPELINE, "augment.oversample_ratio": 4.0}, 0.25)
    _write(d, "b_none", {**PIPELINE, "augment.oversample": "none"}, 0.15)
    _write(d, "c_gamma_0", {**PIPELINE, "detector.focal.gamma": 0.0}, 0.1)
    return d


def test_table_has_references_first_and_only_varying_params(runs: Path) -> None:
    table = report.build_table(report.load_runs(runs))
    assert list(table["variant"]) == ["baseline", "pipeline", "a_ratio_4", "b_none", "c_gamma_0"]
    assert list(table.columns) == [
        "variant", "augment.oversample", "augment.oversample_ratio", "detector.focal.gamma", *report.COLUMNS
    ]  # fmt: skip
    base = table.iloc[0]
    assert base["detector.focal.gamma"] == 0.0 and base["AP_small"] == 0.05
    assert pd.isna(base["sliced_AP_small"]) and pd.isna(base["AP_large"])
    assert table.iloc[1]["sliced_AP_small"] == pytest.approx(0.3)


def test_sweep_keeps_variants_that_change_only_that_lever(runs: Path) -> None:
    loaded = report.load_runs(runs)
    over = report.sweep_points(loaded, "oversampling")
    # baseline changes gamma too, so it is not on the oversampling curve; "none" is ratio 1.
    assert list(over["variant"]) == ["b_none", "pipeline", "a_ratio_4"] and list(over["x"]) == [1.0, 2.0, 4.0]
    gamma = report.sweep_points(loaded, "focal_gamma")
    assert list(gamma["variant"]) == ["c_gamma_0", "pipeline"]
    assert report.sweep_points(loaded, "anchors")["variant"].tolist() == ["pipeline"]


def test_run_writes_table_and_figures_of_levers_with_two_values(runs: Path, tmp_path: Path) -> None:
    plots = tmp_path / "plots"
    plots.mkdir()
    (plots / "ap_vs_anchors.png").write_bytes(b"stale")  # a figure of a previous run's grid ...
    write_owner_marker(plots, "report", ["ap_vs_anchors.png"])  # ... which its marker lists
    (plots / "my_figure.png").write_bytes(b"the user's")  # put there by hand since
    out = report.run(Params(), runs, tmp_path / "ablation.csv", plots)
    figures = ["ap_vs_oversampling.png", "ap_vs_focal_gamma.png", "full_vs_sliced.png"]
    assert out == {"variants": 5, "rows": 5, "figures": figures}
    assert sorted(p.name for p in plots.iterdir()) == sorted([*out["figures"], OWNER_MARKER, "my_figure.png"])
    assert (plots / "my_figure.png").read_bytes() == b"the user's"
    assert read_json(plots / OWNER_MARKER) == {"stage": "report", "files": sorted(out["figures"])}
    assert len(pd.read_csv(tmp_path / "ablation.csv")) == 5


def test_a_users_plots_dir_is_refused_and_kept(runs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plots = tmp_path / "reports" / "plots" / "ablation"
    plots.mkdir(parents=True)
    (plots / "ap_vs_anchors.png").write_bytes(b"the user's")  # a sod-like name, but no marker: not sod's
    argv = ["report", "--params", str(tmp_path / "p.yaml"), "-q", "--runs", str(runs)]
    argv += ["--table", str(tmp_path / "ablation.csv"), "--plots-dir", str(plots)]
    (tmp_path / "p.yaml").write_text("{}\n")
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(plots) in err and "ap_vs_anchors.png" in err
    assert [p.name for p in plots.iterdir()] == ["ap_vs_anchors.png"]
    assert (plots / "ap_vs_anchors.png").read_bytes() == b"the user's"
    assert not (tmp_path / "ablation.csv").exists()  # refused before anything was written


def test_a_foreign_file_is_named(tmp_path: Path) -> None:
    write_json(tmp_path / "x.json", {"variant": "x"})
    with pytest.raises(DataError, match=r"x\.json: not an ablation variant result \(missing params, evaluate\)"):
        report.load_runs(tmp_path)


def test_input_upscale_sweep_in_front_end_order(tmp_path: Path) -> None:
    base = {**PIPELINE, "detector.input_upscale": "none", "detector.sr_finetune": False, "evaluate.sliced.upscale": 2.0}
    up = {"evaluate.sliced.upscale": 1.0}  # the front end upscales tiles itself
    _write(tmp_path, "pipeline", base, 0.2)
    _write(tmp_path, "in_sr_ft", {**base, **up, "detector.input_upscale": "sr", "detector.sr_finetune": True}, 0.3)
    _write(tmp_path, "in_sr", {**base, **up, "detector.input_upscale": "sr"}, 0.28)
    _write(tmp_path, "in_bicubic", {**base, **up, "detector.input_upscale": "bicubic"}, 0.25)
    _write(tmp_path, "gamma_0", {**base, "detector.focal.gamma": 0.0}, 0.1)
    points = report.sweep_points(report.load_runs(tmp_path), "input_upscale")
    assert list(points["x"]) == ["none", "bicubic", "sr", "sr+finetune"]
    assert list(points["AP_small"]) == [0.2, 0.25, 0.28, 0.3]


def test_anchor_and_assigner_points_name_the_other_params_they_change(tmp_path: Path) -> None:
    base = {
        **PIPELINE,
        "anchors.method": "default",
        "anchors.anchors_per_level": 9,
        "detector.assigner": "iou",
        "detector.fg_iou_thresh": 0.4,
        "detector.bg_iou_thresh": 0.3,
    }
    _write(tmp_path, "pipeline", base, 0.2)
    _write(tmp_path, "km9", {**base, "anchors.method": "kmeans"}, 0.21)
    _write(tmp_path, "km3", {**base, "anchors.method": "kmeans", "anchors.anchors_per_level": 3}, 0.22)
    _write(tmp_path, "atss", {**base, "detector.assigner": "atss"}, 0.23)
    _write(tmp_path, "iou54", {**base, "detector.fg_iou_thresh": 0.5, "detector.bg_iou_thresh": 0.4}, 0.24)
    runs = report.load_runs(tmp_path)
    anchors = report.sweep_points(runs, "anchors")
    # Two k-means fits with other anchor counts are two points, not one label twice.
    assert list(anchors["x"]) == ["default", "kmeans 3/level", "kmeans 9/level"]
    assert list(anchors["variant"]) == ["pipeline", "km3", "km9"]
    assigner = report.sweep_points(runs, "assigner")
    assert list(assigner["x"]) == ["atss", "iou 0.4/0.3", "iou 0.5/0.4"]
    assert list(assigner["AP_small"]) == [0.23, 0.2, 0.24]


def _write_seed(runs: Path, name: str, params: dict[str, Any], seed: int, ap_small: float) -> None:
    ev = {"AP": 0.3, "AP50": 0.5, "AP_small": ap_small, "AP_medium": 0.4, "AP_large": 0.5}
    write_json(
        runs / f"{name}.seed{seed}.json",
        {"variant": name, "seed": seed, "changed": {}, "params": {**params, "train.seed": seed}, "evaluate": ev},
    )


def test_seeds_are_rows_of_one_variant_and_one_point_of_a_sweep(tmp_path: Path) -> None:
    for seed, ap in ((1, 0.22), (0, 0.18)):
        _write_seed(tmp_path, "pipeline", PIPELINE, seed, ap)
    for seed, ap in ((0, 0.10), (1, 0.14), (2, 0.12)):
        _write_seed(tmp_path, "gamma_0", {**PIPELINE, "detector.focal.gamma": 0.0}, seed, ap)
    runs = report.load_runs(tmp_path)
    table = report.build_table(runs)
    assert list(zip(table["variant"], table["train.seed"], strict=True)) == [
        ("pipeline", 0), ("pipeline", 1), ("gamma_0", 0), ("gamma_0", 1), ("gamma_0", 2)
    ]  # fmt: skip
    # The seed is not a lever: gamma_0's three seeds are one point, pipeline's two another.
    points = report.sweep_points(runs, "focal_gamma").set_index("variant")
    assert points.loc["gamma_0", "seeds"] == 3 and points.loc["pipeline", "seeds"] == 2
    assert points.loc["gamma_0", "AP_small"] == pytest.approx(0.12)  # (0.10 + 0.14 + 0.12) / 3
    assert points.loc["gamma_0", "AP_small_std"] == pytest.approx(0.02)  # sample std of 0.10, 0.14, 0.12
    assert points.loc["pipeline", "AP_small"] == pytest.approx(0.20)
    assert points.loc["pipeline", "AP_small_std"] == pytest.approx(0.04 / 2**0.5)  # |0.22 - 0.18| / sqrt(2)
    assert list(points["x"]) == [0.0, 2.0]
    out = report.run(Params(), tmp_path, tmp_path / "t.csv", tmp_path / "plots")
    assert out == {"variants": 2, "rows": 5, "figures": ["ap_vs_focal_gamma.png", "full_vs_sliced.png"]}


def test_within_noise_compares_with_two_sample_stds() -> None:
    # pipeline seeds 0.10, 0.12, 0.14: mean 0.12, sample std 0.02, so 2 std = 0.04.
    pipeline = [0.10, 0.12, 0.14]
    assert within_noise(0.155, pipeline) and within_noise(0.085, pipeline)
    assert not within_noise(0.165, pipeline) and not within_noise(0.075, pipeline)
    assert within_noise(0.5, [0.1])  # one seed: no spread to compare with, so more seeds are needed
    assert within_noise(None, pipeline)


def test_effect_verdict_words_the_two_std_rule() -> None:
    # pipeline seeds 0.10, 0.12, 0.14: mean 0.12, sample std 0.02, so an effect must exceed 0.04.
    pipeline = [0.10, 0.12, 0.14]
    assert effect_verdict([0.05], pipeline) == "-0.070, beyond 2 std (1 seed)"
    assert effect_verdict([0.13], pipeline) == "+0.010, within 2 std on 1 seed: more seeds needed"
    assert effect_verdict([0.11, 0.12, 0.13], pipeline) == "no measurable effect (+0.000)"
    # 0.20-0.22 against 0.10-0.14: mean +0.09 and no seed of one inside the other's range.
    assert effect_verdict([0.20, 0.21, 0.22], pipeline) == "+0.090, beyond 2 std, seed ranges apart"
    # mean 0.07 (-0.05, beyond 0.04) but the 0.13 seed lies inside the pipeline's range.
    assert effect_verdict([0.03, 0.05, 0.13], pipeline) == "-0.050, beyond 2 std but seed ranges overlap"
    assert effect_verdict([0.2], [0.1]) == "+0.100 (`pipeline` has one seed: no spread)"
    assert effect_verdict([], pipeline) == "—"
