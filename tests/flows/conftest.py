"""Flow tests: one Prefect test server for the session, and a tiny copy of the repo that runs the real DAG."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

# Before prefect is imported: a private home, no telemetry, and time for the server to start on a busy machine.
os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="sod-prefect-home-"))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")

import pytest  # noqa: E402
import yaml  # noqa: E402
from prefect.testing.utilities import prefect_test_harness  # noqa: E402

from flows.ablation import variant_params  # noqa: E402
from tests.stages.conftest import TINY  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
# Outputs, caches and local state of the developer's checkout: the copy starts without them.
_NOT_COPIED = {".git", ".venv", "data", "models", "checkpoints", "reports", "dvc.lock", "mlflow.db", "mlruns"}
_NOT_COPIED |= {".mlflow_pending", ".prefect", ".pytest_cache", ".ruff_cache", "__pycache__", "dvc_plots"}


@pytest.fixture(scope="session")
def prefect_server() -> Iterator[None]:
    with prefect_test_harness(server_startup_timeout=120):
        yield


def make_tiny_repo(dest: Path) -> Path:
    """Copy the repo's code, dvc.yaml and params.yaml (with the tiny overrides) to ``dest``; no git, own DVC cache."""

    def ignore(directory: str, names: list[str]) -> set[str]:
        rel = Path(directory).relative_to(REPO)
        skip = _NOT_COPIED if rel == Path(".") else {"cache", "tmp"} if rel == Path(".dvc") else set()
        return {n for n in names if n in skip or n == "__pycache__"}

    shutil.copytree(REPO, dest, ignore=ignore)
    (dest / "reports" / "ablation").mkdir(parents=True)
    (dest / "reports" / "ablation" / ".gitkeep").touch()  # as in the repo: a git clone has the report's input dir
    overrides = {k: yaml.safe_load(v) for k, v in (item.split("=", 1) for item in TINY)}
    params = variant_params(dest / "params.yaml", overrides)
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    dvc = [sys.executable, "-m", "dvc", "config", "--local"]
    subprocess.run([*dvc, "core.no_scm", "true"], cwd=dest, check=True)
    return dest


@pytest.fixture(scope="session")
def tiny_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A repo copy with tiny params (8 scenes of 128 px, one short epoch), its own DVC cache and MLflow store."""
    return make_tiny_repo(tmp_path_factory.mktemp("repo") / "sod")


@pytest.fixture(scope="session")
def pipeline_summary(prefect_server: None, tiny_repo: Path) -> dict[str, dict[str, float]]:
    """The tiny repo's whole DAG run once through the pipeline flow, tracked into the repo's ``mlflow.db``."""
    from flows.pipeline import pipeline

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SOD_TRACKING", "on")
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        return pipeline(root=str(tiny_repo))
