"""Perceptual loss: zero for identical images, grows with blur; layer names; weights are hash-checked."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision.transforms.v2.functional as TF
from skimage import data

from sod.errors import ConfigError, DataError
from sod.models import pretrained
from sod.models.perceptual import PerceptualLoss, build_perceptual, layer_indices


@pytest.fixture(autouse=True)
def _one_thread(one_thread: None) -> None:
    """Small models: one thread is faster and leaves the other core to the rest of the suite."""


def _have_mobilenet_weights() -> bool:
    return pretrained.packaged_path(pretrained.IMAGENET_WEIGHTS["mobilenet_v2"]) is not None


@pytest.fixture(scope="module")
def loss() -> PerceptualLoss:
    # The shipped ImageNet weights when installed; otherwise random weights: zero-for-identical holds for any
    # weights, and blur removes the high frequencies that random conv filters respond to as well.
    if _have_mobilenet_weights():
        return build_perceptual("mobilenet_v2", None)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return PerceptualLoss("mobilenet_v2", None, state_dict=None)


@pytest.fixture(scope="module")
def photo() -> torch.Tensor:
    """A real photograph: 64×64 RGB in 0..1, Tensor[1, 3, 64, 64]."""
    rgb = torch.from_numpy(data.astronaut()[:256:4, 128:384:4].copy()).permute(2, 0, 1).float() / 255
    return rgb[None]


def test_zero_for_identical_images(loss: PerceptualLoss, photo: torch.Tensor) -> None:
    assert float(loss(photo, photo)) == 0.0


def test_grows_with_blur(loss: PerceptualLoss, photo: torch.Tensor) -> None:
    values = [float(loss(TF.gaussian_blur(photo, [9, 9], [sigma, sigma]), photo)) for sigma in (0.5, 1.0, 2.0)]
    assert 0 < values[0] < values[1] < values[2]


def test_gradient_flows_to_prediction_only(loss: PerceptualLoss, photo: torch.Tensor) -> None:
    pred = TF.gaussian_blur(photo, [5, 5], [1.0, 1.0]).requires_grad_(True)
    loss(pred, photo).backward()
    assert pred.grad is not None and pred.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in loss.parameters())


def test_network_stays_in_eval_mode(loss: PerceptualLoss) -> None:
    loss.train()
    assert not any(m.training for m in loss.features.modules())


def test_layer_names_and_vgg_aliases() -> None:
    assert layer_indices("vgg16", ["relu3_3", "relu1_2", "relu2_2"], 31) == [3, 8, 15]
    assert layer_indices("mobilenet_v2", ["features.6", "features.1", "features.6"], 19) == [1, 6]
    with pytest.raises(ConfigError, match="relu9_9"):
        layer_indices("vgg16", ["relu9_9"], 31)
    with pytest.raises(ConfigError, match="features.19"):
        layer_indices("mobilenet_v2", ["features.19"], 19)


def test_only_needed_blocks_are_kept() -> None:
    assert len(PerceptualLoss("mobilenet_v2", ["features.3"]).features) == 4


def test_unknown_backbone_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="resnet50"):
        build_perceptual("resnet50", None, load_state_dict=lambda name: {})


def test_weights_with_wrong_hash_are_refused(tmp_path: Path) -> None:
    bad = tmp_path / "mobilenet_v2-b0353104.pth"
    torch.save({"features.0.0.weight": torch.zeros(1)}, bad)
    with pytest.raises(DataError, match="wrong checksum"):
        build_perceptual(
            "mobilenet_v2", None, load_state_dict=lambda name: pretrained.load_imagenet_state_dict(name, bad)
        )


def test_missing_vgg_weights_name_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(DataError, match=r"vgg16-397923af\.pth.*" + str(tmp_path / "hub" / "checkpoints")):
        build_perceptual("vgg16", None)
