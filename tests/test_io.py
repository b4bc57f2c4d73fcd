"""`sod.io`'s owned directories (the marker, and the checks that keep a stage off a user's files) and pixel limit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from sod.errors import DataError
from sod.io import (
    OWNER_MARKER,
    check_owner,
    claim_dir,
    claim_file,
    files_under,
    finish_dir,
    image_pixel_limit,
    load_rgb,
    pixel_limit,
    read_owner,
    remove_owned,
    replace_dir,
    write_owner_marker,
)


def _user_coco(root: Path) -> Path:
    """A user's ordinary COCO folder: ``images/`` and ``train.json``, no marker."""
    (root / "images").mkdir(parents=True)
    (root / "images" / "0001.jpg").write_bytes(b"jpeg")
    (root / "train.json").write_text('{"images": []}')
    return root


def _staging(root: Path, files: dict[str, str]) -> Path:
    root.mkdir()
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def _one_line(exc: pytest.ExceptionInfo[DataError]) -> str:
    message = str(exc.value)
    assert "\n" not in message
    return message


def test_marker_bytes_are_sorted_deduplicated_json(tmp_path: Path) -> None:
    write_owner_marker(tmp_path, "prepare", ["val.json", "images/train/b.png", "train.json", "val.json", OWNER_MARKER])
    expected = (
        '{\n  "stage": "prepare",\n  "files": [\n    "images/train/b.png",\n    "train.json",\n    "val.json"\n  ]\n}\n'
    )
    assert (tmp_path / OWNER_MARKER).read_text() == expected
    first = (tmp_path / OWNER_MARKER).read_bytes()
    write_owner_marker(tmp_path, "prepare", ["train.json", "val.json", "images/train/b.png"])  # another order
    assert (tmp_path / OWNER_MARKER).read_bytes() == first
    assert [p.name for p in tmp_path.iterdir()] == [OWNER_MARKER]  # no temporary file left behind


def test_read_owner(tmp_path: Path) -> None:
    assert read_owner(tmp_path) is None  # no marker
    write_owner_marker(tmp_path, "augment", ["train.json"])
    assert read_owner(tmp_path) == "augment"
    bad_markers = [
        "not json",
        "[]",
        '{"stage": 1, "files": []}',
        '{"stage": "report"}',
        '{"stage": "report", "files": ["../x.png"]}',  # would let a cleanup delete outside the directory
        '{"stage": "report", "files": ["/etc/passwd"]}',
    ]
    for bad in bad_markers:
        (tmp_path / OWNER_MARKER).write_text(bad)
        assert read_owner(tmp_path) is None, bad


def test_files_under_lists_nested_files_and_links_without_the_marker(tmp_path: Path) -> None:
    _staging(tmp_path / "d", {"a.json": "", "images/train/1.png": "", "images/val/2.png": ""})
    (tmp_path / "d" / "link").symlink_to(tmp_path / "d" / "images")
    write_owner_marker(tmp_path / "d", "prepare", [])
    assert files_under(tmp_path / "d") == ["a.json", "images/train/1.png", "images/val/2.png", "link"]


def test_replace_dir_into_a_new_directory_writes_the_marker(tmp_path: Path) -> None:
    staging = _staging(tmp_path / "stage", {"train.json": "{}", "images/1.png": "px"})
    out = tmp_path / "out"
    replace_dir(staging, out, "prepare")
    assert not staging.exists()
    assert json.loads((out / OWNER_MARKER).read_text()) == {"stage": "prepare", "files": ["images/1.png", "train.json"]}


def test_replace_dir_replaces_its_own_output_and_an_empty_directory(tmp_path: Path) -> None:
    out = tmp_path / "out"
    replace_dir(_staging(tmp_path / "s1", {"train.json": "old", "images/1.png": "old"}), out, "prepare")
    replace_dir(_staging(tmp_path / "s2", {"train.json": "new"}), out, "prepare")
    assert files_under(out) == ["train.json"] and (out / "train.json").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no staging or old copy left beside it
    empty = tmp_path / "empty"
    empty.mkdir()
    replace_dir(_staging(tmp_path / "s3", {"train.json": "x"}), empty, "augment")
    assert read_owner(empty) == "augment"


def test_replace_dir_refuses_a_users_coco_folder_and_touches_nothing(tmp_path: Path) -> None:
    user = _user_coco(tmp_path / "mine")
    staging = _staging(tmp_path / "stage", {"train.json": "{}", "images/1.png": "px"})
    with pytest.raises(DataError) as exc:
        replace_dir(staging, user, "prepare")
    assert str(user) in _one_line(exc) and "images, train.json" in str(exc.value)
    assert files_under(user) == ["images/0001.jpg", "train.json"] and not (user / OWNER_MARKER).exists()
    assert (user / "images" / "0001.jpg").read_bytes() == b"jpeg"
    assert files_under(staging) == ["images/1.png", "train.json"]  # the caller cleans its staging up


def test_replace_dir_refuses_another_stages_directory(tmp_path: Path) -> None:
    out = tmp_path / "prepared"
    replace_dir(_staging(tmp_path / "s1", {"train.json": "p"}), out, "prepare")
    with pytest.raises(DataError, match="belongs to sod stage 'prepare'") as exc:
        replace_dir(_staging(tmp_path / "s2", {"train.json": "a"}), out, "augment")
    assert str(out) in _one_line(exc)
    assert (out / "train.json").read_text() == "p"


def test_replace_dir_refuses_its_own_directory_with_a_users_file_added(tmp_path: Path) -> None:
    out = tmp_path / "out"
    replace_dir(_staging(tmp_path / "s1", {"train.json": "p"}), out, "prepare")
    (out / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match="notes.txt") as exc:
        replace_dir(_staging(tmp_path / "s2", {"train.json": "q"}), out, "prepare")
    assert str(out) in _one_line(exc)
    assert (out / "notes.txt").read_text() == "mine" and (out / "train.json").read_text() == "p"


def test_check_owner_refuses_a_file_and_a_symlink(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    with pytest.raises(DataError, match="not a directory"):
        check_owner(tmp_path / "f", "prepare")
    (tmp_path / "d").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "d")
    with pytest.raises(DataError, match="symbolic link"):
        check_owner(tmp_path / "link", "prepare")
    check_owner(tmp_path / "absent", "prepare")
    check_owner(tmp_path / "d", "prepare")  # empty


def test_claim_dir_creates_marks_and_adds_files(tmp_path: Path) -> None:
    d = tmp_path / "ckpt"
    claim_dir(d, "train_detector", ["a.pt"])
    claim_dir(d, "train_detector", ["b.pt"])
    assert json.loads((d / OWNER_MARKER).read_text())["files"] == ["a.pt", "b.pt"]
    (d / "user.txt").write_text("mine")
    claim_dir(d, "train_detector")  # its own directory: extra files are not its business, it only writes
    with pytest.raises(DataError, match="train_detector"):
        claim_dir(d, "evaluate")
    user = _user_coco(tmp_path / "mine")
    with pytest.raises(DataError) as exc:
        claim_dir(user, "evaluate")
    assert str(user) in _one_line(exc) and not (user / OWNER_MARKER).exists()


def test_claim_file_records_its_file_and_refuses_a_users(tmp_path: Path) -> None:
    user = _user_coco(tmp_path / "mine")  # a user's folder: a file may be added next to theirs
    claim_file(user / "results.json", "predict")
    assert json.loads((user / OWNER_MARKER).read_text()) == {"stage": "predict", "files": ["results.json"]}
    (user / "results.json").write_text("[]")
    claim_file(user / "results.json", "predict")  # its own file: may be overwritten
    with pytest.raises(DataError, match="refusing to overwrite") as exc:
        claim_file(user / "train.json", "predict")  # the user's file next to it: never
    assert "train.json" in _one_line(exc) and (user / "train.json").read_text() == '{"images": []}'
    assert json.loads((user / OWNER_MARKER).read_text())["files"] == ["results.json"]
    claim_file(user / "more.json", "predict")
    assert json.loads((user / OWNER_MARKER).read_text())["files"] == ["more.json", "results.json"]
    other = tmp_path / "plots"
    claim_dir(other, "evaluate")
    with pytest.raises(DataError, match="belongs to sod stage 'evaluate'"):
        claim_file(other / "results.json", "predict")
    assert json.loads((other / OWNER_MARKER).read_text())["stage"] == "evaluate"


def test_finish_dir_deletes_only_its_own_stale_files(tmp_path: Path) -> None:
    d = tmp_path / "plots"
    claim_dir(d, "report", ["old.png", "kept.png"])
    for name in ("old.png", "kept.png", "user.png"):
        (d / name).write_text(name)
    assert finish_dir(d, "report", ["kept.png", "new.png"]) == ["old.png"]
    assert sorted(p.name for p in d.iterdir()) == [OWNER_MARKER, "kept.png", "user.png"]
    assert json.loads((d / OWNER_MARKER).read_text())["files"] == ["kept.png", "new.png"]


def test_remove_owned(tmp_path: Path) -> None:
    d = tmp_path / "ckpt"
    claim_dir(d, "train_detector", ["a.pt", "b.pt"])
    for name in ("a.pt", "b.pt", "user.pt"):
        (d / name).write_text(name)
    assert remove_owned(d / "a.pt", "train_detector")
    assert not remove_owned(d / "user.pt", "train_detector")  # not listed
    assert not remove_owned(d / "b.pt", "train_sr")  # another stage's marker
    assert sorted(p.name for p in d.iterdir()) == [OWNER_MARKER, "b.pt", "user.pt"]
    assert json.loads((d / OWNER_MARKER).read_text())["files"] == ["b.pt"]
    unmarked = tmp_path / "other"
    unmarked.mkdir()
    (unmarked / "a.pt").write_text("mine")
    assert not remove_owned(unmarked / "a.pt", "train_detector") and (unmarked / "a.pt").exists()


def test_pixel_limit_reads_an_image_over_pils_guard_and_refuses_one_over_its_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # PIL refuses above 2 x MAX_IMAGE_PIXELS; a limit of 100 (200 refused) stands in for its 179 M px.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    Image.new("RGB", (30, 20), (9, 8, 7)).save(tmp_path / "mosaic.png")  # 600 px
    with pytest.raises(Image.DecompressionBombError):
        load_rgb(tmp_path / "mosaic.png")
    assert image_pixel_limit() == 200
    with pixel_limit(600):  # exactly its size: read
        assert load_rgb(tmp_path / "mosaic.png").shape == (20, 30, 3)
        assert image_pixel_limit() == 600
    with pixel_limit(599), pytest.raises(Image.DecompressionBombError, match="30 x 20 px is over prepare.max_pixels"):
        load_rgb(tmp_path / "mosaic.png")
    # The guard is PIL's again after the block, and None leaves it alone.
    assert Image.MAX_IMAGE_PIXELS == 100 and image_pixel_limit() == 200
    with pixel_limit(None):
        assert Image.MAX_IMAGE_PIXELS == 100
