"""The ablation: a grid of variants of the DAG run side by side, then ``sod report`` over all of them.

Every variant is a set of params overrides (the keys of ``dvc exp run -S``). Each one runs ``dvc repro
evaluate`` in its own copy of the workspace (so variants never share outputs or dvc.lock, and run in
parallel), with the copy's DVC cache pointing at the repo's: a stage whose deps and params match one run
before (by the repo or another variant) is restored from DVC's run cache instead of rerun. The variant's
``reports/evaluate.json`` and params land in ``reports/ablation/<variant>.json``; then the ``report`` stage
builds ``reports/ablation.csv`` and the figures and logs them to MLflow.

Two variants are always added: ``baseline`` (torchvision's defaults: default anchors, no oversampling, no
copy-paste, no SR front end, full-image inference only) and ``pipeline`` (params.yaml as it is).

Concurrency: ``SOD_ABLATION_WORKERS`` variants at a time (default 2: one per GPU of a worker, or the CPU
cores of a small machine). Run it: ``python -m flows.ablation``, or the ``sod-ablation`` deployment.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import yaml
from prefect import flow, get_run_logger, task
from prefect.task_runners import ThreadPoolTaskRunner

from flows.pipeline import _path, command_env, run_dvc
from sod import tracking
from sod.config import Params, flatten, from_dict, to_dict
from sod.io import read_json, write_json

RUNS_DIR = "reports/ablation"
BASELINE: dict[str, Any] = {
    "anchors.method": "default",
    "augment.oversample": "none",
    "augment.copy_paste.times": 0,
    "evaluate.sliced.enabled": False,
    "detector.input_upscale": "none",  # no SR front end, even when params.yaml turns one on
    "detector.sr_finetune": False,
}
# The survey's levers, one at a time against params.yaml (the `pipeline` row).
DEFAULT_GRID: dict[str, dict[str, Any]] = {
    "oversample_none": {"augment.oversample": "none"},
    "oversample_4": {"augment.oversample_ratio": 4.0},
    "copy_paste_0": {"augment.copy_paste.times": 0},
    "copy_paste_3": {"augment.copy_paste.times": 3},
    "gamma_0": {"detector.focal.gamma": 0.0},
    "gamma_1": {"detector.focal.gamma": 1.0},
    "gamma_5": {"detector.focal.gamma": 5.0},
    "anchors_default": {"anchors.method": "default"},
    # The SR front end against its bicubic control, both ×2 (the network sees 640 px: 4× the compute). The front
    # end upscales sliced inference's tiles too, so the tiles are not resized again (160 px tiles seen at 320).
    "input_bicubic": {"detector.input_upscale": "bicubic", "evaluate.sliced.upscale": 1.0},
    "input_sr": {"detector.input_upscale": "sr", "evaluate.sliced.upscale": 1.0},
    "input_sr_finetune": {"detector.input_upscale": "sr", "detector.sr_finetune": True, "evaluate.sliced.upscale": 1.0},
}
WORKERS = int(os.environ.get("SOD_ABLATION_WORKERS", "2"))
# Never copied into a variant's workspace: the repo's metadata, caches and results of other runs.
_SKIP = {".git", ".venv", ".dvc/cache", ".dvc/tmp", RUNS_DIR, "mlflow.db", "mlruns", ".mlflow_pending", ".prefect"}


def variant_params(params_yaml: Path, overrides: dict[str, Any]) -> dict[str, Any]:
    """params.yaml with ``overrides`` (``{"detector.focal.gamma": 0.0}``) applied, validated like ``sod``'s params.

    Returns:
        Every section with every key (comments dropped), to write as the variant's params.yaml.

    Raises:
        ConfigError: an unknown key (with the nearest valid one) or a bad value.
    """
    raw = yaml.safe_load(params_yaml.read_text()) or {}
    for key, value in overrides.items():
        node = raw
        *sections, last = key.split(".")
        for part in sections:
            node = node.setdefault(part, {})
        node[last] = value
    return to_dict(from_dict(Params, raw))


def _ignored(root: Path) -> set[str]:
    """Paths left out of a variant's copy: :data:`_SKIP` and every output of the DAG (restored from the cache)."""
    stages = (yaml.safe_load((root / "dvc.yaml").read_text()) or {}).get("stages", {})
    outs = {_path(o) for spec in stages.values() for key in ("outs", "metrics") for o in spec.get(key, [])}
    return _SKIP | outs


def make_workspace(root: Path, dest: Path) -> Path:
    """Copy the repo at ``root`` to ``dest`` without outputs or caches, sharing ``root``'s DVC cache."""
    skip = _ignored(root)

    def ignore(directory: str, names: list[str]) -> set[str]:
        rel = Path(directory).relative_to(root)
        return {n for n in names if (rel / n).as_posix().removeprefix("./") in skip or n == "__pycache__"}

    shutil.copytree(root, dest, ignore=ignore, symlinks=True)
    env = command_env(root)
    run_dvc(["config", "--local", "core.no_scm", "true"], dest, env)  # the copy is not a git checkout
    run_dvc(["config", "--local", "cache.dir", str(root / ".dvc" / "cache")], dest, env)
    return dest


@task(task_run_name="variant-{name}")
def run_variant(root: Path, name: str, overrides: dict[str, Any], common: dict[str, Any], work_dir: str | None) -> Path:
    """Run the DAG up to ``evaluate`` for one variant in its own workspace; returns its result file."""
    logger = get_run_logger()
    with tempfile.TemporaryDirectory(prefix=f"sod-ablation-{name}-", dir=work_dir) as tmp:
        ws = make_workspace(root, Path(tmp) / "ws")
        params = variant_params(ws / "params.yaml", {**common, **overrides})
        (ws / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        # The variants' stage runs stay out of MLflow (parallel writers would contend for one SQLite file);
        # the report logs one run per variant instead.
        env = command_env(root, {"SOD_TRACKING": "off"})
        run_dvc(["repro", "evaluate"], ws, env)
        result = root / RUNS_DIR / f"{name}.json"
        write_json(
            result,
            {
                "variant": name,
                "changed": overrides,
                "params": flatten(params),
                "evaluate": read_json(ws / "reports" / "evaluate.json"),
            },
        )
    logger.info("variant %s: %s", name, result)
    return result


@task
def run_report(root: Path, env: dict[str, str]) -> None:
    """``dvc repro --single-item report``: the table and figures from every variant's result."""
    run_dvc(["repro", "--single-item", "report"], root, env)


@flow(name="sod-ablation", task_runner=ThreadPoolTaskRunner(max_workers=WORKERS))
def ablation(
    root: str = ".",
    grid: dict[str, dict[str, Any]] | None = None,
    common: dict[str, Any] | None = None,
    work_dir: str | None = None,
) -> str:
    """Run ``baseline``, ``pipeline`` and every variant of ``grid``, then the report; returns the table's path.

    Args:
        root: the repo.
        grid: ``{variant: {param key: value}}``; default :data:`DEFAULT_GRID`.
        common: overrides applied to every variant, the two references included (e.g. a smaller budget).
        work_dir: where the variants' workspaces go (default: the system's temp dir).
    """
    repo = Path(root).resolve()
    variants = {"baseline": BASELINE, "pipeline": {}, **(DEFAULT_GRID if grid is None else grid)}
    for name, overrides in variants.items():  # a bad key fails here, before anything runs
        variant_params(repo / "params.yaml", {**(common or {}), **overrides})
        if not name.replace("_", "").replace("-", "").isalnum():
            raise ValueError(f"variant name {name!r}: use letters, digits, '_' and '-'")
    (repo / RUNS_DIR).mkdir(parents=True, exist_ok=True)
    for stale in (repo / RUNS_DIR).glob("*.json"):  # rows of a previous grid would mix with this one
        stale.unlink()
    env = command_env(repo)
    parent = tracking.start_parent_run("ablation", env["MLFLOW_TRACKING_URI"], tags={"sod.flow": "ablation"})
    if parent:
        env[tracking.PARENT_ENV] = parent
    failed = True
    try:
        futures = [run_variant.submit(repo, n, o, common or {}, work_dir) for n, o in variants.items()]
        for future in futures:
            future.result()
        run_report(repo, env)
        failed = False
    finally:
        tracking.end_parent_run(parent, env["MLFLOW_TRACKING_URI"], {}, failed=failed)
    return str(repo / "reports" / "ablation.csv")


if __name__ == "__main__":
    print(ablation())
