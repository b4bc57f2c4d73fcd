"""The detector's upscaling front end (``detector.input_upscale``): bicubic, or the SR network of ``sod train-sr``.

The small-object survey's last lever: give small objects more pixels before the detector sees them.
:class:`UpscaledDetector` wraps a torchvision detector. Every input it gets (a whole image, or a tile of
sliced inference) is upscaled by ``factor``, with bicubic interpolation or with an
:class:`~sod.models.sr.SRUpscaler`; training targets' boxes are scaled with it; predicted boxes are mapped
back. Callers keep torchvision's interface, in the pixels of the images they pass in.

Like torchvision's ``GeneralizedRCNNTransform``, the wrapper first resizes each input to the detector's
native size (``detector.min_size``/``max_size``, antialiased bicubic, the way ``sod train-sr`` makes its
low-resolution images), then upscales: a 320 px image with ``min_size: 160`` and factor 2 is seen by the
network at 320 px, through 160 px of information. The wrapped detector's own resize is then the identity.

Bicubic at the same factor is SR's control: SR has to beat plain upscaling, not no upscaling. With
``finetune`` the detection loss trains the SR network too (the SOD-MTGAN idea, without the GAN); otherwise
the SR network is frozen and runs without autograd.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from sod.models.sr import SRUpscaler, bicubic_resize


class UpscaledDetector(nn.Module):
    """A torchvision detector behind an upscaling front end.

    Args:
        detector: a torchvision RetinaNet/FasterRCNN whose transform's ``min_size``/``max_size`` are the
            upscaled input size (``detector.min_size × factor``), so its own resize is the identity.
        factor: the integer upscaling factor (``detector.upscale_factor``).
        upscaler: the SR model (``models/sr.pt``); None = bicubic.
        finetune: let gradients reach the SR network (``detector.sr_finetune``).
        min_size, max_size: the native size each input is resized to before upscaling (torchvision's rule:
            scale = min(min_size / short side, max_size / long side)); None = inputs come at native size.

    Train mode: ``model(images, targets) -> dict of losses``, targets' ``boxes`` xyxy in the pixels of
    ``images``. Eval mode: ``model(images) -> [{"boxes": Tensor[D, 4] xyxy in the pixels of images, "labels",
    "scores"}]``. ``images``: float ``Tensor[3, H, W]`` in 0..1, any sizes.

    Raises:
        ValueError: ``upscaler.scale`` differs from ``factor``, or ``finetune`` without an upscaler.
    """

    def __init__(
        self,
        detector: nn.Module,
        factor: int,
        upscaler: SRUpscaler | None = None,
        finetune: bool = False,
        min_size: int | None = None,
        max_size: int | None = None,
    ) -> None:
        super().__init__()
        if upscaler is not None and upscaler.scale != factor:
            raise ValueError(f"the SR model upscales ×{upscaler.scale}, the detector expects ×{factor}")
        if finetune and upscaler is None:
            raise ValueError("finetune needs an SR model (bicubic has nothing to train)")
        self.detector = detector
        self.upscaler = upscaler
        self.input_factor = factor
        self.finetune = finetune
        self.min_size, self.max_size = min_size, max_size
        if upscaler is not None:
            upscaler.requires_grad_(finetune)

    @property
    def mode(self) -> str:
        """``"sr"`` or ``"bicubic"``: the front end in use."""
        return "sr" if self.upscaler is not None else "bicubic"

    @property
    def transform(self) -> nn.Module:
        """The wrapped detector's ``GeneralizedRCNNTransform`` (its sizes are the upscaled input's)."""
        return self.detector.transform

    def train(self, mode: bool = True) -> UpscaledDetector:
        super().train(mode)
        if self.upscaler is not None and not self.finetune:
            self.upscaler.eval()  # frozen: stays in inference behaviour whatever the detector does
        return self

    def native(self, image: Tensor) -> tuple[Tensor, tuple[float, float]]:
        """``Tensor[3, H, W]`` resized to the native size; and its box factors ``(new_w / W, new_h / H)``."""
        if self.min_size is None or self.max_size is None:
            return image, (1.0, 1.0)
        h, w = image.shape[-2:]
        s = min(self.min_size / min(h, w), self.max_size / max(h, w))
        nh, nw = max(1, math.floor(h * s)), max(1, math.floor(w * s))  # floor, as torchvision's resize
        if (nh, nw) == (h, w):
            return image, (1.0, 1.0)
        return bicubic_resize(image[None], (nh, nw))[0].clamp(0, 1), (nw / w, nh / h)

    def upscale(self, images: list[Tensor]) -> list[Tensor]:
        """Each ``Tensor[3, H, W]`` → ``Tensor[3, H·factor, W·factor]`` in 0..1; images of one size share a batch."""
        out: list[Tensor | None] = [None] * len(images)
        by_shape: dict[tuple[int, ...], list[int]] = {}
        for i, im in enumerate(images):
            by_shape.setdefault(tuple(im.shape), []).append(i)
        grad = self.finetune and torch.is_grad_enabled()
        for shape, idx in by_shape.items():
            batch = torch.stack([images[i] for i in idx])
            with torch.set_grad_enabled(grad):
                if self.upscaler is None:
                    size = (shape[-2] * self.input_factor, shape[-1] * self.input_factor)
                    up = bicubic_resize(batch, size)
                else:
                    up = self.upscaler(batch)
            # Bicubic and SR overshoot at edges; the detector was built for 0..1 images.
            up = up.clamp(0, 1)
            for j, i in enumerate(idx):
                out[i] = up[j]
        return out  # type: ignore[return-value]

    def forward(
        self, images: list[Tensor], targets: list[dict[str, Tensor]] | None = None
    ) -> dict[str, Tensor] | list[dict[str, Tensor]]:
        f = self.input_factor
        natives, ratios = zip(*(self.native(im) for im in images), strict=True) if images else ((), ())
        upscaled = self.upscale(list(natives))
        # xyxy factors from the caller's pixels to the network's
        scales = [torch.tensor([rx * f, ry * f, rx * f, ry * f]) for rx, ry in ratios]
        if targets is not None:
            targets = [{**t, "boxes": t["boxes"] * s.to(t["boxes"])} for t, s in zip(targets, scales, strict=True)]
        out = self.detector(upscaled, targets)
        if self.training:
            return out
        return [{**o, "boxes": o["boxes"] / s.to(o["boxes"])} for o, s in zip(out, scales, strict=True)]


@contextmanager
def bicubic_input(model: nn.Module) -> Iterator[nn.Module]:
    """Within the block, an SR-input ``model`` upscales with bicubic instead: the same detector, SR's control.

    Yields ``model`` itself; any other model is yielded unchanged.
    """
    if not isinstance(model, UpscaledDetector) or model.upscaler is None:
        yield model
        return
    saved, model.upscaler = model.upscaler, None
    try:
        yield model
    finally:
        model.upscaler = saved
