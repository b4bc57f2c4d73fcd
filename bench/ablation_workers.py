"""Does the ablation's thread budget pay: two variants side by side on 2 cores, against one after the other.

``flows/ablation.py`` runs ``SOD_ABLATION_WORKERS`` variants at once and gives every stage process of a
variant ``cores // workers`` threads. Without that budget two torch processes on 2 cores each take both and
slow each other down many times over. This benchmark runs the same two tiny variants (``baseline`` and
``pipeline``: the flow with an empty grid) through the flow twice, pinned to the same ``--cores`` CPUs:

* **sod**: ``SOD_ABLATION_WORKERS=2``: both variants at once, every stage process with ``cores // 2`` threads;
* **peer**: ``SOD_ABLATION_WORKERS=1``: the variants one after the other, each with all ``cores`` threads.

Each setting has its own copy of the repo (its own DVC cache) with the tests' tiny params plus ``--set``
overrides (default: CPU only, 32 training images per epoch). Before timing, each copy runs
``dvc repro train_sr`` (the data and SR model both variants share), so both settings train exactly the
variant-specific stages (augment, anchors, train_detector, evaluate) and neither restores them from DVC's run
cache. The time is the flow's, from its start to the end of its report, in a fresh interpreter whose Prefect
temporary server is already up. Target: 2 workers no slower per variant (sod s / peer s ≤ 1.0).
Writes ``bench/results/ablation_workers.json``.

    python bench/ablation_workers.py [--cores 2] [--set train.samples_per_epoch=64] [--dry-run]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._results import add_results_arg, machine_info, row, write_result  # noqa: E402

BENCH = "ablation_workers"
VARIANTS = ["baseline", "pipeline"]  # what the flow runs with an empty grid
DEFAULT_SET = ["train.device=cpu", "evaluate.device=cpu", "sr.device=cpu", "train.samples_per_epoch=32"]
SETTINGS = {"sod": 2, "peer": 1}  # SOD_ABLATION_WORKERS of each side
# The child: start Prefect's temporary server with an empty flow, then time the ablation alone.
_CHILD = """
import sys, time
from prefect import flow
from flows.ablation import ablation

@flow
def warm_up() -> None:
    pass

warm_up()
start = time.perf_counter()
ablation(root=sys.argv[1], grid={}, work_dir=sys.argv[2], seeds=[0])
print(f"WALL {time.perf_counter() - start:.3f}")
"""


def pinned_cpus(n: int) -> list[int] | None:
    """The first ``n`` CPUs this process may run on, or None where the OS has no affinity mask (macOS)."""
    try:
        allowed = sorted(os.sched_getaffinity(0))
    except AttributeError:
        return None
    if len(allowed) < n:
        raise SystemExit(f"--cores {n}: this process may run on {len(allowed)} CPU(s) only")
    return allowed[:n]


def overrides(items: list[str]) -> dict[str, Any]:
    """``["a.b=1", ...]`` → ``{"a.b": 1}`` (values parsed as YAML, like ``sod --set``)."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--set {item!r}: use KEY=VALUE")
        out[key] = yaml.safe_load(value)
    return out


def prepare_repo(dest: Path, common: dict[str, Any]) -> Path:
    """A tiny copy of the repo at ``dest`` with ``common`` in its params.yaml and its shared stages built."""
    from flows.ablation import variant_params
    from flows.pipeline import command_env, run_dvc
    from tests.flows.conftest import make_tiny_repo  # sets Prefect's offline settings too

    repo = make_tiny_repo(dest)
    params = variant_params(repo / "params.yaml", common)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run_dvc(["repro", "train_sr"], repo, command_env(repo, {"SOD_TRACKING": "off"}))
    return repo


def timed_ablation(repo: Path, workers: int, work_dir: Path) -> float:
    """Wall seconds of the ablation flow on ``repo`` with ``workers`` variants at once (a fresh interpreter)."""
    env = dict(os.environ, SOD_ABLATION_WORKERS=str(workers), SOD_TRACKING="off")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, str(repo), str(work_dir)], cwd=ROOT, env=env, capture_output=True, text=True
    )
    walls = [line.split()[1] for line in proc.stdout.splitlines() if line.startswith("WALL ")]
    if proc.returncode != 0 or not walls:
        raise SystemExit(
            f"ablation with {workers} worker(s) failed ({proc.returncode}):\n{(proc.stdout + proc.stderr)[-3000:]}"
        )
    return float(walls[-1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], epilog="Writes <results-dir>/ablation_workers.json."
    )
    parser.add_argument("--cores", type=int, default=2, metavar="N", help="CPUs both settings run on (default: 2)")
    parser.add_argument(
        "--set",
        dest="extra",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"param override for both variants, on top of {' '.join(DEFAULT_SET)} (repeatable)",
    )
    parser.add_argument("--keep", metavar="DIR", help="build the repo copies here and keep them")
    parser.add_argument("--dry-run", action="store_true", help="print what would run, run nothing, write nothing")
    add_results_arg(parser)
    args = parser.parse_args()
    if args.cores < 1:
        parser.error("--cores must be ≥ 1")
    common = overrides(DEFAULT_SET + args.extra)
    cpus = pinned_cpus(args.cores)
    if not args.dry_run:  # a private Prefect home before anything imports prefect: the user's stays untouched
        os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="sod-bench-prefect-")
    os.environ.pop("PREFECT_API_URL", None)
    from flows.ablation import thread_budget, variant_params
    from sod.errors import ConfigError

    try:
        variant_params(ROOT / "params.yaml", common)  # a bad --set fails here, before anything is built
    except ConfigError as exc:
        raise SystemExit(f"bench/ablation_workers.py: error: {exc}") from None
    threads = {side: thread_budget(min(w, len(VARIANTS)), cores=args.cores) for side, w in SETTINGS.items()}
    print(f"cores: {args.cores} (CPUs {cpus if cpus is not None else 'not pinned: no affinity mask'})")
    for side, workers in SETTINGS.items():
        print(f"{side}: SOD_ABLATION_WORKERS={workers}, {threads[side]} thread(s) per stage process")
    print(f"variants: {', '.join(VARIANTS)}; params on top of the tests' tiny ones: {common}")
    if args.dry_run:
        return

    if cpus is not None:
        os.sched_setaffinity(0, cpus)  # inherited by every process the flows start
    base = Path(args.keep or tempfile.mkdtemp(prefix="sod-bench-ablation-"))
    repos = {side: prepare_repo(base / side, common) for side in SETTINGS}
    walls = {}
    for side, workers in SETTINGS.items():
        (base / f"work-{side}").mkdir(parents=True, exist_ok=True)
        walls[side] = timed_ablation(repos[side], workers, base / f"work-{side}")
    per_variant = {side: wall / len(VARIANTS) for side, wall in walls.items()}
    ratio = per_variant["sod"] / per_variant["peer"]  # seconds: below 1 is faster, at most 1 is the target
    met = ratio <= 1.0

    print(f"{'setting':<34}{'workers':>8}{'threads':>8}{'wall s':>9}{'s/variant':>11}")
    for side, label in (("sod", "2 at once (sod)"), ("peer", "1 worker, one after the other")):
        print(f"{label:<34}{SETTINGS[side]:>8}{threads[side]:>8}{walls[side]:>9.1f}{per_variant[side]:>11.1f}")
    print(f"s/variant, 2 workers / 1 worker: {ratio:.2f} (target ≤ 1.0: {'met' if met else 'MISSED'})")

    machine = machine_info("cpu", threads=threads["sod"])
    machine["cores_used"] = args.cores
    figure = row("wall time per variant", "s", per_variant["sod"], per_variant["peer"], target="≤ 1.0", met=met)
    write_result(
        BENCH,
        [figure],
        sod=f"flows/ablation.py, SOD_ABLATION_WORKERS=2: both variants at once, {threads['sod']} thread(s) each",
        peer=f"the same flow, SOD_ABLATION_WORKERS=1: one variant after the other, {threads['peer']} thread(s)",
        target="2 workers no slower per variant: ratio = sod s / peer s ≤ 1.0",
        machine=machine,
        results_dir=args.results_dir,
        details={"variants": VARIANTS, "params": common, "wall_s": walls, "threads": threads, "cpus": cpus},
    )


if __name__ == "__main__":
    main()
