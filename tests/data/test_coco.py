"""The bad-COCO corpus (tests/data/bad_coco, one file per case) through validation and the CLI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO

from sod.cli import main
from sod.data import coco
from sod.errors import DataError
from sod.io import pixel_limit, read_json

CORPUS = Path(__file__).parent / "bad_coco"
IMAGES = CORPUS / "images"

# case -> words the one-line error must contain (the record and what is wrong with it).
ERRORS = {
    "malformed_json": ["malformed_json.json", "not valid JSON", "at line 2 column 1"],
    "missing_annotations_list": ["missing required top-level field 'annotations'"],
    "missing_bbox": ["annotations[1] (id=2)", "'bbox'"],
    "missing_file_name": ["images[0] (id=1)", "'file_name'"],
    "string_image_id": ["images[0]", "'id' must be int", "'1'"],
    "duplicate_image_id": ["images[1] (id=1)", "duplicate image id 1"],
    "duplicate_annotation_id": ["annotations[1] (id=1)", "duplicate annotation id 1"],
    "duplicate_category_id": ["categories[2] (id=1)", "duplicate category id 1"],
    "unknown_category": ["annotations[1] (id=2)", "unknown category_id 7"],
    "unknown_image_id": ["annotations[1] (id=2)", "image_id 99"],
    "short_bbox": ["annotations[1] (id=2)", "bbox must be 4 numbers"],
    "traversal_dotdot": ["images[2] (id=3)", "'../../secret.png'", "path traversal"],
    "traversal_absolute": ["images[2] (id=3)", "'/etc/passwd'", "path traversal"],
    "traversal_windows_drive": ["images[2] (id=3)", "path traversal"],
    "missing_image_file": ["images[2] (id=3)", "nowhere.png", "is missing", "prepare.on_bad_image"],
    "corrupt_image_truncated": ["images[2] (id=3)", "corrupt.png", "cannot be read"],
    "corrupt_image_not_image": ["images[2] (id=3)", "not_an_image.png", "cannot be read"],
}

# case -> (cleaning count that must be 1, annotations kept out of the file's)
CLEANED = {
    "box_partly_outside": ("boxes_clipped", 3),
    "box_fully_outside": ("boxes_dropped_outside", 2),
    "box_zero_area": ("boxes_dropped_degenerate", 2),
    "box_negative_size": ("boxes_dropped_degenerate", 2),
    "box_subpixel": ("boxes_dropped_subpixel", 2),
    "wrong_size_in_json": ("images_size_fixed", 3),
    "malformed_segmentation": ("segmentations_dropped", 3),
}

CONVERTED = {
    "grayscale_image": "grayscale",
    "rgba_image": "rgba",
    "palette_image": "palette",
    "gray16_image": "16bit",
    "cmyk_image": "cmyk",
}


def _validate(case: str, **kw) -> coco.CleanDataset:
    path = CORPUS / f"{case}.json"
    return coco.validate(coco.load_coco_json(path), IMAGES, path, **kw)


def test_every_corpus_file_is_covered() -> None:
    cases = {p.stem for p in CORPUS.glob("*.json")}
    assert cases == set(ERRORS) | set(CLEANED) | set(CONVERTED)


@pytest.mark.parametrize("case", sorted(ERRORS))
def test_bad_input_is_a_clear_error(case: str) -> None:
    with pytest.raises(DataError) as err:
        _validate(case)
    message = str(err.value)
    assert "\n" not in message
    for words in ERRORS[case]:
        assert words in message


@pytest.mark.parametrize("case", sorted(CLEANED))
def test_fixable_input_is_cleaned_and_counted(case: str) -> None:
    counter, kept = CLEANED[case]
    ds = _validate(case)
    counts = ds.counts.as_dict()
    assert counts[counter] == 1
    others = {k: v for k, v in counts.items() if isinstance(v, int) and k != counter}
    assert not any(others.values()), others
    assert sum(len(im.annotations) for im in ds.images) == kept
    for im in ds.images:
        for a in im.annotations:
            x, y, w, h = a["bbox"]
            assert x >= 0 and y >= 0 and x + w <= im.width and y + h <= im.height and w >= 1 and h >= 1


def test_clipping_by_hand() -> None:
    # [-5, 40, 20, 20] in a 64×48 image → x from 0 to 15, y from 40 to 48.
    ds = _validate("box_partly_outside")
    (ann,) = [a for im in ds.images for a in im.annotations if a["id"] == 3]
    assert ann["bbox"] == [0.0, 40.0, 15.0, 8.0]
    assert ann["area"] == 120.0


def test_wrong_size_is_taken_from_the_file() -> None:
    ds = _validate("wrong_size_in_json")
    im3 = next(im for im in ds.images if im.id == 3)
    assert (im3.width, im3.height) == (64, 48)


@pytest.mark.parametrize("case", sorted(CONVERTED))
def test_odd_image_modes_become_8bit_rgb(case: str, tmp_path: Path) -> None:
    ds = _validate(case)
    assert ds.counts.images_converted == {CONVERTED[case]: 1}
    d = coco.write_split(ds, ds.images, tmp_path, "train")
    im3 = next(i for i in d["images"] if i["id"] == 3)
    assert im3["file_name"].endswith(".png")
    with Image.open(tmp_path / im3["file_name"]) as im:
        assert im.mode == "RGB" and im.size == (64, 48)
        arr = np.asarray(im)
    if case == "gray16_image":
        # 16-bit values v*257 map back to exactly v in 8 bits.
        src = np.asarray(Image.open(IMAGES / "good.png"))[..., 0]
        assert np.array_equal(arr[..., 0], src) and np.array_equal(arr[..., 1], src)


@pytest.mark.parametrize("case", ["missing_image_file", "corrupt_image_truncated", "corrupt_image_not_image"])
def test_bad_images_can_be_skipped_and_counted(case: str) -> None:
    ds = _validate(case, on_bad_image="skip")
    assert [im.id for im in ds.images] == [1, 2]
    c = ds.counts
    assert c.images_skipped_missing + c.images_skipped_corrupt == 1
    assert c.annotations_dropped_with_skipped_images == 1


def test_good_images_are_copied_byte_for_byte(tmp_path: Path) -> None:
    ds = _validate("box_partly_outside")
    d = coco.write_split(ds, ds.images, tmp_path, "val")
    assert [i["file_name"] for i in d["images"]] == ["images/val/good.png", "images/val/good2.jpg"]
    assert (tmp_path / "images/val/good2.jpg").read_bytes() == (IMAGES / "good2.jpg").read_bytes()


def test_output_loads_in_pycocotools(tmp_path: Path) -> None:
    ds = _validate("malformed_segmentation")
    d = coco.write_split(ds, ds.images, tmp_path, "train")
    path = tmp_path / "train.json"
    path.write_text(__import__("json").dumps(d))
    api = COCO(str(path))
    assert sorted(api.getImgIds()) == [1, 2]
    assert len(api.getAnnIds()) == 3


def test_symlink_escaping_the_root_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "imgs"
    root.mkdir()
    outside = tmp_path / "outside.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(outside)
    (root / "link.png").symlink_to(outside)
    raw = {
        "images": [{"id": 1, "file_name": "link.png", "width": 8, "height": 8}],
        "annotations": [],
        "categories": [{"id": 1, "name": "a"}],
    }
    with pytest.raises(DataError, match="path traversal"):
        coco.validate(raw, root, tmp_path / "x.json")


def _coco_params(tmp_path: Path, case: str, extra: str = "") -> Path:
    params = tmp_path / "params.yaml"
    params.write_text(
        "data:\n  source: coco\n  coco:\n"
        f"    train_annotations: {CORPUS / (case + '.json')}\n    train_images: {IMAGES}\n" + extra
    )
    return params


@pytest.mark.parametrize("case", sorted(ERRORS))
def test_cli_exits_2_with_one_line_and_no_traceback(case: str, tmp_path: Path, capsys) -> None:
    params = _coco_params(tmp_path, case)
    out = tmp_path / "out"
    code = main(
        [
            "prepare",
            "--params",
            str(params),
            "--out",
            str(out),
            "--report",
            str(tmp_path / "r.json"),
            "--sizes-csv",
            str(tmp_path / "s.csv"),
            "--sizes-png",
            str(tmp_path / "s.png"),
            "-q",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert "Traceback" not in err
    assert err.startswith("sod prepare: error: ") and err.count("\n") == 1
    assert not out.exists()  # nothing half-written


def test_cli_prepare_on_a_cleaned_case_writes_counts(tmp_path: Path) -> None:
    params = _coco_params(tmp_path, "rgba_image", "prepare:\n  val_fraction: 0.34\n")
    out, report = tmp_path / "prepared", tmp_path / "prepare.json"
    code = main(
        [
            "prepare",
            "--params",
            str(params),
            "--out",
            str(out),
            "--report",
            str(report),
            "--sizes-csv",
            str(tmp_path / "s.csv"),
            "--sizes-png",
            str(tmp_path / "s.png"),
            "-q",
        ]
    )
    assert code == 0
    r = read_json(report)
    assert r["cleaning"]["images_converted"] == {"rgba": 1}
    assert r["train"]["images"] + r["val"]["images"] == 3
    assert r["val"]["images"] == 1


@pytest.mark.parametrize("on_bad_image", ["error", "skip"])
def test_image_over_the_decompression_bomb_limit_is_refused_by_name_or_counted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, on_bad_image: str
) -> None:
    # PIL refuses to decode more than 2 × MAX_IMAGE_PIXELS (179 M px by default); a 40 x 40 image under a
    # limit of 100 px (200 refused) stands in for a 20,000 x 20,000 aerial mosaic.
    (tmp_path / "huge.png").write_bytes((IMAGES / "good.png").read_bytes())
    Image.new("RGB", (8, 8)).save(tmp_path / "small.png")
    with Image.open(tmp_path / "huge.png") as im:
        w, h = im.size
    assert w * h > 200
    data = {
        "images": [
            {"id": 1, "file_name": "huge.png", "width": w, "height": h},
            {"id": 2, "file_name": "small.png", "width": 8, "height": 8},
        ],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 4, 4]}],
        "categories": [{"id": 1, "name": "thing"}],
    }
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    if on_bad_image == "error":
        with pytest.raises(DataError) as err:
            coco.validate(data, tmp_path, tmp_path / "train.json", on_bad_image="error")
        message = str(err.value)
        assert "huge.png" in message and "decompression-bomb limit" in message and "\n" not in message
        return
    ds = coco.validate(data, tmp_path, tmp_path / "train.json", on_bad_image="skip")
    assert [im.id for im in ds.images] == [2]
    assert ds.counts.images_skipped_too_large == 1 and ds.counts.images_skipped_corrupt == 0
    assert ds.counts.annotations_dropped_with_skipped_images == 1
    # prepare.max_pixels over the image's size reads it (and its box); under it, refuses it by that limit.
    with pixel_limit(w * h):
        assert [im.id for im in coco.validate(data, tmp_path, tmp_path / "train.json").images] == [1, 2]
    with pixel_limit(w * h - 1), pytest.raises(DataError, match=f"huge.png has more than {w * h - 1:,} pixels"):
        coco.validate(data, tmp_path, tmp_path / "train.json", on_bad_image="error")


def test_an_unknown_or_only_ignore_category_is_a_one_line_error(tmp_path: Path) -> None:
    Image.new("RGB", (8, 8)).save(tmp_path / "small.png")
    data = {
        "images": [{"id": 1, "file_name": "small.png", "width": 8, "height": 8}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 4, 4]}],
        "categories": [{"id": 1, "name": "thing"}],
    }
    ds = coco.validate(data, tmp_path, tmp_path / "train.json")
    with pytest.raises(DataError, match="'ignored' is not a category name \\(names: thing\\)"):
        coco.apply_ignore_category([ds], "ignored")
    with pytest.raises(DataError, match="is the only category"):
        coco.apply_ignore_category([ds], "thing")
