"""Run the real ``sod`` command in a child process, with test hooks that production code does not carry.

``python -m tests.stages.hooked_sod [hooks] -- <sod argv>`` installs the hooks, then calls
:func:`sod.cli.main`. Hooks:

* ``--kill-after-checkpoint N``: SIGKILL this process right after epoch N's checkpoint is on disk.
* ``--kill-at-step K``: SIGKILL this process right after its K-th optimizer step (mid-epoch when K is not a
  multiple of the steps per epoch). SIGKILL, not an exception: no ``finally`` runs, as after a real kill.
* ``--epoch-log FILE``: append the number of every epoch this process trains, one per line.
* ``--sample-log FILE``: append ``<epoch> <image id>`` for every training image the dataset serves.
* ``--write-log FILE --write-root DIR``: append every file write, rename, removal and mkdir under DIR
  (Python audit events), one ``<event> <path>`` per line.

Under ``torchrun`` every log path gets a ``.rank<RANK>`` suffix, so each process writes its own file.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def run(
    hooks: Sequence[str], sod_argv: Sequence[str], *, nproc: int = 1, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    """Run ``sod <sod_argv>`` with ``hooks`` in a child process (``nproc`` > 1: under torchrun, gloo on CPU).

    One CPU thread per process, MLflow off; the working directory is the repo (its params.yaml).
    """
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "SOD_THREADS": "1", "SOD_TRACKING": "off"}
    if nproc > 1:
        launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
        cmd = [*launch, str(Path(__file__)), *hooks, "--", *sod_argv]
    else:
        cmd = [sys.executable, "-m", "tests.stages.hooked_sod", *hooks, "--", *sod_argv]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def _log_path(path: str) -> Path:
    rank = os.environ.get("RANK")
    return Path(f"{path}.rank{rank}" if rank is not None else path)


def _append(path: Path, line: str) -> None:
    with path.open("a") as fh:
        fh.write(line + "\n")


def install(args: argparse.Namespace) -> None:
    from torch.optim.optimizer import register_optimizer_step_post_hook

    from sod import engine
    from sod.data.dataset import CocoDetectionDataset

    current_epoch = [-1]
    real_epoch = engine.train_one_epoch

    def train_one_epoch(*a: Any, **kw: Any) -> dict[str, float]:
        current_epoch[0] = kw["epoch"]
        if args.epoch_log:
            _append(_log_path(args.epoch_log), str(kw["epoch"]))
        return real_epoch(*a, **kw)

    engine.train_one_epoch = train_one_epoch

    if args.kill_after_checkpoint is not None:
        real_save = engine.save_checkpoint

        def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
            real_save(path, state)
            if state.get("epoch") == args.kill_after_checkpoint:  # the final model file has no "epoch"
                os.kill(os.getpid(), signal.SIGKILL)

        engine.save_checkpoint = save_checkpoint

    if args.kill_at_step is not None:
        steps = [0]

        def after_step(*_: Any) -> None:
            steps[0] += 1
            if steps[0] == args.kill_at_step:
                os.kill(os.getpid(), signal.SIGKILL)

        register_optimizer_step_post_hook(after_step)

    if args.sample_log:
        real_getitem = CocoDetectionDataset.__getitem__
        sample_log = _log_path(args.sample_log)

        def getitem(self: CocoDetectionDataset, index: int) -> Any:
            _append(sample_log, f"{current_epoch[0]} {self.images[index]['id']}")
            return real_getitem(self, index)

        CocoDetectionDataset.__getitem__ = getitem  # type: ignore[method-assign]

    if args.write_log:
        root = str(Path(args.write_root).resolve())
        write_log = _log_path(args.write_log)
        writing = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND
        busy = [False]  # the hook's own appends raise audit events too

        def audit(event: str, event_args: tuple[Any, ...]) -> None:
            if busy[0] or event not in ("open", "os.rename", "os.remove", "os.mkdir", "os.rmdir", "shutil.rmtree"):
                return
            if event == "open" and not (isinstance(event_args[2], int) and event_args[2] & writing):
                return
            target = event_args[1] if event == "os.rename" else event_args[0]
            if not isinstance(target, str | os.PathLike) or not os.path.abspath(target).startswith(root):
                return
            busy[0] = True
            try:
                _append(write_log, f"{event} {os.path.abspath(target)}")
            finally:
                busy[0] = False

        sys.addaudithook(audit)


def main(argv: list[str]) -> int:
    split = argv.index("--")
    parser = argparse.ArgumentParser(prog="hooked_sod")
    parser.add_argument("--kill-after-checkpoint", type=int)
    parser.add_argument("--kill-at-step", type=int)
    parser.add_argument("--epoch-log")
    parser.add_argument("--sample-log")
    parser.add_argument("--write-log")
    parser.add_argument("--write-root", default="/")
    args = parser.parse_args(argv[:split])
    install(args)
    from sod.cli import main as sod_main

    return sod_main(argv[split + 1 :])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
