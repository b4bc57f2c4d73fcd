"""``sod train-sr``: a super-resolution front end (SRCNN / ESPCN / FSRCNN) trained with MSE + perceptual loss.

Data. Every image is cropped at its right and bottom to a multiple of ``sr.scale`` (the HR image) and
downscaled by ``sr.scale`` with antialiased bicubic interpolation, then rounded to 8 bits (the LR image, as a
camera or a JPEG would hold it). Training pairs are aligned crops: an LR patch of ``sr.patch_size`` px and the
HR patch ``scale`` times larger at the same place. ``sr.patch_sampling: objects`` places every patch so that it
holds the centre of a random COCO-small object (``area`` < 32²), ``uniform`` anywhere in a random image.
Patch positions come from torch's RNG, which :func:`sod.engine.fit` seeds per epoch: a resumed run draws
the same patches as an uninterrupted one.

Loss. Pixel MSE (on luma with ``sr.channels: y``, on RGB otherwise) plus ``sr.perceptual.weight`` × the
perceptual loss of :mod:`sod.models.perceptual` on the RGB output. Adam, learning rate cosine-decayed from
``sr.lr`` to ``sr.lr / 100``; ``adam_paper_lrs`` trains the last layer at ``lr / 10``.

Scores (``report``), on the first ``sr.val_images`` val images, SR papers' protocol (see
:mod:`sod.evaluation.sr_metrics`: Y channel of the 8-bit output, ``scale`` px shaved off every border):

* ``psnr_bicubic``, ``psnr_sr``, ``ssim_bicubic``, ``ssim_sr``: means over whole images;
* the same four under ``small_objects``: means over one window per COCO-small box, cut from the whole
  upscaled image (so the network sees the same context as on the whole image). The window is a square
  centred on the box, of side max(32, long side + 2 × 8) px, i.e. at least 8 px of context around the box and
  never smaller than SSIM's 11 px window needs; it is shifted to lie inside the shaved image.

Outputs (paths from the command line): ``out`` (``models/sr.pt``, see :func:`sod.models.sr.save_sr`; read it
with :func:`sod.models.sr.load_sr`), ``report``, ``preview`` (a PNG with one row per small-object window:
LR (nearest-neighbour) | bicubic | SR | HR), and ``checkpoint`` (written after every epoch; a rerun resumes
from it, and one written under different ``sr`` params is refused).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from sod import engine
from sod.config import COCO_SMALL_AREA, Params, SRConfig
from sod.data import coco
from sod.errors import DataError
from sod.evaluation.sr_metrics import psnr, shave, ssim, to_8bit, y_8bit
from sod.io import load_rgb, save_png, write_json
from sod.models.perceptual import PerceptualLoss, build_perceptual
from sod.models.sr import SRUpscaler, bicubic_resize, build_sr, rgb_to_y, save_sr

log = logging.getLogger(__name__)

SMALL_WINDOW_MIN = 32  # px: the smallest scoring window around a small box
SMALL_WINDOW_CONTEXT = 8  # px of context on each side of the box
PREVIEW_CELL = 128  # px: every preview crop is shown at this size (nearest-neighbour)
# Keys of the sr section that do not change the trained weights: a resume may change them.
_NOT_TRAINING_KEYS = ("device", "val_images", "preview_crops")


# ------------------------------------------------------------------------------------------------ data
@dataclass
class SRImage:
    """One image as an aligned HR/LR pair, plus its COCO-small boxes.

    Attributes:
        hr: ``uint8 Tensor[3, H, W]``, H and W multiples of the scale.
        lr: ``uint8 Tensor[3, H / scale, W / scale]``, antialiased bicubic downscale of ``hr``.
        small_boxes_xyxy: ``float Tensor[N, 4]`` in HR pixels, boxes of area < 32².
    """

    hr: torch.Tensor
    lr: torch.Tensor
    small_boxes_xyxy: torch.Tensor


def make_lr(hr: torch.Tensor, scale: int) -> torch.Tensor:
    """The LR image of ``uint8 Tensor[3, H, W]`` (H, W multiples of ``scale``): antialiased bicubic, 8-bit."""
    h, w = hr.shape[-2] // scale, hr.shape[-1] // scale
    lr = bicubic_resize(hr[None].float() / 255, (h, w))[0]
    return (to_8bit(lr) * 255).round().to(torch.uint8)


def load_split(json_path: Path, scale: int, limit: int | None = None) -> list[SRImage]:
    """Read a sod COCO file's images as HR/LR pairs (in file order; the first ``limit`` images if given).

    Raises:
        DataError: unreadable JSON, a malformed record, or a missing/unreadable image (named).
    """
    raw = coco.load_coco_json(json_path)
    small: dict[Any, list[list[float]]] = {}
    for i, ann in enumerate(raw["annotations"]):
        try:
            if ann.get("iscrowd", 0) or float(ann["area"]) >= COCO_SMALL_AREA:
                continue
            x, y, w, h = (float(v) for v in ann["bbox"])
            small.setdefault(ann["image_id"], []).append([x, y, x + w, y + h])
        except (KeyError, TypeError, ValueError, AttributeError):
            raise DataError(f"{json_path}: annotation #{i} has no numeric 'bbox' [x, y, w, h] and 'area'") from None
    images = raw["images"] if limit is None else raw["images"][:limit]
    out = []
    for i, rec in enumerate(images):
        if not isinstance(rec, dict) or not isinstance(rec.get("file_name"), str):
            raise DataError(f"{json_path}: image #{i} has no 'file_name'")
        path = coco.image_path(json_path, rec["file_name"])
        try:
            rgb = load_rgb(path)
        except (OSError, ValueError) as exc:
            raise DataError(f"{json_path}: image #{i} ({path}) cannot be read: {exc}") from None
        h, w = (rgb.shape[0] // scale) * scale, (rgb.shape[1] // scale) * scale
        if h == 0 or w == 0:
            raise DataError(f"{json_path}: image #{i} ({path}) is smaller than the scale factor {scale}")
        hr = torch.from_numpy(rgb[:h, :w].copy()).permute(2, 0, 1).contiguous()  # load_rgb's array is read-only
        boxes = torch.tensor(small.get(rec.get("id"), []), dtype=torch.float32).reshape(-1, 4)
        out.append(SRImage(hr=hr, lr=make_lr(hr, scale), small_boxes_xyxy=boxes))
    return out


class PatchDataset(Dataset):
    """``length`` random aligned (LR, HR) patch pairs, drawn from torch's global RNG at every access.

    Items are ``(lr Tensor[3, p, p], {"hr": Tensor[3, p·s, p·s]})``, floats in 0..1, the engine's
    ``(image, target)`` convention.

    Args:
        images: training pairs; each must be at least ``patch`` LR pixels on each side.
        patch: LR patch side (px).
        scale: upscaling factor.
        objects: centre every patch near a random small object (the images must hold at least one).
        length: items per epoch.
    """

    def __init__(self, images: list[SRImage], patch: int, scale: int, objects: bool, length: int) -> None:
        self.images, self.patch, self.scale, self.length = images, patch, scale, length
        # (image index, box index) of every small object, for object-centred sampling.
        self.objects = [(i, j) for i, im in enumerate(images) for j in range(len(im.small_boxes_xyxy))]
        if objects and not self.objects:
            raise DataError("sr.patch_sampling is 'objects' but the training images hold no small object")
        self.use_objects = objects

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        p, s = self.patch, self.scale
        if self.use_objects:
            i, j = self.objects[int(torch.randint(len(self.objects), ()))]
            im = self.images[i]
            x0, y0, x1, y1 = (im.small_boxes_xyxy[j] / s).tolist()
            # Any LR position whose patch covers the pixel holding the box centre (clamping below keeps it).
            left = math.floor((x0 + x1) / 2) - int(torch.randint(p, ()))
            top = math.floor((y0 + y1) / 2) - int(torch.randint(p, ()))
        else:
            im = self.images[int(torch.randint(len(self.images), ()))]
            left = int(torch.randint(im.lr.shape[-1] - p + 1, ()))
            top = int(torch.randint(im.lr.shape[-2] - p + 1, ()))
        left = min(max(left, 0), im.lr.shape[-1] - p)
        top = min(max(top, 0), im.lr.shape[-2] - p)
        lr = im.lr[:, top : top + p, left : left + p]
        hr = im.hr[:, top * s : (top + p) * s, left * s : (left + p) * s]
        return lr.float() / 255, {"hr": hr.float() / 255}


def _collate(batch: list) -> tuple[list, list]:
    return [b[0] for b in batch], [b[1] for b in batch]


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


# ------------------------------------------------------------------------------------------ evaluation
def small_window(box_xyxy: list[float], height: int, width: int, border: int) -> tuple[int, int, int]:
    """The square scoring window ``(top, left, side)`` around a small box (see the module docstring).

    The window lies inside the image shaved by ``border`` px; it is cut down to fit a smaller image.
    """
    x0, y0, x1, y1 = box_xyxy
    side = max(SMALL_WINDOW_MIN, math.ceil(max(x1 - x0, y1 - y0)) + 2 * SMALL_WINDOW_CONTEXT)
    side = min(side, height - 2 * border, width - 2 * border)
    top = round((y0 + y1) / 2 - side / 2)
    left = round((x0 + x1) / 2 - side / 2)
    top = min(max(top, border), height - border - side)
    left = min(max(left, border), width - border - side)
    return top, left, side


@dataclass(frozen=True)
class Window:
    """A small-object scoring window: image index into the scored list, and its square in HR pixels."""

    image: int
    top: int
    left: int
    side: int


def _upscale_both(upscaler: SRUpscaler, im: SRImage, device: torch.device) -> dict[str, torch.Tensor]:
    """``Tensor[1, 3, H, W]`` in 0..1 for ``lr`` (nearest), ``bicubic``, ``sr`` and ``hr``."""
    hr = im.hr[None].float().to(device) / 255
    lr = im.lr[None].float().to(device) / 255
    s = upscaler.scale
    return {
        "lr": lr.repeat_interleave(s, -2).repeat_interleave(s, -1),
        "bicubic": bicubic_resize(lr, hr.shape[-2:]),
        "sr": upscaler(lr),
        "hr": hr,
    }


@torch.inference_mode()
def evaluate(
    upscaler: SRUpscaler, images: list[SRImage], device: torch.device, progress: bool = False
) -> tuple[dict[str, Any], list[Window]]:
    """SR papers' PSNR/SSIM of bicubic and of ``upscaler`` on whole images and on small-object windows.

    Returns:
        ``(scores, windows)``: the report's metrics, and every small-object window scored, in image order.
    """
    upscaler.eval()
    scale = upscaler.scale
    whole: dict[str, list[float]] = {k: [] for k in ("psnr_bicubic", "psnr_sr", "ssim_bicubic", "ssim_sr")}
    small: dict[str, list[float]] = {k: [] for k in whole}
    windows: list[Window] = []
    for index, im in enumerate(tqdm(images, desc="scoring val images", disable=not progress, leave=False)):
        ups = _upscale_both(upscaler, im, device)
        # Luma of the 8-bit images, computed once per image; windows are cut from it.
        y = {name: y_8bit(ups[name]) for name in ("bicubic", "sr", "hr")}
        for name in ("bicubic", "sr"):
            whole[f"psnr_{name}"].append(float(psnr(shave(y[name], scale), shave(y["hr"], scale))))
            whole[f"ssim_{name}"].append(float(ssim(shave(y[name], scale), shave(y["hr"], scale))))
        h, w = im.hr.shape[-2:]
        if h - 2 * scale < 11 or w - 2 * scale < 11:
            continue  # too small for a window SSIM can score
        by_side: dict[int, list[Window]] = {}
        for box in im.small_boxes_xyxy.tolist():
            win = Window(index, *small_window(box, h, w, scale))
            windows.append(win)
            by_side.setdefault(win.side, []).append(win)
        for side, group in sorted(by_side.items()):  # one batch per window size
            crops = {
                name: torch.cat([t[..., g.top : g.top + side, g.left : g.left + side] for g in group])
                for name, t in y.items()
            }
            for name in ("bicubic", "sr"):
                small[f"psnr_{name}"] += psnr(crops[name], crops["hr"]).tolist()
                small[f"ssim_{name}"] += ssim(crops[name], crops["hr"]).tolist()
    scores: dict[str, Any] = {k: _mean(v) for k, v in whole.items()}
    scores["small_objects"] = {"windows": len(windows), **{k: _mean(v) for k, v in small.items()}}
    return scores, windows


def _mean(values: list[float]) -> float | None:
    return round(float(np.mean(values)), 4) if values else None


@torch.inference_mode()
def preview_strip(
    upscaler: SRUpscaler, images: list[SRImage], windows: list[Window], rows: int, device: torch.device
) -> np.ndarray:
    """``uint8 (H, W, 3)`` image: a header, then up to ``rows`` rows of LR | bicubic | SR | HR crops.

    Rows are spread evenly over ``windows`` so that they come from different images; every crop is shown
    at :data:`PREVIEW_CELL` px with nearest-neighbour zoom.
    """
    labels = ("lr", "bicubic", "sr", "hr")
    header = 16
    n = min(rows, len(windows))
    picked = [windows[i] for i in np.linspace(0, len(windows) - 1, n).round().astype(int)] if n else []
    canvas = Image.new("RGB", (len(labels) * PREVIEW_CELL, header + len(picked) * PREVIEW_CELL), "white")
    draw = ImageDraw.Draw(canvas)
    for c, label in enumerate(("LR (nearest)", "bicubic", "SR", "HR")):
        draw.text((c * PREVIEW_CELL + 4, 2), label, fill="black")
    for r, win in enumerate(picked):
        ups = _upscale_both(upscaler, images[win.image], device)
        for c, name in enumerate(labels):
            crop = to_8bit(ups[name][0, :, win.top : win.top + win.side, win.left : win.left + win.side])
            cell = (crop * 255).round().byte().permute(1, 2, 0).cpu().numpy()
            tile = Image.fromarray(cell).resize((PREVIEW_CELL, PREVIEW_CELL), Image.Resampling.NEAREST)
            canvas.paste(tile, (c * PREVIEW_CELL, header + r * PREVIEW_CELL))
    return np.asarray(canvas)


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
    loader = DataLoader(data, batch_size=cfg.batch_size, shuffle=False, collate_fn=_collate)
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
    )

    scores, windows = evaluate(upscaler, val, device, progress)
    save_sr(out, upscaler, dataclasses.asdict(cfg))
    if not windows:
        log.warning("no small object in the scored val images: the preview shows no crop")
    save_png(preview, preview_strip(upscaler, val, windows, cfg.preview_crops, device))
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
