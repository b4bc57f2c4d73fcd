"""prefect.yaml end to end: a local Prefect server, the ``sod-gpu`` process pool, ``prefect deploy`` of
``sod-pipeline``, and a worker that clones the repo (``SOD_GIT_URL``: a local git repo) and runs it.

The deployment runs its first stage only: the whole DAG through the flow is test_pipeline's; this test is
about what only a deployment does (the pull steps, the worker's process, the clone's code and paths).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.flows.conftest import make_tiny_repo

_OFFLINE = {"DO_NOT_TRACK": "1", "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_SERVER_UI_ENABLED": "false"}


def _prefect(*args: str, env: dict[str, str], cwd: Path, timeout: float = 120) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "prefect", "--no-prompt", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert proc.returncode == 0, f"prefect {' '.join(args)}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


@pytest.fixture
def prefect_env(tmp_path: Path) -> Iterator[dict[str, str]]:
    """The environment of a local ``prefect server start`` (own home and database) and of its clients."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(_OFFLINE, PREFECT_HOME=str(tmp_path / "prefect-home"))
    cmd = [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    server = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    env["PREFECT_API_URL"] = f"http://127.0.0.1:{port}/api"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{env['PREFECT_API_URL']}/health", timeout=2):
                    break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, "prefect server start did not answer"
                time.sleep(0.5)
        yield env
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.mark.slow
def test_the_deployment_runs_on_a_process_worker(prefect_env: dict[str, str], tmp_path: Path) -> None:
    src = make_tiny_repo(tmp_path / "src")
    git = ["git", "-c", "user.name=sod", "-c", "user.email=sod@localhost"]
    subprocess.run(["git", "init", "-q", "-b", "main"], cwd=src, check=True)
    subprocess.run(["git", "add", "-A"], cwd=src, check=True)
    subprocess.run([*git, "commit", "-q", "-m", "tiny"], cwd=src, check=True)

    env = prefect_env
    _prefect("work-pool", "create", "sod-gpu", "--type", "process", env=env, cwd=src)
    _prefect("deploy", "--name", "sod-pipeline", env=env, cwd=src)  # prefect.yaml of the repo
    _prefect("deployment", "run", "sod-pipeline/sod-pipeline", "--params", '{"stages": ["prepare"]}', env=env, cwd=src)
    # The worker's own directory is elsewhere: the flow finds its code and params through the pull steps only.
    (tmp_path / "worker").mkdir()
    worker_env = {**env, "SOD_GIT_URL": src.as_uri()}
    _prefect("worker", "start", "--pool", "sod-gpu", "--run-once", env=worker_env, cwd=tmp_path / "worker", timeout=300)

    runs = json.loads(_prefect("flow-run", "ls", "--output", "json", env=env, cwd=src))
    done = [r for r in runs if r["state"]["type"] != "SCHEDULED"]  # the cron schedule's next runs stay scheduled
    assert len(done) == 1 and done[0]["state"]["type"] == "COMPLETED", done
    assert done[0]["parameters"] == {"root": ".", "stages": ["prepare"]}
    assert not (src / "data").exists()  # the run worked in its clone, not in the repo it cloned
