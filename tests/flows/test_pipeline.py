"""flows/pipeline.py: the whole DAG of a tiny repo copy under the Prefect test server, and its pieces."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest
import yaml

from flows.pipeline import TransientError, _retry_transient, dag_order, run_dvc


def test_dag_order_puts_readers_after_writers(tmp_path: Path) -> None:
    dvc_yaml = tmp_path / "dvc.yaml"
    stages = {
        "b": {"cmd": "x", "deps": ["data/a/file.json"], "outs": ["data/b"]},  # reads inside a's output dir
        "c": {"cmd": "x", "deps": ["data/b", "reports/a.json"], "outs": ["data/c"]},
        "a": {"cmd": "x", "deps": ["code.py"], "outs": ["data/a"], "metrics": [{"reports/a.json": {"cache": False}}]},
        "d": {"cmd": "x", "deps": ["code.py"], "outs": ["data/d"]},
    }
    dvc_yaml.write_text(yaml.safe_dump({"stages": stages}, sort_keys=False))
    assert dag_order(dvc_yaml) == ["a", "b", "c", "d"]
    stages["a"]["deps"].append("data/c")
    dvc_yaml.write_text(yaml.safe_dump({"stages": stages}, sort_keys=False))
    with pytest.raises(ValueError, match="depend on each other"):
        dag_order(dvc_yaml)


class _State:
    def __init__(self, exc: Exception) -> None:
        self.exc = exc

    def result(self) -> None:
        raise self.exc


def test_only_transient_failures_are_retried() -> None:
    assert _retry_transient(None, None, _State(TransientError("lock")))
    assert not _retry_transient(None, None, _State(RuntimeError("exit 2: bad data")))


def test_a_failing_command_names_itself_and_is_not_transient(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="`dvc repro nosuchstage` failed") as info:
        run_dvc(["repro", "nosuchstage"], tmp_path, {"PATH": "", "DVC_NO_ANALYTICS": "1"})
    assert not isinstance(info.value, TransientError)


@pytest.mark.slow
def test_whole_dag_through_the_flow(pipeline_summary: dict[str, dict[str, float]], tiny_repo: Path) -> None:
    summary = pipeline_summary
    stages = dag_order(tiny_repo / "dvc.yaml")
    # Every stage ran through DVC and is recorded in dvc.lock.
    lock = yaml.safe_load((tiny_repo / "dvc.lock").read_text())["stages"]
    assert set(lock) == set(stages)
    # The summary holds each stage's report numbers (from reports/<stage>.json).
    assert summary["prepare"]["train.images"] + summary["prepare"]["val.images"] == 8
    assert {"AP", "AP_small", "sliced.AP"} <= set(summary["evaluate"])
    assert summary["train_detector"]["epochs"] == 1
    # One parent run per flow run; every stage's run nested under it, in the repo's own store.
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tiny_repo / 'mlflow.db'}")
    runs = client.search_runs(client.get_experiment_by_name("sod").experiment_id)
    parents = [r for r in runs if r.data.tags.get("sod.flow") == "pipeline"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert sorted(r.data.tags["dvc.stage"] for r in children) == sorted(stages)
    assert parents[0].data.metrics["evaluate.AP"] == summary["evaluate"]["AP"]
    (version,) = client.search_model_versions("name='sod-detector'")
    assert version.tags["eval.AP"] == f"{summary['evaluate']['AP']:.6g}"  # evaluate found the model it scored
