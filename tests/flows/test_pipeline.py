"""flows/pipeline.py: the whole DAG of a tiny repo copy under the Prefect test server, and its pieces."""

from __future__ import annotations

import shutil
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
    entry_path,
    has_remote,
    reproduce,
    run_dvc,
    run_stage,
    stage_exit_code,
    sync,
    transient_failure,
)
from sod.errors import EXIT_TRANSIENT

REPO = Path(__file__).resolve().parents[2]


def _dvc_repo(root: Path, stages: dict[str, str], cache: bool = False) -> Path:
    """A DVC repo (no git) at ``root`` whose stages run the given shell commands, each writing ``<name>.out``
    (kept in DVC's cache when ``cache``)."""
    root.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], cwd=root, check=True)
    spec = {name: {"cmd": cmd, "outs": [{f"{name}.out": {"cache": cache}}]} for name, cmd in stages.items()}
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


def test_entry_path_reads_both_forms_of_a_dvc_yaml_entry() -> None:
    assert entry_path("data/prepared") == "data/prepared"
    assert entry_path({"reports/evaluate.json": {"cache": False}}) == "reports/evaluate.json"


class _State:
    def __init__(self, exc: Exception) -> None:
        self.exc = exc

    def result(self) -> None:
        raise self.exc


def test_only_transient_failures_are_retried() -> None:
    assert _retry_transient(None, None, _State(TransientError("lock")))
    assert not _retry_transient(None, None, _State(RuntimeError("exit 2: bad data")))


def _raised(exc: BaseException, cause: BaseException | None = None) -> BaseException:
    """``exc`` as DVC raises it: ``raise exc from cause`` (the chain a traceback shows)."""
    try:
        raise exc from cause
    except BaseException as caught:
        return caught


def test_transient_failure_reads_types_and_exit_codes_not_messages() -> None:
    from dvc.exceptions import DownloadError, DvcException, ReproductionError, UploadError
    from dvc.lock import LockError
    from dvc.stage.exceptions import StageCmdFailedError

    def failed_stage(cmd: str, code: int) -> BaseException:  # what Repo.reproduce raises for a failed command
        return _raised(ReproductionError("x"), StageCmdFailedError(cmd, code))

    assert stage_exit_code(failed_stage("sod prepare", EXIT_TRANSIENT)) == 75
    assert transient_failure(failed_stage("sod prepare", EXIT_TRANSIENT))
    assert transient_failure(failed_stage("sod prepare", -9)) and transient_failure(failed_stage("sh x", 137))
    assert not transient_failure(failed_stage("sod prepare", 2)) and not transient_failure(failed_stage("x", 1))
    # The code is the one DVC appends at the end, not words inside the command line.
    assert stage_exit_code(failed_stage("echo 'exited with 75'", 2)) == 2
    assert not transient_failure(failed_stage("sod prepare --out /data/Timeout_Connection", 2))
    assert transient_failure(LockError("Unable to acquire lock")) and transient_failure(DownloadError(3))
    assert transient_failure(UploadError(1))
    assert transient_failure(_raised(DvcException("failed to query remote"), ConnectionRefusedError(111, "refused")))
    assert transient_failure(_raised(DvcException("x"), TimeoutError("read timed out")))
    # A message full of the words the flow once grepped for is just a message.
    assert not transient_failure(DvcException("Connection Timeout: timed out; Unable to acquire lock"))
    assert stage_exit_code(LockError("x")) is None


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


def _sod_stage(tmp_path: Path, raise_expr: str) -> str:
    """A stage command that runs the real ``sod`` CLI (``sod.cli.main``) with ``prepare`` replaced by a function
    that prints a dataset path full of "Timeout"/"Connection", then raises ``raise_expr``."""
    script = tmp_path / "stage.py"
    script.write_text(
        "import sys\n"
        "from sod import cli\n"
        "from sod.errors import DataError\n"
        "def fail(args, params):\n"
        "    print('reading /data/Timeout_Connection/scenes (timed out once, Connection reset)', flush=True)\n"
        f"    raise {raise_expr}\n"
        "cli._prepare = fail\n"
        f"sys.exit(cli.main(['prepare', '--params', {str(REPO / 'params.yaml')!r}, '--out', 'o', '--report', 'r',"
        " '--sizes-csv', 'c', '--sizes-png', 'p']))\n"
    )
    return f"python {script}"


def test_a_stage_that_prints_timeout_but_fails_on_bad_data_is_not_transient(tmp_path: Path) -> None:
    cmd = _sod_stage(tmp_path, "DataError('/data/Timeout_Connection/scenes/7.png: cannot be read')")
    repo = _dvc_repo(tmp_path / "repo", {"prepare": cmd})
    with pytest.raises(RuntimeError, match="with exit code 2") as info:
        reproduce("prepare", repo, command_env(repo))
    assert not isinstance(info.value, TransientError)
    assert "/data/Timeout_Connection/scenes/7.png: cannot be read" in str(info.value)  # the tail is still shown


def test_a_stage_that_times_out_exits_75_and_is_transient(tmp_path: Path) -> None:
    repo = _dvc_repo(tmp_path / "repo", {"prepare": _sod_stage(tmp_path, "TimeoutError('read timed out')")})
    with pytest.raises(TransientError, match="with exit code 75") as info:
        reproduce("prepare", repo, command_env(repo))
    assert "sod prepare: transient error, a retry may pass: TimeoutError: read timed out" in str(info.value)


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


def test_sync_pushes_and_pulls_through_dvcs_api(tmp_path: Path) -> None:
    repo = _dvc_repo(tmp_path / "repo", {"hello": "echo hi > hello.out"}, cache=True)
    assert reproduce("hello", repo, command_env(repo)) is True
    remote = [sys.executable, "-m", "dvc", "remote", "add", "-d", "store", str(tmp_path / "store")]
    subprocess.run(remote, cwd=repo, check=True)
    sync(repo, "push")
    assert [p for p in (tmp_path / "store").rglob("*") if p.is_file()]  # the output's bytes are on the remote
    (repo / "hello.out").unlink()
    shutil.rmtree(repo / ".dvc" / "cache")
    sync(repo, "pull")
    assert (repo / "hello.out").read_text() == "hi\n"


@pytest.mark.slow
def test_the_task_retries_a_transient_failure_only(prefect_server: None, tmp_path: Path) -> None:
    # The first attempt exits 75 (sod's code for a transient failure) or is killed; the retry passes. A stage
    # that fails on its own runs once, even when its output is full of "Timeout" and "Connection".
    flaky = "test -f tried || { touch tried; exit 75; }; echo done > flaky.out"
    killed = "test -f tried_k || { touch tried_k; kill -9 $$; }; echo done > killed.out"
    bad = "echo attempt >> attempts; echo 'reading /data/Timeout_Connection: timed out'; exit 2"
    repo = _dvc_repo(tmp_path, {"flaky": flaky, "killed": killed, "bad": bad})
    quick = run_stage.with_options(retry_delay_seconds=0)

    @flow
    def one(stage: str) -> bool:
        return quick(stage, repo, command_env(repo))

    assert one("flaky") is True and (repo / "flaky.out").read_text() == "done\n"
    assert one("killed") is True and (repo / "killed.out").read_text() == "done\n"
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
