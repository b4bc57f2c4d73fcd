"""flows/pipeline.py: the whole DAG of a tiny repo copy under the Prefect test server, and its pieces."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import yaml
from prefect import flow

from flows.pipeline import (
    TransientError,
    _retry_transient,
    command_env,
    dag_order,
    has_remote,
    reproduce,
    run_dvc,
    run_stage,
)


def _dvc_repo(root: Path, stages: dict[str, str]) -> Path:
    """A DVC repo (no git) at ``root`` whose stages run the given shell commands, each writing ``<name>.out``."""
    root.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], cwd=root, check=True)
    spec = {name: {"cmd": cmd, "outs": [{f"{name}.out": {"cache": False}}]} for name, cmd in stages.items()}
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": spec}, sort_keys=False))
    return root


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


def test_stages_run_the_code_of_their_repo(tmp_path: Path) -> None:
    # A worker's Python has sod installed from elsewhere; a clone's stages must import the clone's sod.
    (tmp_path / "sod").mkdir()
    (tmp_path / "sod" / "__init__.py").write_text("WHERE = 'clone'\n")
    cmd = "python -P -c \"import sod; open('where.out', 'w').write(sod.WHERE)\""  # -P: not from the cwd
    repo = _dvc_repo(tmp_path, {"where": cmd})
    assert reproduce("where", repo, command_env(repo)) is True
    assert (repo / "where.out").read_text() == "clone"


def test_reproduce_runs_a_stage_once_and_records_it(tmp_path: Path) -> None:
    repo = _dvc_repo(tmp_path, {"hello": "echo hi > hello.out"})
    env = command_env(repo)
    assert reproduce("hello", repo, env) is True
    assert (repo / "hello.out").read_text() == "hi\n"
    assert "hello" in yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    assert reproduce("hello", repo, env) is False  # DVC finds it up to date
    assert reproduce("hello", repo, env, force=True) is True
    assert not has_remote(repo)
    with (repo / ".dvc" / "config").open("a") as config:  # what `dvc remote add store /nowhere` appends
        config.write("['remote \"store\"']\n    url = /nowhere\n")
    assert has_remote(repo)


def test_a_failing_stage_gives_its_exit_code_and_output_tail(tmp_path: Path) -> None:
    cmd = "echo reading scenes; seq 1 100 >&2; echo 'bad record 7' >&2; exit 2"
    repo = _dvc_repo(tmp_path, {"bad": cmd})
    with pytest.raises(RuntimeError, match="--single-item bad` failed with exit code 2") as info:
        reproduce("bad", repo, command_env(repo))
    assert not isinstance(info.value, TransientError)
    lines = str(info.value).splitlines()
    # The last 40 lines of the output (stdout and stderr), after the headline.
    assert "bad record 7" in lines and "100" in lines and "50" not in lines and len(lines) == 41


def test_a_killed_stage_is_transient(tmp_path: Path) -> None:
    repo = _dvc_repo(tmp_path, {"killed": "echo started; kill -9 $$"})  # the stage's shell gets SIGKILL
    with pytest.raises(TransientError, match="exit code -9") as info:
        reproduce("killed", repo, command_env(repo))
    assert "started" in str(info.value)


def test_a_stage_that_cannot_take_the_repo_lock_is_transient(tmp_path: Path) -> None:
    repo = _dvc_repo(tmp_path, {"hello": "echo hi > hello.out"})
    holder = (
        "import sys, time; from dvc.repo import Repo; Repo('.').lock.lock(); print('held', flush=True); time.sleep(60)"
    )
    proc = subprocess.Popen([sys.executable, "-c", holder], cwd=repo, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "held\n"
        with pytest.raises(TransientError, match="Unable to acquire lock"):
            reproduce("hello", repo, command_env(repo))  # DVC waits for the lock 3 s, then gives up
    finally:
        proc.kill()
        proc.wait()
    assert reproduce("hello", repo, command_env(repo)) is True


@pytest.mark.slow
def test_the_task_retries_a_transient_failure_only(prefect_server: None, tmp_path: Path) -> None:
    # The first attempt is killed, the retry passes; a stage that fails on its own runs once.
    flaky = "test -f tried || { touch tried; kill -9 $$; }; echo done > flaky.out"
    bad = "echo attempt >> attempts; exit 2"
    repo = _dvc_repo(tmp_path, {"flaky": flaky, "bad": bad})
    quick = run_stage.with_options(retry_delay_seconds=0)

    @flow
    def one(stage: str) -> bool:
        return quick(stage, repo, command_env(repo))

    assert one("flaky") is True and (repo / "flaky.out").read_text() == "done\n"
    with pytest.raises(RuntimeError, match="exit code 2"):
        one("bad")
    assert (repo / "attempts").read_text() == "attempt\n"


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
