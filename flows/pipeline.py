"""The DVC DAG as a Prefect flow: one task per stage, each run through ``dvc repro --single-item``.

DVC decides what is up to date (a stage whose deps and params did not change is skipped) and records
dvc.lock; Prefect adds retries for transient failures, scheduling on workers, and a UI. The flow opens one
MLflow run and passes its id to the stage processes (``SOD_MLFLOW_PARENT_RUN_ID``), so every stage's run is
nested under it. With a DVC remote configured, it pulls before and pushes after.

Run it: ``python -m flows.pipeline`` (or the ``sod-pipeline`` deployment in prefect.yaml).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml
from prefect import flow, get_run_logger, task
from prefect.runtime import flow_run

from sod import tracking
from sod.io import read_json

# Signs of a failure worth a retry: the process was killed (preemption, OOM killer) or another DVC
# process held the repo lock. A stage that fails on its own (bad data: exit 2) fails at once.
_TRANSIENT_CODES = {-9, -15, 137, 143}
_TRANSIENT_TEXT = ("Unable to acquire lock", "Connection", "Timeout", "timed out")
_TAIL = 40  # lines of a failed command's output kept in the error


class TransientError(RuntimeError):
    """A command failed in a way that may pass on a retry."""


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
    the git commit and the MLflow store of ``root`` (for workspaces that are copies), and ``extra``."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("DVC_NO_ANALYTICS", "1")
    env.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    if "SOD_GIT_COMMIT" not in env:
        env["SOD_GIT_COMMIT"] = tracking.git_commit(root)
    env["MLFLOW_TRACKING_URI"] = tracking.tracking_uri(root)  # the stages run in other directories too
    env.update(extra or {})
    return env


def run_dvc(args: list[str], root: Path, env: dict[str, str]) -> str:
    """Run ``dvc <args>`` in ``root``; returns its output.

    Raises:
        TransientError: killed by a signal, or a lock/network message in the output.
        RuntimeError: any other failure, with the last lines of the output.
    """
    proc = subprocess.run(
        [sys.executable, "-m", "dvc", *args], cwd=root, env=env, capture_output=True, text=True, check=False
    )
    output = proc.stdout + proc.stderr
    if proc.returncode == 0:
        return output
    tail = "\n".join(output.splitlines()[-_TAIL:])
    message = f"`dvc {' '.join(args)}` failed with exit code {proc.returncode}:\n{tail}"
    if proc.returncode in _TRANSIENT_CODES or any(t in output for t in _TRANSIENT_TEXT):
        raise TransientError(message)
    raise RuntimeError(message)


def dag_order(dvc_yaml: Path) -> list[str]:
    """The stages of dvc.yaml in dependency order (a stage after every stage whose outs it reads).

    Ties keep the file's order. Raises ValueError on a cycle.
    """
    stages: dict[str, Any] = (yaml.safe_load(dvc_yaml.read_text()) or {}).get("stages", {})
    outs = {name: [_path(o) for o in spec.get("outs", []) + spec.get("metrics", [])] for name, spec in stages.items()}

    def reads(stage: str, other: str) -> bool:
        deps = [_path(d) for d in stages[stage].get("deps", [])]
        return any(d == o or d.startswith(o + "/") or o.startswith(d + "/") for d in deps for o in outs[other])

    before = {s: {o for o in stages if o != s and reads(s, o)} for s in stages}
    order: list[str] = []
    while len(order) < len(stages):
        ready = [s for s in stages if s not in order and before[s] <= set(order)]
        if not ready:
            raise ValueError(f"{dvc_yaml}: the stages {sorted(set(stages) - set(order))} depend on each other")
        order.append(ready[0])
    return order


def _path(entry: str | dict[str, Any]) -> str:
    return entry if isinstance(entry, str) else next(iter(entry))


def stage_reports(dvc_yaml: Path) -> dict[str, list[str]]:
    """Each stage's metrics files (its ``metrics`` in dvc.yaml)."""
    stages = (yaml.safe_load(dvc_yaml.read_text()) or {}).get("stages", {})
    return {name: [_path(m) for m in spec.get("metrics", [])] for name, spec in stages.items()}


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


def has_remote(root: Path, env: dict[str, str]) -> bool:
    """True when ``dvc remote list`` names at least one remote."""
    return bool(run_dvc(["remote", "list"], root, env).strip())


@task(retries=2, retry_delay_seconds=30, retry_condition_fn=_retry_transient, task_run_name="dvc-repro-{stage}")
def run_stage(stage: str, root: Path, env: dict[str, str], force: bool = False) -> str:
    """Run one DVC stage (``dvc repro --single-item``); DVC skips it when nothing changed."""
    output = run_dvc(["repro", "--single-item", *(["--force"] if force else []), stage], root, env)
    skipped = "didn't change, skipping" in output or "is cached - skipping" in output
    get_run_logger().info("stage %s: %s", stage, "up to date" if skipped else "ran")
    return output


@task(retries=3, retry_delay_seconds=20, retry_condition_fn=_retry_transient)
def dvc_pull(root: Path, env: dict[str, str]) -> None:
    """Fetch the cached outputs that the remote holds (missing ones are built by the stages)."""
    run_dvc(["pull", "--allow-missing"], root, env)


@task(retries=3, retry_delay_seconds=20, retry_condition_fn=_retry_transient)
def dvc_push(root: Path, env: dict[str, str]) -> None:
    """Send the new outputs to the remote."""
    run_dvc(["push"], root, env)


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
    remote = has_remote(repo, env) if pull is None or push is None else False
    if pull if pull is not None else remote:
        dvc_pull(repo, env)
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
        dvc_push(repo, env)
    return summary


if __name__ == "__main__":
    result = pipeline()
    for stage_name, metrics in result.items():
        print(stage_name, {k: round(v, 4) for k, v in metrics.items() if "." not in k})
