"""`sod train-detector` on the tiny pipeline: outputs, resume of a finished config, reload for inference."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch

from sod.engine import EpochSampler
from sod.io import read_json
from sod.models.detector import load_detector
from sod.models.sr import load_sr
from sod.models.upscale import UpscaledDetector
from tests.stages.conftest import sod


def _train(root: Path, name: str, *extra: str, anchors: Path | None = None) -> tuple[int, dict[str, Path]]:
    paths = {
        "out": root / "models" / f"{name}.pt",
        "report": root / "reports" / f"{name}.json",
        "csv": root / "reports" / f"{name}_loss.csv",
        "ckpt": root / "checkpoints" / name,
    }
    code = sod(
        "train-detector", "--train", str(root / "data/augmented/train.json"),
        "--anchors", str(anchors or root / "models/anchors.json"), "--out", str(paths["out"]),
        "--report", str(paths["report"]), "--loss-csv", str(paths["csv"]), "--checkpoint-dir", str(paths["ckpt"]),
        *extra,
    )  # fmt: skip
    return code, paths


@pytest.fixture(scope="module")
def trained(tiny_pipeline: Path) -> dict[str, Path]:
    code, paths = _train(tiny_pipeline, "detector")
    assert code == 0
    return paths


def test_outputs(trained: dict[str, Path]) -> None:
    report = read_json(trained["report"])
    assert report["epochs"] == 1 and report["train_images"] > 0 and report["final_loss"] > 0
    curve = pd.read_csv(trained["csv"])
    assert list(curve["epoch"]) == [0] and {"loss", "classification", "bbox_regression", "lr"} <= set(curve.columns)
    assert not any(trained["ckpt"].glob("*.pt"))  # the checkpoint goes once the model is written


def test_model_reloads_for_inference_with_its_anchors(trained: dict[str, Path], tiny_pipeline: Path) -> None:
    model, meta = load_detector(trained["out"])
    anchors = read_json(tiny_pipeline / "models/anchors.json")
    assert meta["anchors"] == anchors and meta["num_classes"] == len(meta["categories"]) == 11
    assert meta["label_to_category"] == {i: c["id"] for i, c in enumerate(meta["categories"], start=1)}
    # float32 cell anchors: equal to the file's values up to float32 rounding.
    torch.testing.assert_close(
        torch.tensor(model.anchor_generator.anchors_wh()), torch.tensor(anchors["anchors_wh"]), rtol=0, atol=1e-5
    )
    with torch.inference_mode():
        (out,) = model([torch.rand(3, 128, 128)])
    assert out["boxes"].shape[1] == 4 and out["boxes"].shape[0] <= 300


def test_a_killed_run_resumes_from_its_checkpoint(tiny_pipeline: Path, trained: dict[str, Path]) -> None:
    # A checkpoint of this exact config that says "epoch 0 done" stands in for a run killed after epoch 0:
    # the rerun must resume (0 epochs left) and write the checkpoint's weights, not train from scratch.
    from sod import engine
    from sod.config import load_params
    from sod.stages import train_detector
    from tests.stages.conftest import TINY

    params = load_params("params.yaml", TINY)
    anchors = read_json(tiny_pipeline / "models/anchors.json")
    train_json = tiny_pipeline / "data/augmented/train.json"
    config = train_detector._fingerprint_config(params, anchors, train_json, 11, 1)
    ckpt_dir = tiny_pipeline / "checkpoints" / "resumed"
    model, _ = load_detector(trained["out"])
    marker = {k: v + 1 if v.is_floating_point() else v for k, v in model.state_dict().items()}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad])  # as the stage builds it
    engine.save_checkpoint(
        ckpt_dir / f"{engine.config_fingerprint(config)[:16]}.pt",
        {"model": marker, "optimizer": opt.state_dict(), "scheduler": None, "scaler": None, "epoch": 0,
         "history": [{"epoch": 0, "loss": 1.0, "images_per_s": 1.0, "lr": 0.0}], "config": config},
    )  # fmt: skip
    code, paths = _train(tiny_pipeline, "resumed")
    assert code == 0
    resumed, _ = load_detector(paths["out"])
    assert all(torch.equal(resumed.state_dict()[k], v) for k, v in marker.items())
    assert read_json(paths["report"])["final_loss"] == 1.0


def test_epoch_sampler_by_hand() -> None:
    s = EpochSampler(3, 7, seed=0)
    first = list(s)
    assert len(first) == 7 and sorted(set(first)) == [0, 1, 2]
    assert all(2 <= first.count(i) <= 3 for i in range(3))  # the set is repeated, not sampled with replacement
    assert list(s) == first  # same epoch, same order
    s.set_epoch(1)
    assert list(s) != first
    shards = [list(EpochSampler(3, 7, seed=0, rank=r, world_size=2)) for r in range(2)]
    assert len(shards[0]) == len(shards[1]) == 3  # equal shards keep DDP ranks in step
    assert sorted(shards[0] + shards[1]) == sorted(first[:6])


def test_sr_input_detector_saves_its_sr_network(sr_input: dict[str, Path]) -> None:
    assert read_json(sr_input["anchors"])["min_size"] == 256  # the network sees the tiny 128 px scenes at 2×
    sr_weights = load_sr(sr_input["sr"]).net.state_dict()
    frozen, meta = load_detector(sr_input["sr_frozen"])
    assert isinstance(frozen, UpscaledDetector) and frozen.mode == "sr" and meta["sr"]["model"] == "espcn"
    assert all(torch.equal(frozen.upscaler.net.state_dict()[k], v) for k, v in sr_weights.items())
    tuned, _ = load_detector(sr_input["sr_finetuned"])  # the detection loss moved the SR weights
    assert not all(torch.equal(tuned.upscaler.net.state_dict()[k], v) for k, v in sr_weights.items())
    with torch.inference_mode():
        (out,) = frozen([torch.rand(3, 128, 128)])
    assert out["boxes"].shape[1] == 4 and (out["boxes"] <= 128 + 1e-3).all()


def test_sr_input_without_sr_model_is_a_clear_error(
    tiny_pipeline: Path, sr_input: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    code, _ = _train(tiny_pipeline, "no_sr", "--set", "detector.input_upscale=sr", anchors=sr_input["anchors"])
    assert code == 2 and "--sr-model" in capsys.readouterr().err
