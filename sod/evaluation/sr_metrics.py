"""PSNR and SSIM the way super-resolution papers report them.

The SR literature (SRCNN, FSRCNN, ESPCN, VDSR, ...) scores the BT.601 luma (Y of MATLAB's ``rgb2ycbcr``,
16..235) of the 8-bit output image, after shaving ``scale`` pixels off every border (where the upscalers have
no context), with a peak value of 255. :func:`y_psnr_ssim` does exactly that; SSIM is
``pytorch_msssim.ssim`` (Wang et al. 2004: 11×11 Gaussian window, σ = 1.5, K = (0.01, 0.03)).

:func:`score_upscaler` applies it to an upscaler against bicubic, on whole images and on small-object windows.
A window is cut from the whole upscaled image (so the network sees the same context as on the whole image):
a square centred on a COCO-small box, of side max(32, long side + 2 × 8) px, i.e. at least 8 px of context
around the box and never smaller than SSIM's 11 px window needs, shifted to lie inside the shaved image
(:func:`small_window`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from pytorch_msssim import ssim as _msssim_ssim

from sod.models.sr import SRUpscaler, bicubic_resize, rgb_to_y
from sod.progress import progress_bar

if TYPE_CHECKING:  # sod.data.sr_patches imports this module (to_8bit)
    from sod.data.sr_patches import SRImage

SMALL_WINDOW_MIN = 32  # px: the smallest scoring window around a small box
SMALL_WINDOW_CONTEXT = 8  # px of context on each side of the box
# The views of an image that scoring and the preview compare, in the preview's column order.
VIEWS = ("lr", "bicubic", "sr", "hr")


def shave(x: torch.Tensor, border: int) -> torch.Tensor:
    """Drop ``border`` pixels from every side of ``Tensor[..., H, W]`` → ``Tensor[..., H - 2b, W - 2b]``."""
    if border == 0:
        return x
    return x[..., border:-border, border:-border]


def psnr(pred: torch.Tensor, target: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Peak signal-to-noise ratio per image, ``10 log10(data_range² / MSE)`` in dB.

    Args:
        pred, target: ``Tensor[B, C, H, W]`` on the same scale (0..data_range).

    Returns:
        ``Tensor[B]`` (float64); ``inf`` for identical images.
    """
    mse = (pred.double() - target.double()).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(data_range**2 / mse)


def ssim(pred: torch.Tensor, target: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Structural similarity per image (``pytorch_msssim.ssim``, mean over channels and positions).

    Args:
        pred, target: ``Tensor[B, C, H, W]`` on the same scale (0..data_range); sides of at least 11 px give the
            standard 11×11 window (pytorch_msssim skips the smoothing along a shorter side).

    Returns:
        ``Tensor[B]`` in −1..1; 1 for identical images.
    """
    # pytorch_msssim builds its Gaussian window in float32, so float64 inputs buy no accuracy (and CPU
    # convolutions in float64 are far slower).
    return _msssim_ssim(pred.float(), target.float(), data_range=data_range, size_average=False).double()


def to_8bit(rgb: torch.Tensor) -> torch.Tensor:
    """Clamp to 0..1 and round to 1/255 steps: the image as it would be saved and viewed."""
    return torch.round(rgb.clamp(0, 1) * 255) / 255


def y_8bit(rgb: torch.Tensor) -> torch.Tensor:
    """BT.601 luma ``Tensor[B, 1, H, W]`` (Y / 255) of ``Tensor[B, 3, H, W]`` RGB after :func:`to_8bit`."""
    return rgb_to_y(to_8bit(rgb))


def y_psnr_ssim(pred_rgb: torch.Tensor, target_rgb: torch.Tensor, border: int) -> tuple[torch.Tensor, torch.Tensor]:
    """PSNR and SSIM on the Y channel of the 8-bit images with ``border`` pixels shaved (SR papers' protocol).

    Args:
        pred_rgb: ``Tensor[B, 3, H, W]`` RGB in 0..1 (clamped and rounded to 8 bits here).
        target_rgb: ``Tensor[B, 3, H, W]`` RGB in 0..1 (8-bit values).
        border: pixels shaved from each side; the papers use the upscaling factor.

    Returns:
        ``(psnr, ssim)``, each ``Tensor[B]``: dB, and −1..1.
    """
    pred_y = shave(y_8bit(pred_rgb), border)
    target_y = shave(y_8bit(target_rgb), border)
    return psnr(pred_y, target_y), ssim(pred_y, target_y)


def small_window(box_xyxy: list[float], height: int, width: int, border: int) -> tuple[int, int, int]:
    """The square scoring window ``(top, left, side)`` in px around a small box (see the module docstring).

    Args:
        box_xyxy: the box ``[x1, y1, x2, y2]`` in px of the ``height`` × ``width`` image.
        border: px shaved off every side; the window lies inside what is left, cut down to fit if needed.
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


def upscaled_views(upscaler: SRUpscaler, im: SRImage, device: torch.device) -> dict[str, torch.Tensor]:
    """The :data:`VIEWS` of one image at HR size, each ``Tensor[1, 3, H, W]`` in 0..1 (not yet 8-bit).

    ``lr`` is the LR image zoomed with nearest neighbour, ``bicubic`` and ``sr`` its two upscalings.
    """
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
def score_upscaler(
    upscaler: SRUpscaler, images: list[SRImage], device: torch.device, progress: bool = False
) -> tuple[dict[str, Any], list[Window]]:
    """SR papers' PSNR/SSIM of bicubic and of ``upscaler`` on whole images and on small-object windows.

    Images whose shaved HR side is under SSIM's 11 px window get whole-image scores but no window.

    Returns:
        ``(scores, windows)``: ``scores`` holds ``psnr_bicubic``, ``psnr_sr`` (dB), ``ssim_bicubic``,
        ``ssim_sr`` as means over the images, and under ``small_objects`` the count of ``windows`` and the same
        four as means over the windows (None when there is nothing to average), rounded to 4 decimals;
        ``windows`` is every small-object window scored, in image order.
    """
    upscaler.eval()
    scale = upscaler.scale
    whole: dict[str, list[float]] = {k: [] for k in ("psnr_bicubic", "psnr_sr", "ssim_bicubic", "ssim_sr")}
    small: dict[str, list[float]] = {k: [] for k in whole}
    windows: list[Window] = []
    for index, im in enumerate(progress_bar(images, desc="scoring val images", unit="img", enabled=progress)):
        ups = upscaled_views(upscaler, im, device)
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
def window_crops(
    upscaler: SRUpscaler, images: list[SRImage], windows: list[Window], rows: int, device: torch.device
) -> list[list[np.ndarray]]:
    """Up to ``rows`` windows spread evenly over ``windows`` (so they come from different images), as crops.

    Returns:
        One row per picked window: its :data:`VIEWS` crops, each ``uint8 (side, side, 3)``, 8-bit as saved.
    """
    n = min(rows, len(windows))
    picked = [windows[i] for i in np.linspace(0, len(windows) - 1, n).round().astype(int)] if n else []
    out = []
    for win in picked:
        ups = upscaled_views(upscaler, images[win.image], device)
        row = []
        for name in VIEWS:
            crop = to_8bit(ups[name][0, :, win.top : win.top + win.side, win.left : win.left + win.side])
            row.append((crop * 255).round().byte().permute(1, 2, 0).cpu().numpy())
        out.append(row)
    return out
