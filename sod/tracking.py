"""MLflow tracking of stage runs: the only module of sod that imports mlflow (inside the functions that log:
importing mlflow costs ~2 s, which every stage process and flow run would pay even with tracking off).

Every ``sod <stage>`` run (the CLI calls :func:`log_stage` after the stage returns) becomes one MLflow run:

* params: the stage's params.yaml sections (as listed under the stage's ``params`` in dvc.yaml), flattened
  with :func:`sod.config.flatten`, so the MLflow param names are the params.yaml keys;
* metrics: every numeric value of the stage's report JSON (nested keys joined by dots: ``sliced.AP_small``),
  and per-epoch values with ``step = epoch`` (from a CSV with an ``epoch`` column, or the report's ``history``);
* artifacts: the report and the stage's plots;
* models: the trained detector and SR network, registered as ``sod-detector`` / ``sod-sr``; the evaluation
  metrics are attached to the registered version as tags; a detector version also keeps its
  ``models/detector.pt`` file (``extra_files``), which :func:`fetch_detector_file` gives to ``sod predict``;
* tags: ``git.commit``, ``dvc.stage``, ``dvc.data_hash`` (of the stage's deps), ``params.hash``.

Environment:

* ``MLFLOW_TRACKING_URI``: the tracking server or store (default ``sqlite:///mlflow.db`` in the working
  directory, i.e. the repo root under ``dvc repro``; works offline).
* ``MLFLOW_EXPERIMENT_NAME``: the experiment (default ``sod``).
* ``SOD_TRACKING=off``: no tracking at all (the test suite sets it).
* ``SOD_MLFLOW_PARENT_RUN_ID``: nest the stage's run under this run (set by ``flows/pipeline.py``).
* ``SOD_GIT_COMMIT``: the commit to tag when the working directory is not a git checkout.

Tracking never loses a result: if logging fails (server down, timeout), a warning says so, the stage's
outputs stay where they are, and a marker ``.mlflow_pending/<stage>.json`` keeps what was to be logged;
``sod log-run <stage>`` logs it later.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import logging
import math
import os
import subprocess
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from sod import __version__
from sod.config import Params, flatten, to_dict
from sod.errors import SodError

log = logging.getLogger(__name__)

DEFAULT_EXPERIMENT = "sod"
PENDING_DIR = Path(".mlflow_pending")
PARENT_ENV = "SOD_MLFLOW_PARENT_RUN_ID"
REGISTERED = {"detector": "sod-detector", "sr": "sod-sr"}
# A server that is down must not hold a finished stage for minutes (MLflow's defaults: 7 retries, 120 s).
_SHORT_HTTP = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
}


@dataclass
class StageRun:
    """What one finished stage logs. Paths are relative to the working directory (the repo root).

    Attributes:
        stage: the DVC stage name (``train_detector``).
        report: the stage's metrics JSON (another file type is logged as an artifact only).
        artifacts: files or directories logged as artifacts (plots, CSVs, pictures).
        params: flattened params (``{"detector.focal.gamma": 2.0}``).
        history_csv: per-epoch values, one row per epoch with an ``epoch`` column.
        model: a trained model file to log and register.
        model_kind: ``detector`` or ``sr``: how to load ``model`` and under which name to register it.
        evaluated_model: a detector file whose registered version gets this run's metrics as tags.
        timing: wall times and speeds the stage returned but kept out of its report (the report is a DVC
            output that identical runs must rewrite byte for byte), logged as ``timing.<key>`` metrics.
        tags: filled in by :func:`log_stage` (git commit, data and params hashes).
    """

    stage: str
    report: str
    artifacts: list[str] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)
    history_csv: str | None = None
    model: str | None = None
    model_kind: Literal["detector", "sr"] | None = None
    evaluated_model: str | None = None
    timing: dict[str, float] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)


# ------------------------------------------------------------------------------------------- settings
def enabled() -> bool:
    """False when ``SOD_TRACKING`` is ``off`` (or ``0``/``false``/``no``)."""
    return os.environ.get("SOD_TRACKING", "on").strip().lower() not in {"off", "0", "false", "no"}


def tracking_uri(root: str | Path | None = None) -> str:
    """``MLFLOW_TRACKING_URI`` if set, else the SQLite store ``mlflow.db`` in ``root`` (default: the working dir)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path(root or '.').resolve() / 'mlflow.db'}"


@contextlib.contextmanager
def _short_http_timeouts() -> Iterator[None]:
    """Apply :data:`_SHORT_HTTP` where the user has not set them; restore the environment afterwards."""
    added = [k for k in _SHORT_HTTP if k not in os.environ]
    os.environ.update({k: _SHORT_HTTP[k] for k in added})
    try:
        yield
    finally:
        for k in added:
            os.environ.pop(k, None)


@contextlib.contextmanager
def _session(uri: str | None = None) -> Iterator[None]:
    import mlflow

    with _short_http_timeouts():
        mlflow.set_tracking_uri(uri or tracking_uri())
        mlflow.set_experiment(os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_EXPERIMENT)
        yield


# ----------------------------------------------------------------------------------------------- tags
def stage_params(params: Params, stage: str, dvc_yaml: str | Path = "dvc.yaml") -> dict[str, Any]:
    """The flattened params a DVC stage depends on (its ``params`` list in dvc.yaml).

    Without dvc.yaml (a stage run by hand elsewhere) or for a stage it does not list, every param.
    """
    flat = flatten(to_dict(params))
    keys = _dvc_stage(dvc_yaml, stage).get("params")
    if not keys:
        return flat
    names = [k for k in keys if isinstance(k, str)]
    return {k: v for k, v in flat.items() if any(k == n or k.startswith(n + ".") for n in names)}


def _dvc_stage(dvc_yaml: str | Path, stage: str) -> dict[str, Any]:
    path = Path(dvc_yaml)
    if not path.is_file():
        return {}
    return (yaml.safe_load(path.read_text()) or {}).get("stages", {}).get(stage) or {}


def git_commit(cwd: str | Path | None = None) -> str:
    """HEAD of the git checkout at ``cwd`` (default: here), else ``SOD_GIT_COMMIT``, else ``unknown``."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10, check=True
        )
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return os.environ.get("SOD_GIT_COMMIT", "unknown")


def params_hash(params: Mapping[str, Any]) -> str:
    """First 16 hex digits of the SHA-256 of the params as sorted JSON."""
    return hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()[:16]


def data_hash(stage: str, dvc_yaml: str | Path = "dvc.yaml", dvc_lock: str | Path = "dvc.lock") -> str:
    """A hash of the md5s of the stage's deps, as DVC records them.

    A dep that an upstream stage wrote takes its md5 from that stage's ``outs`` in dvc.lock (current while
    ``dvc repro`` runs this stage; this stage's own lock entry is written only after it finishes); any
    other dep (code) is hashed here, file by file. First 16 hex digits of a SHA-256; ``none`` without deps.
    """
    deps = _dvc_stage(dvc_yaml, stage).get("deps") or []
    if not deps:
        return "none"
    lock_path = Path(dvc_lock)
    lock = (yaml.safe_load(lock_path.read_text()) or {}).get("stages", {}) if lock_path.is_file() else {}
    outs = {o["path"]: o.get("md5", "") for s in lock.values() for o in s.get("outs", [])}
    parts = [f"{dep}:{outs.get(dep) or _md5_path(Path(dep))}" for dep in deps]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def _md5_path(path: Path) -> str:
    if path.is_file():
        return hashlib.md5(path.read_bytes()).hexdigest()
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
        listing = "\n".join(f"{p.relative_to(path).as_posix()}:{_md5_path(p)}" for p in files)
        return hashlib.md5(listing.encode()).hexdigest()
    return "missing"


# -------------------------------------------------------------------------------------------- logging
def numeric_metrics(report: Mapping[str, Any]) -> dict[str, float]:
    """The finite numbers of a report, nested keys joined by dots; lists (``history``) and booleans skipped."""
    out = {}
    for key, value in flatten(dict(report)).items():
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            out[key] = float(value)
    return out


def epoch_history(run: StageRun, report: Mapping[str, Any]) -> list[dict[str, float]]:
    """Per-epoch rows (each with ``epoch``): from ``run.history_csv``, else the report's ``history`` list."""
    if run.history_csv and Path(run.history_csv).is_file():
        with open(run.history_csv, newline="") as fh:
            rows = list(csv.DictReader(fh))
        return [{k: float(v) for k, v in row.items() if _is_number(v)} for row in rows]
    history = report.get("history")
    if isinstance(history, list):
        return [{k: float(v) for k, v in h.items() if _is_number(v)} for h in history if isinstance(h, dict)]
    return []


def _is_number(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def log_stage(run: StageRun) -> str | None:
    """Log a finished stage to MLflow; never raises.

    Returns:
        The MLflow run id, or None when tracking is off or failed (then a warning names the marker file
        that ``sod log-run <stage>`` logs later).
    """
    if not enabled():
        return None
    run.tags = {
        "git.commit": git_commit(),
        "dvc.stage": run.stage,
        "dvc.data_hash": data_hash(run.stage),
        "params.hash": params_hash(run.params),
        "sod.version": __version__,
    }
    try:
        return _log(run)
    except Exception as exc:  # whatever the server or the store raises, the stage's result must survive
        marker = PENDING_DIR / f"{run.stage}.json"
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(json.dumps(asdict(run), indent=2) + "\n")
        log.warning(
            "MLflow logging of stage %s failed (%s: %s); its outputs are kept and %s holds the run: "
            "`sod log-run %s` logs it later",
            run.stage, type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "", marker, run.stage,
        )  # fmt: skip
        return None


def log_pending(stage: str) -> str:
    """Log the run kept in ``.mlflow_pending/<stage>.json`` and remove the marker.

    Raises:
        SodError: no marker for the stage, a report it names is gone, or logging fails again.
    """
    # A stage name, not a path: the marker removed below must be one that log_stage wrote in PENDING_DIR.
    marker = PENDING_DIR / f"{stage}.json"
    if not stage.replace("_", "").isalnum() or not marker.is_file():
        waiting = sorted(p.stem for p in PENDING_DIR.glob("*.json"))
        raise SodError(f"no pending MLflow run for stage {stage!r} ({marker}); pending: {', '.join(waiting) or 'none'}")
    try:
        run = StageRun(**json.loads(marker.read_text()))
    except (ValueError, TypeError):  # not a record log_stage wrote: leave the file alone
        raise SodError(f"{marker} is not a pending sod run; it was left as it is") from None
    if run.stage != stage:
        raise SodError(f"{marker} holds a run of stage {run.stage!r}, not {stage!r}; it was left as it is")
    if not Path(run.report).is_file():
        raise SodError(f"{marker}: the stage's report {run.report} is gone; rerun the stage instead")
    try:
        run_id = _log(run)
    except Exception as exc:
        raise SodError(f"MLflow logging of stage {stage!r} failed again: {type(exc).__name__}: {exc}") from None
    marker.unlink()
    return run_id


def _log(run: StageRun) -> str:
    import mlflow

    report = json.loads(Path(run.report).read_text()) if run.report.endswith(".json") else {}
    parent = os.environ.get(PARENT_ENV) or None
    with _session(), mlflow.start_run(run_name=run.stage, parent_run_id=parent, tags=run.tags) as active:
        mlflow.set_tag("mlflow.source.git.commit", run.tags.get("git.commit", "unknown"))
        mlflow.log_params({k: _param_value(v) for k, v in run.params.items()})
        metrics = numeric_metrics(report)
        if metrics:
            mlflow.log_metrics(metrics)
        timing = numeric_metrics({"timing": run.timing})
        if timing:
            mlflow.log_metrics(timing)
        for row in epoch_history(run, report):
            step = int(row.get("epoch", 0))
            mlflow.log_metrics({k: v for k, v in row.items() if k != "epoch"}, step=step)
        mlflow.log_artifact(run.report)
        for path in map(Path, run.artifacts):
            if path.is_dir():
                mlflow.log_artifacts(str(path), artifact_path=path.name)
            elif path.is_file():
                mlflow.log_artifact(str(path))
        if run.model and run.model_kind:
            _log_model(run, metrics)
        if run.evaluated_model:
            _tag_evaluated_version(run.evaluated_model, metrics)
        return active.info.run_id


def _param_value(value: Any) -> Any:
    return json.dumps(value) if isinstance(value, list | dict) else value


# The model's own code and its two heavy dependencies; passing them keeps MLflow from inferring the
# requirements (11-13 s per model here) and makes the logged model loadable where sod is installed.
def _pip_requirements() -> list[str]:
    import torch
    import torchvision

    return [f"torch=={torch.__version__.split('+')[0]}", f"torchvision=={torchvision.__version__.split('+')[0]}"]


def _log_model(run: StageRun, metrics: Mapping[str, float]) -> None:
    import mlflow.pytorch
    from mlflow.tracking import MlflowClient

    assert run.model is not None
    if run.model_kind == "detector":
        from sod.models.detector import load_detector

        model, _ = load_detector(run.model)
    else:
        from sod.models.sr import load_sr

        model = load_sr(run.model)
    name = REGISTERED[run.model_kind or "detector"]
    info = mlflow.pytorch.log_model(
        model,
        name=run.model_kind,
        pip_requirements=_pip_requirements(),
        code_paths=[str(Path(__file__).parent)],
        # pt2 (MLflow 3's default) traces forward() on an example input; detectors take lists of images.
        serialization_format="pickle",
        registered_model_name=name,
        # sod's own file (weights + config + categories): what `sod predict --model models:/...` loads.
        extra_files=[str(run.model)] if run.model_kind == "detector" else None,
    )
    client = MlflowClient()
    version = str(info.registered_model_version)
    client.set_model_version_tag(name, version, "model_md5", _md5_path(Path(run.model)))
    for key, value in metrics.items():
        client.set_model_version_tag(name, version, key, f"{value:.6g}")


def fetch_detector_file(model_uri: str, dst_dir: str | Path) -> Path:
    """Download the ``models/detector.pt`` file kept with a registered detector version.

    Args:
        model_uri: ``models:/<name>/<version>`` (or ``models:/<name>@<alias>``), from the tracking store of
            ``MLFLOW_TRACKING_URI`` (default: ``mlflow.db`` here; a local store works offline).
        dst_dir: an existing directory to download into.

    Returns:
        The path of the detector file, for :func:`sod.models.detector.load_detector`.

    Raises:
        SodError: no such model or version, the store cannot be read, or the version was logged without the
            file (registered before sod kept it: rerun ``sod train-detector`` with tracking on).
    """
    import mlflow
    import mlflow.artifacts

    try:
        with _short_http_timeouts():
            mlflow.set_tracking_uri(tracking_uri())
            local = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=str(dst_dir)))
    except mlflow.exceptions.MlflowException as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise SodError(f"cannot load {model_uri} from {tracking_uri()}: {first}") from None
    found = sorted(local.glob("extra_files/*.pt"))
    if len(found) != 1:
        raise SodError(
            f"{model_uri} holds no sod detector file (extra_files/*.pt): it was registered before sod kept it; "
            "rerun `sod train-detector` with tracking on, or pass the .pt file"
        )
    return found[0]


def _tag_evaluated_version(model_file: str, metrics: Mapping[str, float]) -> None:
    """Attach evaluation metrics to the registered detector version built from ``model_file`` (if any)."""
    import mlflow
    from mlflow.tracking import MlflowClient

    md5 = _md5_path(Path(model_file))
    client = MlflowClient()
    name = REGISTERED["detector"]
    try:
        versions = client.search_model_versions(f"name='{name}'")
    except mlflow.exceptions.MlflowException:  # nothing registered yet
        return
    keep = ("AP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large", "sliced.AP", "sliced.AP_small")
    for v in versions:
        if v.tags.get("model_md5") == md5:
            for key in keep:
                if key in metrics:
                    client.set_model_version_tag(name, v.version, f"eval.{key}", f"{metrics[key]:.6g}")
            summary = ", ".join(f"{k} {metrics[k]:.4f}" for k in keep if k in metrics)
            client.update_model_version(name, v.version, description=f"evaluate: {summary}")


# ------------------------------------------------------------------------------------- flows, reports
def start_parent_run(name: str, uri: str, tags: Mapping[str, str] | None = None) -> str | None:
    """Start (and leave open) the run a flow nests its stages under; None when tracking is off or fails."""
    if not enabled():
        return None
    import mlflow
    from mlflow.tracking import MlflowClient

    try:
        with _session(uri):
            client = MlflowClient()
            exp = mlflow.get_experiment_by_name(os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_EXPERIMENT)
            assert exp is not None
            all_tags = {"git.commit": git_commit(), **(tags or {})}
            return client.create_run(exp.experiment_id, run_name=name, tags=all_tags).info.run_id
    except Exception as exc:  # the flow runs without tracking rather than not at all
        log.warning("MLflow parent run not started (%s: %s); stages log unnested", type(exc).__name__, exc)
        return None


def end_parent_run(run_id: str | None, uri: str, metrics: Mapping[str, float], failed: bool = False) -> None:
    """Log the flow's summary metrics on its parent run and close it; never raises."""
    if run_id is None:
        return
    from mlflow.tracking import MlflowClient

    try:
        with _short_http_timeouts():
            client = MlflowClient(tracking_uri=uri)
            for key, value in metrics.items():
                client.log_metric(run_id, key, value)
            client.set_terminated(run_id, status="FAILED" if failed else "FINISHED")
    except Exception as exc:
        log.warning("MLflow parent run %s not closed (%s: %s)", run_id, type(exc).__name__, exc)


def log_variants(table_csv: str | Path, metric_keys: list[str]) -> None:
    """Log one run per row of the ablation table (nested under the flow's run, if any); never raises.

    Each run holds the variant's changed params (the non-metric columns) and its metrics, so the MLflow UI
    compares the variants side by side.
    """
    if not enabled():
        return
    import mlflow

    with open(table_csv, newline="") as fh:
        rows = list(csv.DictReader(fh))
    try:
        parent = os.environ.get(PARENT_ENV) or None
        with _session():
            for row in rows:
                seed = row.get("train.seed", "")  # one run per seed of a variant
                name = f"ablation/{row['variant']}" + (f"/seed{seed}" if seed != "" else "")
                with mlflow.start_run(run_name=name, parent_run_id=parent):
                    mlflow.set_tags({"sod.variant": row["variant"], "dvc.stage": "report"})
                    changed = {k: v for k, v in row.items() if k not in metric_keys and k != "variant" and v != ""}
                    if changed:
                        mlflow.log_params(changed)
                    mlflow.log_metrics({k: float(row[k]) for k in metric_keys if _is_number(row.get(k))})
    except Exception as exc:
        log.warning("MLflow logging of the ablation variants failed (%s: %s)", type(exc).__name__, exc)
