"""PSNR/SSIM as SR papers report them: hand-made pairs, border shaving, 8-bit rounding, Y channel."""

from __future__ import annotations

import math

import pytest
import torch

from sod.evaluation.sr_metrics import psnr, shave, ssim, to_8bit, y_psnr_ssim


def test_psnr_of_constant_offset_follows_the_formula() -> None:
    target = torch.full((2, 1, 8, 8), 0.5, dtype=torch.float64)
    pred = target + torch.tensor([0.1, 0.01], dtype=torch.float64).view(2, 1, 1, 1)
    # MSE = offset², PSNR = 10 log10(1 / offset²) = 20 dB and 40 dB.
    torch.testing.assert_close(psnr(pred, target), torch.tensor([20.0, 40.0], dtype=torch.float64))
    assert psnr(target * 255, (target + 0.1) * 255, data_range=255)[0].item() == pytest.approx(20.0)


def test_psnr_of_identical_images_is_infinite() -> None:
    x = torch.rand(1, 3, 4, 4)
    assert math.isinf(psnr(x, x).item())


def test_ssim_identical_is_one_and_noise_lowers_it() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(1, 1, 32, 32, generator=g)
    noisy = (x + 0.2 * torch.randn(1, 1, 32, 32, generator=g)).clamp(0, 1)
    assert ssim(x, x).item() == pytest.approx(1.0)
    assert ssim(noisy, x).item() < 0.9


def test_ssim_of_constant_images_follows_the_formula() -> None:
    # Flat images: only the luminance term is left, (2 μx μy + C1) / (μx² + μy² + C1), C1 = (0.01 · 1)².
    a, b, c1 = 0.4, 0.6, 1e-4
    x, y = torch.full((1, 1, 16, 16), a, dtype=torch.float64), torch.full((1, 1, 16, 16), b, dtype=torch.float64)
    # rel 1e-4: SSIM runs in float32 (pytorch_msssim's window is float32, its weights sum to 1 only to ~1e-7),
    # which leaves a variance term of ~1e-8 against C2 = 9e-4.
    assert ssim(x, y).item() == pytest.approx((2 * a * b + c1) / (a * a + b * b + c1), rel=1e-4)


def test_shave_drops_the_border() -> None:
    x = torch.arange(36.0).reshape(1, 1, 6, 6)
    assert torch.equal(shave(x, 2), torch.tensor([[[[14.0, 15.0], [20.0, 21.0]]]]))
    assert shave(x, 0) is x


def test_error_only_in_the_border_is_shaved_away() -> None:
    # 12 px with 2 shaved leaves 8 px, under SSIM's 11 px window: pytorch_msssim warns and skips the smoothing.
    hr = torch.full((1, 3, 12, 12), 100 / 255)
    pred = hr.clone()
    pred[..., :2, :] = 0  # rows 0-1 lie inside a 2 px border
    p_shaved, s_shaved = y_psnr_ssim(pred, hr, border=2)
    assert math.isinf(p_shaved.item()) and s_shaved.item() == pytest.approx(1.0)
    assert math.isfinite(y_psnr_ssim(pred, hr, border=1)[0].item())


def test_to_8bit_clamps_and_rounds() -> None:
    x = torch.tensor([-0.1, 0.5 / 255, 0.6 / 255, 1.2])
    torch.testing.assert_close(to_8bit(x), torch.tensor([0.0, 0.0, 1 / 255, 1.0]))


def test_scores_are_on_luma() -> None:
    # A grey target and a prediction off by +10/255 in every RGB channel: Y moves by 10 · 219/255 levels
    # (BT.601: the Y weights sum to 219/255), so PSNR = 20 log10(255 / (10 · 219/255)).
    hr = torch.full((1, 3, 16, 16), 100 / 255)
    p, _ = y_psnr_ssim(hr + 10 / 255, hr, border=0)
    assert p.item() == pytest.approx(20 * math.log10(255 / (10 * 219 / 255)), abs=1e-3)
