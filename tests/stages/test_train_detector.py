"""`sod train-detector` on the tiny pipeline: outputs, reload for inference, resume after a real kill, same
bytes on a rerun, DDP under torchrun."""

from __future__ import annotations

import hashlib
import signal
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import torch

from sod.engine import EpochSampler
from sod.io import OWNER_MARKER, read_json, write_owner_marker
from sod.models.detector import load_detector
from sod.models.sr import load_sr
from sod.models.upscale import UpscaledDetector
from tests.stages import hooked_sod
from tests.stages.conftest import TINY, sod


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
    assert report["crowd_annotations_dropped"] == 0  # the tiny pipeline has no crowd regions
    # No timing in the files DVC versions: the same training rewrites them byte for byte.
    assert not {"wall_s", "images_per_s"} & set(report)
    curve = pd.read_csv(trained["csv"])
    assert list(curve["epoch"]) == [0] and {"loss", "classification", "bbox_regression", "lr"} <= set(curve.columns)
    assert "images_per_s" not in curve.columns
    assert not any(trained["ckpt"].glob("*.pt"))  # the checkpoint goes once the model is written


def test_model_reloads_for_inference_with_its_anchors(trained: dict[str, Path], tiny_pipeline: Path) -> None:
    model, meta = load_detector(trained["out"])
    anchors = read_json(tiny_pipeline / "models/anchors.json")
    categories = read_json(tiny_pipeline / "data/augmented/train.json")["categories"]
    assert meta["anchors"] == anchors and meta["categories"] == categories
    assert meta["num_classes"] == len(categories)
    assert meta["label_to_category"] == {i: c["id"] for i, c in enumerate(meta["categories"], start=1)}
    # float32 cell anchors: equal to the file's values up to float32 rounding.
    torch.testing.assert_close(
        torch.tensor(model.anchor_generator.anchors_wh()), torch.tensor(anchors["anchors_wh"]), rtol=0, atol=1e-5
    )
    with torch.inference_mode():
        (out,) = model([torch.rand(3, 128, 128)])
    assert out["boxes"].shape[1] == 4 and out["boxes"].shape[0] <= 300


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


# ------------------------------------------------- the real command in child processes: kills, md5, torchrun
def _cli_train(
    root: Path, name: str, hooks: list[str], *sets: str, nproc: int = 1
) -> tuple[subprocess.CompletedProcess[str], dict[str, Path]]:
    """``sod train-detector`` on the tiny pipeline in a child process (see tests/stages/hooked_sod.py)."""
    paths = {
        "out": root / name / "models" / "detector.pt",
        "report": root / name / "reports" / "train_detector.json",
        "csv": root / name / "reports" / "train_loss.csv",
        "ckpt": root / name / "checkpoints",
    }
    overrides = [a for s in (*TINY, *sets) for a in ("--set", s)]
    argv = [
        "train-detector", "-q", *overrides, "--train", str(root / "data/augmented/train.json"),
        "--anchors", str(root / "models/anchors.json"), "--out", str(paths["out"]), "--report", str(paths["report"]),
        "--loss-csv", str(paths["csv"]), "--checkpoint-dir", str(paths["ckpt"]),
    ]  # fmt: skip
    return hooked_sod.run(hooks, argv, nproc=nproc), paths


def _lines(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


# Two epochs of two steps each (8 samples per epoch, batches of 4): a kill at step 3 lands inside epoch 1.
TWO_EPOCHS = "train.epochs=2"


@pytest.fixture(scope="module")
def uninterrupted(tiny_pipeline: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("uninterrupted")
    epochs = root / "epochs.log"
    proc, paths = _cli_train(tiny_pipeline, str(root / "run"), ["--epoch-log", str(epochs)], TWO_EPOCHS)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _lines(epochs) == ["0", "1"]
    return paths


@pytest.mark.slow
def test_two_runs_with_the_same_params_write_the_same_model_bytes(
    tiny_pipeline: Path, uninterrupted: dict[str, Path], tmp_path: Path
) -> None:
    # The in-test stand-in for "a second `dvc repro --force train_detector` gives the same md5".
    proc, again = _cli_train(tiny_pipeline, str(tmp_path / "again"), [], TWO_EPOCHS)
    assert proc.returncode == 0, proc.stderr[-3000:]
    md5 = [hashlib.md5(p.read_bytes()).hexdigest() for p in (uninterrupted["out"], again["out"])]
    assert md5[0] == md5[1]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("kill", "trained_before_kill"),
    [(["--kill-after-checkpoint", "0"], ["0"]), (["--kill-at-step", "3"], ["0", "1"])],
    ids=["after-epoch-0", "inside-epoch-1"],
)
def test_killed_run_resumes_to_the_uninterrupted_model(
    tiny_pipeline: Path,
    uninterrupted: dict[str, Path],
    tmp_path: Path,
    kill: list[str],
    trained_before_kill: list[str],
) -> None:
    """SIGKILL after epoch 0's checkpoint, or in the middle of epoch 1; the rerun must end on the same bytes.

    Checkpoints are per epoch: a kill inside epoch 1 loses that epoch's steps and the rerun trains epoch 1
    again from epoch 0's checkpoint. A rerun that started over, drew other random numbers or skipped an
    epoch would write other weights.
    """
    run, logs = str(tmp_path / "run"), tmp_path / "logs"
    logs.mkdir()
    proc, paths = _cli_train(tiny_pipeline, run, [*kill, "--epoch-log", str(logs / "killed")], TWO_EPOCHS)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    assert _lines(logs / "killed") == trained_before_kill and not paths["out"].exists()
    (ckpt,) = paths["ckpt"].glob("*.pt")
    epoch0 = torch.load(ckpt, weights_only=True)
    assert epoch0["epoch"] == 0

    proc, paths = _cli_train(tiny_pipeline, run, ["--epoch-log", str(logs / "rerun")], TWO_EPOCHS)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _lines(logs / "rerun") == ["1"]  # resumed: epoch 0 came from the checkpoint
    assert paths["out"].read_bytes() == uninterrupted["out"].read_bytes()
    curves = [pd.read_csv(p) for p in (paths["csv"], uninterrupted["csv"])]
    assert list(curves[0]["epoch"]) == [0, 1] and list(curves[0]["loss"]) == list(curves[1]["loss"])
    # Epoch 1 moved the weights, so equal final bytes mean epoch 1 really ran, from epoch 0's weights.
    final, _ = load_detector(paths["out"])
    assert not all(torch.equal(final.state_dict()[k], v) for k, v in epoch0["model"].items())


@pytest.mark.slow
def test_ddp_under_torchrun_shards_samples_and_only_rank_0_writes(tiny_pipeline: Path, tmp_path: Path) -> None:
    """``torchrun --nproc_per_node=2`` on the real command (gloo on CPU, 2 epochs of 2 samples per rank)."""
    logs, out_root = tmp_path / "logs", tmp_path / "out"
    logs.mkdir()
    sets = (TWO_EPOCHS, "train.samples_per_epoch=4", "train.batch_size=2")
    hooks = ["--sample-log", str(logs / "samples"), "--write-log", str(logs / "writes"), "--write-root", str(out_root)]
    proc, paths = _cli_train(tiny_pipeline, str(out_root), hooks, *sets, nproc=2)
    assert proc.returncode == 0, proc.stderr[-3000:]

    # Each rank drew 2 images per epoch; together they are the first 4 of the single-process order, no overlap.
    train_json = tiny_pipeline / "data/augmented/train.json"
    ids = [im["id"] for im in read_json(train_json)["images"]]
    assert len(ids) >= 4  # one permutation covers an epoch: a repeated image would be by design, not a bug
    drawn = {r: _lines(logs / f"samples.rank{r}") for r in (0, 1)}
    for epoch in (0, 1):
        seen = [[int(i) for e, i in zip(d[::2], d[1::2], strict=True) if int(e) == epoch] for d in drawn.values()]
        assert len(seen[0]) == len(seen[1]) == 2 and not set(seen[0]) & set(seen[1])
        sampler = EpochSampler(len(ids), 4, seed=0)
        sampler.set_epoch(epoch)
        assert sorted(seen[0] + seen[1]) == sorted(ids[i] for i in sampler)

    # Only rank 0 touched the output tree: the model, report, curve and checkpoint all come from it.
    assert not (logs / "writes.rank1").exists()
    written = {line.split(" ", 1)[1] for line in (logs / "writes.rank0").read_text().splitlines()}
    assert {str(paths[k]) for k in ("out", "report", "csv")} <= written
    assert read_json(paths["report"])["world_size"] == 2 and not any(paths["ckpt"].glob("*.pt"))

    # The model rank 0 wrote loads and evaluates.
    model, meta = load_detector(paths["out"])
    assert meta["num_classes"] == len(meta["categories"]) >= 1
    ev = tmp_path / "eval"
    code = sod(
        "evaluate", "--model", str(paths["out"]), "--val", str(tiny_pipeline / "data/prepared/val.json"),
        "--report", str(ev / "evaluate.json"), "--per-class", str(ev / "per_class.csv"),
        "--detections", str(ev / "detections.json"), "--plots-dir", str(ev / "plots"),
    )  # fmt: skip
    assert code == 0 and isinstance(read_json(ev / "evaluate.json")["AP"], float)


# ------------------------------------------------- data safety: the checkpoint directory is sod's or refused
def test_a_checkpoint_dir_holding_a_users_file_is_refused(tiny_pipeline: Path, capsys: pytest.CaptureFixture) -> None:
    ckpt = tiny_pipeline / "checkpoints" / "users"
    ckpt.mkdir(parents=True)
    (ckpt / "0123456789abcdef.pt").write_bytes(b"the user's weights")  # a checkpoint-like name, no marker
    code, paths = _train(tiny_pipeline, "users")
    assert code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(ckpt) in err and "Traceback" not in err
    assert [p.name for p in ckpt.iterdir()] == ["0123456789abcdef.pt"]
    assert (ckpt / "0123456789abcdef.pt").read_bytes() == b"the user's weights"
    assert not paths["out"].exists() and not paths["report"].exists()  # refused before training


def test_only_the_checkpoint_it_wrote_is_removed(tiny_pipeline: Path) -> None:
    # The stage's own directory (marker present) where the user left a file: training runs, its own
    # checkpoint goes once the model is written, the user's file stays.
    ckpt = tiny_pipeline / "checkpoints" / "shared"
    ckpt.mkdir(parents=True)
    write_owner_marker(ckpt, "train_detector", [])
    (ckpt / "notes.pt").write_bytes(b"the user's")
    code, paths = _train(tiny_pipeline, "shared")
    assert code == 0 and paths["out"].is_file()
    assert sorted(p.name for p in ckpt.iterdir()) == [OWNER_MARKER, "notes.pt"]
    assert (ckpt / "notes.pt").read_bytes() == b"the user's"
    assert read_json(ckpt / OWNER_MARKER) == {"stage": "train_detector", "files": []}
