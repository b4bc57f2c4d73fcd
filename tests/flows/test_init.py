"""``import flows`` switches telemetry off before prefect is imported, keeping what the user set."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROBE = (
    "import json, os, flows.ablation, prefect.settings as s;"
    "print(json.dumps({'env': {k: os.environ.get(k) for k in flows.OFFLINE_ENV},"
    " 'analytics': s.get_current_settings().server.analytics_enabled}))"
)


def _probe(env: dict[str, str]) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=ROOT, env=env, capture_output=True, text=True, check=True, timeout=120
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_flows_switch_telemetry_off_before_prefect_reads_its_settings(tmp_path: Path) -> None:
    import flows

    base = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "PREFECT_HOME": str(tmp_path / "prefect")}
    got = _probe(base)
    assert got["env"] == flows.OFFLINE_ENV
    assert got["analytics"] is False  # prefect saw the setting: the flows' modules import it after the package


def test_a_value_the_user_set_is_kept(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "PREFECT_HOME": str(tmp_path / "prefect")}
    got = _probe({**env, "PREFECT_SERVER_ANALYTICS_ENABLED": "true", "DO_NOT_TRACK": "0"})
    assert got["env"]["PREFECT_SERVER_ANALYTICS_ENABLED"] == "true"
    assert got["env"]["DO_NOT_TRACK"] == "0"
    assert got["env"]["MLFLOW_DISABLE_TELEMETRY"] == "true"
