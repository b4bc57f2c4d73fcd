"""A tiny real pipeline for stage smoke tests: embedded scenes → prepare → augment → anchors (built once)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sod.cli import main

# Small everything: 8 scenes of 128 px, a narrow FPN, one short epoch. Real code paths, seconds to run.
TINY = [
    "data.embedded.images=8",
    "data.embedded.image_size=128",
    "data.embedded.objects_min=3",
    "data.embedded.objects_max=6",
    "detector.min_size=128",
    "detector.max_size=128",
    "detector.fpn_channels=32",
    # P3–P5 keep the tiny DAG fast; the stride-4 level has its own tests in tests/models
    "detector.levels=[3, 4, 5]",
    "anchors.anchors_per_level=3",
    "anchors.evolve_generations=20",
    "train.epochs=1",
    "train.samples_per_epoch=8",
    "train.batch_size=4",
    "train.num_workers=0",
    "train.warmup_iters=1",
    "evaluate.sliced.tile=64",
    "evaluate.preview_images=2",
    "sr.epochs=1",
    "sr.patches_per_epoch=32",
    "sr.batch_size=8",
]


def sod(*argv: str) -> int:
    """Run ``sod`` in-process with the tiny overrides."""
    sets = [a for s in TINY for a in ("--set", s)]
    return main([argv[0], "-q", *sets, *argv[1:]])


def build_pipeline(root: Path, *sets: str) -> Path:
    """Run `prepare`, `augment` and `anchors` into ``root``, laid out like the repo; ``sets`` are extra
    ``--set key=value`` arguments (after the tiny overrides, so they win). Returns ``root``."""
    r = root / "reports"
    assert sod("prepare", *sets, "--out", str(root / "data/prepared"), "--report", str(r / "prepare.json"),
               "--sizes-csv", str(r / "sizes.csv"), "--sizes-png", str(r / "sizes.png")) == 0  # fmt: skip
    assert sod("augment", *sets, "--train", str(root / "data/prepared/train.json"),
               "--out", str(root / "data/augmented"),
               "--report", str(r / "augment.json"), "--preview", str(r / "augment.png")) == 0  # fmt: skip
    assert sod("anchors", *sets, "--train", str(root / "data/augmented/train.json"),
               "--out", str(root / "models/anchors.json"),
               "--report", str(r / "anchors.json"), "--plot", str(r / "anchors.png")) == 0  # fmt: skip
    return root


@pytest.fixture(scope="session")
def tiny_pipeline(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory laid out like the repo after `prepare`, `augment` and `anchors`."""
    return build_pipeline(tmp_path_factory.mktemp("pipeline"))


@pytest.fixture(scope="session")
def sr_input(tiny_pipeline: Path) -> dict[str, Path]:
    """An SR model file, anchors fitted at the ×2 input, and two SR-input detectors: frozen and fine-tuned."""
    from sod.models.sr import build_sr, save_sr
    from tests.stages.test_train_detector import _train

    root = tiny_pipeline
    torch.manual_seed(0)
    up = build_sr("espcn", 2, "y", residual=True)
    files = {"sr": root / "models/sr_x2.pt", "anchors": root / "models/anchors_x2.json"}
    save_sr(files["sr"], up, up.spec())
    # Score threshold 0 (post-processing only): the one-epoch model's scores sit near the focal prior.
    sets = ("--set", "detector.input_upscale=sr", "--set", "detector.score_thresh=0.0")
    code = sod(
        "anchors", *sets, "--train", str(root / "data/augmented/train.json"), "--out", str(files["anchors"]),
        "--report", str(root / "reports/anchors_x2.json"), "--plot", str(root / "reports/anchors_x2.png"),
    )  # fmt: skip
    assert code == 0
    for name, finetune in (("sr_frozen", "false"), ("sr_finetuned", "true")):
        code, paths = _train(
            root, name, *sets, "--set", f"detector.sr_finetune={finetune}", "--sr-model", str(files["sr"]),
            anchors=files["anchors"],
        )  # fmt: skip
        assert code == 0
        files[name] = paths["out"]
    return files
