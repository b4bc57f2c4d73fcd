"""The DVC DAG as a Prefect flow: one task per stage, each the equivalent of ``dvc repro --single-item <stage>``.

DVC decides what is up to date (a stage whose deps and params did not change is skipped) and records
dvc.lock; Prefect adds retries for transient failures, scheduling on workers, and a UI. What is transient is
decided by exit code and exception type, never by what a stage printed (see :func:`transient_failure`). The stages run
through DVC's Python API in the flow's process (``Repo.reproduce``), so DVC is imported and its repo read
once per flow run rather than once per stage; each stage's command still runs in its own process, and its
output is shown as it comes and kept for the error message. The flow opens one MLflow run and passes its id
to the stage processes (``SOD_MLFLOW_PARENT_RUN_ID``), so every stage's run is nested under it. With a DVC
remote configured, it pulls before and pushes after.

Run it: ``python -m flows.pipeline`` (or the ``sod-pipeline`` deployment in prefect.yaml).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import yaml
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

from sod import tracking
from sod.errors import EXIT_TRANSIENT, TransientError, is_transient  # TransientError: one type for CLI and flows
from sod.io import read_json

# Exit codes worth a retry: `sod` said so (EXIT_TRANSIENT: a connection or a timeout), or a signal killed the
# process (preemption, the OOM killer: negative from subprocess, 128 + signal from a shell). Any other code
# (bad data: 2; a bug: 1) fails at once, whatever the output says: a dataset path may well contain "Timeout".
TRANSIENT_CODES = frozenset({EXIT_TRANSIENT, -9, -15, 128 + 9, 128 + 15})
_TAIL = 40  # lines of a failed command's output kept in the error
_TAIL_BYTES = 64 * 1024  # what a stage's output buffer keeps: enough for _TAIL lines of progress bars
# DVC's StageCmdFailedError ends its message with the command's exit code: "failed to run: <cmd>, exited with
# <code>" (it keeps no attribute). Anchored at the end, so a command line that holds those words is not read.
_EXIT = re.compile(r", exited with (-?\d+)$")


def _retry_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect ``retry_condition_fn``: retry only a :class:`TransientError`."""
    try:
        state.result()
    except TransientError:
        return True
    except Exception:
        return False
    return False


def command_env(root: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a DVC command: this Python's ``bin`` first on PATH (DVC runs the ``sod`` script),
    ``root`` first on PYTHONPATH, the git commit and the MLflow store of ``root`` (for workspaces that are
    copies), and ``extra``."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    # The stages run root's code, the files DVC hashes as their deps, not the copy of sod this Python has
    # installed: a worker's environment serves every clone it runs a deployment in.
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(root), env.get("PYTHONPATH")) if p)
    # The telemetry switches come with os.environ: importing the flows package set them (flows.OFFLINE_ENV).
    if "SOD_GIT_COMMIT" not in env:
        env["SOD_GIT_COMMIT"] = tracking.git_commit(root)
    env["MLFLOW_TRACKING_URI"] = tracking.tracking_uri(root)  # the stages run in other directories too
    env.update(extra or {})
    return env


def run_dvc(args: list[str], root: Path, env: dict[str, str]) -> str:
    """Run ``dvc <args>`` in ``root`` as a separate process; returns its output.

    The ``dvc`` process exits 255 for every failure of its own and of a stage it ran, so only a signal that
    killed it (:data:`TRANSIENT_CODES`) tells a transient failure here; the flows' retried steps run DVC in
    this process instead (:func:`reproduce`, :func:`sync`), where the exception says more.

    Raises:
        TransientError: killed by a signal.
        RuntimeError: any other failure, with the last lines of the output.
    """
    proc = subprocess.run(
        [sys.executable, "-m", "dvc", *args], cwd=root, env=env, capture_output=True, text=True, check=False
    )
    output = proc.stdout + proc.stderr
    if proc.returncode == 0:
        return output
    transient = proc.returncode in TRANSIENT_CODES
    raise _failure(f"`dvc {' '.join(args)}` failed with exit code {proc.returncode}", output, transient)


def _failure(headline: str, output: str, transient: bool) -> RuntimeError:
    """The error for a failed command: ``headline``, then the last :data:`_TAIL` lines of its ``output``;
    a :class:`TransientError` when ``transient``. The output is only shown, never read for the decision."""
    tail = "\n".join(output.splitlines()[-_TAIL:])
    message = f"{headline}:\n{tail}"
    return TransientError(message) if transient else RuntimeError(message)


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and the exceptions it was raised from, as a traceback shows them (cause, else context)."""
    seen: set[int] = set()
    node: BaseException | None = exc
    while node is not None and id(node) not in seen:
        seen.add(id(node))
        yield node
        node = node.__cause__ or (None if node.__suppress_context__ else node.__context__)


def stage_exit_code(exc: BaseException) -> int | None:
    """The exit code of the stage command whose failure DVC raised as ``exc`` (or as one of its causes), or
    None when no command failed (a lock, a missing dep, a config error)."""
    from dvc.stage.exceptions import StageCmdFailedError

    for node in _chain(exc):
        if isinstance(node, StageCmdFailedError):
            found = _EXIT.search(str(node))
            return int(found.group(1)) if found else None
    return None


def transient_failure(exc: BaseException) -> bool:
    """True when the DVC failure ``exc`` may pass on a retry, judged by type and exit code only.

    Transient: a stage command that exited with a code in :data:`TRANSIENT_CODES` (``sod`` exits
    :data:`~sod.errors.EXIT_TRANSIENT` on a connection or timeout error; a signal killed it); DVC's repo
    lock held by another DVC process (``LockError``); files that failed to transfer to or from a remote
    (``FileTransferError``: DVC counts them, the network or the remote being the cause); a ``ConnectionError``,
    ``TimeoutError`` or :class:`~sod.errors.TransientError` anywhere in the chain. Anything else, a stage's
    ``DataError`` (exit 2) among them, is not, whatever its message or output says.
    """
    from dvc.exceptions import FileTransferError
    from dvc.lock import LockError

    if stage_exit_code(exc) in TRANSIENT_CODES:
        return True
    return any(isinstance(node, LockError | FileTransferError) for node in _chain(exc)) or is_transient(exc)


@contextlib.contextmanager
def _dvc_logs_once() -> Iterator[None]:
    """DVC prints its messages ("Running stage ...") with its own handlers; passed on to the root logger's
    handler too (Prefect's console), every one of them would be in the run's log twice."""
    dvc_log = logging.getLogger("dvc")
    propagate, dvc_log.propagate = dvc_log.propagate, False
    try:
        yield
    finally:
        dvc_log.propagate = propagate


def sync(root: Path, direction: Literal["pull", "push"]) -> None:
    """``dvc pull --allow-missing`` (fetch the outputs the remote holds; missing ones are built by the stages)
    or ``dvc push``, through DVC's Python API in this process, so a failure is judged by its exception.

    Raises:
        TransientError: see :func:`transient_failure` (a transfer, the network, the lock).
        RuntimeError: any other DVC failure (no such remote, bad config).
    """
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    try:
        with _dvc_logs_once(), Repo(str(root)) as repo:
            if direction == "pull":
                repo.pull(allow_missing=True)
            else:
                repo.push()
    except DvcException as exc:
        reasons = ": ".join(str(node) for node in _chain(exc))
        raise _failure(f"`dvc {direction}` failed ({reasons})", "", transient_failure(exc)) from exc


@contextlib.contextmanager
def _tee_output() -> Iterator[bytearray]:
    """Copy what this process and its children write to fds 1 and 2 on to where it went before, keeping the
    last :data:`_TAIL_BYTES` in the yielded buffer.

    DVC runs a stage's command with this process's stdout and stderr; the copy keeps the command's output
    live (a worker's log, a terminal) while the buffer gives a failure its tail.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    tail = bytearray()
    lock = threading.Lock()

    def pump(src: int, dst: int) -> None:
        forward = True
        with os.fdopen(src, "rb", buffering=0) as pipe:
            while chunk := pipe.read(65536):
                view = memoryview(chunk)
                try:
                    while forward and view:
                        view = view[os.write(dst, view) :]
                except OSError:  # the original stream is gone (a closed pipe): keep reading, or the stage blocks
                    forward = False
                with lock:
                    tail.extend(chunk)
                    del tail[:-_TAIL_BYTES]

    saved: list[tuple[int, int]] = []
    pumps: list[threading.Thread] = []
    for fd in (1, 2):
        read_end, write_end = os.pipe()
        saved.append((fd, os.dup(fd)))
        os.dup2(write_end, fd)
        os.close(write_end)
        pumps.append(threading.Thread(target=pump, args=(read_end, saved[-1][1]), daemon=True))
        pumps[-1].start()
    try:
        yield tail
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        for fd, original in saved:
            os.dup2(original, fd)  # drops this process's write end of the pipe: its pump reads to the end
        for (_, original), pump_thread in zip(saved, pumps, strict=True):
            pump_thread.join(timeout=5)
            # A process the command left behind may still hold the pipe: its pump keeps forwarding to
            # `original` (left open) and the tail stops here, rather than the stage waiting for it.
            if not pump_thread.is_alive():
                os.close(original)


def reproduce(stage: str, root: Path, env: dict[str, str], force: bool = False) -> bool:
    """Run one stage like ``dvc repro --single-item <stage>``, through DVC's Python API in this process.

    One stage at a time per process (as the flow runs them): the stage's output is read through this process's
    stdout and stderr (:func:`_tee_output`).

    Args:
        stage: the stage's name in dvc.yaml.
        root: the repo.
        env: the environment of the stage's command (see :func:`command_env`).
        force: run it even when DVC finds it up to date.

    Returns:
        True when the stage ran (or was restored from DVC's run cache), False when it was up to date.

    Raises:
        TransientError: see :func:`transient_failure` (exit code :data:`~sod.errors.EXIT_TRANSIENT`, a signal,
            the repo lock); never because of what the stage printed.
        RuntimeError: any other failure: the command's exit code and the last lines of its output.
    """
    # Imported here: the ablation flow imports this module but runs DVC in separate processes.
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    failure: DvcException | None = None
    with _dvc_logs_once(), _tee_output() as output:
        try:
            with Repo(str(root)) as repo:
                # The target names its dvc.yaml: DVC resolves a bare stage name from the working directory.
                target = f"{root / 'dvc.yaml'}:{stage}"
                ran = bool(repo.reproduce(target, single_item=True, force=force, run_env=env))
        except DvcException as exc:
            failure = exc
    if failure is None:
        return ran
    # DVC's error says what failed ("failed to reproduce 'x'"), its cause how ("failed to run: <cmd>, exited
    # with 2", "Unable to acquire lock"); the output, complete once the tee is closed, is only shown.
    reasons = ": ".join(str(node) for node in _chain(failure))
    code = stage_exit_code(failure)
    headline = f"`dvc repro --single-item {stage}` failed{'' if code is None else f' with exit code {code}'}"
    text = output.decode(errors="replace")
    raise _failure(f"{headline} ({reasons})", text, transient_failure(failure)) from failure


def dag_order(dvc_yaml: Path) -> list[str]:
    """The stages of dvc.yaml in dependency order (a stage after every stage whose outs it reads).

    Ties keep the file's order. Raises ValueError on a cycle.
    """
    stages: dict[str, Any] = (yaml.safe_load(dvc_yaml.read_text()) or {}).get("stages", {})
    outs = {
        name: [entry_path(o) for o in spec.get("outs", []) + spec.get("metrics", [])] for name, spec in stages.items()
    }

    def reads(stage: str, other: str) -> bool:
        deps = [entry_path(d) for d in stages[stage].get("deps", [])]
        return any(d == o or d.startswith(o + "/") or o.startswith(d + "/") for d in deps for o in outs[other])

    before = {s: {o for o in stages if o != s and reads(s, o)} for s in stages}
    order: list[str] = []
    while len(order) < len(stages):
        ready = [s for s in stages if s not in order and before[s] <= set(order)]
        if not ready:
            raise ValueError(f"{dvc_yaml}: the stages {sorted(set(stages) - set(order))} depend on each other")
        order.append(ready[0])
    return order


def entry_path(entry: str | dict[str, Any]) -> str:
    """The path of a ``deps``/``outs``/``metrics`` entry of dvc.yaml: a plain string, or a one-key mapping of
    the path to its options (``{"reports/x.json": {"cache": False}}``)."""
    return entry if isinstance(entry, str) else next(iter(entry))


def stage_reports(dvc_yaml: Path) -> dict[str, list[str]]:
    """Each stage's metrics files (its ``metrics`` in dvc.yaml)."""
    stages = (yaml.safe_load(dvc_yaml.read_text()) or {}).get("stages", {})
    return {name: [entry_path(m) for m in spec.get("metrics", [])] for name, spec in stages.items()}


def summarize(root: Path, stages: list[str]) -> dict[str, dict[str, float]]:
    """The numeric metrics of each stage's reports (``reports/<stage>.json``), keyed by stage."""
    reports = stage_reports(root / "dvc.yaml")
    summary: dict[str, dict[str, float]] = {}
    for stage in stages:
        for rel in reports.get(stage, []):
            path = root / rel
            if path.is_file():
                summary.setdefault(stage, {}).update(tracking.numeric_metrics(read_json(path)))
    return summary


def has_remote(root: Path) -> bool:
    """True when the repo's DVC config (all levels, as ``dvc remote list`` reads it) names a remote."""
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        return bool(repo.config["remote"])


# No Prefect result caching (NO_CACHE): DVC alone decides what is up to date, from the files themselves.
@task(
    retries=2,
    retry_delay_seconds=30,
    retry_condition_fn=_retry_transient,
    task_run_name="dvc-repro-{stage}",
    cache_policy=NO_CACHE,
)
def run_stage(stage: str, root: Path, env: dict[str, str], force: bool = False) -> bool:
    """Run one DVC stage (:func:`reproduce`); DVC skips it when nothing changed. Returns whether it ran."""
    ran = reproduce(stage, root, env, force)
    get_run_logger().info("stage %s: %s", stage, "ran" if ran else "up to date")
    return ran


@task(retries=3, retry_delay_seconds=20, retry_condition_fn=_retry_transient, cache_policy=NO_CACHE)
def dvc_pull(root: Path) -> None:
    """Fetch the cached outputs that the remote holds (missing ones are built by the stages)."""
    sync(root, "pull")


@task(retries=3, retry_delay_seconds=20, retry_condition_fn=_retry_transient, cache_policy=NO_CACHE)
def dvc_push(root: Path) -> None:
    """Send the new outputs to the remote."""
    sync(root, "push")


@flow(name="sod-pipeline")
def pipeline(
    root: str = ".",
    stages: list[str] | None = None,
    force: bool = False,
    pull: bool | None = None,
    push: bool | None = None,
) -> dict[str, dict[str, float]]:
    """Run the DAG of ``root``/dvc.yaml stage by stage; returns every stage's numeric metrics.

    Args:
        root: the repo (the directory holding dvc.yaml).
        stages: run only these (still in DAG order); default all.
        force: rerun stages even when DVC finds them up to date.
        pull, push: ``dvc pull`` before / ``dvc push`` after; default: when a DVC remote is configured.

    Returns:
        ``{stage: {metric: value}}`` from the stages' reports (nested keys joined by dots).
    """
    repo = Path(root).resolve()
    order = dag_order(repo / "dvc.yaml")
    unknown = sorted(set(stages or []) - set(order))
    if unknown:
        raise ValueError(f"unknown stage(s) {unknown}; dvc.yaml has {order}")
    selected = [s for s in order if stages is None or s in stages]
    env = command_env(repo)
    remote = has_remote(repo) if pull is None or push is None else False
    if pull if pull is not None else remote:
        dvc_pull(repo)
    parent = tracking.start_parent_run(
        f"pipeline {flow_run.get_name() or ''}".strip(),
        env["MLFLOW_TRACKING_URI"],
        tags={"prefect.flow_run_id": str(flow_run.get_id() or ""), "sod.flow": "pipeline"},
    )
    if parent:
        env[tracking.PARENT_ENV] = parent
    summary: dict[str, dict[str, float]] = {}
    failed = True
    try:
        for stage in selected:
            run_stage(stage, repo, env, force)
        summary = summarize(repo, selected)
        failed = False
    finally:
        flat = {f"{s}.{k}": v for s, metrics in summary.items() for k, v in metrics.items()}
        tracking.end_parent_run(parent, env["MLFLOW_TRACKING_URI"], flat, failed=failed)
    if push if push is not None else remote:
        dvc_push(repo)
    return summary


if __name__ == "__main__":
    result = pipeline()
    for stage_name, metrics in result.items():
        print(stage_name, {k: round(v, 4) for k, v in metrics.items() if "." not in k})
