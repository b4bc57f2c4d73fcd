"""PSNR and SSIM the way super-resolution papers report them.

The SR literature (SRCNN, FSRCNN, ESPCN, VDSR, ...) scores the BT.601 luma (Y of MATLAB's ``rgb2ycbcr``,
16..235) of the 8-bit output image, after shaving ``scale`` pixels off every border (where the upscalers have
no context), with a peak value of 255. :func:`y_psnr_ssim` does exactly that; SSIM is
``pytorch_msssim.ssim`` (Wang et al. 2004: 11×11 Gaussian window, σ = 1.5, K = (0.01, 0.03)).
"""

from __future__ import annotations

import torch
from pytorch_msssim import ssim as _msssim_ssim

from sod.models.sr import rgb_to_y


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
