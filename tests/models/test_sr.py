"""SR networks: output shapes for every model, scale and channel mode; BT.601 colour; model file round trip."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sod.errors import SodError
from sod.models.sr import (
    SR_MODELS,
    bicubic_resize,
    build_sr,
    build_sr_net,
    load_sr,
    rgb_to_y,
    rgb_to_ycbcr,
    save_sr,
    ycbcr_to_rgb,
)


@pytest.fixture(autouse=True)
def _one_thread(one_thread: None) -> None:
    """Small models: one thread is faster and leaves the other core to the rest of the suite."""


@pytest.mark.parametrize("model", SR_MODELS)
@pytest.mark.parametrize("scale", [2, 3, 4])
@pytest.mark.parametrize("channels", ["y", "rgb"])
def test_upscaler_output_shape(model: str, scale: int, channels: str) -> None:
    up = build_sr(model, scale, channels, residual=False)
    lr = torch.rand(2, 3, 7, 5)
    with torch.no_grad():
        out = up(lr)
    assert out.shape == (2, 3, 7 * scale, 5 * scale)


@pytest.mark.parametrize("model", SR_MODELS)
@pytest.mark.parametrize("scale", [2, 3, 4])
@pytest.mark.parametrize("channels", [1, 3])
def test_network_output_shape(model: str, scale: int, channels: int) -> None:
    net = build_sr_net(model, channels, scale)
    with torch.no_grad():
        out = net(torch.rand(1, channels, 6, 9))
    assert out.shape == (1, channels, 6 * scale, 9 * scale)


def test_srcnn_is_9_1_5_with_64_32_filters() -> None:
    net = build_sr_net("srcnn", 1, 3)
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.kernel_size for c in convs] == [(9, 9), (1, 1), (5, 5)]
    assert [c.out_channels for c in convs] == [64, 32, 1]


def test_unknown_model_is_refused() -> None:
    with pytest.raises(ValueError, match="vdsr"):
        build_sr_net("vdsr", 1, 2)


def test_y_matches_bt601_on_hand_computed_pixels() -> None:
    # MATLAB rgb2ycbcr: Y = 16 + 65.481 R + 128.553 G + 24.966 B (R, G, B in 0..1, Y in 0..255).
    rgb = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [0.2, 0.4, 0.6]]).T.reshape(1, 3, 1, 4)
    y255 = rgb_to_y(rgb).flatten() * 255
    expected = torch.tensor([16 + 65.481, 16.0, 235.0, 16 + 0.2 * 65.481 + 0.4 * 128.553 + 0.6 * 24.966])
    torch.testing.assert_close(y255, expected, atol=1e-3, rtol=0)


def test_ycbcr_round_trip_and_grey_chroma() -> None:
    rgb = torch.rand(2, 3, 4, 4, dtype=torch.float64)
    torch.testing.assert_close(ycbcr_to_rgb(rgb_to_ycbcr(rgb)), rgb)
    grey = torch.full((1, 3, 1, 1), 0.5, dtype=torch.float64)
    torch.testing.assert_close(
        rgb_to_ycbcr(grey)[0, 1:].flatten() * 255, torch.tensor([128.0, 128.0], dtype=torch.float64)
    )


def test_residual_upscaler_with_zero_net_is_bicubic() -> None:
    # With the net's last layer zeroed the residual model must return plain bicubic (luma and chroma).
    for channels in ("y", "rgb"):
        up = build_sr("espcn", 2, channels, residual=True)
        torch.nn.init.zeros_(up.net.last_layer.weight)
        torch.nn.init.zeros_(up.net.last_layer.bias)
        lr = torch.rand(1, 3, 8, 8)
        with torch.no_grad():
            torch.testing.assert_close(up(lr), bicubic_resize(lr, (16, 16)), atol=1e-5, rtol=0)


def test_bicubic_resize_keeps_constant_image() -> None:
    x = torch.full((1, 1, 8, 8), 0.3)
    torch.testing.assert_close(bicubic_resize(x, (4, 4)), torch.full((1, 1, 4, 4), 0.3))
    torch.testing.assert_close(bicubic_resize(x, (16, 16)), torch.full((1, 1, 16, 16), 0.3))


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    up = build_sr("fsrcnn", 3, "rgb", residual=True)
    cfg = {"model": "fsrcnn", "scale": 3, "channels": "rgb", "residual": True}
    save_sr(tmp_path / "sr.pt", up, cfg)
    state = torch.load(tmp_path / "sr.pt", weights_only=True)
    assert state["config"] == cfg
    loaded = load_sr(tmp_path / "sr.pt")
    assert (loaded.scale, loaded.channels, loaded.training) == (3, "rgb", False)
    lr = torch.rand(1, 3, 5, 5)
    with torch.no_grad():
        torch.testing.assert_close(loaded(lr), up(lr))


def test_load_refuses_missing_and_foreign_files(tmp_path: Path) -> None:
    with pytest.raises(SodError, match="cannot read SR model"):
        load_sr(tmp_path / "absent.pt")
    torch.save({"model": {}}, tmp_path / "ckpt.pt")
    with pytest.raises(SodError, match="not an SR model"):
        load_sr(tmp_path / "ckpt.pt")
