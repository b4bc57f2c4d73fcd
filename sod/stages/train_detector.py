"""``sod train-detector``: train the detector on the (augmented) training split.

Single process: ``sod train-detector ...``. Several GPUs or CPU processes: ``torchrun --nproc_per_node=N
-m sod.cli train-detector ...`` (DistributedDataParallel; NCCL on GPUs, gloo on CPU; only rank 0 writes).

Checkpoints: one file per training configuration, ``<checkpoint_dir>/<fingerprint>.pt``, written
atomically after every epoch. A rerun after a kill resumes from it; a run with other params (another
fingerprint) starts fresh instead of resuming from the wrong weights. The checkpoint is removed once
the final model is written. ``<checkpoint_dir>/.sod-owner`` lists the checkpoints this stage wrote; a
non-empty ``checkpoint_dir`` without it is refused, and only listed files are ever deleted.

SR front end (``detector.input_upscale: sr``): the SR model of ``sod train-sr`` (``--sr-model``) upscales every
training image; it is frozen unless ``detector.sr_finetune``, and its weights are saved inside the detector
model, so ``models/detector.pt`` alone rebuilds the whole thing.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import time
from pathlib import Path
from typing import Any

import torch

from sod import engine
from sod.config import Params, to_dict
from sod.data.dataset import CocoDetectionDataset, collate_fn, train_transforms
from sod.errors import DataError
from sod.io import atomic_path, check_owner, claim_dir, read_json, remove_owned, write_json
from sod.models.detector import build_detector
from sod.models.sr import SRUpscaler, load_sr

log = logging.getLogger(__name__)


def run(
    params: Params,
    train_json: Path,
    anchors_json: Path,
    out: Path,
    report: Path,
    loss_csv: Path,
    checkpoint_dir: Path,
    sr_model: Path | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Train, then write the model (``out``), the report and the per-epoch loss CSV; returns the report.

    Args:
        sr_model: ``models/sr.pt``; read only when ``detector.input_upscale`` is sr.

    Raises:
        DataError: unreadable data or anchors; input_upscale sr without a readable SR model of the right scale;
            ``checkpoint_dir`` is not empty and not marked as this stage's (nothing is written then).
    """
    tcfg = params.train
    # Every rank checks (read-only), so a refused directory stops all of them before any collective call.
    check_owner(checkpoint_dir, "train_detector")
    upscaler, sr_sha256 = None, None
    if params.detector.input_upscale == "sr":
        if sr_model is None:
            raise DataError("detector.input_upscale is sr: pass the SR model (`--sr-model models/sr.pt`)")
        upscaler = load_sr(sr_model)
        sr_sha256 = hashlib.sha256(Path(sr_model).read_bytes()).hexdigest()
    anchors = read_json(anchors_json)
    dataset = CocoDetectionDataset(train_json, transforms=train_transforms(params.augment.online))
    with engine.distributed(tcfg.device) as dist_info:
        device = engine.resolve_device(tcfg.device, dist_info.local_rank)
        with engine.seeded(tcfg.seed):  # same initial weights on every rank and every run
            model = build_detector(params.detector, dataset.num_classes, anchors, upscaler=upscaler).to(device)
        if dist_info.enabled:
            model = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=[device.index] if device.type == "cuda" else None
            )
        sampler = engine.EpochSampler(
            len(dataset), tcfg.samples_per_epoch, seed=tcfg.seed, rank=dist_info.rank, world_size=dist_info.world_size
        )
        loader = engine.train_loader(
            dataset, sampler, tcfg.batch_size, tcfg.num_workers, collate_fn, pin_memory=device.type == "cuda"
        )
        optimizer = _optimizer(model, params)
        total_steps = tcfg.epochs * max(1, len(loader))
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, engine.warmup_cosine(total_steps, min(tcfg.warmup_iters, total_steps // 2))
        )
        scaler = torch.amp.GradScaler("cuda") if tcfg.amp and device.type == "cuda" else None
        config = _fingerprint_config(params, anchors, train_json, dataset.num_classes, dist_info.world_size, sr_sha256)
        fingerprint = engine.config_fingerprint(config)[:16]
        checkpoint = checkpoint_dir / f"{fingerprint}.pt"
        if dist_info.is_main:  # listed in the marker before it exists, so even a killed run's file is sod's
            claim_dir(checkpoint_dir, "train_detector", [checkpoint.name])

        def write_curve(history: list[dict[str, float]]) -> None:
            if dist_info.is_main:  # the curve grows while training runs, for `dvc plots show`
                _write_loss_csv(loss_csv, history)

        start = time.perf_counter()
        history = engine.fit(
            model, optimizer, loader, device,
            epochs=tcfg.epochs, checkpoint=checkpoint, config=config, seed=tcfg.seed, scheduler=scheduler,
            scaler=scaler, grad_clip=tcfg.grad_clip or None, progress=progress, dist_info=dist_info,
            on_epoch_end=write_curve,
        )  # fmt: skip
        wall = time.perf_counter() - start
        speeds = [h["images_per_s"] for h in history if "images_per_s" in h]  # resumed epochs have none
        result = {
            "epochs": tcfg.epochs,
            "train_images": len(dataset),
            "crowd_annotations_dropped": dataset.crowd_dropped,  # iscrowd regions are no targets
            "final_loss": history[-1]["loss"],
            "device": device.type,
            "world_size": dist_info.world_size,
        }
        # Timings stay out of the report and the loss curve (DVC outputs in git): identical runs must write
        # identical files. They are logged, returned under "timing" and logged to MLflow (sod.tracking).
        timing = {"wall_s": round(wall, 1), "images_per_s": round(sum(speeds) / len(speeds), 3) if speeds else None}
        log.info(
            "train_detector: %s s, %s images/s (epochs trained in this run)", timing["wall_s"], timing["images_per_s"]
        )
        if dist_info.is_main:
            _write_loss_csv(loss_csv, history)  # also when every epoch was resumed from the checkpoint
            save_model(out, engine.unwrap(model), params, dataset, anchors, upscaler)
            write_json(report, result)
            remove_owned(checkpoint, "train_detector")  # only a checkpoint this stage's marker lists
    return {**result, "timing": timing}


def _optimizer(model: torch.nn.Module, params: Params) -> torch.optim.Optimizer:
    t = params.train
    trainable = [p for p in model.parameters() if p.requires_grad]
    if t.optimizer == "sgd":
        return torch.optim.SGD(trainable, lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay)
    return torch.optim.AdamW(trainable, lr=t.lr, weight_decay=t.weight_decay)


def _fingerprint_config(
    params: Params,
    anchors: dict[str, Any],
    train_json: Path,
    num_classes: int,
    world_size: int,
    sr_sha256: str | None = None,
) -> dict[str, Any]:
    """Everything that makes two runs' checkpoints interchangeable: resuming across these would be wrong."""
    train = to_dict(params.train)
    for key in ("device", "num_workers", "threads", "amp"):  # how it runs, not what it learns
        train.pop(key)
    return {
        "detector": to_dict(params.detector),
        "train": train,
        "online": to_dict(params.augment.online),
        "anchors": anchors,
        "num_classes": num_classes,
        "world_size": world_size,
        "data_sha256": hashlib.sha256(Path(train_json).read_bytes()).hexdigest(),
        "sr_sha256": sr_sha256,  # another SR front end is another training run
    }


def _write_loss_csv(path: Path, history: list[dict[str, float]]) -> None:
    keys = ["epoch"] + sorted(k for k in history[0] if k not in ("epoch", "images_per_s"))
    with atomic_path(path) as tmp, tmp.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=keys)
        writer.writeheader()
        for h in history:
            writer.writerow({k: (round(v, 6) if isinstance(v, float) else v) for k, v in h.items() if k in keys})


def save_model(
    path: Path,
    model: torch.nn.Module,
    params: Params,
    dataset: CocoDetectionDataset,
    anchors: dict[str, Any],
    upscaler: SRUpscaler | None = None,
) -> None:
    """``models/detector.pt``: the state dict plus everything needed to rebuild the model for inference.

    With an SR front end, the state dict holds its (possibly fine-tuned) weights and ``sr`` its architecture.
    """
    state = {
        "model": model.state_dict(),
        "detector": to_dict(params.detector),
        "anchors": anchors,
        "num_classes": dataset.num_classes,
        "categories": dataset.categories,
        "label_to_category": dataset.label_to_category,
    }
    if upscaler is not None:
        state["sr"] = upscaler.spec()
    engine.save_checkpoint(path, state)
