"""What Prefect adds to the DAG: wall time of ``dvc repro`` alone against ``flows/pipeline.py``.

Every run does the same work on the tiny params of the tests (8 scenes of 128 px, one short epoch), each
setup in its own copy of the repo with its own DVC cache, MLflow tracking off (this measures orchestration,
not logging): the whole DAG from nothing, then the no-op run (all up to date; median of three). Every flow
run is a fresh interpreter (``python -c "...pipeline(root=...)"``), imports and Prefect's client start-up
included. The flow runs in two settings:

* **temporary server**: no ``PREFECT_API_URL``; every flow run starts Prefect's ephemeral API server (a
  subprocess) and stops it at the end: ``python -m flows.pipeline`` on a laptop.
* **running server**: ``PREFECT_API_URL`` points at a ``prefect server start`` that was already up, as on a
  deployment's worker.

Prefect's database is created once before the timings (the first run on a machine does it; later runs
don't); that one-time cost and the server's start are printed on their own lines.
Target: Prefect adds < 10 % or < 15 s, whichever is larger.

    .venv/bin/python bench/overhead.py [--keep DIR]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
# A private Prefect home (its own database), before anything imports prefect; the user's stays untouched.
os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="sod-overhead-prefect-")
os.environ.pop("PREFECT_API_URL", None)
os.environ["SOD_TRACKING"] = "off"

from tests.flows.conftest import make_tiny_repo  # noqa: E402  (sets Prefect's offline settings too)

NOOP_REPEATS = 3


def _timed(cmd: list[str], cwd: Path, env: dict[str, str] | None = None) -> float:
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:4])} failed ({proc.returncode}):\n{(proc.stdout + proc.stderr)[-3000:]}")
    return elapsed


def _dvc_repro(root: Path) -> float:
    from flows.pipeline import command_env

    return _timed([sys.executable, "-m", "dvc", "repro"], root, command_env(root))


def _flow(root: Path, api_url: str | None) -> float:
    # A fresh interpreter per run, as a worker starts one (imports and, without api_url, the server start-up).
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    if api_url:
        env["PREFECT_API_URL"] = api_url
    code = f"from flows.pipeline import pipeline; pipeline(root={str(root)!r})"
    return _timed([sys.executable, "-c", code], REPO, env)


def _median(run: Callable[[], float]) -> float:
    return statistics.median(run() for _ in range(NOOP_REPEATS))


def _start_server() -> tuple[subprocess.Popen[bytes], str, float]:
    """``prefect server start`` on a free local port; returns the process, its API URL and its start time."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cmd = [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port), "--no-ui"]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    api_url = f"http://127.0.0.1:{port}/api"
    while time.perf_counter() - start < 180:
        try:
            with urllib.request.urlopen(f"{api_url}/health", timeout=2) as response:
                if response.status == 200:
                    return proc, api_url, time.perf_counter() - start
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit("prefect server start: no answer in 180 s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", metavar="DIR", help="build the repo copies here and keep them")
    args = parser.parse_args()
    base = Path(args.keep or tempfile.mkdtemp(prefix="sod-overhead-"))
    plain, temporary, running = (make_tiny_repo(base / name) for name in ("dvc", "flow-temp", "flow-server"))

    prefect = [sys.executable, "-m", "prefect"]
    db_s = _timed([*prefect, "server", "database", "upgrade", "-y"], REPO)
    server, api_url, server_s = _start_server()
    try:
        dag = {"dvc": _dvc_repro(plain), "temp": _flow(temporary, None), "server": _flow(running, api_url)}
        noop = {
            "dvc": _median(lambda: _dvc_repro(plain)),
            "temp": _median(lambda: _flow(temporary, None)),
            "server": _median(lambda: _flow(running, api_url)),
        }
    finally:
        server.terminate()
        server.wait(timeout=30)

    print(f"one-time: Prefect database created in {db_s:.1f} s; `prefect server start` answered in {server_s:.1f} s")
    print(f"{'run':<24}{'Prefect API':<18}{'dvc repro s':>12}{'flow s':>9}{'added s':>9}{'added %':>9}{'target':>8}")
    for name, times in (("whole DAG", dag), (f"no-op (median of {NOOP_REPEATS})", noop)):
        for mode, label in (("temp", "temporary server"), ("server", "running server")):
            dvc_s, flow_s = times["dvc"], times[mode]
            added = flow_s - dvc_s
            verdict = "met" if added < max(0.10 * dvc_s, 15.0) else "MISSED"
            print(
                f"{name:<24}{label:<18}{dvc_s:>12.1f}{flow_s:>9.1f}{added:>9.1f}"
                f"{100 * added / dvc_s:>8.0f}%{verdict:>8}"
            )


if __name__ == "__main__":
    main()
