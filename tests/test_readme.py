"""``sod readme``: the README's results and benchmark sections come from committed files only."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from bench._results import machine_info, row, write_result
from sod.cli import main
from sod.errors import DataError
from sod.readme import (
    _LARGE_METRICS,
    ablation_table,
    begin_marker,
    end_marker,
    fmt,
    fmt_sig,
    mean_std,
    render,
    render_benchmarks,
    render_large_images,
    render_results,
    update,
)

ROOT = Path(__file__).resolve().parents[1]
HEADER = (
    "variant,AP,AP50,AP_small,AP_medium,AP_large,sliced_AP,sliced_AP50,sliced_AP_small,sliced_AP_medium,sliced_AP_large"
)


def _readme(body: str = "old") -> str:
    return (
        "# title\n\nkept 0.123 before\n\n"
        f"{begin_marker('results')}\n{body}\n{end_marker('results')}\n\nmiddle\n\n"
        f"{begin_marker('benchmarks')}\n{body}\n{end_marker('benchmarks')}\n\nkept after\n"
        f"{begin_marker('large_images')}\n{body}\n{end_marker('large_images')}\n"
    )


def _repo(tmp_path: Path, ablation: str = HEADER + "\n") -> Path:
    """A repo root with the committed reports of this repo (copied) and the given ablation CSV."""
    (tmp_path / "reports").mkdir()
    for name in ("evaluate.json", "train_detector.json", "anchors.json", "train_sr.json", "augment.json"):
        shutil.copy(ROOT / "reports" / name, tmp_path / "reports" / name)
    (tmp_path / "reports" / "ablation.csv").write_text(ablation)
    (tmp_path / "bench").mkdir()
    (tmp_path / "bench" / "speed.py").write_text("")
    (tmp_path / "bench" / "_helper.py").write_text("")
    return tmp_path


# ------------------------------------------------------------------------------- the committed README itself
def test_committed_readme_matches_committed_files() -> None:
    """A stale README fails here: rerun `sod readme` after changing reports/ or bench/results/."""
    text = (ROOT / "README.md").read_text()
    assert update(text, render(ROOT)) == text, "README.md is stale: run `sod readme` and commit it"


def test_stale_number_is_detected_and_restored() -> None:
    text = (ROOT / "README.md").read_text()
    a, b = text.index(begin_marker("results")), text.index(end_marker("results"))
    section = text[a:b]
    assert "| full image |" in section
    # Change the first AP cell of the full-image row: the regenerated README differs and restores it.
    line = next(ln for ln in section.splitlines() if ln.startswith("| full image |"))
    stale = text.replace(line, line.replace("| full image | ", "| full image | 9", 1))
    assert stale != text
    assert update(stale, render(ROOT)) == text


# ----------------------------------------------------------------------------------------------- rendering
def test_results_section_takes_every_number_from_reports(tmp_path: Path) -> None:
    root = _repo(tmp_path)
    ev = json.loads((root / "reports" / "evaluate.json").read_text())
    ev["AP_small"], ev["sliced"]["AP_small"], ev["AP_t"] = 0.4567, 0.5678, 0.1234
    (root / "reports" / "evaluate.json").write_text(json.dumps(ev))
    out = render_results(root)
    full = next(ln for ln in out.splitlines() if ln.startswith("| full image |"))
    sliced = next(ln for ln in out.splitlines() if ln.startswith("| sliced"))
    assert full.split(" | ")[4] == "0.457" and full.split(" | ")[6] == "0.123"
    assert sliced.split(" | ")[4] == "0.568"
    assert "no ablation committed yet" in out


def test_missing_reports_render_as_not_measured(tmp_path: Path) -> None:
    out = render_results(tmp_path)
    assert "**Default pipeline**: not measured yet — run `dvc repro`" in out
    assert "**Ablation** (`reports/ablation.csv`, written by `python -m flows.ablation`): no ablation committed" in out
    assert not any(ch.isdigit() for ch in out.replace("reports/", "").replace("AR_", ""))


def test_undefined_metric_is_a_dash_not_zero(tmp_path: Path) -> None:
    root = _repo(tmp_path)
    ev = json.loads((root / "reports" / "evaluate.json").read_text())
    ev["AP_large"] = None
    (root / "reports" / "evaluate.json").write_text(json.dumps(ev))
    full = next(ln for ln in render_results(root).splitlines() if ln.startswith("| full image |"))
    # Columns: inference, AP, AP50, AP75, AP_small, AP_vt, AP_t, AP_medium, AP_large, AR.
    assert full.split(" | ")[8] == "—"


def test_ablation_mean_and_std_over_seeds(tmp_path: Path) -> None:
    csv_text = (
        "variant,anchors.method,train.seed,AP,AP_small\n"
        "baseline,default,0,0.1,0.010\n"
        "baseline,default,1,0.2,0.030\n"
        "pipeline,kmeans,0,0.3,0.100\n"
        "pipeline,kmeans,1,0.5,0.200\n"
        "pipeline,kmeans,2,0.4,0.300\n"
    )
    out = render_results(_repo(tmp_path, csv_text))
    lines = out.splitlines()
    assert (
        "| variant | seeds | changes against `pipeline` | AP | AP_small | AP_small against `pipeline` (2 std rule) |"
        in lines
    )
    # baseline: AP mean 0.15, sample std sqrt(0.005) = 0.0707; AP_small mean 0.02, std sqrt(0.0002) = 0.0141;
    # against pipeline's AP_small (mean 0.2, std 0.1): -0.18 is within 2 std = 0.2, on 2 of 3 seeds.
    assert (
        "| `baseline` | 0, 1 | `anchors.method=default` | 0.150 ± 0.071 | 0.020 ± 0.014 "
        "| -0.180, within 2 std on 2 seeds: more seeds needed |" in lines
    )
    # pipeline: AP 0.3/0.5/0.4 → mean 0.4, std 0.1; AP_small 0.1/0.2/0.3 → mean 0.2, std 0.1
    assert "| `pipeline` | 0, 1, 2 | `params.yaml` | 0.400 ± 0.100 | 0.200 ± 0.100 | — |" in lines


def test_ablation_single_seed_and_empty_cells() -> None:
    records = [
        {"variant": "pipeline", "detector.focal.gamma": "2.0", "AP": "0.3", "sliced_AP": ""},
        {"variant": "gamma_0", "detector.focal.gamma": "0.0", "AP": "0.25", "sliced_AP": ""},
    ]
    lines = ablation_table(records, ["variant", "detector.focal.gamma", "AP", "sliced_AP"])
    assert lines[0] == "| variant | seeds | changes against `pipeline` | AP | sliced_AP |"
    assert lines[2] == "| `pipeline` | 1 | `params.yaml` | 0.300 | — |"
    assert lines[3] == "| `gamma_0` | 1 | `detector.focal.gamma=0.0` | 0.250 | — |"


def test_ablation_with_a_bad_cell_is_a_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not a number"):
        render_results(_repo(tmp_path, "variant,AP\npipeline,abc\n"))


def test_formatting() -> None:
    assert fmt(0.0181988) == "0.018"
    assert fmt(None) == fmt(float("nan")) == "—"
    assert fmt_sig(137.4) == "137" and fmt_sig(5.151) == "5.15" and fmt_sig(0.03154) == "0.0315"
    assert fmt_sig(1234.5) == "1,234"
    assert mean_std([0.1, 0.3]) == "0.200 ± 0.141"  # sample std of two values: |a − b| / √2
    assert mean_std([None]) == "—"


def test_benchmarks_not_measured_and_measured(tmp_path: Path) -> None:
    root = _repo(tmp_path)
    out = render_benchmarks(root)
    assert "| `bench/speed.py` | not measured yet — run `python bench/speed.py` |" in out
    assert "_helper" not in out

    rows = [
        row("images/s", "images/s", 12.0, 4.0, target="≥ 10×", met=False),
        row("AP_small", "AP_small", 0.0315, 0.0315, target="within 0.01", met=True, ratio=None),
    ]
    assert rows[0]["ratio"] == 3.0
    write_result(
        "speed", rows, sod="sod's thing", peer="the peer", target="ratio ≥ 10×",
        machine=machine_info("cpu", threads=1), results_dir=root / "bench" / "results", argv=["--images", "8"],
    )  # fmt: skip
    written = json.loads((root / "bench" / "results" / "speed.json").read_text())
    assert written["command"] == "python bench/speed.py --images 8"
    assert written["machine"]["threads"] == 1 and written["machine"]["device"] == "cpu"
    assert {"cores", "torch", "date"} <= set(written["machine"]) | set(written)
    out = render_benchmarks(root)
    assert "| `bench/speed.py` | images/s | 12 images/s | 4 images/s | 3× | ≥ 10× | ✗ |" in out
    assert "|  | AP_small | 0.0315 AP_small | 0.0315 AP_small | — | within 0.01 | ✓ |" in out
    assert "sod = sod's thing; peer = the peer" in out


def test_bench_result_without_rows_is_a_data_error(tmp_path: Path) -> None:
    root = _repo(tmp_path)
    (root / "bench" / "results").mkdir()
    (root / "bench" / "results" / "speed.json").write_text('{"bench": "speed"}')
    with pytest.raises(DataError, match="speed.json: not a benchmark result"):
        render_benchmarks(root)


# --------------------------------------------------------------------------------------- markers and the CLI
def test_update_replaces_only_between_markers() -> None:
    new = update(_readme(), {"results": "R 1", "benchmarks": "B 2"})
    assert new == _readme().replace("old\n<!-- results:end", "R 1\n<!-- results:end").replace(
        "old\n<!-- benchmarks:end", "B 2\n<!-- benchmarks:end"
    )
    assert update(new, {"results": "R 1", "benchmarks": "B 2"}) == new  # idempotent


@pytest.mark.parametrize("broken", ["no markers", "<!-- results:end -->\n<!-- results:begin -->"])
def test_update_without_markers_is_a_data_error(broken: str) -> None:
    with pytest.raises(DataError, match="results:begin"):
        update(broken, {"results": "x"})


def test_cli_check_fails_on_stale_readme_then_writes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = _repo(tmp_path)
    readme = root / "README.md"
    readme.write_text(_readme())
    assert main(["readme", "--readme", str(readme), "--root", str(root), "--check"]) == 2
    assert "is stale" in capsys.readouterr().err
    assert readme.read_text() == _readme()  # --check never writes
    assert main(["readme", "--readme", str(readme), "--root", str(root)]) == 0
    assert "| full image |" in readme.read_text() and "kept 0.123 before" in readme.read_text()
    assert main(["readme", "--readme", str(readme), "--root", str(root), "--check"]) == 0


def test_cli_missing_readme_is_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["readme", "--readme", str(tmp_path / "nope.md"), "--root", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("sod readme: error:") and err.count("\n") == 1


def test_large_images_section_from_the_flows_result(tmp_path: Path) -> None:
    assert "Not measured yet" in render_large_images(tmp_path)
    ev = {"AP": 0.1, "AP_small": 0.02, "AP_vt": 0.0, "AP_t": 0.01, "images": 4, "gt_instances": 90}
    whole = {"wall_s": 600.0, "evaluate": {**ev, "sliced": {**ev, "AP_small": 0.05}}}
    tiles = {"wall_s": 660.0, "evaluate": {**ev, "AP_small": 0.03, "sliced": {**ev, "AP_small": 0.125}}}
    result = {"scene_px": 1280, "scenes": 16, "input_px": 320, "command": "python -m flows.large_images",
              "runs": {"whole": whole, "tiles": tiles}}  # fmt: skip
    path = tmp_path / "reports" / "large_images" / "results.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(result))
    rows = {
        ln.split(" | ")[0] + " | " + ln.split(" | ")[1]: ln.split(" | ")
        for ln in render_large_images(tmp_path).splitlines()
        if ln.startswith("| (")
    }
    small = 2 + _LARGE_METRICS.index("AP_small")
    assert [r[small] for r in rows.values()] == ["0.020", "0.050", "0.125", "0.030"]
    assert "11 min" in render_large_images(tmp_path)
    del result["runs"]["tiles"]
    path.write_text(json.dumps(result))
    with pytest.raises(DataError, match="missing 'tiles'"):
        render_large_images(tmp_path)
