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

import argparse
import hashlib
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from prefect import flow, get_run_logger, task
from prefect.task_runners import ThreadPoolTaskRunner

from flows.pipeline import command_env, entry_path, run_dvc
from sod import tracking
from sod.config import Params, flatten, from_dict, to_dict
from sod.errors import ConfigError, DataError
from sod.io import owned_files, read_json, read_owner, remove_owned, write_json, write_owner_marker
from sod.stages.report import within_noise

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
    "detector.assigner": "iou",
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
    # Anchors fitted to the data (k-means + evolution on the grid), 9 or 3 per level, against torchvision's.
    "anchors_kmeans": {"anchors.method": "kmeans"},
    "anchors_kmeans_3_per_level": {"anchors.method": "kmeans", "anchors.anchors_per_level": 3},
    # Assignment: torchvision's IoU matcher at params' thresholds, and at torchvision's 0.5/0.4, against ATSS.
    "assigner_atss": {"detector.assigner": "atss"},
    "matcher_05_04": {"detector.assigner": "iou", "detector.fg_iou_thresh": 0.5, "detector.bg_iou_thresh": 0.4},
    "no_stride4_level": {"detector.levels": [3, 4, 5]},
    # The SR front end against its bicubic control, both ×2 (the network sees 640 px: 4× the compute). The front
    # end upscales sliced inference's tiles too, so the tiles are not resized again (160 px tiles seen at 320).
    "input_bicubic": {"detector.input_upscale": "bicubic", "evaluate.sliced.upscale": 1.0},
    "input_sr": {"detector.input_upscale": "sr", "evaluate.sliced.upscale": 1.0},
    "input_sr_finetune": {"detector.input_upscale": "sr", "detector.sr_finetune": True, "evaluate.sliced.upscale": 1.0},
}
WORKERS = int(os.environ.get("SOD_ABLATION_WORKERS", "2"))
# Training seeds of the references (and of the levers whose effect is within the noise): SOD_ABLATION_SEEDS="0,1,2".
SEEDS = [int(s) for s in os.environ.get("SOD_ABLATION_SEEDS", "0,1,2").split(",") if s.strip()]
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


def clear_results(runs_dir: Path, names: list[str], keep: set[str] | frozenset[str] = frozenset()) -> None:
    """Make ``runs_dir`` ready for this grid: delete the previous grid's results, mark this grid's as the flow's.

    Every ``*.json`` in ``runs_dir`` is a row of the table ``sod report`` builds, so a previous grid's would mix
    with this one. One is deleted only if the flow wrote it (:func:`sod.io.remove_owned`: listed in the
    directory's marker of :data:`OWNER`). The marker then lists this grid's result files (``names``) from the
    start, so a run stopped halfway still owns what it wrote. Other files (``.gitkeep``, notes) are left alone.

    Args:
        runs_dir: ``reports/ablation``.
        names: the result files this grid may write (:func:`result_name`).
        keep: names of the flow's results to leave in place (``resume``: reused when params and code match).

    Raises:
        DataError: a ``*.json`` the flow did not write, named; it is left as it is, and no variant runs.
    """
    runs_dir.mkdir(parents=True, exist_ok=True)
    owner = read_owner(runs_dir)
    if owner not in (None, OWNER):
        raise DataError(f"refusing to run the ablation: {runs_dir} belongs to sod stage {owner!r} (nothing changed)")
    stale = sorted(runs_dir.glob("*.json"))
    owned = set(owned_files(runs_dir, OWNER))
    foreign = [p.name for p in stale if p.name not in owned]
    if foreign:  # checked before anything is deleted: a refused run changes nothing
        raise DataError(
            f"refusing to run the ablation: {runs_dir} holds {', '.join(foreign)}, not written by the ablation "
            "flow; `sod report` would read it as a variant: move it out (it was left as it is)"
        )
    kept = {p.name for p in stale if p.name in keep}
    for path in stale:
        if path.name not in kept:
            remove_owned(path, OWNER)
    write_owner_marker(runs_dir, OWNER, sorted(set(names) | kept))


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
        # mlflow.db's SQLite journal (-journal, -wal, -shm) comes and goes while the flow's own MLflow run
        # writes: copying it raced ("No such file or directory") and failed a variant.
        return {
            n
            for n in names
            if (rel / n).as_posix().removeprefix("./") in skip or n == "__pycache__" or n.startswith("mlflow.db-")
        }

    shutil.copytree(root, dest, ignore=ignore, symlinks=True)
    env = command_env(root)
    run_dvc(["config", "--local", "core.no_scm", "true"], dest, env)  # the copy is not a git checkout
    run_dvc(["config", "--local", "cache.dir", str(root / ".dvc" / "cache")], dest, env)
    return dest


def code_digest(root: Path) -> str:
    """sha256 over ``dvc.yaml`` and every ``*.py`` under ``sod/`` (path and bytes, sorted): the code a variant's
    ``dvc repro evaluate`` runs. A result recorded with another digest came from other code."""
    h = hashlib.sha256()
    for path in [root / "dvc.yaml", *sorted((root / "sod").rglob("*.py"))]:
        if "__pycache__" in path.parts:
            continue
        h.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


def result_name(variant: str, seed: int) -> str:
    """The result file of one training seed of a variant: ``<variant>.seed<seed>.json``."""
    return f"{variant}.seed{seed}.json"


def reusable(path: Path, params: dict[str, Any], code: str) -> bool:
    """Whether ``path`` is a result of exactly this run: the flow's file, same flattened params, same code."""
    if read_owner(path.parent) != OWNER or not path.is_file():
        return False
    try:
        old = read_json(path)
    except ValueError:
        return False
    return isinstance(old, dict) and old.get("code") == code and old.get("params") == flatten(params)


@task(task_run_name="variant-{name}-seed{seed}")
def run_variant(
    root: Path,
    name: str,
    seed: int,
    overrides: dict[str, Any],
    common: dict[str, Any],
    work_dir: str | None,
    threads: int,
    code: str,
    resume: bool = False,
) -> Path:
    """Run the DAG up to ``evaluate`` for one training seed of one variant in its own workspace, every stage
    process limited to ``threads`` CPU threads (:func:`thread_env`); returns its result file.

    With ``resume``, a result already in :data:`RUNS_DIR` from the same params and code is kept, not rerun.
    """
    logger = get_run_logger()
    result = root / RUNS_DIR / result_name(name, seed)
    params = variant_params(root / "params.yaml", {**common, **overrides, "train.seed": seed})
    if resume and reusable(result, params, code):
        logger.info("variant %s seed %d: kept %s (same params and code)", name, seed, result)
        return result
    with tempfile.TemporaryDirectory(prefix=f"sod-ablation-{name}-{seed}-", dir=work_dir) as tmp:
        ws = make_workspace(root, Path(tmp) / "ws")
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
        start = time.monotonic()
        run_dvc(["repro", "evaluate"], ws, env)
        write_json(
            result,
            {
                "variant": name,
                "seed": seed,
                "changed": overrides,
                "params": flatten(params),
                "code": code,
                "wall_s": round(time.monotonic() - start, 1),
                "evaluate": read_json(ws / "reports" / "evaluate.json"),
            },
        )
    logger.info("variant %s seed %d: %s", name, seed, result)
    return result


@task
def run_report(root: Path, env: dict[str, str]) -> None:
    """``dvc repro --single-item report``: the table and figures from every variant's result."""
    run_dvc(["repro", "--single-item", "report"], root, env)


def _run_all(jobs: list[tuple[str, int]], submit: Callable[[str, int], Any]) -> dict[tuple[str, int], Path]:
    futures = {job: submit(*job) for job in jobs}
    return {job: Path(future.result()) for job, future in futures.items()}


@flow(name="sod-ablation", task_runner=ThreadPoolTaskRunner(max_workers=WORKERS))
def ablation(
    root: str = ".",
    grid: dict[str, dict[str, Any]] | None = None,
    common: dict[str, Any] | None = None,
    work_dir: str | None = None,
    seeds: list[int] | None = None,
    lever_seeds: int = 1,
    confirm: bool = True,
    resume: bool = False,
) -> str:
    """Run ``baseline``, ``pipeline`` and every variant of ``grid`` over training seeds, then the report.

    Seeds: ``baseline`` and ``pipeline`` run every seed of ``seeds`` (``train.seed``; the data stages, the
    anchors and the SR network are shared by the seeds, restored from DVC's run cache). A lever runs its first
    ``lever_seeds`` seeds; with ``confirm``, a lever whose ``AP_small`` (first seed, or the mean of its seeds)
    lies within 2 sample standard deviations of ``pipeline``'s seeds then runs the rest of ``seeds``: an effect
    inside the seed noise needs the seeds to be called one (or "no measurable effect").

    Args:
        root: the repo.
        grid: ``{variant: {param key: value}}``; default :data:`DEFAULT_GRID`; ``{}``: the two references only.
        common: overrides applied to every variant, the two references included (e.g. a smaller budget:
            ``{"train.samples_per_epoch": 320}``).
        work_dir: where the variants' workspaces go (default: the system's temp dir).
        seeds: training seeds; default :data:`SEEDS` (``SOD_ABLATION_SEEDS``, else 0, 1, 2).
        lever_seeds: seeds every lever runs before the noise check (1 ≤ lever_seeds ≤ len(seeds)).
        confirm: run the remaining seeds of the levers whose effect is within the noise.
        resume: keep the results in ``reports/ablation`` that the flow wrote with the same params and code
            (:func:`reusable`) instead of rerunning them: a stopped ablation goes on where it was.

    Returns:
        The table's path, ``reports/ablation.csv``.
    """
    repo = Path(root).resolve()
    seeds = list(SEEDS if seeds is None else seeds)
    if not seeds or len(set(seeds)) != len(seeds) or not 1 <= lever_seeds <= len(seeds):
        raise ValueError(f"need distinct seeds and 1 <= lever_seeds <= len(seeds); got {seeds}, {lever_seeds}")
    variants = {"baseline": BASELINE, "pipeline": {}, **(DEFAULT_GRID if grid is None else grid)}
    for name, overrides in variants.items():  # a bad key fails here, before anything runs
        variant_params(repo / "params.yaml", {**(common or {}), **overrides})
        if not name.replace("_", "").replace("-", "").isalnum():
            raise ValueError(f"variant name {name!r}: use letters, digits, '_' and '-'")
    levers = [n for n in variants if n not in ("baseline", "pipeline")]
    first = [(n, s) for n in ("baseline", "pipeline") for s in seeds]
    first += [(n, s) for n in levers for s in seeds[:lever_seeds]]
    # Every result this grid may write is the flow's from the start: a run stopped halfway owns what it wrote.
    names = [result_name(n, s) for n in variants for s in seeds]
    code = code_digest(repo)
    if work_dir is not None:  # the variants' temporary workspaces go inside; mkdir only, nothing is removed
        Path(work_dir).mkdir(parents=True, exist_ok=True)
    clear_results(repo / RUNS_DIR, names, keep=set(names) if resume else set())
    # The task runner runs WORKERS variants at once (fewer when there are fewer runs): they share the cores.
    threads = thread_budget(min(WORKERS, len(first)))
    log = get_run_logger()
    log.info("%d variants x seeds %s, %d runs at a time, %d CPU threads each", len(variants), seeds, WORKERS, threads)
    env = command_env(repo)
    parent = tracking.start_parent_run("ablation", env["MLFLOW_TRACKING_URI"], tags={"sod.flow": "ablation"})
    if parent:
        env[tracking.PARENT_ENV] = parent
    failed = True

    def submit(name: str, seed: int) -> Any:
        return run_variant.submit(repo, name, seed, variants[name], common or {}, work_dir, threads, code, resume)

    try:
        done = _run_all(first, submit)
        if confirm and len(seeds) > lever_seeds:
            pipe = [read_json(done[("pipeline", s)])["evaluate"].get("AP_small") for s in seeds]
            pipe = [v for v in pipe if v is not None]
            noisy = []
            for name in levers:
                values = [read_json(done[(name, s)])["evaluate"].get("AP_small") for s in seeds[:lever_seeds]]
                values = [v for v in values if v is not None]
                if within_noise(statistics.fmean(values) if values else None, pipe):
                    noisy.append(name)
            log.info("levers within 2 std of pipeline's AP_small, given every seed: %s", ", ".join(noisy) or "none")
            done |= _run_all([(n, s) for n in noisy for s in seeds[lever_seeds:]], submit)
        # Results of seeds this run did not need (a lever outside the noise) go: the marker listed them.
        for name in names:
            path = repo / RUNS_DIR / name
            if path not in done.values() and path.exists():
                remove_owned(path, OWNER)
        write_owner_marker(repo / RUNS_DIR, OWNER, sorted(p.name for p in done.values()))
        run_report(repo, env)
        failed = False
    finally:
        tracking.end_parent_run(parent, env["MLFLOW_TRACKING_URI"], {}, failed=failed)
    return str(repo / "reports" / "ablation.csv")


def main(argv: list[str] | None = None) -> int:
    """``python -m flows.ablation``: the flow from the command line (see ``--help``)."""
    parser = argparse.ArgumentParser(
        prog="python -m flows.ablation",
        description=(
            "Run the ablation: baseline and pipeline over training seeds, every lever of the grid, then `sod report` "
            "(reports/ablation.csv, reports/plots/ablation/). SOD_ABLATION_WORKERS variants run at once, sharing "
            "the CPU cores."
        ),
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="training seeds (default: 0 1 2)")
    parser.add_argument("--lever-seeds", type=int, default=1, help="seeds every lever runs first (default 1)")
    parser.add_argument(
        "--no-confirm", action="store_true", help="do not rerun, with every seed, the levers within 2 std of pipeline"
    )
    parser.add_argument(
        "--variants",
        nargs="*",
        default=None,
        metavar="NAME",
        help="levers of the default grid to run (none given: the two references only); default: all of "
        + ", ".join(DEFAULT_GRID),
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override for every variant, e.g. --set train.samples_per_epoch=320 (the smaller budget)",
    )
    parser.add_argument("--resume", action="store_true", help="keep results of the same params and code")
    parser.add_argument("--work-dir", default=None, help="where the variants' workspaces go (default: temp dir)")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.variants or []) - set(DEFAULT_GRID))
    if unknown:
        parser.error(f"unknown lever(s) {', '.join(unknown)}; the grid has {', '.join(DEFAULT_GRID)}")
    grid = None if args.variants is None else {n: DEFAULT_GRID[n] for n in args.variants}
    common = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            parser.error(f"--set {item!r}: expected KEY=VALUE")
        common[key] = yaml.safe_load(value)
    try:
        print(
            ablation(
                grid=grid,
                common=common,
                work_dir=args.work_dir,
                seeds=args.seeds,
                lever_seeds=args.lever_seeds,
                confirm=not args.no_confirm,
                resume=args.resume,
            )
        )
    except (DataError, ConfigError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
