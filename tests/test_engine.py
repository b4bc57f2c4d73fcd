"""Engine: resume after a kill equals an uninterrupted run, same state gives same bytes, non-finite loss stops,
config mismatch refused, DDP."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from sod import engine
from tests.tiny_models import RandomBoxes, collate, tiny_retinanet

CONFIG = {"lr": 0.01, "epochs": 3}


class Killed(Exception):
    """Stands in for a kill signal after an epoch's checkpoint is written."""


def _train(
    ckpt: Path,
    epochs: int = 3,
    kill_after: int | None = None,
    workers: int | None = None,
    restart_on_mismatch: bool = False,
) -> nn.Module:
    torch.manual_seed(0)
    model = tiny_retinanet()
    opt = torch.optim.AdamW(model.parameters(), lr=CONFIG["lr"])
    steps = epochs * 3
    sched = torch.optim.lr_scheduler.LambdaLR(opt, engine.warmup_cosine(steps, 2))
    if workers is None:  # a plain shuffling DataLoader: fit's per-epoch seeding alone makes it resumable
        loader = DataLoader(RandomBoxes(6), batch_size=2, shuffle=True, collate_fn=collate)
    else:  # the stage's loader: RandomBoxes' jitter then runs in worker processes with their own RNG
        loader = engine.train_loader(RandomBoxes(6), engine.EpochSampler(6, seed=1), 2, workers, collate)

    def hook(history: list[dict]) -> None:
        if kill_after is not None and history[-1]["epoch"] == kill_after:
            raise Killed

    engine.fit(
        model,
        opt,
        loader,
        torch.device("cpu"),
        epochs=epochs,
        checkpoint=ckpt,
        config=CONFIG,
        seed=1,
        scheduler=sched,
        grad_clip=1.0,
        progress=False,
        on_epoch_end=hook,
        restart_on_mismatch=restart_on_mismatch,
    )
    return model


@pytest.mark.parametrize("workers", [None, 0, 2])
def test_resume_after_kill_equals_uninterrupted_run(tmp_path: Path, workers: int | None) -> None:
    torch.set_num_threads(1)
    straight = _train(tmp_path / "a" / "last.pt", workers=workers)
    with pytest.raises(Killed):
        _train(tmp_path / "b" / "last.pt", kill_after=0, workers=workers)
    state = engine.load_checkpoint(tmp_path / "b" / "last.pt")
    assert state["epoch"] == 0 and len(state["history"]) == 1
    resumed = _train(tmp_path / "b" / "last.pt", workers=workers)
    for (name, p), q in zip(straight.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(p, q), name
    # And training did move the weights (the comparison above is not between two untouched models).
    torch.manual_seed(0)
    fresh = tiny_retinanet()
    assert not all(
        torch.equal(p, q) for p, q in zip(fresh.state_dict().values(), straight.state_dict().values(), strict=True)
    )


def test_checkpoint_from_other_config_is_refused(tmp_path: Path) -> None:
    ckpt = tmp_path / "last.pt"
    engine.save_checkpoint(ckpt, {"model": {}, "config": {"lr": 0.1, "epochs": 3}})
    with pytest.raises(engine.CheckpointMismatchError, match=r"differs in: lr"):
        engine.load_checkpoint(ckpt, CONFIG)


def test_restart_on_mismatch_trains_from_scratch_and_replaces_the_checkpoint(tmp_path: Path) -> None:
    """A sod checkpoint of other params: refused by default, trained over with restart_on_mismatch, and the
    result equals a run that never saw it. A file that is not a sod checkpoint is refused either way."""
    torch.set_num_threads(1)
    straight = _train(tmp_path / "a" / "last.pt", epochs=1)
    ckpt = tmp_path / "b" / "last.pt"
    engine.save_checkpoint(ckpt, {"model": {}, "epoch": 0, "config": {"lr": 0.1, "epochs": 3}})
    with pytest.raises(engine.CheckpointMismatchError):
        _train(ckpt, epochs=1)
    restarted = _train(ckpt, epochs=1, restart_on_mismatch=True)
    for (name, p), q in zip(straight.state_dict().items(), restarted.state_dict().values(), strict=True):
        assert torch.equal(p, q), name
    assert engine.load_checkpoint(ckpt, CONFIG)["epoch"] == 0
    foreign = tmp_path / "c" / "last.pt"
    foreign.parent.mkdir()
    foreign.write_text("a user's notes")
    with pytest.raises(engine.SodError, match="cannot read checkpoint"):
        _train(foreign, epochs=1, restart_on_mismatch=True)
    assert foreign.read_text() == "a user's notes"


def test_the_same_training_twice_writes_the_same_checkpoint_bytes(tmp_path: Path, one_thread: None) -> None:
    # The checkpoint is a DVC output (checkpoints/sr.pt): a wall-clock speed in its history made every
    # rerun's md5 differ. The history it keeps holds what training computed, not how fast it ran.
    _train(tmp_path / "a" / "last.pt", epochs=2)
    _train(tmp_path / "b" / "last.pt", epochs=2)
    assert (tmp_path / "a" / "last.pt").read_bytes() == (tmp_path / "b" / "last.pt").read_bytes()
    history = engine.load_checkpoint(tmp_path / "a" / "last.pt")["history"]
    assert [h["epoch"] for h in history] == [0, 1] and all("images_per_s" not in h and h["loss"] > 0 for h in history)


def test_same_state_saved_twice_gives_the_same_bytes(tmp_path: Path) -> None:
    # Different directories, file names and moments: the atomic write's temporary name must not leak in.
    torch.manual_seed(0)
    state = {"model": tiny_retinanet().state_dict(), "epoch": 1, "config": CONFIG}
    a, b = tmp_path / "a" / "detector.pt", tmp_path / "b" / "other.pt"
    engine.save_checkpoint(a, state)
    time.sleep(1.1)  # a zip timestamp would differ by now
    engine.save_checkpoint(b, state)
    assert a.read_bytes() == b.read_bytes()
    assert not [p.name for p in tmp_path.rglob(".*")]  # no temporary file left behind
    loaded = engine.load_checkpoint(b, CONFIG)
    assert all(torch.equal(loaded["model"][k], v) for k, v in state["model"].items())
    # And the bytes depend on the content: one changed weight changes them.
    state["model"] = {k: v + 1 if v.is_floating_point() else v for k, v in state["model"].items()}
    engine.save_checkpoint(b, state)
    assert a.read_bytes() != b.read_bytes()


def test_garbage_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    ckpt = tmp_path / "last.pt"
    ckpt.write_bytes(b"not a checkpoint")
    with pytest.raises(engine.SodError, match="cannot read checkpoint"):
        engine.load_checkpoint(ckpt)


class NanAfter(nn.Module):
    """Loss is finite for ``good`` steps, then NaN."""

    def __init__(self, good: int) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.ones(1))
        self.good, self.calls = good, 0

    def forward(self, images: list, targets: list) -> dict[str, torch.Tensor]:
        self.calls += 1
        scale = 1.0 if self.calls <= self.good else float("nan")
        return {"loss_a": (self.w**2).sum() * scale}


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path: Path) -> None:
    model = NanAfter(good=3)  # epoch 0 has 3 batches of 2, then NaN in epoch 1
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loader = DataLoader(RandomBoxes(6), batch_size=2, collate_fn=collate)
    ckpt = tmp_path / "last.pt"
    with pytest.raises(engine.NonFiniteLossError, match="epoch 1, batch 0"):
        engine.fit(
            model,
            opt,
            loader,
            torch.device("cpu"),
            epochs=3,
            checkpoint=ckpt,
            config={},
            seed=0,
            progress=False,
        )
    state = engine.load_checkpoint(ckpt, {})
    assert state["epoch"] == 0
    assert torch.isfinite(state["model"]["w"]).all() and torch.isfinite(model.w).all()


def test_warmup_cosine_by_hand() -> None:
    f = engine.warmup_cosine(total_steps=12, warmup_steps=2, min_factor=0.0)
    assert f(0) == 0.0 and f(1) == 0.5  # linear warm-up
    assert f(2) == 1.0  # peak right after warm-up
    assert math.isclose(f(7), 0.5)  # half-way through the cosine part
    assert math.isclose(f(12), 0.0, abs_tol=1e-12)


def test_resolve_device() -> None:
    assert engine.resolve_device("cpu").type == "cpu"
    assert engine.resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(engine.SodError, match="no CUDA device"):
            engine.resolve_device("cuda")


DDP_SCRIPT = r"""
import sys, torch
from pathlib import Path
from torch.utils.data import DataLoader, DistributedSampler
from sod import engine
from tests.tiny_models import RandomBoxes, collate, tiny_retinanet
out = Path(sys.argv[1])
with engine.distributed("cpu") as info:
    torch.manual_seed(0)
    model = torch.nn.parallel.DistributedDataParallel(tiny_retinanet())
    ds = RandomBoxes(8)
    loader = DataLoader(ds, batch_size=2, sampler=DistributedSampler(ds, seed=0), collate_fn=collate)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    hist = engine.fit(model, opt, loader, torch.device("cpu"), epochs=2, checkpoint=out / "last.pt",
                      config={"ddp": True}, seed=0, progress=False, dist_info=info)
    torch.save(engine.unwrap(model).state_dict(), out / f"rank{info.rank}.pt")
    assert info.world_size == 2 and len(hist) == 2
"""


def test_two_process_gloo_ddp_under_torchrun(tmp_path: Path) -> None:
    script = tmp_path / "ddp_train.py"
    script.write_text(DDP_SCRIPT)
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            str(script),
            str(tmp_path),
        ],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert all(torch.equal(r0[k], r1[k]) for k in r0)  # DDP kept the replicas in sync
    state = engine.load_checkpoint(tmp_path / "last.pt", {"ddp": True})
    assert state["epoch"] == 1 and all(torch.equal(state["model"][k], r0[k]) for k in r0)
