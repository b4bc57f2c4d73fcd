"""Tiny torchvision detectors for engine tests: real RetinaNet losses, milliseconds per step."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import Dataset
from torchvision.models.detection import RetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator


class TinyBackbone(nn.Module):
    """Two strided convs: one feature map at stride 4 with 8 channels."""

    out_channels = 8

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 8, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(8, 8, 3, stride=2, padding=1),
            nn.ReLU(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def tiny_retinanet(num_classes: int = 2) -> RetinaNet:
    anchors = AnchorGenerator(sizes=((8, 16),), aspect_ratios=((1.0,),))
    return RetinaNet(TinyBackbone(), num_classes, min_size=64, max_size=64, anchor_generator=anchors)


class RandomBoxes(Dataset):
    """``n`` deterministic 64×64 images with 1–3 boxes each; random per-item jitter uses torch's global RNG."""

    def __init__(self, n: int = 6) -> None:
        g = torch.Generator().manual_seed(0)
        self.images = torch.rand(n, 3, 64, 64, generator=g)
        self.targets = []
        for _ in range(n):
            k = int(torch.randint(1, 4, (1,), generator=g))
            xy = torch.randint(0, 40, (k, 2), generator=g).float()
            wh = torch.randint(6, 20, (k, 2), generator=g).float()
            self.targets.append(
                {"boxes": torch.cat([xy, xy + wh], 1), "labels": torch.randint(0, 2, (k,), generator=g)}
            )

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        # A random brightness jitter, so resume tests see transform randomness too.
        return (self.images[i] * (0.9 + 0.2 * torch.rand(1))).clamp(0, 1), self.targets[i]


def collate(batch: list) -> tuple[list, list]:
    return [b[0] for b in batch], [b[1] for b in batch]
