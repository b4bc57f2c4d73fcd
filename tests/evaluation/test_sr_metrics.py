"""PSNR/SSIM as SR papers report them (hand-made pairs, border shaving, 8-bit rounding, Y channel), and the
scoring of an upscaler against bicubic on whole images and small-object windows."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from sod.data.sr_patches import SRImage, make_lr
from sod.evaluation.sr_metrics import (
    VIEWS,
    Window,
    psnr,
    score_upscaler,
    shave,
    small_window,
    ssim,
    to_8bit,
    window_crops,
    y_psnr_ssim,
)
from sod.models.sr import bicubic_resize


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


def test_small_window_is_square_with_context_inside_the_shaved_image() -> None:
    # 10 px box near the corner: the 32 px minimum window, pushed inside the 2 px border.
    assert small_window([10, 10, 20, 20], 100, 100, 2) == (2, 2, 32)
    # 40 px wide box: side 40 + 2·8 = 56, centred at (70, 55) → left 42, top 27; left fits exactly (42 + 56 = 98).
    assert small_window([50, 50, 90, 60], 100, 100, 2) == (27, 42, 56)
    # An image smaller than the window: the side shrinks to the shaved height (20 − 2·2), centred at x = 22.5
    # → left 14.5 rounds to 14, then is pushed back to 30 − 2 − 16 = 12.
    assert small_window([20, 5, 25, 10], 20, 30, 2) == (2, 12, 16)


class _Bicubic(nn.Module):
    """An "upscaler" that is bicubic itself, or, with ``oracle``, returns the HR images it was given."""

    scale = 2

    def __init__(self, oracle: dict[tuple[int, ...], torch.Tensor] | None = None) -> None:
        super().__init__()
        self.oracle = oracle

    def forward(self, lr: torch.Tensor) -> torch.Tensor:
        if self.oracle is not None:
            return self.oracle[tuple(lr.shape)]
        return bicubic_resize(lr, (lr.shape[-2] * 2, lr.shape[-1] * 2))


def _images() -> list[SRImage]:
    """A 48 px image with two small boxes and a 12 px one (too small for a window once 2 px are shaved)."""
    g = torch.Generator().manual_seed(0)
    big = torch.randint(0, 256, (3, 48, 48), dtype=torch.uint8, generator=g)
    tiny = torch.randint(0, 256, (3, 12, 12), dtype=torch.uint8, generator=g)
    boxes = torch.tensor([[4.0, 4.0, 10.0, 10.0], [30.0, 30.0, 36.0, 40.0]])
    return [
        SRImage(hr=big, lr=make_lr(big, 2), small_boxes_xyxy=boxes),
        SRImage(hr=tiny, lr=make_lr(tiny, 2), small_boxes_xyxy=torch.tensor([[2.0, 2.0, 6.0, 6.0]])),
    ]


@pytest.mark.filterwarnings("ignore:Skipping Gaussian Smoothing")  # the 12 px image, scored whole
def test_an_upscaler_equal_to_bicubic_scores_as_bicubic() -> None:
    scores, windows = score_upscaler(_Bicubic(), _images(), torch.device("cpu"))
    # Windows (32 px minimum side) for the big image's two boxes, pushed inside the 2 px border; none for the
    # 12 px image (12 − 2·2 = 8 px < SSIM's 11).
    assert windows == [Window(0, 2, 2, 32), Window(0, 14, 14, 32)]
    assert scores["small_objects"]["windows"] == 2
    for where in (scores, scores["small_objects"]):
        assert where["psnr_sr"] == where["psnr_bicubic"] and where["ssim_sr"] == where["ssim_bicubic"]
        assert 0 < where["psnr_bicubic"] < 40 and where["ssim_bicubic"] < 1


@pytest.mark.filterwarnings("ignore:Skipping Gaussian Smoothing")  # the 12 px image, scored whole
def test_a_perfect_upscaler_scores_infinite_psnr_and_ssim_one() -> None:
    images = _images()
    oracle = {tuple(im.lr[None].shape): im.hr[None].float() / 255 for im in images}
    scores, _ = score_upscaler(_Bicubic(oracle), images, torch.device("cpu"))
    for where in (scores, scores["small_objects"]):
        assert math.isinf(where["psnr_sr"]) and where["ssim_sr"] == pytest.approx(1.0)
        assert math.isfinite(where["psnr_bicubic"])


def test_scores_without_windows_are_none() -> None:
    im = _images()[0]
    im.small_boxes_xyxy = torch.zeros(0, 4)
    scores, windows = score_upscaler(_Bicubic(), [im], torch.device("cpu"))
    assert windows == [] and scores["small_objects"] == {
        "windows": 0,
        "psnr_bicubic": None,
        "psnr_sr": None,
        "ssim_bicubic": None,
        "ssim_sr": None,
    }


def test_window_crops_spread_over_the_windows_and_cut_every_view() -> None:
    images = _images()
    windows = [Window(0, top, 0, 4) for top in range(5)]
    crops = window_crops(_Bicubic(), images, windows, rows=3, device=torch.device("cpu"))
    # Rows at windows 0, 2 and 4 (evenly spread); one crop per view, the HR crop cut straight from the image.
    assert len(crops) == 3 and all(len(row) == len(VIEWS) for row in crops)
    hr = VIEWS.index("hr")
    for row, top in zip(crops, (0, 2, 4), strict=True):
        assert all(c.dtype == np.uint8 and c.shape == (4, 4, 3) for c in row)
        np.testing.assert_array_equal(row[hr], images[0].hr[:, top : top + 4, :4].permute(1, 2, 0).numpy())
    # The LR view is the LR image zoomed with nearest neighbour: 2 × 2 blocks of one LR pixel.
    lr_view = crops[0][VIEWS.index("lr")]
    np.testing.assert_array_equal(lr_view[:2, :2], np.broadcast_to(images[0].lr[:, 0, 0].numpy(), (2, 2, 3)))
    assert window_crops(_Bicubic(), images, [], rows=3, device=torch.device("cpu")) == []
