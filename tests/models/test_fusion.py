"""Batch norm folded into the conv before it: the same outputs, the norms gone from the copy, the model as it was."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn
from torchvision.ops.misc import FrozenBatchNorm2d

from sod.models.detector import build_backbone
from sod.models.fusion import fold_batch_norm


def _norms(model: nn.Module) -> int:
    return sum(isinstance(m, (FrozenBatchNorm2d, nn.BatchNorm2d)) for m in model.modules())


def _randomise_norms(model: nn.Module, seed: int = 0) -> None:
    """Non-trivial frozen statistics (a fresh FrozenBatchNorm2d is the identity: it would fold to nothing)."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, (FrozenBatchNorm2d, nn.BatchNorm2d)):
            n = m.running_mean.numel()
            m.weight.data = torch.rand(n, generator=g) + 0.5
            m.bias.data = torch.randn(n, generator=g) * 0.1
            m.running_mean.data = torch.randn(n, generator=g) * 0.1
            m.running_var.data = torch.rand(n, generator=g) + 0.5


def test_fold_by_hand() -> None:
    # y = (2x - 0.5) / sqrt(4) * 3 + 1 = 3x + 0.25: the folded conv has weight 3 and bias 0.25.
    conv = nn.Conv2d(1, 1, 1, bias=False)
    conv.weight.data.fill_(2.0)
    norm = FrozenBatchNorm2d(1, eps=0.0)
    norm.weight.fill_(3.0), norm.bias.fill_(1.0), norm.running_mean.fill_(0.5), norm.running_var.fill_(4.0)
    model = nn.Sequential(conv, norm, nn.ReLU())
    fused, folded = fold_batch_norm(model)
    assert folded == 1
    assert isinstance(fused[1], nn.Identity) and isinstance(fused[2], nn.ReLU)
    assert fused[0].weight.item() == 3.0 and fused[0].bias.item() == 0.25
    assert not fused[0].weight.requires_grad
    # The model itself keeps its norm and weights.
    assert isinstance(model[1], FrozenBatchNorm2d) and model[0].weight.item() == 2.0 and model[0].bias is None
    x = torch.tensor([[[[-1.0, 0.0], [1.0, 2.0]]]])
    assert fused(x).flatten().tolist() == [0.0, 0.25, 3.25, 6.25]


@pytest.mark.parametrize("name", ["mobilenet_v2", "resnet18"])
def test_fold_backbone_same_features_no_norm_left(name: str, one_thread: None) -> None:
    backbone = build_backbone(name=name, levels=[2, 3, 4, 5], fpn_channels=16, load_pretrained=False).eval()
    _randomise_norms(backbone)
    norms = _norms(backbone)
    fused, folded = fold_batch_norm(backbone)
    # Every norm of these trunks follows a conv in a known order (Sequential, the layer getter, ResNet blocks).
    assert folded == norms > 0 and _norms(fused) == 0 and _norms(backbone) == norms
    x = torch.rand(2, 3, 64, 96, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        want: dict[str, Tensor] = backbone(x)
        got: dict[str, Tensor] = fused(x)
    assert list(got) == list(want)
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=1e-4, atol=1e-4)


class _NormFirst(nn.Module):
    """A conv and a norm as attributes, the norm run *before* the conv: folding would be wrong."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1)
        self.norm = FrozenBatchNorm2d(3)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(self.norm(x))


def test_unknown_order_and_training_norms_are_left() -> None:
    assert fold_batch_norm(_NormFirst())[1] == 0
    training = nn.Sequential(nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3)).train()
    fused, folded = fold_batch_norm(training)
    assert folded == 0 and isinstance(fused[1], nn.BatchNorm2d)  # batch statistics: nothing fixed to fold
    assert fold_batch_norm(training.eval())[1] == 1
