"""What Prefect adds to the DAG: wall time of ``dvc repro`` alone against ``flows/pipeline.py``.

Both run the whole DAG on the tiny params of the tests (8 scenes of 128 px, one short epoch), each in its own
copy of the repo with its own DVC cache, MLflow tracking off (this measures orchestration, not logging); then
each again with nothing changed (the no-op run). The flow's time includes starting Prefect's temporary server
unless PREFECT_API_URL points at a running one. Target: Prefect adds < 10 % or < 15 s, whichever is larger.

    .venv/bin/python bench/overhead.py [--keep DIR]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.flows.conftest import make_tiny_repo  # noqa: E402  (sets Prefect's offline settings too)

os.environ["SOD_TRACKING"] = "off"


def _dvc_repro(root: Path) -> float:
    from flows.pipeline import command_env

    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "dvc", "repro"], cwd=root, env=command_env(root), check=True, capture_output=True
    )
    return time.perf_counter() - start


def _flow(root: Path) -> float:
    # A fresh interpreter per run, as a worker would start it (imports and server start-up included).
    code = f"from flows.pipeline import pipeline; pipeline(root={str(root)!r})"
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", metavar="DIR", help="build the repo copies here and keep them")
    args = parser.parse_args()
    base = Path(args.keep or tempfile.mkdtemp(prefix="sod-overhead-"))
    plain, flow = make_tiny_repo(base / "dvc"), make_tiny_repo(base / "flow")
    rows = [
        ("whole DAG", _dvc_repro(plain), _flow(flow)),
        ("no-op (all up to date)", _dvc_repro(plain), _flow(flow)),
    ]
    print(f"{'run':<24}{'dvc repro s':>13}{'Prefect flow s':>16}{'added s':>10}{'added %':>10}{'target':>8}")
    for name, dvc_s, flow_s in rows:
        added = flow_s - dvc_s
        verdict = "met" if added < max(0.10 * dvc_s, 15.0) else "MISSED"
        print(f"{name:<24}{dvc_s:>13.1f}{flow_s:>16.1f}{added:>10.1f}{100 * added / dvc_s:>9.0f}%{verdict:>8}")


if __name__ == "__main__":
    main()
