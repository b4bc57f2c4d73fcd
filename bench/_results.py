"""The one place where a benchmark records what it measured: ``bench/results/<bench>.json``.

Every benchmark under ``bench/`` ends with :func:`write_result`; the README's benchmark table is generated
from these files (``sod readme``), so a figure that is in the README is in a committed file. One file per
benchmark, overwritten by its latest run::

    {
      "bench": "train",                                   # the script's name, bench/<bench>.py
      "command": "python bench/train.py --iters 6",       # how to rerun it
      "date": "2025-01-31T12:00:00+00:00",                # UTC, when it finished
      "machine": {"cores": 2, "device": "cpu", "device_name": "x86_64", "threads": 2,
                  "torch": "2.5.1", "python": "3.11.9", "platform": "Linux-...", "commit": "abc123..."},
      "sod": "sod engine.train_one_epoch",                # what sod's figures measure
      "peer": "plain PyTorch loop, same model and batches",  # what the peer's figures measure
      "target": "ratio ≥ 0.95",
      "rows": [                                           # one figure per row, each against the peer
        {"measure": "training images/s", "unit": "images/s", "sod": 5.15, "peer": 5.15, "ratio": 1.0,
         "target": "≥ 0.95", "met": true}
      ],
      "details": {...}                                    # anything else the bench wants kept (free form)
    }

A bench may add top-level entries of its own beside these (``extra``), e.g. ``sliced``'s ``large_scene``
summary; they never replace the keys above.

A row's ``ratio`` is ``sod / peer`` unless the bench passes another (e.g. ``null`` when the figure is not a
rate, like an AP both methods should agree on); ``met`` is the bench's verdict on that row's ``target``
(``null``: no target for that row). Benchmarks take ``--results-dir`` (default ``bench/results``) so a trial
run can write elsewhere: committed results come from real runs only.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = ROOT / "bench" / "results"


def add_results_arg(parser: argparse.ArgumentParser) -> None:
    """Add ``--results-dir DIR`` (default ``bench/results``) to a benchmark's parser."""
    parser.add_argument(
        "--results-dir",
        type=Path,
        default=RESULTS_DIR,
        metavar="DIR",
        help="where <bench>.json goes (default: bench/results, the committed results the README is built from)",
    )


def row(
    measure: str,
    unit: str,
    sod: float | None,
    peer: float | None,
    *,
    target: str | None = None,
    met: bool | None = None,
    ratio: float | None | str = "auto",
) -> dict[str, Any]:
    """One figure of sod against the peer's.

    Args:
        measure: what is measured, e.g. ``"training images/s"``.
        unit: the unit of ``sod`` and ``peer`` (``"images/s"``, ``"s"``, ``"AP_small"``).
        sod, peer: the two figures, in ``unit``; None where one is undefined (e.g. an AP without ground truth).
        target: the row's target in words (``"≥ 10×"``); None when the row has none.
        met: whether the target was met (None without a target).
        ratio: ``"auto"`` (default) is ``sod / peer``; pass a float, or None where a ratio means nothing.

    Returns:
        The row dict of the result file (floats rounded to 4 significant digits: the noise is larger).
    """
    if ratio == "auto":
        ratio = sod / peer if sod is not None and peer else None
    return {
        "measure": measure,
        "unit": unit,
        "sod": _round(sod),
        "peer": _round(peer),
        "ratio": None if ratio is None else _round(float(ratio)),
        "target": target,
        "met": met,
    }


def _round(x: float | None) -> float | None:
    return None if x is None else float(f"{x:.4g}")


def machine_info(device: str = "cpu", threads: int | None = None) -> dict[str, Any]:
    """Where a benchmark ran: cores, device, torch threads, torch and Python versions, platform, git commit.

    Args:
        device: ``"cpu"`` or ``"cuda"`` (``"cuda:0"``); the CUDA device's name is recorded.
        threads: torch intra-op threads the benchmark used (default: torch's current count).
    """
    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        device_name = torch.cuda.get_device_name(torch.device(device))
    else:
        device_name = platform.processor() or platform.machine()
    return {
        "cores": os.cpu_count(),
        "device": device.split(":")[0],
        "device_name": device_name,
        "threads": threads if threads is not None else torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "commit": _git_commit(),
    }


def _git_commit() -> str | None:
    """HEAD of the repo (``+dirty`` with uncommitted changes), or None outside a git checkout."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def write_result(
    bench: str,
    rows: list[dict[str, Any]],
    *,
    sod: str,
    peer: str,
    target: str,
    machine: dict[str, Any],
    results_dir: Path = RESULTS_DIR,
    details: dict[str, Any] | None = None,
    argv: list[str] | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write ``<results_dir>/<bench>.json`` (see the module docstring) and print where it went.

    Args:
        bench: the benchmark's name (``bench/<bench>.py``).
        rows: from :func:`row`.
        sod, peer: one line each on what the two sides are.
        target: the benchmark's target in words.
        machine: from :func:`machine_info`.
        extra: more top-level entries (a bench's own summaries); a key of the fixed format is a ValueError.
        argv: the command line to record (default: ``sys.argv``).

    Returns:
        The path written.
    """
    from sod.io import write_json

    args = sys.argv[1:] if argv is None else argv
    result = {
        "bench": bench,
        "command": shlex.join(["python", f"bench/{bench}.py", *args]),
        "date": _dt.datetime.now(_dt.UTC).replace(microsecond=0).isoformat(),
        "machine": machine,
        "sod": sod,
        "peer": peer,
        "target": target,
        "rows": rows,
        "details": details or {},
    }
    clash = set(extra or {}) & set(result)
    if clash:
        raise ValueError(f"extra entries would replace {', '.join(sorted(clash))} of the result format")
    result.update(extra or {})
    path = Path(results_dir) / f"{bench}.json"
    write_json(path, result)
    print(f"results: {path}")
    return path
