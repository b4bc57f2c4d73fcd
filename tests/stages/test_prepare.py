"""`sod prepare` on a few tiny embedded scenes: outputs, statistics, determinism, overwrite safety."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pandas as pd
import pytest
from pycocotools.coco import COCO

from sod.cli import main
from sod.io import read_json

TINY = ["data.embedded.images=8", "data.embedded.image_size=128", "prepare.val_fraction=0.25"]


def _run(tmp_path: Path, out_name: str = "prepared", extra: list[str] | None = None) -> tuple[int, dict[str, Path]]:
    paths = {
        "out": tmp_path / out_name,
        "report": tmp_path / "reports" / f"{out_name}.json",
        "csv": tmp_path / "reports" / "plots" / f"{out_name}_sizes.csv",
        "png": tmp_path / "reports" / "plots" / f"{out_name}_sizes.png",
    }
    argv = [
        "prepare",
        "--params",
        str(Path(__file__).resolve().parents[2] / "params.yaml"),
        "-q",
        "--out",
        str(paths["out"]),
        "--report",
        str(paths["report"]),
        "--sizes-csv",
        str(paths["csv"]),
        "--sizes-png",
        str(paths["png"]),
    ]
    for s in TINY + (extra or []):
        argv += ["--set", s]
    return main(argv), paths


def _digest(paths: dict[str, Path]) -> dict[str, str]:
    root = paths["out"].parent
    files = [
        paths["report"],
        paths["csv"],
        paths["png"],
        *sorted(p for p in paths["out"].rglob("*") if p.is_file()),
    ]
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    code, paths = _run(tmp_path_factory.mktemp("prep"))
    assert code == 0
    return paths


def test_outputs_and_report(prepared: dict[str, Path]) -> None:
    out = prepared["out"]
    report = read_json(prepared["report"])
    assert report["train"]["images"] == 6 and report["val"]["images"] == 2
    for split in ("train", "val"):
        api = COCO(str(out / f"{split}.json"))
        imgs = api.loadImgs(api.getImgIds())
        assert len(imgs) == report[split]["images"]
        assert all((out / im["file_name"]).is_file() for im in imgs)
        assert all(im["file_name"].startswith(f"images/{split}/") for im in imgs)
        stats = report[split]
        assert stats["instances"] == len(api.getAnnIds())
        assert abs(stats["frac_small"] + stats["frac_medium"] + stats["frac_large"] - 1) < 1e-3
        assert sum(stats["per_class"].values()) == stats["instances"]
    # Train and val share no image.
    train_ids = {im["id"] for im in read_json(out / "train.json")["images"]}
    val_ids = {im["id"] for im in read_json(out / "val.json")["images"]}
    assert not train_ids & val_ids
    assert report["cleaning"]["images_converted_total"] == 0  # the embedded scenes are clean


def test_size_histogram_counts_every_instance(prepared: dict[str, Path]) -> None:
    table = pd.read_csv(prepared["csv"])
    report = read_json(prepared["report"])
    assert list(table.columns) == ["size_px", "train", "val"]
    assert table["train"].sum() == report["train"]["instances"]
    assert table["val"].sum() == report["val"]["instances"]
    assert prepared["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_two_runs_are_byte_identical(prepared: dict[str, Path], tmp_path: Path) -> None:
    code, again = _run(tmp_path)
    assert code == 0
    assert _digest(again) == _digest(prepared)


def test_rerun_replaces_its_own_output_but_not_a_foreign_dir(tmp_path: Path, capsys) -> None:
    assert _run(tmp_path)[0] == 0
    assert _run(tmp_path)[0] == 0  # a second run over its own output is fine
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("precious")
    code, _ = _run(tmp_path, out_name="mine")
    assert code == 2
    assert "thesis.tex" in capsys.readouterr().err
    assert (foreign / "thesis.tex").read_text() == "precious"


def test_help_explains_every_option(capsys) -> None:
    for argv in (["--help"], ["prepare", "--help"]):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 0
    text = capsys.readouterr().out
    for word in (
        "prepare",
        "augment",
        "anchors",
        "--params",
        "--set",
        "--out",
        "--report",
        "--sizes-csv",
        "--sizes-png",
    ):
        assert word in text
