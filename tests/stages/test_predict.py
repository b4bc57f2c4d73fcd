"""`sod predict` end to end on the tiny model: a folder with a non-square larger image and a corrupt file (error
vs skip and count), COCO results that pycocotools loads, ids from --coco, pictures, a registered MLflow model
read offline, and a user's file in the way refused and kept."""

from __future__ import annotations

import contextlib
import io
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO

from sod.io import OWNER_MARKER, read_json, write_json
from tests.stages.conftest import sod
from tests.stages.test_train_detector import _train

BIG_HW = (200, 340)  # the non-square image larger than the detector's 128 px input


@pytest.fixture(scope="module")
def model(tiny_pipeline: Path) -> Path:
    """The tiny one-epoch detector (test_evaluate's, trained here if that module has not run)."""
    path = tiny_pipeline / "models/eval_model.pt"
    if not path.exists():
        # Score threshold 0: the one-epoch model's scores sit near the focal prior (0.01); keep them all.
        code, _ = _train(tiny_pipeline, "eval_model", "--set", "detector.score_thresh=0.0")
        assert code == 0
    return path


@pytest.fixture
def folder(tiny_pipeline: Path, tmp_path: Path) -> Path:
    """a.png (a 128 px val scene), big.png (200 x 340, the scene stretched), broken.png (not an image), a note."""
    val = read_json(tiny_pipeline / "data/prepared/val.json")
    scene = tiny_pipeline / "data/prepared" / val["images"][0]["file_name"]
    d = tmp_path / "images"
    d.mkdir()
    shutil.copy(scene, d / "a.png")
    Image.open(scene).resize(BIG_HW[::-1]).save(d / "big.png")
    (d / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (d / "notes.txt").write_text("not an image: ignored")
    return d


def _predict(model: Path, *argv: str) -> int:
    return sod("predict", "--model", str(model), *argv)


def test_a_corrupt_image_is_a_one_line_error_and_nothing_is_written(
    model: Path, folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "results.json"
    assert _predict(model, str(folder), "--out", str(out)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "broken.png" in err and "--on-bad-image skip" in err
    assert not out.exists()


def test_skip_counts_the_bad_image_and_writes_coco_results_and_pictures(
    model: Path, folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, draw = tmp_path / "out/results.json", tmp_path / "drawn"
    # --draw-score 0: the one-epoch model's scores sit near the focal prior (0.01)
    argv = [str(folder), "--out", str(out), "--draw", str(draw), "--draw-score", "0", "--on-bad-image", "skip"]
    argv += ["--mode", "sliced"]
    assert _predict(model, *argv) == 0
    line = capsys.readouterr().out
    assert "on 2 images (sliced)" in line and "skipped 1 bad images (0 missing, 1 corrupt, 0 too large)" in line

    # Ids by sorted file name over the inputs: a.png 1, big.png 2, broken.png 3 (skipped, so not listed).
    images = read_json(tmp_path / "out/results.images.json")
    assert [(im["id"], im["file_name"], im["height"], im["width"]) for im in images["images"]] == [
        (1, "a.png", 128, 128), (2, "big.png", *BIG_HW),
    ]  # fmt: skip
    dets = read_json(out)
    assert {d["image_id"] for d in dets} == {1, 2}
    big = [d["bbox"] for d in dets if d["image_id"] == 2]
    # Boxes in big.png's own pixels: inside it, and some beyond the 128 px a model-scale image would have.
    assert all(x >= 0 and y >= 0 and x + w <= BIG_HW[1] + 1e-6 and y + h <= BIG_HW[0] + 1e-6 for x, y, w, h in big)
    assert max(x + w for x, _, w, _ in big) > 128
    with contextlib.redirect_stdout(io.StringIO()):
        loaded = COCO(str(tmp_path / "out/results.images.json")).loadRes(str(out))
    assert len(loaded.anns) == len(dets)

    assert sorted(p.name for p in draw.iterdir()) == [OWNER_MARKER, "a.png", "big.png"]
    assert Image.open(draw / "big.png").size == BIG_HW[::-1]
    assert not np.array_equal(np.asarray(Image.open(draw / "a.png")), np.asarray(Image.open(folder / "a.png")))

    # A rerun replaces sod's own outputs.
    assert _predict(model, *argv) == 0


def test_ids_come_from_the_coco_file(model: Path, folder: Path, tmp_path: Path) -> None:
    meta_categories = read_json(Path(model).parent.parent / "data/prepared/val.json")["categories"]
    coco = tmp_path / "val.json"
    write_json(coco, {
        "images": [{"id": 17, "file_name": "images/a.png"}, {"id": 42, "file_name": "big.png"}],
        "annotations": [], "categories": meta_categories,
    })  # fmt: skip
    out = tmp_path / "results.json"
    assert _predict(model, str(folder / "big.png"), str(folder / "a.png"), "--coco", str(coco), "--out", str(out)) == 0
    assert {d["image_id"] for d in read_json(out)} == {17, 42}
    assert not (tmp_path / "results.images.json").exists()  # the ids are the COCO file's: no list of its own
    argv = [str(folder / "a.png"), "--coco", str(coco), "--out", str(out), "--images-json", str(tmp_path / "i.json")]
    assert _predict(model, *argv) == 2


def test_a_users_file_in_the_way_is_refused_and_kept(
    model: Path, folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "results.json"
    out.write_text("my own results\n")
    assert _predict(model, str(folder / "a.png"), "--out", str(out)) == 2
    err = capsys.readouterr().err
    assert "refusing to overwrite" in err and str(out) in err
    assert out.read_text() == "my own results\n"
    # The same for the images list and for a drawing folder that is the user's.
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine/photo.png").write_bytes(b"x")
    argv = [str(folder / "a.png"), "--out", str(tmp_path / "r2.json"), "--draw", str(tmp_path / "mine")]
    assert _predict(model, *argv) == 2
    assert (tmp_path / "mine/photo.png").read_bytes() == b"x" and not (tmp_path / "r2.json").exists()


def test_a_registered_mlflow_model_is_read_offline(
    model: Path, tiny_pipeline: Path, folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sod import tracking

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SOD_TRACKING", "on")
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "test")
    monkeypatch.delenv(tracking.PARENT_ENV, raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    write_json(tmp_path / "train_detector.json", {"final_loss": 1.0})
    run = tracking.StageRun(
        stage="train_detector", report="train_detector.json", model=str(model), model_kind="detector"
    )
    assert tracking.log_stage(run) is not None
    image = str(folder / "big.png")
    assert _predict(model, image, "--out", "from_file.json") == 0
    assert sod("predict", "--model", "models:/sod-detector/1", image, "--out", "from_registry.json") == 0
    assert read_json(tmp_path / "from_registry.json") == read_json(tmp_path / "from_file.json")
    assert sod("predict", "--model", "models:/sod-detector/9", image, "--out", "none.json") == 2


def test_a_3000_px_image_in_a_mixed_folder_and_max_pixels(
    model: Path, folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A drone-frame-sized image (3,000 x 2,000 px, the scene stretched) beside a 128 px one and a corrupt file:
    COCO results in its own pixels that pycocotools loads, and a picture; under a smaller prepare.max_pixels
    it is skipped and counted as too large, not fatal."""
    with Image.open(folder / "a.png") as im:
        im.resize((3000, 2000)).save(folder / "frame.png")
    out, draw = tmp_path / "results.json", tmp_path / "drawn"
    argv = [str(folder), "--out", str(out), "--draw", str(draw), "--on-bad-image", "skip", "--mode", "full"]
    assert _predict(model, *argv) == 0
    assert "skipped 1 bad images (0 missing, 1 corrupt, 0 too large)" in capsys.readouterr().out
    images = read_json(tmp_path / "results.images.json")
    frame = next(im for im in images["images"] if im["file_name"] == "frame.png")
    assert (frame["width"], frame["height"]) == (3000, 2000)
    gt = COCO()
    gt.dataset = images | {"annotations": []}
    gt.createIndex()
    dets = gt.loadRes(str(out))
    boxes = np.array([a["bbox"] for a in dets.dataset["annotations"] if a["image_id"] == frame["id"]])
    assert len(boxes) and (boxes[:, 0] + boxes[:, 2]).max() <= 3000 and (boxes[:, 1] + boxes[:, 3]).max() <= 2000
    # Boxes come back in the frame's own pixels: some lie beyond the 128 px the detector saw it at.
    assert (boxes[:, 0] + boxes[:, 2]).max() > 128
    with Image.open(draw / "frame.png") as im:
        assert im.size == (3000, 2000)

    out2 = tmp_path / "small_limit.json"
    argv2 = [str(folder), "--out", str(out2), "--on-bad-image", "skip", "--mode", "full"]
    assert _predict(model, *argv2, "--set", "prepare.max_pixels=1000000") == 0
    assert "skipped 2 bad images (0 missing, 1 corrupt, 1 too large)" in capsys.readouterr().out
    listed = read_json(tmp_path / "small_limit.images.json")["images"]
    assert "frame.png" not in {im["file_name"] for im in listed}
