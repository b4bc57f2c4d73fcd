"""`sod augment` on a few tiny images: outputs, counts, traceability, determinism, identity, bad params."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pycocotools.coco import COCO

from sod.cli import main
from sod.config import load_params
from sod.data.dataset import CocoDetectionDataset
from sod.errors import ConfigError, DataError
from sod.io import read_json, read_owner, write_owner_marker
from sod.stages import augment

SPECS = [
    {"size": (64, 48), "boxes": [(5, 6, 8, 9, 3), (30, 20, 10, 7, 7), (40, 30, 16, 12, 3)]},  # all 3 small
    {"size": (64, 48), "boxes": [(10, 10, 40, 30, 7)]},  # large only (1200 px²)
    {"size": (48, 48), "boxes": [(8, 8, 12, 12, 3)], "segs": {0: [[8, 8, 20, 8, 8, 20]]}},  # small, polygon
    {"size": (48, 48), "boxes": []},
]


def _run(train: Path, out: Path, *overrides: str) -> dict[str, Any]:
    params = load_params(None, ["augment.preview_images=4", *overrides])
    return augment.run(params, train, out, out.parent / f"{out.name}.json", out.parent / f"{out.name}.png", False)


def _digest(out: Path) -> dict[str, str]:
    files = {"report": out.parent / f"{out.name}.json", "preview": out.parent / f"{out.name}.png"}
    files.update({str(p.relative_to(out)): p for p in sorted(out.rglob("*")) if p.is_file()})
    return {k: hashlib.sha256(p.read_bytes()).hexdigest() for k, p in files.items()}


def _resolved(json_path: Path) -> list[tuple[int, Path]]:
    return [(im["id"], (json_path.parent / im["file_name"]).resolve()) for im in read_json(json_path)["images"]]


def test_outputs_counts_and_traceability(tiny_coco: Callable[..., Path], tmp_path: Path) -> None:
    train = tiny_coco(SPECS)
    out = tmp_path / "augmented"
    rep = _run(train, out)  # defaults: copy-paste ×1 (add), then ratio 2
    result = read_json(out / "train.json")
    assert read_json(tmp_path / "augmented.json") == rep and (tmp_path / "augmented.png").stat().st_size > 0
    cp, os_ = rep["copy_paste"], rep["oversample"]
    assert (rep["images_before"], rep["small_instances_before"], rep["instances_before"]) == (4, 4, 5)
    assert cp["sources"] == 4 and cp["sources_occluded"] == 0
    assert cp["pastes_placed"] + cp["pastes_rejected_total"] == 4
    assert rep["images_added_copy_paste"] == cp["images_augmented"]
    assert rep["images_after"] == 4 + rep["images_added_copy_paste"] + os_["repeats_added"] == len(result["images"])
    # ratio 2 after copy-paste: each image holding a small object gets one repeat
    assert os_["repeats_added"] == os_["small_images"] == 2 + cp["images_augmented"]
    assert rep["small_instances_after"] == sum(a["area"] < 1024 for a in result["annotations"])
    assert rep["instances_after"] == len(result["annotations"])
    ids = [im["id"] for im in result["images"]]
    assert len(ids) == len(set(ids)) and len({a["id"] for a in result["annotations"]}) == len(result["annotations"])

    paths = dict(_resolved(out / "train.json"))
    assert all(p.is_file() for p in paths.values())
    assert result["images"][0]["file_name"] == "../prepared/images/train/000.png"
    for im in result["images"]:
        if "sod_repeat_of" in im:  # same file as the image it repeats: no pixel copy
            assert paths[im["id"]] == paths[im["sod_repeat_of"]]
    assert len(list((out / "images").iterdir())) == rep["images_added_copy_paste"]
    pasted = [a for a in result["annotations"] if "sod_paste" in a]
    assert pasted and set(pasted[0]["sod_paste"]) == {"source_annotation_id", "source_image_id", "scale", "angle"}

    coco = COCO(str(out / "train.json"))  # pycocotools accepts the extra fields
    assert len(coco.getImgIds()) == rep["images_after"]
    ds = CocoDetectionDataset(out / "train.json")
    assert len(ds) == rep["images_after"] and ds[len(ds) - 1][0].shape[0] == 3


def test_same_params_give_identical_files(tiny_coco: Callable[..., Path], tmp_path: Path) -> None:
    train = tiny_coco(SPECS)
    _run(train, tmp_path / "a", "augment.copy_paste.times=2")
    _run(train, tmp_path / "b", "augment.copy_paste.times=2")
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    _run(train, tmp_path / "a", "augment.copy_paste.times=2")  # rerun over its own output
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")


@pytest.mark.parametrize("oversample", ["augment.oversample=none", "augment.oversample_ratio=1"])
def test_times_zero_without_oversampling_reproduces_the_input(
    tiny_coco: Callable[..., Path], tmp_path: Path, oversample: str
) -> None:
    train = tiny_coco(SPECS)
    out = tmp_path / "deep" / "augmented"
    rep = _run(train, out, "augment.copy_paste.times=0", oversample)
    before, after = read_json(train), read_json(out / "train.json")
    assert _resolved(out / "train.json") == _resolved(train)
    strip = [{k: v for k, v in im.items() if k != "file_name"} for im in before["images"]]
    assert [{k: v for k, v in im.items() if k != "file_name"} for im in after["images"]] == strip
    assert after["annotations"] == before["annotations"] and after["categories"] == before["categories"]
    assert rep["images_after"] == rep["images_before"] and not (out / "images").exists()


def test_ratio_two_without_pastes_doubles_exactly_the_small_object_images(
    tiny_coco: Callable[..., Path], tmp_path: Path
) -> None:
    rep = _run(tiny_coco(SPECS), tmp_path / "aug", "augment.copy_paste.times=0", "augment.oversample_ratio=2")
    result = read_json(tmp_path / "aug" / "train.json")
    assert sorted(im["sod_repeat_of"] for im in result["images"][4:]) == [1, 3]  # images 2 and 4: no small object
    assert rep["images_after"] == 6 and rep["small_instances_after"] == 2 * rep["small_instances_before"]


def test_margin_larger_than_an_image_is_a_config_error(tiny_coco: Callable[..., Path], tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="'augment.copy_paste.margin' = 24 leaves no room in image 1 \\(64×48 px\\)"):
        _run(tiny_coco(SPECS), tmp_path / "aug", "augment.copy_paste.margin=24")
    assert not (tmp_path / "aug").exists()


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("augment.copy_paste.times=-1", "augment.copy_paste.times"),
        ("augment.oversample_ratio=0.5", "augment.oversample_ratio"),
    ],
)
def test_bad_params_name_the_key(override: str, key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        load_params(None, [override])


def test_cli_exit_code_and_foreign_out_dir(tiny_coco: Callable[..., Path], tmp_path: Path) -> None:
    train = tiny_coco(SPECS)
    out = tmp_path / "aug"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(DataError, match="keep.txt"):
        _run(train, out)
    argv = ["augment", "--params", str(tmp_path / "none.yaml"), "-q", "--train", str(train), "--out", str(out)]
    argv += ["--report", str(tmp_path / "r.json"), "--preview", str(tmp_path / "p.png")]
    assert main(argv) == 2  # missing params file: a one-line error, not a traceback
    assert (out / "keep.txt").read_text() == "mine"


def test_a_users_coco_folder_as_out_is_refused_and_kept(
    tiny_coco: Callable[..., Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The reported data loss: an --out holding exactly images/ and train.json was deleted, images and all.
    train = tiny_coco(SPECS)
    user = tmp_path / "mycoco"
    (user / "images").mkdir(parents=True)
    (user / "images" / "0001.jpg").write_bytes(b"my photo")
    (user / "train.json").write_text('{"images": [], "annotations": [], "categories": []}')
    params = Path(__file__).resolve().parents[2] / "params.yaml"
    argv = ["augment", "--params", str(params), "-q", "--train", str(train), "--out", str(user)]
    argv += ["--report", str(tmp_path / "r.json"), "--preview", str(tmp_path / "p.png")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(user) in err and "Traceback" not in err
    assert (user / "images" / "0001.jpg").read_bytes() == b"my photo"
    assert sorted(p.name for p in user.iterdir()) == ["images", "train.json"]
    assert not (tmp_path / "r.json").exists() and not (tmp_path / "p.png").exists()  # refused before any work


def test_rerun_replaces_its_own_output_but_not_prepares(tiny_coco: Callable[..., Path], tmp_path: Path) -> None:
    train = tiny_coco(SPECS)
    out = tmp_path / "augmented"
    _run(train, out)
    assert read_owner(out) == "augment" and (out / "images").is_dir()
    _run(train, out, "augment.copy_paste.times=0")  # over its own output: replaced, pasted images gone
    assert read_owner(out) == "augment" and not (out / "images").exists()
    assert read_json(out / ".sod-owner")["files"] == ["train.json"]
    prepared = tmp_path / "prep_out"
    prepared.mkdir()
    (prepared / "val.json").write_text("{}")
    write_owner_marker(prepared, "prepare", ["val.json"])
    with pytest.raises(DataError, match="belongs to sod stage 'prepare'"):
        _run(train, prepared)
    assert (prepared / "val.json").read_text() == "{}"
