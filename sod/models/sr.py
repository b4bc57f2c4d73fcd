"""Super-resolution networks: SRCNN (Dong et al. 2014) and the sub-pixel ESPCN / FSRCNN, plus colour helpers.

Every network maps a low-resolution batch ``Tensor[B, C, h, w]`` to ``Tensor[B, C, h * scale, w * scale]``:

* ``srcnn``: bicubic upscaling first, then three convolutions of 9-1-5 kernels with 64/32 filters on the
  high-resolution grid (Dong et al., "Image Super-Resolution Using Deep Convolutional Networks", 2014/2016).
  'same' padding keeps the size (the paper's valid convolutions shrink the output by 12 px).
* ``espcn``: 5-3-3 convolutions with 64/32 filters at low resolution, then a PixelShuffle that rearranges
  ``C * scale²`` channels into the high-resolution grid (Shi et al., "Real-Time Single Image and Video
  Super-Resolution Using an Efficient Sub-Pixel CNN", 2016).
* ``fsrcnn``: feature extraction, shrinking, ``m`` mapping layers, expanding, all at low resolution, then a 9×9
  transposed convolution of stride ``scale`` (Dong et al., "Accelerating the Super-Resolution CNN", 2016).

With ``residual`` the network's output is added to the bicubic upscaling (VDSR's global skip): it only has
to learn the missing detail, which makes it beat bicubic after minutes of CPU training instead of hours.

:class:`SRUpscaler` wraps a network for RGB images: with ``channels='y'`` the network sees the BT.601 luma
(as the SR papers train and report) and the chroma is upscaled bicubically. :func:`load_sr` reads
``models/sr.pt`` (written by the ``train_sr`` stage) back into an :class:`SRUpscaler`.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from sod.errors import SodError
from sod.io import atomic_path

# ITU-R BT.601 for RGB in 0..1 → YCbCr in 0..255 (MATLAB's rgb2ycbcr, used by the SR papers' evaluation code):
# Y in 16..235, Cb/Cr in 16..240.
_YCBCR_MATRIX = torch.tensor(
    [
        [65.481, 128.553, 24.966],
        [-37.797, -74.203, 112.0],
        [112.0, -93.786, -18.214],
    ],
    dtype=torch.float64,
)
_YCBCR_OFFSET = torch.tensor([16.0, 128.0, 128.0], dtype=torch.float64)
_RGB_MATRIX = torch.linalg.inv(_YCBCR_MATRIX)

SR_MODELS = ("srcnn", "espcn", "fsrcnn")
SR_FORMAT = "sod-sr-1"  # the ``format`` entry of models/sr.pt


# -------------------------------------------------------------------------------------------- colour
def rgb_to_ycbcr(rgb: torch.Tensor) -> torch.Tensor:
    """BT.601 YCbCr of an RGB batch, as the SR papers compute it (MATLAB ``rgb2ycbcr``).

    Args:
        rgb: ``Tensor[B, 3, H, W]`` in 0..1.

    Returns:
        ``Tensor[B, 3, H, W]`` holding Y, Cb, Cr divided by 255: Y in 16/255..235/255, Cb/Cr in 16/255..240/255.
    """
    m = _YCBCR_MATRIX.to(rgb.device, rgb.dtype)
    off = _YCBCR_OFFSET.to(rgb.device, rgb.dtype)
    return (torch.einsum("ij,bjhw->bihw", m, rgb) + off[None, :, None, None]) / 255.0


def ycbcr_to_rgb(ycbcr: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`rgb_to_ycbcr`: ``Tensor[B, 3, H, W]`` YCbCr / 255 → RGB in 0..1 (not clamped)."""
    m = _RGB_MATRIX.to(ycbcr.device, ycbcr.dtype)
    off = _YCBCR_OFFSET.to(ycbcr.device, ycbcr.dtype)
    return torch.einsum("ij,bjhw->bihw", m, ycbcr * 255.0 - off[None, :, None, None])


def rgb_to_y(rgb: torch.Tensor) -> torch.Tensor:
    """BT.601 luma ``Tensor[B, 1, H, W]`` (Y / 255, 16/255..235/255) of an RGB batch ``Tensor[B, 3, H, W]`` in 0..1."""
    return rgb_to_ycbcr(rgb)[:, :1]


def bicubic_resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bicubic resize of ``Tensor[B, C, H, W]`` to ``size`` (h, w), antialiased.

    ``antialias=True`` low-passes when downscaling (the LR images SR is trained on) and, when upscaling, uses
    the a = −0.5 cubic kernel of PIL and MATLAB's ``imresize``: the bicubic baseline the SR papers compare to.
    """
    return F.interpolate(x, size=size, mode="bicubic", align_corners=False, antialias=True)


# ------------------------------------------------------------------------------------------ networks
class SRCNN(nn.Module):
    """SRCNN 9-1-5 with 64/32 filters on the bicubic-upscaled input.

    Args:
        channels: image channels in and out (1 for luma, 3 for RGB).
        scale: upscaling factor.
    """

    def __init__(self, channels: int, scale: int) -> None:
        super().__init__()
        self.scale = scale
        self.extract = nn.Conv2d(channels, 64, 9, padding=4)
        self.map = nn.Conv2d(64, 32, 1)
        self.reconstruct = nn.Conv2d(32, channels, 5, padding=2)

    @property
    def last_layer(self) -> nn.Module:
        """The reconstruction layer (the paper trains it at a tenth of the other layers' learning rate)."""
        return self.reconstruct

    def forward(self, lr: torch.Tensor) -> torch.Tensor:
        """``Tensor[B, C, h, w]`` → ``Tensor[B, C, h * scale, w * scale]``."""
        x = bicubic_resize(lr, (lr.shape[-2] * self.scale, lr.shape[-1] * self.scale))
        x = F.relu(self.extract(x))
        x = F.relu(self.map(x))
        return self.reconstruct(x)


class ESPCN(nn.Module):
    """ESPCN: three convolutions (5-3-3, 64/32 filters, tanh) at low resolution, then PixelShuffle.

    Args:
        channels: image channels in and out (1 for luma, 3 for RGB).
        scale: upscaling factor.
    """

    def __init__(self, channels: int, scale: int) -> None:
        super().__init__()
        self.scale = scale
        self.body = nn.Sequential(
            nn.Conv2d(channels, 64, 5, padding=2),
            nn.Tanh(),
            nn.Conv2d(64, 32, 3, padding=1),
            nn.Tanh(),
        )
        self.to_subpixels = nn.Conv2d(32, channels * scale**2, 3, padding=1)
        self.shuffle = nn.PixelShuffle(scale)

    @property
    def last_layer(self) -> nn.Module:
        """The sub-pixel convolution (trained at a tenth of the learning rate in the paper)."""
        return self.to_subpixels

    def forward(self, lr: torch.Tensor) -> torch.Tensor:
        """``Tensor[B, C, h, w]`` → ``Tensor[B, C, h * scale, w * scale]``."""
        # [B, C·s², h, w] → PixelShuffle → [B, C, h·s, w·s]
        return self.shuffle(self.to_subpixels(self.body(lr)))


class FSRCNN(nn.Module):
    """FSRCNN(d, s, m): extract (5×5, d) → shrink (1×1, s) → m × map (3×3, s) → expand (1×1, d) → deconv 9×9.

    Args:
        channels: image channels in and out (1 for luma, 3 for RGB).
        scale: upscaling factor (the deconvolution's stride).
        d, s, m: the paper's widths and mapping depth (56, 12, 4 by default).
    """

    def __init__(self, channels: int, scale: int, d: int = 56, s: int = 12, m: int = 4) -> None:
        super().__init__()
        self.scale = scale
        layers: list[nn.Module] = [nn.Conv2d(channels, d, 5, padding=2), nn.PReLU(d), nn.Conv2d(d, s, 1), nn.PReLU(s)]
        for _ in range(m):
            layers += [nn.Conv2d(s, s, 3, padding=1), nn.PReLU(s)]
        layers += [nn.Conv2d(s, d, 1), nn.PReLU(d)]
        self.body = nn.Sequential(*layers)
        # Output side (h − 1)·scale − 2·4 + 9 + (scale − 1) = h·scale.
        self.deconv = nn.ConvTranspose2d(d, channels, 9, stride=scale, padding=4, output_padding=scale - 1)
        # The paper initialises the deconvolution from N(0, 0.001): a small start keeps early outputs near zero.
        nn.init.normal_(self.deconv.weight, std=1e-3)
        nn.init.zeros_(self.deconv.bias)

    @property
    def last_layer(self) -> nn.Module:
        """The deconvolution (trained at a tenth of the learning rate in the paper)."""
        return self.deconv

    def forward(self, lr: torch.Tensor) -> torch.Tensor:
        """``Tensor[B, C, h, w]`` → ``Tensor[B, C, h * scale, w * scale]``."""
        return self.deconv(self.body(lr))


def build_sr_net(model: str, channels: int, scale: int) -> nn.Module:
    """The network named ``model`` (one of :data:`SR_MODELS`) for ``channels`` image channels at ``scale``."""
    builders = {"srcnn": SRCNN, "espcn": ESPCN, "fsrcnn": FSRCNN}
    if model not in builders:
        raise ValueError(f"unknown SR model {model!r}; expected one of {', '.join(SR_MODELS)}")
    return builders[model](channels, scale)


class SRUpscaler(nn.Module):
    """An SR network applied to RGB images: RGB float batch in, RGB float batch ``scale`` times larger out.

    Args:
        net: a network from :func:`build_sr_net` with 1 input channel (``channels='y'``) or 3 (``'rgb'``).
        scale: its upscaling factor.
        channels: ``'y'``: the network upscales BT.601 luma, chroma is upscaled bicubically (SR papers' setup);
            ``'rgb'``: the network upscales all three channels.
        residual: add the network's output to the bicubic upscaling of its input.
        arch: the name of ``net`` in :data:`SR_MODELS` (recorded by :meth:`spec`).
    """

    def __init__(
        self, net: nn.Module, scale: int, channels: Literal["y", "rgb"], residual: bool, arch: str = ""
    ) -> None:
        super().__init__()
        self.net = net
        self.scale = scale
        self.channels = channels
        self.residual = residual
        self.arch = arch

    def spec(self) -> dict[str, Any]:
        """The arguments of :func:`build_sr` that rebuild this architecture (weights not included)."""
        return {"model": self.arch, "scale": self.scale, "channels": self.channels, "residual": self.residual}

    def forward(self, lr_rgb: torch.Tensor) -> torch.Tensor:
        """Upscale ``Tensor[B, 3, h, w]`` (RGB, 0..1) to ``Tensor[B, 3, h * scale, w * scale]``.

        The output is not clamped, so training sees the network's raw error; clamp it before display or scoring.
        """
        size = (lr_rgb.shape[-2] * self.scale, lr_rgb.shape[-1] * self.scale)
        if self.channels == "rgb":
            out = self.net(lr_rgb)
            return out + bicubic_resize(lr_rgb, size) if self.residual else out
        ycbcr = rgb_to_ycbcr(lr_rgb)
        up = bicubic_resize(ycbcr, size)  # chroma stays bicubic; luma is the residual's base
        y = self.net(ycbcr[:, :1])
        if self.residual:
            y = y + up[:, :1]
        return ycbcr_to_rgb(torch.cat([y, up[:, 1:]], dim=1))


def build_sr(model: str, scale: int, channels: Literal["y", "rgb"], residual: bool) -> SRUpscaler:
    """A freshly initialised :class:`SRUpscaler` (see :func:`build_sr_net` for ``model``)."""
    net = build_sr_net(model, 1 if channels == "y" else 3, scale)
    return SRUpscaler(net, scale, channels, residual, arch=model)


# ------------------------------------------------------------------------------------------ file I/O
def save_sr(path: str | Path, upscaler: SRUpscaler, config: dict[str, Any]) -> None:
    """Write ``{"format", "config", "model"}`` atomically; loadable with ``torch.load(weights_only=True)``.

    Args:
        upscaler: the trained model; only ``upscaler.net``'s state dict is stored.
        config: the ``sr`` params section it was built from (``dataclasses.asdict(params.sr)``).
    """
    state = {
        "format": SR_FORMAT,
        "config": config,
        "model": {k: v.detach().cpu() for k, v in upscaler.net.state_dict().items()},
    }
    # Serialise to memory first: torch.save names the zip records after the file, and the temporary
    # name of an atomic write would make the bytes differ from run to run.
    buf = io.BytesIO()
    torch.save(state, buf)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buf.getvalue())


def load_sr(path: str | Path, device: str | torch.device = "cpu") -> SRUpscaler:
    """Load ``models/sr.pt`` (written by ``sod train-sr``) as an :class:`SRUpscaler` in eval mode.

    Usage: ``up = load_sr("models/sr.pt"); hr = up(lr_rgb).clamp(0, 1)`` with ``lr_rgb`` a ``Tensor[B, 3, h, w]``
    in 0..1; ``up.scale`` is the factor.

    Raises:
        SodError: the file is missing, unreadable, or not an SR model file.
    """
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a missing, damaged or foreign file
        raise SodError(f"cannot read SR model {path}: {type(exc).__name__}: {exc}") from None
    if not isinstance(state, dict) or state.get("format") != SR_FORMAT:
        raise SodError(f"{path} is not an SR model written by `sod train-sr` (no format {SR_FORMAT!r})")
    cfg = state["config"]
    upscaler = build_sr(cfg["model"], cfg["scale"], cfg["channels"], cfg["residual"])
    try:
        upscaler.net.load_state_dict(state["model"])
    except RuntimeError as exc:
        raise SodError(f"{path}: weights do not fit the {cfg['model']} network: {exc}") from None
    return upscaler.to(device).eval()
