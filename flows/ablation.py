"""The ablation: a grid of variants of the DAG run side by side, then ``sod report`` over all of them.

Every variant is a set of params overrides (the keys of ``dvc exp run -S``). Each one runs ``dvc repro
evaluate`` in its own copy of the workspace (so variants never share outputs or dvc.lock, and run in
parallel), with the copy's DVC cache pointing at the repo's: a stage whose deps and params match one run
before (by the repo or another variant) is restored from DVC's run cache instead of rerun. The variant's
``reports/evaluate.json`` and params land in ``reports/ablation/<variant>.json``; then the ``report`` stage
builds ``reports/ablation.csv`` and the figures and logs them to MLflow.

Two variants are always added: ``baseline`` (torchvision's defaults: default anchors, matcher IoU 0.5/0.4,
pyramid from P3, no oversampling, no copy-paste, no SR front end, full-image inference only; the same
backbone, input size, head and budget as ``pipeline``) and ``pipeline`` (params.yaml as it is).

Concurrency: ``SOD_ABLATION_WORKERS`` variants at a time (default 2: one per GPU of a worker, or the CPU
cores of a small machine). The variants share the CPU cores: with N of them at once, every stage process of a
variant gets ``max(1, cores // N)`` threads (``SOD_THREADS`` and ``OMP_NUM_THREADS`` in its environment, see
:func:`thread_budget`); two torch processes that each take every core slow each other down many times over.
Run it: ``python -m flows.ablation``, or the ``sod-ablation`` deployment.

The variants' results in ``reports/ablation`` are the flow's files, named in that directory's ``.sod-owner``
marker (see :mod:`sod.io`): a new grid deletes the previous grid's results and nothing else; a ``.json``
there that the flow did not write (a row ``sod report`` would read) stops the flow before it runs anything.
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

from flows.pipeline import command_env, entry_path, run_dvc
from sod import tracking
from sod.config import Params, flatten, from_dict, to_dict
from sod.errors import DataError
from sod.io import read_json, read_owner, remove_owned, write_json, write_owner_marker

RUNS_DIR = "reports/ablation"
OWNER = "ablation"  # the name in RUNS_DIR's .sod-owner marker: this flow, not a DVC stage, writes those files
BASELINE: dict[str, Any] = {
    "anchors.method": "default",
    "augment.oversample": "none",
    "augment.copy_paste.times": 0,
    "evaluate.sliced.enabled": False,
    "detector.input_upscale": "none",  # no SR front end, even when params.yaml turns one on
    "detector.sr_finetune": False,
    # torchvision RetinaNet's matcher and pyramid (P3 up; its P6/P7 serve objects far above 320 px scenes)
    "detector.fg_iou_thresh": 0.5,
    "detector.bg_iou_thresh": 0.4,
    "detector.levels": [3, 4, 5],
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
    "anchors_3_per_level": {"anchors.anchors_per_level": 3},
    "matcher_05_04": {"detector.fg_iou_thresh": 0.5, "detector.bg_iou_thresh": 0.4},
    "no_stride4_level": {"detector.levels": [3, 4, 5]},
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


def available_cores() -> int:
    """The CPU cores this process may run on: its affinity mask (a container's or ``taskset``'s CPU set) where
    the OS has one, else ``os.cpu_count()``."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows: no affinity mask
        return os.cpu_count() or 1


def thread_budget(at_once: int, cores: int | None = None) -> int:
    """CPU threads for each of ``at_once`` stage processes running side by side: ``max(1, cores // at_once)``.

    Args:
        at_once: how many processes share the cores (the variants running at the same time).
        cores: the cores to share; default :func:`available_cores`.
    """
    return max(1, (available_cores() if cores is None else cores) // max(1, at_once))


def thread_env(threads: int) -> dict[str, str]:
    """The environment that limits a stage process to ``threads`` CPU threads: ``SOD_THREADS`` (read by every
    ``sod`` stage; ``train.threads > 0`` in params overrides it for train_detector) and ``OMP_NUM_THREADS``
    (OpenMP, which torch's CPU kernels and any other library in the process use)."""
    return {"SOD_THREADS": str(threads), "OMP_NUM_THREADS": str(threads)}


def clear_results(runs_dir: Path, variants: list[str]) -> None:
    """Make ``runs_dir`` ready for this grid: delete the previous grid's results, mark this grid's as the flow's.

    Every ``*.json`` in ``runs_dir`` is a row of the table ``sod report`` builds, so a previous grid's would mix
    with this one. One is deleted only if the flow wrote it (:func:`sod.io.remove_owned`: listed in the
    directory's marker of :data:`OWNER`). The marker then lists this grid's ``<variant>.json`` files from the
    start, so a run stopped halfway still owns what it wrote. Other files (``.gitkeep``, notes) are left alone.

    Raises:
        DataError: a ``*.json`` the flow did not write, named; it is left as it is, and no variant runs.
    """
    runs_dir.mkdir(parents=True, exist_ok=True)
    owner = read_owner(runs_dir)
    if owner not in (None, OWNER):
        raise DataError(f"refusing to run the ablation: {runs_dir} belongs to sod stage {owner!r} (nothing changed)")
    stale = sorted(runs_dir.glob("*.json"))
    if stale and owner != OWNER:  # nothing here is provably the flow's: touch nothing
        foreign = [p.name for p in stale]
    else:
        foreign = [p.name for p in stale if not remove_owned(p, OWNER)]
    if foreign:
        raise DataError(
            f"refusing to run the ablation: {runs_dir} holds {', '.join(foreign)}, not written by the ablation "
            "flow; `sod report` would read it as a variant: move it out (it was left as it is)"
        )
    write_owner_marker(runs_dir, OWNER, [f"{name}.json" for name in variants])


def _ignored(root: Path) -> set[str]:
    """Paths left out of a variant's copy: :data:`_SKIP` and every output of the DAG (restored from the cache)."""
    stages = (yaml.safe_load((root / "dvc.yaml").read_text()) or {}).get("stages", {})
    outs = {entry_path(o) for spec in stages.values() for key in ("outs", "metrics") for o in spec.get(key, [])}
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
def run_variant(
    root: Path, name: str, overrides: dict[str, Any], common: dict[str, Any], work_dir: str | None, threads: int
) -> Path:
    """Run the DAG up to ``evaluate`` for one variant in its own workspace, every stage process limited to
    ``threads`` CPU threads (:func:`thread_env`); returns its result file."""
    logger = get_run_logger()
    with tempfile.TemporaryDirectory(prefix=f"sod-ablation-{name}-", dir=work_dir) as tmp:
        ws = make_workspace(root, Path(tmp) / "ws")
        params = variant_params(ws / "params.yaml", {**common, **overrides})
        (ws / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        if params["train"]["threads"] > threads:
            logger.warning(
                "variant %s: train.threads %d overrides its share of %d threads: variants at once contend for cores",
                name,
                params["train"]["threads"],
                threads,
            )
        # The variants' stage runs stay out of MLflow (parallel writers would contend for one SQLite file);
        # the report logs one run per variant instead.
        env = command_env(root, {"SOD_TRACKING": "off", **thread_env(threads)})
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
    clear_results(repo / RUNS_DIR, list(variants))
    # The task runner runs WORKERS variants at once (fewer when the grid is smaller): they share the cores.
    threads = thread_budget(min(WORKERS, len(variants)))
    get_run_logger().info(
        "%d variants, %d at a time, %d CPU threads each", len(variants), min(WORKERS, len(variants)), threads
    )
    env = command_env(repo)
    parent = tracking.start_parent_run("ablation", env["MLFLOW_TRACKING_URI"], tags={"sod.flow": "ablation"})
    if parent:
        env[tracking.PARENT_ENV] = parent
    failed = True
    try:
        futures = [run_variant.submit(repo, n, o, common or {}, work_dir, threads) for n, o in variants.items()]
        for future in futures:
            future.result()
        run_report(repo, env)
        failed = False
    finally:
        tracking.end_parent_run(parent, env["MLFLOW_TRACKING_URI"], {}, failed=failed)
    return str(repo / "reports" / "ablation.csv")


if __name__ == "__main__":
    print(ablation())
