"""`train_sr` on a few tiny images: every output written, resume after a kill, a checkpoint from other params.

Patch sampling is tested in tests/data/test_sr_patches.py, scoring windows in tests/evaluation/test_sr_metrics.py.
"""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data

from sod import engine
from sod.config import load_params
from sod.errors import SodError
from sod.evaluation.plots import SR_PREVIEW_CELL, SR_PREVIEW_HEADER
from sod.io import save_png
from sod.models import pretrained
from sod.models.sr import load_sr
from sod.stages import train_sr
from tests.stages import hooked_sod

# Small boxes (COCO xywh, area < 32²) of the tiny images; the second image has none.
BOXES = {1: [[10.0, 12.0, 14.0, 9.0], [40.0, 30.0, 8.0, 8.0]], 2: [], 3: [[20.0, 20.0, 12.0, 16.0]]}


@pytest.fixture(autouse=True)
def _one_thread(one_thread: None) -> None:
    """Small models: one thread is faster and leaves the other core to the rest of the suite."""


def _write_split(root: Path, name: str, image_ids: list[int]) -> Path:
    """64×64 crops of a real photograph as a sod COCO file (file_name relative to the JSON's dir)."""
    photo = data.astronaut()
    images, anns = [], []
    for i in image_ids:
        rel = f"images/{name}/{i:06d}.png"
        save_png(root / rel, np.ascontiguousarray(photo[40 * i : 40 * i + 64, 60 * i : 60 * i + 64]))
        images.append({"id": i, "file_name": rel, "width": 64, "height": 64})
        for x, y, w, h in BOXES[i]:
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": i,
                    "category_id": 1,
                    "bbox": [x, y, w, h],
                    "area": w * h,
                    "iscrowd": 0,
                }
            )
    path = root / f"{name}.json"
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": [{"id": 1, "name": "x"}]}))
    return path


def _overrides() -> list[str]:
    # The perceptual term runs only where its ImageNet weights are installed; its own tests cover it.
    have = pretrained.packaged_path(pretrained.IMAGENET_WEIGHTS["mobilenet_v2"]) is not None
    return [
        "sr.epochs=2",
        "sr.patches_per_epoch=8",
        "sr.batch_size=4",
        "sr.patch_size=12",
        "sr.device=cpu",
        f"sr.perceptual.weight={0.01 if have else 0}",
    ]


def _paths(root: Path) -> dict[str, Path]:
    return {
        "out": root / "models" / "sr.pt",
        "report": root / "reports" / "train_sr.json",
        "preview": root / "reports" / "train_sr.png",
        "checkpoint": root / "ckpt" / "train_sr.pt",
    }


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("data")
    return _write_split(root, "train", [1, 2, 3]), _write_split(root, "val", [1, 3])


def test_writes_model_report_and_preview(dataset: tuple[Path, Path], tmp_path: Path) -> None:
    train, val = dataset
    paths = _paths(tmp_path)
    result = train_sr.run(load_params(None, _overrides()), train, val, **paths, progress=False)

    report = json.loads(paths["report"].read_text())
    assert report == result
    for key in ("psnr_bicubic", "psnr_sr", "ssim_bicubic", "ssim_sr"):
        assert isinstance(report[key], float) and isinstance(report["small_objects"][key], float)
    assert report["small_objects"]["windows"] == 3  # the three small boxes of the val images
    assert [h["epoch"] for h in report["history"]] == [0, 1]
    assert report["train"]["small_objects"] == 3

    up = load_sr(paths["out"])
    assert up(torch.rand(1, 3, 10, 10)).shape == (1, 3, 20, 20)
    with Image.open(paths["preview"]) as im:
        assert im.size == (4 * SR_PREVIEW_CELL, SR_PREVIEW_HEADER + 3 * SR_PREVIEW_CELL)


def test_rerun_resumes_from_checkpoint(
    dataset: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    train, val = dataset
    params = load_params(None, _overrides())
    full = _paths(tmp_path / "full")
    train_sr.run(params, train, val, **full, progress=False)

    # A run killed while saving epoch 1's checkpoint: epoch 0's checkpoint is on disk, nothing else.
    killed = _paths(tmp_path / "killed")
    real_save = engine.save_checkpoint
    saves = []

    def save_then_die(path: Path, state: dict) -> None:
        saves.append(state["epoch"])
        if state["epoch"] == 1:
            raise KeyboardInterrupt
        real_save(path, state)

    monkeypatch.setattr(engine, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train_sr.run(params, train, val, **killed, progress=False)
    monkeypatch.setattr(engine, "save_checkpoint", real_save)
    assert torch.load(killed["checkpoint"], weights_only=True)["epoch"] == 0
    assert not killed["report"].exists()

    trained_epochs = []
    real_epoch = engine.train_one_epoch

    def counting_epoch(*args, **kwargs):
        trained_epochs.append(kwargs["epoch"])
        return real_epoch(*args, **kwargs)

    monkeypatch.setattr(engine, "train_one_epoch", counting_epoch)
    train_sr.run(params, train, val, **killed, progress=False)
    assert trained_epochs == [1]
    # The resumed run ends exactly where the uninterrupted one did.
    assert killed["report"].read_bytes() == full["report"].read_bytes()
    assert killed["out"].read_bytes() == full["out"].read_bytes()
    assert killed["preview"].read_bytes() == full["preview"].read_bytes()


def test_checkpoint_from_other_params_is_trained_over_and_a_foreign_file_refused(
    dataset: tuple[Path, Path], tmp_path: Path
) -> None:
    """checkpoints/sr.pt outlives a run: new sr params train from scratch over sod's own checkpoint (same
    model as a run that never saw it), while a file that is not a sod checkpoint is refused and kept."""
    train, val = dataset
    other = [*_overrides(), "sr.epochs=1", "sr.lr=0.01"]
    paths = _paths(tmp_path / "a")
    train_sr.run(load_params(None, [*_overrides(), "sr.epochs=1"]), train, val, **paths, progress=False)
    train_sr.run(load_params(None, other), train, val, **paths, progress=False)
    fresh = _paths(tmp_path / "b")
    train_sr.run(load_params(None, other), train, val, **fresh, progress=False)
    assert paths["out"].read_bytes() == fresh["out"].read_bytes()
    foreign = _paths(tmp_path / "c")
    foreign["checkpoint"].parent.mkdir(parents=True, exist_ok=True)
    foreign["checkpoint"].write_text("a user's notes")
    with pytest.raises(SodError, match="cannot read checkpoint"):
        train_sr.run(load_params(None, other), train, val, **foreign, progress=False)
    assert foreign["checkpoint"].read_text() == "a user's notes"


# ---------------------------------------------------------- the real command in child processes, killed
def _cli_train_sr(
    dataset: tuple[Path, Path], root: Path, hooks: list[str]
) -> tuple[subprocess.CompletedProcess[str], dict[str, Path]]:
    """``sod train-sr`` (2 epochs of 2 steps: 8 patches per epoch, batches of 4) in a child process."""
    paths = _paths(root)
    argv = ["train-sr", "-q", *[a for s in _overrides() for a in ("--set", s)]]
    argv += ["--train", str(dataset[0]), "--val", str(dataset[1])]
    argv += [a for k, p in paths.items() for a in (f"--{k}", str(p))]
    return hooked_sod.run(hooks, argv), paths


@pytest.fixture(scope="module")
def uninterrupted(dataset: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    proc, paths = _cli_train_sr(dataset, tmp_path_factory.mktemp("uninterrupted"), [])
    assert proc.returncode == 0, proc.stderr[-3000:]
    return paths


@pytest.mark.slow
@pytest.mark.parametrize(
    ("kill", "trained_before_kill"),
    [(["--kill-after-checkpoint", "0"], ["0"]), (["--kill-at-step", "3"], ["0", "1"])],
    ids=["after-epoch-0", "inside-epoch-1"],
)
def test_killed_cli_run_resumes_to_the_uninterrupted_outputs(
    dataset: tuple[Path, Path],
    uninterrupted: dict[str, Path],
    tmp_path: Path,
    kill: list[str],
    trained_before_kill: list[str],
) -> None:
    """SIGKILL after epoch 0's checkpoint, or in the middle of epoch 1 (which the rerun then trains again
    from epoch 0's checkpoint): model, report and preview end byte-identical to an uninterrupted run's."""
    killed, epochs = tmp_path / "killed", tmp_path / "epochs"
    epochs.mkdir()
    proc, paths = _cli_train_sr(dataset, killed, [*kill, "--epoch-log", str(epochs / "killed")])
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    assert (epochs / "killed").read_text().split() == trained_before_kill
    assert not paths["out"].exists() and not paths["report"].exists()
    epoch0 = torch.load(paths["checkpoint"], weights_only=True)
    assert epoch0["epoch"] == 0

    proc, paths = _cli_train_sr(dataset, killed, ["--epoch-log", str(epochs / "rerun")])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (epochs / "rerun").read_text().split() == ["1"]  # epoch 0 came from the checkpoint
    for key in ("out", "report", "preview"):
        assert paths[key].read_bytes() == uninterrupted[key].read_bytes(), key
    # Epoch 1 moved the weights: equal bytes mean it ran, from epoch 0's weights, with the same patches.
    final = load_sr(paths["out"]).net.state_dict()
    before = {k.removeprefix("upscaler.net."): v for k, v in epoch0["model"].items() if k.startswith("upscaler.net.")}
    assert before.keys() == final.keys() and not all(torch.equal(final[k], v) for k, v in before.items())
