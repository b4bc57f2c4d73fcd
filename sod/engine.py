"""Training engine: device, AMP, DDP, atomic checkpoints with resume, progress (see sod.progress), NaN stop.

In the spirit of torchvision's ``references/detection/engine.py``: free functions with explicit
arguments. ``train_one_epoch`` works with any model that returns a loss dict in training mode
(torchvision detectors, ``model(images, targets) -> {"loss_classifier": ..., ...}``).

Determinism on CPU: every epoch runs under ``torch.random.fork_rng`` seeded with ``seed + epoch``, and
:func:`train_loader` starts its workers anew every epoch (their seeds drawn from that RNG), so the shuffling
and random transforms of epoch *e* do not depend on whether the run was resumed.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from sod.errors import SodError
from sod.io import atomic_path
from sod.progress import progress_bar

log = logging.getLogger(__name__)


class NonFiniteLossError(SodError):
    """Training produced a NaN or infinite loss; the last good checkpoint is kept."""


class CheckpointMismatchError(SodError):
    """A checkpoint was written under a different configuration than the current run."""


# ---------------------------------------------------------------------------------------- device, DDP
def resolve_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    """``auto`` → the local CUDA device when there is one, else CPU; ``cuda`` without a GPU is an error."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise SodError("train.device is 'cuda' but no CUDA device is available; use 'auto' or 'cpu'")
        return torch.device("cuda", local_rank)
    return torch.device(name)


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


@contextmanager
def distributed(device_name: str = "auto") -> Iterator[DistInfo]:
    """Join the process group when started by ``torchrun`` (``WORLD_SIZE`` > 1), else a no-op.

    NCCL on CUDA, gloo on CPU. The group is destroyed on exit.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        yield DistInfo()
        return
    info = DistInfo(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    use_cuda = device_name != "cpu" and torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(info.local_rank)
    dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    try:
        yield info
    finally:
        dist.destroy_process_group()


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DistributedDataParallel wrapper (or the model itself)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


# ------------------------------------------------------------------------------------------- sampling
class EpochSampler(torch.utils.data.Sampler[int]):
    """``num_samples`` indices per epoch (reshuffled each epoch, repeating the dataset as needed), sharded by rank.

    A fixed number of samples per epoch makes training budgets comparable across datasets of different
    sizes (e.g. with and without oversampling); ``set_epoch`` reseeds it like ``DistributedSampler``.
    """

    def __init__(
        self, dataset_len: int, num_samples: int | None = None, *, seed: int = 0, rank: int = 0, world_size: int = 1
    ):
        if dataset_len < 1:
            raise SodError("the training set is empty: nothing to sample")
        self.dataset_len, self.seed, self.rank, self.world_size = dataset_len, seed, rank, world_size
        total = num_samples if num_samples is not None else dataset_len
        self.per_rank = max(1, total // world_size)  # equal shards keep DDP ranks in step
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.per_rank

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        need = self.per_rank * self.world_size
        reps = -(-need // self.dataset_len)
        order = torch.cat([torch.randperm(self.dataset_len, generator=g) for _ in range(reps)])[:need]
        return iter(order[self.rank :: self.world_size].tolist())


# ------------------------------------------------------------------------------------------ schedule
def warmup_cosine(total_steps: int, warmup_steps: int, min_factor: float = 0.01) -> Callable[[int], float]:
    """LR factor per optimizer step: linear warm-up from ``min_factor`` to 1, then cosine down to ``min_factor``."""

    def factor(step: int) -> float:
        if warmup_steps > 0 and step < warmup_steps:
            return min_factor + (1 - min_factor) * step / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return min_factor + (1 - min_factor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


# ------------------------------------------------------------------------------------------- training
def train_one_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loader: Iterable[tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]],
    device: torch.device,
    *,
    epoch: int,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    scaler: torch.amp.GradScaler | None = None,
    grad_clip: float | None = None,
    progress: bool = True,
    rank: int = 0,
    world_size: int = 1,
) -> dict[str, float]:
    """One pass over ``loader``; returns mean losses (averaged over ranks) and images/s.

    Args:
        loader: yields ``(images, targets)``: images a list of ``float Tensor[3, H, W]`` in 0..1, targets
            torchvision-style dicts with ``boxes`` (``Tensor[N, 4]`` xyxy, pixels) and ``labels`` (``int64[N]``).
        scheduler: stepped after every optimizer step (per-iteration warm-up/cosine).
        scaler: a GradScaler when AMP runs (CUDA only); None on CPU.
        grad_clip: max gradient norm; None or 0 to skip clipping.

    Raises:
        NonFiniteLossError: on a NaN/inf loss, before the optimizer step (weights stay finite).
    """
    model.train()
    sums: dict[str, float] = {}
    n_batches, n_images = 0, 0
    start = time.perf_counter()
    # Counted from 1, like fit's log line; without a TTY it prints one plain line per epoch (sod.progress).
    bar = progress_bar(loader, desc=f"epoch {epoch + 1}", unit="batch", enabled=progress and rank == 0)
    for images, targets in bar:
        images = [im.to(device, non_blocking=True) for im in images]
        targets = [{k: (v.to(device) if torch.is_tensor(v) else v) for k, v in t.items()} for t in targets]
        with torch.autocast(device_type=device.type, enabled=scaler is not None):
            loss_dict = model(images, targets)
            loss = sum(loss_dict.values())
        if not torch.isfinite(loss):
            parts = ", ".join(f"{k}={v.item():.4g}" for k, v in loss_dict.items())
            raise NonFiniteLossError(
                f"non-finite loss at epoch {epoch}, batch {n_batches} ({parts}); "
                "lower the learning rate or check the data; the last good checkpoint is kept"
            )
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            if grad_clip:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            if grad_clip:
                nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            optimizer.step()
        if scheduler is not None:
            scheduler.step()
        for k, v in loss_dict.items():
            sums[k] = sums.get(k, 0.0) + float(v.detach())
        sums["loss"] = sums.get("loss", 0.0) + float(loss.detach())
        n_batches += 1
        n_images += len(images)
        elapsed = time.perf_counter() - start
        bar.set_postfix(loss=f"{sums['loss'] / n_batches:.3f}", img_s=f"{n_images * world_size / elapsed:.1f}")
    elapsed = time.perf_counter() - start
    means = {k: v / max(1, n_batches) for k, v in sums.items()}
    if world_size > 1:
        # Every rank holds its shard's means; report the global mean.
        keys = sorted(means)
        t = torch.tensor([means[k] for k in keys], dtype=torch.float64, device=device)
        dist.all_reduce(t)
        means = {k: float(v) / world_size for k, v in zip(keys, t.tolist(), strict=True)}
    means["images_per_s"] = n_images * world_size / elapsed if elapsed > 0 else 0.0
    means["lr"] = float(optimizer.param_groups[0]["lr"])
    return means


def _without_timing(stats: dict[str, float]) -> dict[str, float]:
    """An epoch's stats without its wall-clock speed: what the same training reproduces exactly."""
    return {k: v for k, v in stats.items() if k != "images_per_s"}


def train_loader(
    dataset: torch.utils.data.Dataset,
    sampler: EpochSampler,
    batch_size: int,
    num_workers: int,
    collate_fn: Callable[[list[Any]], Any],
    pin_memory: bool = False,
) -> torch.utils.data.DataLoader:
    """The training DataLoader: ``sampler``'s order, ``batch_size`` per step, the last partial batch dropped
    when there is more than one batch.

    Workers are not persistent, on purpose: each epoch starts new ones, whose RNG seeds DataLoader draws from
    the global RNG that :func:`fit` seeds with ``seed + epoch``. Persistent workers would carry their random
    streams from the first epoch the process ran, so a run resumed after a kill would see other random
    transforms than an uninterrupted one.
    """
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        collate_fn=collate_fn,
        pin_memory=pin_memory,
        persistent_workers=False,
        drop_last=len(sampler) > batch_size,
    )


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run a block with torch's global RNG seeded, restoring the previous state afterwards."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


# ---------------------------------------------------------------------------------------- checkpoints
def config_fingerprint(config: dict[str, Any]) -> str:
    """sha256 of a JSON-serialisable config (sorted keys), recorded in every checkpoint."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write ``state`` with torch.save atomically; the same ``state`` always gives the same bytes.

    torch.save names the zip archive's root folder after the file it writes to, so saving straight to the
    random temporary name of an atomic write would put that name into the bytes (and into DVC's md5).
    Serialising to memory first gives the fixed root ``archive/``, as :func:`sod.models.sr.save_sr` does.
    """
    buf = io.BytesIO()
    torch.save(state, buf)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buf.getvalue())


def load_checkpoint(path: str | Path, config: dict[str, Any] | None = None) -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``; refuse one written under a different config.

    Args:
        config: the current run's config; when given, the checkpoint's ``config`` must equal it.

    Raises:
        SodError: unreadable file. CheckpointMismatchError: different config (names the differing keys).
    """
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a damaged or foreign file
        raise SodError(f"cannot read checkpoint {path}: {type(exc).__name__}: {exc}") from None
    if not isinstance(state, dict) or "model" not in state:
        raise SodError(f"{path} is not a sod checkpoint (no 'model' entry)")
    if config is not None:
        saved = state.get("config", {})
        if config_fingerprint(saved) != config_fingerprint(config):
            diff = sorted(_diff_keys(saved, config))
            shown = ", ".join(diff[:8]) + (" ..." if len(diff) > 8 else "")
            raise CheckpointMismatchError(
                f"checkpoint {path} was written with a different config (differs in: {shown}); "
                "restore those params or delete the checkpoint to start over"
            )
    return state


def _diff_keys(a: Any, b: Any, prefix: str = "") -> set[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out: set[str] = set()
        for k in set(a) | set(b):
            out |= _diff_keys(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return set() if a == b else {prefix.rstrip(".") or "<root>"}


def fit(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loader: torch.utils.data.DataLoader,
    device: torch.device,
    *,
    epochs: int,
    checkpoint: str | Path,
    config: dict[str, Any],
    seed: int,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    scaler: torch.amp.GradScaler | None = None,
    grad_clip: float | None = None,
    progress: bool = True,
    dist_info: DistInfo = DistInfo(),
    on_epoch_end: Callable[[list[dict[str, float]]], None] | None = None,
    restart_on_mismatch: bool = False,
) -> list[dict[str, float]]:
    """Train for ``epochs``, checkpointing atomically after every epoch; resume from ``checkpoint`` if present.

    Only rank 0 writes the checkpoint. A checkpoint from a different ``config`` is refused. Resume is per
    epoch: a kill inside an epoch loses its steps, and the rerun trains that epoch again from the previous
    checkpoint; since epoch *e* runs under ``seeded(seed + e)``, it is the same epoch, and the run ends on
    the same weights as an uninterrupted one (on CPU).
    ``on_epoch_end`` gets the history so far (on every rank) after each epoch's checkpoint is on disk.
    ``restart_on_mismatch``: a sod checkpoint written under another config (one checkpoint file per stage,
    as ``train_sr`` has, outlives a run and meets the next run's params) starts training afresh, and the
    first epoch's checkpoint replaces it; a file that is not a sod checkpoint is still refused.

    Returns:
        One dict per epoch (``epoch``, mean losses, ``images_per_s``, ``lr``), resumed epochs included; a
        resumed epoch has no ``images_per_s``: the checkpoint keeps no timings, so that the same training
        writes the same checkpoint bytes (a DVC output) on every run and machine load.
    """
    checkpoint = Path(checkpoint)
    history: list[dict[str, float]] = []
    start = 0
    state = None
    if checkpoint.exists():
        try:
            state = load_checkpoint(checkpoint, config)
        except CheckpointMismatchError as exc:
            if not restart_on_mismatch:
                raise
            log.warning("%s; training from scratch (the first epoch's checkpoint replaces it)", exc)
    if state is not None:
        unwrap(model).load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None and state.get("scheduler") is not None:
            scheduler.load_state_dict(state["scheduler"])
        if scaler is not None and state.get("scaler") is not None:
            scaler.load_state_dict(state["scaler"])
        history = list(state.get("history", []))
        start = int(state["epoch"]) + 1
        log.info("resuming from %s after epoch %d of %d", checkpoint, start, epochs)
    for epoch in range(start, epochs):
        sampler = getattr(loader, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        with seeded(seed + epoch):
            stats = train_one_epoch(
                model,
                optimizer,
                loader,
                device,
                epoch=epoch,
                scheduler=scheduler,
                scaler=scaler,
                grad_clip=grad_clip,
                progress=progress,
                rank=dist_info.rank,
                world_size=dist_info.world_size,
            )
        stats = {"epoch": epoch, **stats}
        history.append(stats)
        log.info("epoch %d/%d: loss %.4f, %.1f images/s", epoch + 1, epochs, stats["loss"], stats["images_per_s"])
        if dist_info.is_main:
            save_checkpoint(
                checkpoint,
                {
                    "model": unwrap(model).state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict() if scheduler is not None else None,
                    "scaler": scaler.state_dict() if scaler is not None else None,
                    "epoch": epoch,
                    "history": [_without_timing(h) for h in history],
                    "config": config,
                },
            )
        if dist_info.enabled:
            dist.barrier()
        if on_epoch_end is not None:
            on_epoch_end(history)
    return history
