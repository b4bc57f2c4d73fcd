"""``sod train-sr``: a super-resolution front end (SRCNN / ESPCN / FSRCNN) trained with MSE + perceptual loss.

Data (:mod:`sod.data.sr_patches`). Every image is cropped to a multiple of ``sr.scale`` (the HR image) and
downscaled by ``sr.scale`` with antialiased bicubic interpolation, rounded to 8 bits (the LR image). Training
pairs are aligned crops: an LR patch of ``sr.patch_size`` px and the HR patch ``scale`` times larger at the same
place. ``sr.patch_sampling: objects`` places every patch so that it holds the centre of a random COCO-small
object (``area`` < 32²), ``uniform`` anywhere in a random image. A resumed run draws the same patches as an
uninterrupted one.

Loss. Pixel MSE (on luma with ``sr.channels: y``, on RGB otherwise) plus ``sr.perceptual.weight`` × the
perceptual loss of :mod:`sod.models.perceptual` on the RGB output. Adam, learning rate cosine-decayed from
``sr.lr`` to ``sr.lr / 100``; ``adam_paper_lrs`` trains the last layer at ``lr / 10``.

Scores (``report``), on the first ``sr.val_images`` val images, SR papers' protocol (see
:mod:`sod.evaluation.sr_metrics`: Y channel of the 8-bit output, ``scale`` px shaved off every border):

* ``psnr_bicubic``, ``psnr_sr``, ``ssim_bicubic``, ``ssim_sr``: means over whole images;
* the same four under ``small_objects``: means over one window per COCO-small box, cut from the whole
  upscaled image. The window is a square centred on the box, of side max(32, long side + 2 × 8) px, shifted
  to lie inside the shaved image (:func:`sod.evaluation.sr_metrics.small_window`).

Outputs (paths from the command line): ``out`` (``models/sr.pt``, see :func:`sod.models.sr.save_sr`; read it
with :func:`sod.models.sr.load_sr`), ``report``, ``preview`` (a PNG with one row per small-object window:
LR (nearest-neighbour) | bicubic | SR | HR, see :func:`sod.evaluation.plots.plot_sr_preview`), and
``checkpoint`` (written after every epoch; a rerun resumes from it; a sod checkpoint written under different
``sr`` params is trained over from scratch, any other file at that path is refused).
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from sod import engine
from sod.config import Params, SRConfig
from sod.data.sr_patches import PatchDataset, collate_pairs, load_split
from sod.errors import DataError
from sod.evaluation.plots import plot_sr_preview
from sod.evaluation.sr_metrics import score_upscaler, window_crops
from sod.io import write_json
from sod.models.perceptual import PerceptualLoss, build_perceptual
from sod.models.sr import SRUpscaler, build_sr, rgb_to_y, save_sr

log = logging.getLogger(__name__)

# Titles of the preview's columns, one per view of sod.evaluation.sr_metrics.VIEWS.
PREVIEW_COLUMNS = ("LR (nearest)", "bicubic", "SR", "HR")
# Keys of the sr section that do not change the trained weights: a resume may change them.
_NOT_TRAINING_KEYS = ("device", "val_images", "preview_crops")


# -------------------------------------------------------------------------------------------- training
class SRLoss(nn.Module):
    """The upscaler and its losses in the engine's interface: ``model(images, targets) -> dict of losses``.

    Args:
        upscaler: the model being trained.
        perceptual: the frozen feature network, or None for pixel MSE only.
        perceptual_weight: weight of the perceptual term.
    """

    def __init__(self, upscaler: SRUpscaler, perceptual: PerceptualLoss | None, perceptual_weight: float) -> None:
        super().__init__()
        self.upscaler = upscaler
        self.perceptual = perceptual
        self.perceptual_weight = perceptual_weight

    def forward(self, images: list[torch.Tensor], targets: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """Losses for LR patches ``images`` (each ``Tensor[3, p, p]``) and their ``targets[i]["hr"]``."""
        lr = torch.stack(images)
        hr = torch.stack([t["hr"] for t in targets])
        sr = self.upscaler(lr)
        # The net only shapes luma in y mode; chroma is bicubic and would add an error it cannot reduce.
        if self.upscaler.channels == "y":
            losses = {"mse": F.mse_loss(rgb_to_y(sr), rgb_to_y(hr))}
        else:
            losses = {"mse": F.mse_loss(sr, hr)}
        if self.perceptual is not None:
            losses["perceptual"] = self.perceptual_weight * self.perceptual(sr, hr)
        return losses


def make_optimizer(cfg: SRConfig, upscaler: SRUpscaler) -> torch.optim.Optimizer:
    """Adam at ``cfg.lr``; with ``adam_paper_lrs`` the network's last layer at ``cfg.lr / 10`` (SRCNN, FSRCNN)."""
    if cfg.optimizer == "adam":
        return torch.optim.Adam(upscaler.parameters(), lr=cfg.lr)
    last = list(upscaler.net.last_layer.parameters())
    last_ids = {id(p) for p in last}
    rest = [p for p in upscaler.parameters() if id(p) not in last_ids]
    return torch.optim.Adam([{"params": rest, "lr": cfg.lr}, {"params": last, "lr": cfg.lr / 10}])


def training_config(cfg: SRConfig) -> dict[str, Any]:
    """The checkpoint's config: the ``sr`` section minus keys that do not change the trained weights."""
    out = dataclasses.asdict(cfg)
    for key in _NOT_TRAINING_KEYS:
        out.pop(key)
    return out


# ------------------------------------------------------------------------------------------------ stage
def run(
    params: Params,
    train_json: Path,
    val_json: Path,
    out: Path,
    report: Path,
    preview: Path,
    checkpoint: Path,
    progress: bool = True,
) -> dict[str, Any]:
    """Train the SR front end, score it against bicubic, write the model, report and preview.

    Returns:
        The report dict (also written to ``report``).

    Raises:
        DataError: unreadable or unusable train/val data. ConfigError: bad perceptual layers.
        SodError: missing perceptual weights, a checkpoint from other params, a non-finite loss.
    """
    cfg = params.sr
    device = engine.resolve_device(cfg.device)
    train_all = load_split(train_json, cfg.scale)
    train = [im for im in train_all if min(im.lr.shape[-2:]) >= cfg.patch_size]
    if not train:
        raise DataError(
            f"{train_json}: no training image is at least sr.patch_size × sr.scale = "
            f"{cfg.patch_size * cfg.scale} px on each side"
        )
    val = load_split(val_json, cfg.scale, cfg.val_images)
    if not val:
        raise DataError(f"{val_json}: no val image to score")
    log.info(
        "%d training images (%d too small for a patch), %d val images",
        len(train),
        len(train_all) - len(train),
        len(val),
    )

    with engine.seeded(cfg.seed):  # weight initialisation
        upscaler = build_sr(cfg.model, cfg.scale, cfg.channels, cfg.residual)
    perceptual = build_perceptual(cfg.perceptual.backbone, cfg.perceptual.layers) if cfg.perceptual.weight > 0 else None
    model = SRLoss(upscaler, perceptual, cfg.perceptual.weight).to(device)
    data = PatchDataset(train, cfg.patch_size, cfg.scale, cfg.patch_sampling == "objects", cfg.patches_per_epoch)
    loader = DataLoader(data, batch_size=cfg.batch_size, shuffle=False, collate_fn=collate_pairs)
    optimizer = make_optimizer(cfg, upscaler)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, engine.warmup_cosine(cfg.epochs * len(loader), warmup_steps=0, min_factor=0.01)
    )
    scaler = torch.amp.GradScaler("cuda") if device.type == "cuda" else None
    history = engine.fit(
        model,
        optimizer,
        loader,
        device,
        epochs=cfg.epochs,
        checkpoint=checkpoint,
        config=training_config(cfg),
        seed=cfg.seed,
        scheduler=scheduler,
        scaler=scaler,
        progress=progress,
        # checkpoints/sr.pt is one persistent file: after `dvc exp run -S sr.lr=...` it holds the last run's
        # training, which must not block the new params.
        restart_on_mismatch=True,
    )

    scores, windows = score_upscaler(upscaler, val, device, progress)
    save_sr(out, upscaler, dataclasses.asdict(cfg))
    if not windows:
        log.warning("no small object in the scored val images: the preview shows no crop")
    plot_sr_preview(window_crops(upscaler, val, windows, cfg.preview_crops, device), PREVIEW_COLUMNS, preview)
    result: dict[str, Any] = {
        "model": cfg.model,
        "scale": cfg.scale,
        "channels": cfg.channels,
        "val_images": len(val),
        **scores,
        "train": {
            "images": len(train),
            "images_too_small": len(train_all) - len(train),
            "small_objects": len(data.objects),
            "patches_per_epoch": cfg.patches_per_epoch,
            "epochs": cfg.epochs,
        },
        # Timings (images_per_s) are left out: the report must not change between identical runs.
        "history": [
            {k: (int(v) if k == "epoch" else round(float(v), 6)) for k, v in h.items() if k != "images_per_s"}
            for h in history
        ],
    }
    write_json(report, result)
    log.info(
        "PSNR bicubic %.2f dB, SR %.2f dB; small objects: %s / %s dB",
        scores["psnr_bicubic"],
        scores["psnr_sr"],
        scores["small_objects"]["psnr_bicubic"],
        scores["small_objects"]["psnr_sr"],
    )
    return result
