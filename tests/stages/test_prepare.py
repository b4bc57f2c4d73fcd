"""`sod prepare` on a few tiny embedded scenes: outputs, statistics, determinism, overwrite safety."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from pycocotools.coco import COCO

from sod.cli import main
from sod.io import files_under, read_json, read_owner

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


def test_slicing_is_a_no_op_on_scenes_no_larger_than_the_tile(prepared: dict[str, Path], tmp_path: Path) -> None:
    """The embedded default's case (scenes smaller than prepare.slice.tile): the dataset is byte for byte the one
    prepare writes with slicing off, so enabling it reruns nothing downstream; only the report gains its counts."""
    code, off = _run(tmp_path, extra=["prepare.slice.enabled=false"])
    assert code == 0
    data = {k: v for k, v in _digest(prepared).items() if k.startswith("prepared/")}
    assert data and data == {k: v for k, v in _digest(off).items() if k.startswith("prepared/")}
    slicing = read_json(prepared["report"])["slicing"]
    assert slicing["images_passed_through"] == 6 and slicing["tiles_written"] == slicing["images_sliced"] == 0


def test_rerun_replaces_its_own_output_but_not_a_foreign_dir(tmp_path: Path, capsys) -> None:
    assert _run(tmp_path)[0] == 0
    out = tmp_path / "prepared"
    assert read_owner(out) == "prepare"
    code, _ = _run(tmp_path, extra=["prepare.val_fraction=0.5"])
    assert code == 0  # a second run over its own output replaces it
    assert len(read_json(out / "val.json")["images"]) == 4  # the new split, not the old one (2)
    assert read_json(out / ".sod-owner")["files"] == files_under(out)
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


def test_a_users_coco_folder_as_out_is_refused_and_kept(tmp_path: Path, capsys) -> None:
    # The reported data loss: an --out holding exactly images/ and train.json was deleted, images and all.
    user = tmp_path / "mycoco"
    (user / "images").mkdir(parents=True)
    (user / "images" / "0001.jpg").write_bytes(b"my photo")
    (user / "train.json").write_text('{"images": [], "annotations": [], "categories": []}')
    code, paths = _run(tmp_path, out_name="mycoco")
    assert code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(user) in err and "Traceback" not in err
    assert (user / "images" / "0001.jpg").read_bytes() == b"my photo"
    assert sorted(p.name for p in user.iterdir()) == ["images", "train.json"]
    assert not paths["report"].exists()  # refused before any work


def test_a_cmyk_jpeg_becomes_8bit_rgb_and_is_counted(tmp_path: Path) -> None:
    """The README's bad-input row "CMYK images: converted to 8-bit RGB PNG, counted in images_converted", on the
    corpus case tests/data/bad_coco/cmyk_image.json (two good images and a CMYK JPEG of good.png's pixels)."""
    corpus = Path(__file__).resolve().parents[1] / "data" / "bad_coco"
    code, paths = _run(
        tmp_path,
        extra=[
            "data.source=coco",
            f"data.coco.train_annotations={corpus / 'cmyk_image.json'}",
            f"data.coco.train_images={corpus / 'images'}",
        ],
    )
    assert code == 0
    report = read_json(paths["report"])
    assert report["cleaning"]["images_converted"] == {"cmyk": 1}
    assert report["cleaning"]["images_converted_total"] == 1
    cocos = [read_json(paths["out"] / f"{split}.json") for split in ("train", "val")]
    (entry,) = [im for d in cocos for im in d["images"] if im["id"] == 3]
    assert entry["file_name"].endswith("cmyk.png") and (entry["width"], entry["height"]) == (64, 48)
    with Image.open(paths["out"] / entry["file_name"]) as im:
        assert (im.format, im.mode, im.size) == ("PNG", "RGB", (64, 48))
        rgb = np.asarray(im)
    assert rgb.dtype == np.uint8
    # Its pixels are good.png's up to JPEG's loss at quality 95 (measured: mean 1.5, max 8); a CMYK file read
    # with inverted channels (the Adobe-marker mistake) would be off by about 127 on average.
    with Image.open(corpus / "images" / "good.png") as im:
        diff = np.abs(rgb.astype(int) - np.asarray(im).astype(int))
    assert diff.mean() < 3 and diff.max() <= 24


def test_an_ignore_category_becomes_crowd_regions_that_pycocotools_ignores(tmp_path: Path) -> None:
    """data.coco.ignore_category: the category leaves `categories`; its box becomes an iscrowd region of each
    other category, so a detection of any class inside it is neither TP nor FP (pycocotools' crowd rule)."""
    from pycocotools.cocoeval import COCOeval

    root = tmp_path / "raw"
    (root / "images").mkdir(parents=True)
    for name in ("a.png", "b.png"):
        Image.new("RGB", (100, 100), (120, 120, 120)).save(root / "images" / name)
    data = {
        "images": [
            {"id": 1, "file_name": "a.png", "width": 100, "height": 100},
            {"id": 2, "file_name": "b.png", "width": 100, "height": 100},
        ],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 20, 20]},
            {"id": 2, "image_id": 2, "category_id": 2, "bbox": [10, 10, 20, 20]},
            {"id": 7, "image_id": 2, "category_id": 9, "bbox": [50, 50, 40, 40]},  # the ignored region
        ],
        "categories": [{"id": 1, "name": "car"}, {"id": 2, "name": "van"}, {"id": 9, "name": "ignored regions"}],
    }
    (root / "train.json").write_text(json.dumps(data))
    code, paths = _run(
        tmp_path,
        extra=[
            "data.source=coco",
            f"data.coco.train_annotations={root / 'train.json'}",
            f"data.coco.train_images={root / 'images'}",
            "data.coco.ignore_category=ignored regions",
            "prepare.val_fraction=0.5",
        ],
    )
    assert code == 0
    report = read_json(paths["report"])
    assert report["cleaning"]["ignore_regions"] == 1
    cocos = {split: read_json(paths["out"] / f"{split}.json") for split in ("train", "val")}
    for d in cocos.values():
        assert [c["name"] for c in d["categories"]] == ["car", "van"]
    crowd = sorted(
        (a["id"], a["category_id"], a["bbox"]) for d in cocos.values() for a in d["annotations"] if a["iscrowd"]
    )
    assert crowd == [(8, 1, [50.0, 50.0, 40.0, 40.0]), (9, 2, [50.0, 50.0, 40.0, 40.0])]  # ids after the largest, 7
    split = next(s for s, d in cocos.items() if any(a["iscrowd"] for a in d["annotations"]))
    assert report[split]["instances"] == 1 and report[split]["crowd_regions"] == 2

    # Scored on the image with the region: a true van, a car inside the region (ignored, not a false positive).
    gt = COCO()
    gt.dataset = {**cocos[split], "images": [im for im in cocos[split]["images"] if im["id"] == 2]}
    gt.dataset["annotations"] = [a for a in cocos[split]["annotations"] if a["image_id"] == 2]
    gt.createIndex()
    dets = [
        {"image_id": 2, "category_id": 2, "bbox": [10, 10, 20, 20], "score": 0.5},
        {"image_id": 2, "category_id": 1, "bbox": [60, 60, 10, 10], "score": 0.9},
    ]
    ev = COCOeval(gt, gt.loadRes(dets), "bbox")
    ev.evaluate()
    car = next(e for e in ev.evalImgs if e is not None and e["category_id"] == 1 and e["aRng"] == [0, 1e10])
    assert car["dtIgnore"][0].tolist() == [True]  # at IoU 0.5: inside the region, neither TP nor FP
