"""sod/tracking.py: metrics and params as logged, a temporary SQLite store, and a tracking server that is down."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pytest
import torch
import yaml

from sod import tracking
from sod.cli import main
from sod.config import Params
from sod.io import write_json
from sod.models.sr import build_sr, save_sr


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """Tracking on, into a SQLite store in tmp_path, run from tmp_path (the markers' directory)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SOD_TRACKING", "on")
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "test")
    monkeypatch.delenv(tracking.PARENT_ENV, raising=False)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri


def test_numeric_metrics_flattens_numbers_only() -> None:
    report = {"AP": 0.5, "AP_large": None, "n": 3, "ok": True, "device": "cpu", "sliced": {"AP": 0.25}, "history": [1]}
    assert tracking.numeric_metrics(report) == {"AP": 0.5, "n": 3.0, "sliced.AP": 0.25}


def test_stage_params_are_the_stage_sections_of_dvc_yaml(tmp_path: Path) -> None:
    dvc_yaml = tmp_path / "dvc.yaml"
    dvc_yaml.write_text(yaml.safe_dump({"stages": {"anchors": {"cmd": "x", "params": ["anchors", "detector.levels"]}}}))
    got = tracking.stage_params(Params(), "anchors", dvc_yaml)
    assert got["detector.levels"] == [3, 4, 5] and got["anchors.method"] == "kmeans"
    assert {k.split(".")[0] for k in got} == {"anchors", "detector"} and "detector.min_size" not in got
    assert len(tracking.stage_params(Params(), "other", dvc_yaml)) > len(got)  # unknown stage: every param


def test_data_hash_follows_upstream_outputs_in_dvc_lock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    Path("code.py").write_text("x = 1\n")
    Path("dvc.yaml").write_text(yaml.safe_dump({"stages": {"b": {"cmd": "x", "deps": ["code.py", "data/a"]}}}))

    def lock(md5: str) -> None:
        Path("dvc.lock").write_text(yaml.safe_dump({"stages": {"a": {"outs": [{"path": "data/a", "md5": md5}]}}}))

    lock("1" * 32)
    first = tracking.data_hash("b")
    assert tracking.data_hash("b") == first and len(first) == 16
    lock("2" * 32)
    assert tracking.data_hash("b") != first
    assert tracking.data_hash("nodeps") == "none"


def _sr_stage(root: Path) -> tracking.StageRun:
    """A finished train_sr stage in ``root``: a tiny real model file, a report with history, a preview file."""
    torch.manual_seed(0)
    config = {"model": "espcn", "scale": 2, "channels": "y", "residual": True}
    save_sr(root / "models/sr.pt", build_sr(**config), config)
    history = [{"epoch": 0, "loss": 0.5, "lr": 0.001}, {"epoch": 1, "loss": 0.25, "lr": 0.0005}]
    write_json(
        root / "reports/train_sr.json", {"psnr_sr": 30.5, "small_objects": {"psnr_sr": 28.0}, "history": history}
    )
    (root / "reports/plots").mkdir(parents=True)
    (root / "reports/plots/sr_preview.png").write_bytes(b"png")
    return tracking.StageRun(
        stage="train_sr",
        report="reports/train_sr.json",
        artifacts=["reports/plots/sr_preview.png"],
        params={"sr.model": "espcn", "sr.scale": 2, "sr.perceptual.layers": None},
        model="models/sr.pt",
        model_kind="sr",
        timing={"wall_s": 12.5, "images_per_s": None},  # a stage's speeds: MLflow only, never its report
    )


def test_stage_run_in_a_sqlite_store(store: str, tmp_path: Path) -> None:
    run_id = tracking.log_stage(_sr_stage(tmp_path))
    assert run_id is not None
    client = mlflow.MlflowClient(tracking_uri=store)
    run = client.get_run(run_id)
    assert run.data.params == {"sr.model": "espcn", "sr.scale": "2", "sr.perceptual.layers": "None"}
    assert run.data.metrics["psnr_sr"] == 30.5 and run.data.metrics["small_objects.psnr_sr"] == 28.0
    assert run.data.metrics["timing.wall_s"] == 12.5 and "timing.images_per_s" not in run.data.metrics
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "loss")] == [(0, 0.5), (1, 0.25)]
    assert run.data.tags["dvc.stage"] == "train_sr"
    assert run.data.tags["params.hash"] == tracking.params_hash(
        run.data.params | {"sr.scale": 2, "sr.perceptual.layers": None}
    )
    assert {"git.commit", "dvc.data_hash"} <= set(run.data.tags)
    assert {a.path for a in client.list_artifacts(run_id)} >= {"train_sr.json", "sr_preview.png"}
    (version,) = client.search_model_versions("name='sod-sr'")
    assert version.tags["psnr_sr"] == "30.5"
    model = mlflow.pytorch.load_model("models:/sod-sr/1")
    assert model(torch.rand(1, 3, 8, 8)).shape == (1, 3, 16, 16)


def test_tracking_off_logs_nothing(store: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOD_TRACKING", "off")
    assert tracking.log_stage(_sr_stage(tmp_path)) is None
    assert not (tmp_path / "mlflow.db").exists() and not tracking.PENDING_DIR.exists()


def _variant(root: Path, name: str, gamma: float) -> None:
    params = {"detector.focal.gamma": gamma, "train.epochs": 1}
    evaluate = {"AP": gamma / 10, "AP50": 0.5, "AP_small": 0.1, "AP_medium": 0.2, "AP_large": None}
    write_json(root / "runs" / f"{name}.json", {"variant": name, "changed": {}, "params": params, "evaluate": evaluate})


def test_server_down_keeps_the_result_and_log_run_logs_it_later(
    store: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    _variant(tmp_path, "pipeline", 2.0)
    _variant(tmp_path, "gamma_0", 0.0)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # nothing listens on the discard port
    argv = ["report", "--params", "none.yaml", "--runs", "runs", "--table", "ablation.csv", "--plots-dir", "plots"]
    Path("none.yaml").write_text("{}\n")
    assert main(argv) == 0
    assert (tmp_path / "ablation.csv").is_file() and (tmp_path / "plots" / "ap_vs_focal_gamma.png").is_file()
    assert "sod log-run report" in caplog.text
    marker = tracking.PENDING_DIR / "report.json"
    assert json.loads(marker.read_text())["report"] == "ablation.csv"

    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    assert main(["log-run", "report"]) == 0
    assert not marker.exists()
    client = mlflow.MlflowClient(tracking_uri=store)
    (run,) = client.search_runs([client.get_experiment_by_name("test").experiment_id], "tags.`dvc.stage` = 'report'")
    assert {a.path for a in client.list_artifacts(run.info.run_id)} == {"ablation.csv", "plots"}
    assert main(["log-run", "report"]) == 2  # nothing pending any more: a one-line error


def test_log_run_deletes_only_a_pending_record_it_wrote(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    tracking.PENDING_DIR.mkdir()
    foreign = tracking.PENDING_DIR / "report.json"
    foreign.write_text('{"my": "notes"}')  # not a StageRun
    other = tracking.PENDING_DIR / "evaluate.json"
    other.write_text(json.dumps({"stage": "train_sr", "report": "r.json"}))  # another stage's record
    (tmp_path / "notes.json").write_text(json.dumps({"stage": "../notes", "report": "r.json"}))
    for stage, expected in (("report", "not a pending sod run"), ("evaluate", "'train_sr', not 'evaluate'"),
                            ("../notes", "no pending MLflow run")):  # fmt: skip
        assert main(["log-run", stage]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and expected in err, err
    assert foreign.read_text() == '{"my": "notes"}' and other.exists() and (tmp_path / "notes.json").exists()
