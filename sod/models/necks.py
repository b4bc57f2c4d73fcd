"""Pyramid pieces that torchvision lacks: extra coarse levels of any count, and PANet's bottom-up path."""

from __future__ import annotations

from collections import OrderedDict

import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops.feature_pyramid_network import ExtraFPNBlock


def _init_conv(conv: nn.Conv2d) -> nn.Conv2d:
    # The init torchvision's FeaturePyramidNetwork and LastLevelP6P7 use, so every level starts alike.
    nn.init.kaiming_uniform_(conv.weight, a=1)
    nn.init.constant_(conv.bias, 0)
    return conv


class ExtraLevels(ExtraFPNBlock):
    """Levels above the backbone's last (stride 64, 128): stride-2 3×3 convs on the top FPN output.

    torchvision's ``LastLevelP6P7`` (with its P5 input) for ``num_levels=2``; with ``num_levels=1`` only P6
    exists, so no parameter goes unused (DistributedDataParallel would need find_unused_parameters).

    Args:
        channels: FPN width (input and output channels).
        names: names of the new levels, e.g. ``["p6", "p7"]``.
    """

    def __init__(self, channels: int, names: list[str]) -> None:
        super().__init__()
        self.names = list(names)
        self.convs = nn.ModuleList(
            _init_conv(nn.Conv2d(channels, channels, 3, stride=2, padding=1)) for _ in self.names
        )

    def forward(self, results: list[Tensor], x: list[Tensor], names: list[str]) -> tuple[list[Tensor], list[str]]:
        """Append the extra levels to the FPN outputs ``results`` (each Tensor[N, C, H, W])."""
        out = results[-1]
        for i, conv in enumerate(self.convs):
            # As in RetinaNet's P7 = conv(ReLU(P6)): a ReLU between consecutive extra convs.
            out = conv(out if i == 0 else F.relu(out))
            results = [*results, out]
        return results, [*names, *self.names]


class PathAggregation(nn.Module):
    """PANet's bottom-up path augmentation (Liu et al. 2018) over FPN outputs.

    ``N_first = P_first``; ``N_{i+1} = conv3x3(conv3x3_stride2(N_i) + P_{i+1})``. Without activations, as in
    MMDetection's PAFPN, so every output level has the same statistics as an FPN output. Output shapes equal
    the input shapes, level by level.

    Args:
        channels: FPN width.
        num_levels: number of pyramid levels it receives.
    """

    def __init__(self, channels: int, num_levels: int) -> None:
        super().__init__()
        self.downsample = nn.ModuleList(
            _init_conv(nn.Conv2d(channels, channels, 3, stride=2, padding=1)) for _ in range(num_levels - 1)
        )
        self.fuse = nn.ModuleList(
            _init_conv(nn.Conv2d(channels, channels, 3, padding=1)) for _ in range(num_levels - 1)
        )

    def forward(self, features: OrderedDict[str, Tensor]) -> OrderedDict[str, Tensor]:
        """Args: features: name -> Tensor[N, C, H_l, W_l], finest level first. Returns the same names/shapes."""
        names = list(features)
        outs = [features[names[0]]]
        for down, fuse, name in zip(self.downsample, self.fuse, names[1:], strict=True):
            outs.append(fuse(down(outs[-1]) + features[name]))
        return OrderedDict(zip(names, outs, strict=True))
