"""Prefect flows over the DVC pipeline: ``pipeline`` (the DAG) and ``ablation`` (a grid of variants).

Importing the package switches off the telemetry of Prefect, MLflow and DVC for this process and the stages it
starts, before any flow module imports prefect: ``python -m flows.ablation`` run outside ``make`` (which exports
the same settings) would otherwise try to reach the network, and Prefect's temporary server printed a
``database is locked`` traceback from its telemetry heartbeat. A value the user set is kept.
"""

import os

OFFLINE_ENV = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DVC_NO_ANALYTICS": "1",
    # Prefect's temporary server can take longer than its 20 s default to start on a busy machine.
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
}
for _key, _value in OFFLINE_ENV.items():
    os.environ.setdefault(_key, _value)
