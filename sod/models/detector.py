"""Detectors for small objects: torchvision RetinaNet / Faster R-CNN over a configurable feature pyramid.

The parts are built by constructors that take plain keyword arguments (``build_backbone``,
``retinanet``, ``faster_rcnn``, ``PyramidAnchorGenerator``, ``FocalRetinaNetHead``);
``build_detector`` is the one function that maps a ``DetectorConfig`` onto them.

What differs from torchvision's defaults, and why:

* pyramid levels are ``detector.levels`` (log2 strides): a stride-4 level for tiny objects, or
  levels 6/7 computed from the top FPN output as RetinaNet's P6/P7;
* anchors are the ones the anchors stage fitted (``models/anchors.json``), one list of (w, h) per
  level; without that file, torchvision's RetinaNet rule (3 scales × 3 ratios from 4 × stride);
* the focal loss's γ and α come from params, through a classification-head subclass;
* ``detector.head_norm: group`` puts GroupNorm after every head conv, as torchvision's
  ``retinanet_resnet50_fpn_v2`` does (RetinaNet only; the default ``none`` is torchvision's v1 head);
* inputs are resized to ``min_size``/``max_size`` from params, not torchvision's 800/1333;
* the backbone and FPN run in channels-last memory layout (much faster on CPU), the heads in the default one.
* with ``detector.input_upscale`` bicubic or sr, every input is upscaled first (:mod:`sod.models.upscale`):
  the network and its anchors see ``min_size × upscale_factor`` px, boxes come back in input pixels.

Label convention, both architectures: ``labels`` are 1..K for K object classes; 0 is background (Faster
R-CNN) or an unused, never-positive class (RetinaNet, as in torchvision's COCO RetinaNet), so evaluation
maps label ``k`` to the k-th category for either architecture.
"""

from __future__ import annotations

import logging
import math
from collections import OrderedDict
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any, Literal

import torch
import torchvision
from torch import Tensor, nn
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.models.detection import FasterRCNN, RetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.retinanet import (
    RetinaNetClassificationHead,
    RetinaNetHead,
    RetinaNetRegressionHead,
)
from torchvision.ops import FeaturePyramidNetwork, MultiScaleRoIAlign, sigmoid_focal_loss
from torchvision.ops.misc import FrozenBatchNorm2d

from sod.config import DetectorConfig, FocalConfig
from sod.errors import DataError
from sod.models.assign import atss_assign
from sod.models.necks import ExtraLevels, PathAggregation
from sod.models.pretrained import load_imagenet_state_dict
from sod.models.sr import SRUpscaler, build_sr
from sod.models.upscale import UpscaledDetector

log = logging.getLogger(__name__)

BACKBONES = ("resnet18", "resnet50", "mobilenet_v2", "mobilenet_v3_large")
# The levels a backbone trunk provides (log2 stride); higher ones come from ExtraLevels.
BACKBONE_TOP_LEVEL = 5
_RESNET_TRUNK = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")


# ------------------------------------------------------------------------------------------ backbone
class PyramidBackbone(nn.Module):
    """Backbone trunk + FPN (+ optional PANet path): image batch -> one feature map per pyramid level.

    Like torchvision's ``BackboneWithFPN``, plus extra coarse levels, the optional bottom-up path and
    channels-last execution.

    Args:
        trunk: a module whose children run in sequence (ResNet stem + layers, or MobileNet ``features``).
        return_layers: trunk child name -> pyramid level name (``{"layer2": "p3", ...}``), finest first.
        in_channels: channels of those children's outputs, same order.
        extra_names: names of levels above the trunk's last (``["p6", "p7"]``), may be empty.
        out_channels: width of every pyramid level.
        neck: ``"fpn"`` or ``"pafpn"`` (FPN followed by PANet's bottom-up path).
        channels_last: run trunk and neck in channels-last layout; outputs are returned contiguous
            (default layout), because the heads ran slower in channels-last on CPU.

    Attributes:
        out_channels: as given; torchvision's detectors read it.
        feature_names: the pyramid level names in output order.
    """

    def __init__(
        self,
        trunk: nn.Module,
        return_layers: dict[str, str],
        in_channels: list[int],
        extra_names: list[str],
        out_channels: int,
        neck: Literal["fpn", "pafpn"] = "fpn",
        channels_last: bool = True,
    ) -> None:
        super().__init__()
        self.body = IntermediateLayerGetter(trunk, return_layers=return_layers)
        self.fpn = FeaturePyramidNetwork(
            in_channels, out_channels, extra_blocks=ExtraLevels(out_channels, extra_names) if extra_names else None
        )
        self.feature_names = [*return_layers.values(), *extra_names]
        self.pafpn = PathAggregation(out_channels, len(self.feature_names)) if neck == "pafpn" else None
        self.out_channels = out_channels
        self.channels_last = channels_last
        if channels_last:
            self.to(memory_format=torch.channels_last)

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:
        """Args: x (Tensor[N, 3, H, W]), normalised. Returns: name -> Tensor[N, C, H / stride, W / stride]."""
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        features = self.fpn(self.body(x))
        if self.pafpn is not None:
            features = self.pafpn(features)
        if self.channels_last:
            features = OrderedDict((name, f.contiguous()) for name, f in features.items())
        return features


def build_backbone(
    *,
    name: str,
    levels: Sequence[int],
    neck: Literal["fpn", "pafpn"] = "fpn",
    pretrained: Literal["imagenet", "none"] = "imagenet",
    trainable_layers: int | None = None,
    fpn_channels: int = 256,
    channels_last: bool = True,
    load_pretrained: bool = True,
) -> PyramidBackbone:
    """A torchvision classification network cut into a pyramid backbone.

    Each pyramid level ``l <= 5`` is the output of the trunk's last block at stride ``2**l`` (found by
    running a 64 px probe through the trunk, so no channel table is hard-coded); levels above 5 are
    stride-2 convs on the top FPN output.

    Args:
        name: resnet18 | resnet50 | mobilenet_v2 | mobilenet_v3_large.
        levels: consecutive log2 strides, e.g. ``[3, 4, 5]`` or ``[2, 3, 4, 5]``, starting at 5 or below.
        neck: fpn | pafpn.
        pretrained: ``imagenet`` loads sha256-checked local weights (``sod.models.pretrained``) and freezes
            batch-norm statistics (FrozenBatchNorm2d, as torchvision's detectors do: detection batches are
            too small to re-estimate them); ``none`` starts from torchvision's random init with BatchNorm2d.
        trainable_layers: trunk stages (0..5, by stride 2..32, counted from the top) whose weights train;
            None = 3 with ImageNet weights, 5 (all) without.
        fpn_channels: width of every pyramid level.
        channels_last: see ``PyramidBackbone``.
        load_pretrained: False builds the ``pretrained`` architecture (frozen BN) without reading the
            ImageNet file: for loading a trained detector's own weights.

    Raises:
        ValueError: unknown name, bad levels or trainable_layers (the config loader rejects them first).
        DataError: ImageNet weights missing or with a wrong checksum.
    """
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; known: {', '.join(BACKBONES)}")
    levels = list(levels)
    if not levels or levels != list(range(levels[0], levels[-1] + 1)) or not 2 <= levels[0] <= BACKBONE_TOP_LEVEL:
        raise ValueError(f"levels {levels}: want consecutive log2 strides starting in 2..{BACKBONE_TOP_LEVEL}")
    frozen = pretrained == "imagenet"
    if trainable_layers is None:
        trainable_layers = 3 if frozen else 5
    if not 0 <= trainable_layers <= 5:
        raise ValueError(f"trainable_layers {trainable_layers}: want 0..5")

    model = _classifier(name, frozen_bn=frozen)
    if frozen and load_pretrained:
        model.load_state_dict(load_imagenet_state_dict(name))
    trunk = (
        nn.Sequential(OrderedDict((n, getattr(model, n)) for n in _RESNET_TRUNK))
        if name.startswith("resnet")
        else model.features
    )
    stages = _probe_stages(trunk)

    # Freeze whole stages from the stem up: stage s (stride 2**s) trains iff s > 5 - trainable_layers.
    for child_name, level, _ in stages:
        if level <= BACKBONE_TOP_LEVEL - trainable_layers:
            getattr(trunk, child_name).requires_grad_(False)

    last_child = {level: (child_name, channels) for child_name, level, channels in stages}  # last one wins
    trunk_levels = [lv for lv in levels if lv <= BACKBONE_TOP_LEVEL]
    return_layers = {last_child[lv][0]: f"p{lv}" for lv in trunk_levels}
    in_channels = [last_child[lv][1] for lv in trunk_levels]
    extra_names = [f"p{lv}" for lv in levels if lv > BACKBONE_TOP_LEVEL]
    return PyramidBackbone(trunk, return_layers, in_channels, extra_names, fpn_channels, neck, channels_last)


def _classifier(name: str, frozen_bn: bool) -> nn.Module:
    """torchvision's ImageNet classifier ``name``, randomly initialised, with frozen BN if asked."""
    kwargs: dict[str, Any] = {}
    if frozen_bn:
        # MobileNetV3's own BatchNorm uses eps=1e-3; its ImageNet statistics were estimated with it.
        eps = 1e-3 if name == "mobilenet_v3_large" else 1e-5
        kwargs["norm_layer"] = partial(FrozenBatchNorm2d, eps=eps)
    return getattr(torchvision.models, name)(weights=None, **kwargs)


@torch.no_grad()
def _probe_stages(trunk: nn.Sequential, size: int = 64) -> list[tuple[str, int, int]]:
    """(child name, log2 output stride, output channels) for each child of the trunk, in order."""
    was_training = trunk.training
    trunk.eval()  # BatchNorm must not update its running statistics on the probe
    x = torch.zeros(1, 3, size, size)
    stages = []
    for child_name, child in trunk.named_children():
        x = child(x)
        stages.append((child_name, int(math.log2(size // x.shape[-1])), int(x.shape[1])))
    trunk.train(was_training)
    return stages


# ------------------------------------------------------------------------------------------- anchors
class PyramidAnchorGenerator(AnchorGenerator):
    """Anchors given per pyramid level as explicit boxes centred at 0, tiled at each level's stride.

    Compatible with torchvision's ``AnchorGenerator`` interface (``num_anchors_per_location()``,
    ``forward(image_list, feature_maps)``), which RetinaNet and Faster R-CNN's RPN require. Differences:
    the cell anchors are arbitrary (w, h) pairs rather than a sizes × ratios grid, and the tiling uses the
    level's true stride (torchvision derives it as ``image_size // grid_size``, which is wrong for levels
    whose grid was rounded up, e.g. stride 128 on a 320 px image gives 106).

    Anchor ``a`` of level ``l`` at grid cell (i, j) is the xyxy box
    ``(j*s - w_a/2, i*s - h_a/2, j*s + w_a/2, i*s + h_a/2)`` with ``s = strides[l]`` (torchvision's
    convention: cell centres at multiples of the stride).

    Args:
        strides: pixel stride of each level, finest first.
        cell_anchors: per level, ``Tensor[A_l, 4]`` xyxy boxes centred at 0.
    """

    def __init__(self, strides: Sequence[int], cell_anchors: Sequence[Tensor]) -> None:
        # The parent's __init__ builds cell anchors from a sizes × aspect-ratios grid, which tuned
        # anchors are not; everything else of the parent (grid_anchors, set_cell_anchors) is reused.
        nn.Module.__init__(self)
        if len(strides) != len(cell_anchors):
            raise ValueError(f"{len(strides)} strides but {len(cell_anchors)} anchor sets")
        self.strides = [int(s) for s in strides]
        self.cell_anchors = [torch.as_tensor(a, dtype=torch.float32).reshape(-1, 4) for a in cell_anchors]

    @classmethod
    def from_wh(cls, strides: Sequence[int], anchors_wh: Sequence[Sequence[Sequence[float]]]) -> PyramidAnchorGenerator:
        """Anchors from (w, h) pairs in pixels: ``anchors_wh[level] = [[w, h], ...]``."""
        cells = []
        for wh in anchors_wh:
            half = torch.as_tensor(wh, dtype=torch.float32).reshape(-1, 2) / 2
            cells.append(torch.cat([-half, half], dim=1))
        return cls(strides, cells)

    @classmethod
    def default(cls, strides: Sequence[int]) -> PyramidAnchorGenerator:
        """torchvision's RetinaNet rule: sizes 4·s·2^(0, 1/3, 2/3) × aspect ratios (0.5, 1, 2) per level."""
        sizes = tuple((4 * s, int(4 * s * 2 ** (1 / 3)), int(4 * s * 2 ** (2 / 3))) for s in strides)
        reference = AnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * len(sizes))
        return cls(strides, reference.cell_anchors)

    def num_anchors_per_location(self) -> list[int]:
        """Anchors per grid cell, per level."""
        return [len(a) for a in self.cell_anchors]

    def anchors_wh(self) -> list[list[list[float]]]:
        """The cell anchors as (w, h) pairs per level (pixels)."""
        return [(a[:, 2:] - a[:, :2]).tolist() for a in self.cell_anchors]

    def forward(self, image_list: ImageList, feature_maps: list[Tensor]) -> list[Tensor]:
        """Returns, per image, ``Tensor[sum_l H_l * W_l * A_l, 4]`` xyxy anchors in padded-batch pixels,
        ordered level, then row, then column, then anchor (the order of the heads' outputs)."""
        if len(feature_maps) != len(self.strides):
            raise ValueError(f"{len(feature_maps)} feature maps but anchors for {len(self.strides)} levels")
        grid_sizes = [list(f.shape[-2:]) for f in feature_maps]
        device = feature_maps[0].device
        strides = [[torch.tensor(s, device=device), torch.tensor(s, device=device)] for s in self.strides]
        self.set_cell_anchors(feature_maps[0].dtype, device)
        per_level = self.grid_anchors(grid_sizes, strides)
        # Kept for assigners that work level by level (ATSS); the heads' outputs follow the same order.
        self.level_sizes = [len(a) for a in per_level]
        all_levels = torch.cat(per_level)
        return [all_levels for _ in image_list.image_sizes]


def anchor_generator_from_file(anchors: dict[str, Any], levels: Sequence[int]) -> PyramidAnchorGenerator:
    """The anchor generator for the anchors stage's output, checked against the detector's levels.

    Args:
        anchors: the content of ``models/anchors.json``: ``{"levels": [3, 4, 5], "strides": [8, 16, 32],
            "anchors_wh": [[[w, h], ...] per level], ...}``.
        levels: ``detector.levels``.

    Raises:
        DataError: the file does not fit these levels or is malformed; the message says to rerun
            ``sod anchors``.
    """
    rerun = "rerun `sod anchors` with the current params"
    wh = anchors.get("anchors_wh")
    if not isinstance(wh, list):
        raise DataError(f"anchors file: no 'anchors_wh' list of per-level [w, h] pairs; {rerun}")
    file_levels = anchors.get("levels")
    if file_levels is not None and list(file_levels) != list(levels):
        raise DataError(
            f"anchors file was fitted for levels {file_levels} but detector.levels is {list(levels)}; {rerun}"
        )
    if len(wh) != len(levels):
        raise DataError(
            f"anchors file has anchors for {len(wh)} levels but detector.levels {list(levels)} has {len(levels)}; "
            f"{rerun}"
        )
    strides = [2**lv for lv in levels]
    if "strides" in anchors and list(anchors["strides"]) != strides:
        raise DataError(f"anchors file has strides {anchors['strides']}, detector.levels need {strides}; {rerun}")
    for lv, pairs in zip(levels, wh, strict=True):
        ok = isinstance(pairs, list) and pairs
        ok = ok and all(
            isinstance(p, list | tuple) and len(p) == 2 and all(isinstance(v, int | float) and v > 0 for v in p)
            for p in pairs
        )
        if not ok:
            raise DataError(f"anchors file: level {lv}: want a non-empty list of positive [w, h] pairs; {rerun}")
    counts = {len(pairs) for pairs in wh}
    if len(counts) != 1:
        # RetinaNet's and the RPN's heads predict the same number of anchors at every level.
        raise DataError(f"anchors file: anchors per level differ ({[len(p) for p in wh]}); {rerun}")
    return PyramidAnchorGenerator.from_wh(strides, wh)


# ------------------------------------------------------------------------------------------- heads
# GroupNorm groups of torchvision's RetinaNet v2 head (``retinanet_resnet50_fpn_v2``: 256 channels, 32 groups).
HEAD_NORM_GROUPS = 32


def head_norm_layer(head_norm: Literal["none", "group"], channels: int) -> Callable[[int], nn.Module] | None:
    """The ``norm_layer`` of torchvision's RetinaNet sub-heads for ``detector.head_norm``.

    Args:
        head_norm: ``none`` (no normalisation: torchvision's v1 head, convs with bias) or ``group``.
        channels: the head's width (``detector.fpn_channels``).

    Returns:
        None, or ``partial(nn.GroupNorm, g)`` with ``g = gcd(32, channels)``: torchvision's 32 groups
        whenever 32 divides the width (32, 64, 128, 256, ...); GroupNorm needs ``g`` to divide it, so
        other widths get the largest group count ≤ 32 that does (48 → 16, 40 → 8).
    """
    if head_norm == "none":
        return None
    if head_norm != "group":
        raise ValueError(f"unknown head_norm {head_norm!r}; want none or group")
    return partial(nn.GroupNorm, math.gcd(HEAD_NORM_GROUPS, channels))


class FocalClassificationHead(RetinaNetClassificationHead):
    """RetinaNet's classification head with the focal loss's γ and α as arguments (torchvision fixes 2, 0.25).

    The loss is torchvision's: per image, the sigmoid focal loss summed over non-ignored anchors and all
    classes, divided by max(1, number of foreground anchors); then the mean over images.

    Args:
        in_channels, num_anchors, num_classes, prior_probability, norm_layer: as the parent.
        gamma: focusing exponent γ >= 0; 0 gives α-balanced binary cross-entropy.
        alpha: weight of positives α in [0, 1] (negatives get 1 − α); None = no weighting.
    """

    def __init__(
        self,
        in_channels: int,
        num_anchors: int,
        num_classes: int,
        prior_probability: float = 0.01,
        norm_layer: Any = None,
        *,
        gamma: float = 2.0,
        alpha: float | None = 0.25,
    ) -> None:
        super().__init__(in_channels, num_anchors, num_classes, prior_probability, norm_layer)
        self.gamma = gamma
        self.alpha = alpha

    def compute_loss(
        self, targets: list[dict[str, Tensor]], head_outputs: dict[str, Tensor], matched_idxs: list[Tensor]
    ) -> Tensor:
        """Args: targets (labels Int64Tensor[G] per image), head_outputs["cls_logits"] (Tensor[N, HWA, K]),
        matched_idxs (Int64Tensor[HWA] per image: GT index, or -1 background, -2 ignored)."""
        losses = []
        for targets_per_image, logits, matched in zip(targets, head_outputs["cls_logits"], matched_idxs, strict=True):
            foreground = matched >= 0
            gt_classes_target = torch.zeros_like(logits)
            gt_classes_target[foreground, targets_per_image["labels"][matched[foreground]]] = 1.0
            valid = matched != self.BETWEEN_THRESHOLDS
            loss = sigmoid_focal_loss(
                logits[valid],
                gt_classes_target[valid],
                alpha=-1 if self.alpha is None else self.alpha,  # torchvision's "no weighting" value
                gamma=self.gamma,
                reduction="sum",
            )
            losses.append(loss / max(1, int(foreground.sum())))
        return torch.stack(losses).sum() / len(targets)


class FocalRetinaNetHead(RetinaNetHead):
    """torchvision's RetinaNet head (same outputs and loss dict) with ``FocalClassificationHead``.

    ``norm_layer`` is torchvision's: None (v1 head) or e.g. ``partial(nn.GroupNorm, 32)`` (the v2 head),
    applied after each of the four convs of both sub-heads (see :func:`head_norm_layer`).
    """

    def __init__(
        self,
        in_channels: int,
        num_anchors: int,
        num_classes: int,
        *,
        gamma: float,
        alpha: float | None,
        norm_layer: Callable[[int], nn.Module] | None = None,
    ) -> None:
        # The parent's __init__ only builds its two sub-heads; building the default classification head
        # just to replace it would waste an initialisation, so both are built here.
        nn.Module.__init__(self)
        self.classification_head = FocalClassificationHead(
            in_channels, num_anchors, num_classes, norm_layer=norm_layer, gamma=gamma, alpha=alpha
        )
        self.regression_head = RetinaNetRegressionHead(in_channels, num_anchors, norm_layer=norm_layer)


# ------------------------------------------------------------------------------------------ detectors
class AssigningRetinaNet(RetinaNet):
    """torchvision's RetinaNet whose anchor-to-box assignment is ``iou`` (torchvision's ``Matcher`` with
    ``fg_iou_thresh``/``bg_iou_thresh``) or ``atss`` (:func:`sod.models.assign.atss_assign`).

    Only ``compute_loss``'s matching differs; the heads' losses, inference and outputs are torchvision's.
    """

    def __init__(self, *args: Any, assigner: Literal["iou", "atss"] = "iou", atss_topk: int = 9, **kwargs: Any):
        super().__init__(*args, **kwargs)
        if assigner not in ("iou", "atss"):
            raise ValueError(f"unknown assigner {assigner!r}; want iou or atss")
        self.assigner = assigner
        self.atss_topk = atss_topk

    def compute_loss(
        self, targets: list[dict[str, Tensor]], head_outputs: dict[str, Tensor], anchors: list[Tensor]
    ) -> dict[str, Tensor]:
        """As torchvision's, with ATSS matching when ``assigner`` is ``atss``."""
        if self.assigner == "iou":
            return super().compute_loss(targets, head_outputs, anchors)
        level_sizes = self.anchor_generator.level_sizes
        matched_idxs = [
            atss_assign(t["boxes"], a, level_sizes, self.atss_topk) for a, t in zip(anchors, targets, strict=True)
        ]
        return self.head.compute_loss(targets, head_outputs, anchors, matched_idxs)


def retinanet(
    *,
    backbone: PyramidBackbone,
    num_classes: int,
    anchor_generator: PyramidAnchorGenerator,
    gamma: float = 2.0,
    alpha: float | None = 0.25,
    head_norm: Literal["none", "group"] = "none",
    min_size: int = 320,
    max_size: int = 320,
    score_thresh: float = 0.05,
    nms_thresh: float = 0.5,
    detections_per_img: int = 300,
    fg_iou_thresh: float = 0.5,
    bg_iou_thresh: float = 0.4,
    assigner: Literal["iou", "atss"] = "iou",
    atss_topk: int = 9,
) -> RetinaNet:
    """torchvision RetinaNet with a focal head of the given γ, α.

    Args:
        num_classes: logits per anchor, torchvision's meaning (object classes + the unused label 0).
        head_norm: ``group`` = GroupNorm in both sub-heads (:func:`head_norm_layer`), ``none`` = without.
        assigner, atss_topk: anchor-to-box assignment (:class:`AssigningRetinaNet`); the IoU thresholds
            apply to ``iou`` only.
        Others: as ``torchvision.models.detection.RetinaNet``.
    """
    num_anchors = anchor_generator.num_anchors_per_location()[0]
    head = FocalRetinaNetHead(
        backbone.out_channels,
        num_anchors,
        num_classes,
        gamma=gamma,
        alpha=alpha,
        norm_layer=head_norm_layer(head_norm, backbone.out_channels),
    )
    return AssigningRetinaNet(
        backbone,
        num_classes,
        min_size=min_size,
        max_size=max_size,
        anchor_generator=anchor_generator,
        head=head,
        score_thresh=score_thresh,
        nms_thresh=nms_thresh,
        detections_per_img=detections_per_img,
        fg_iou_thresh=fg_iou_thresh,
        bg_iou_thresh=bg_iou_thresh,
        assigner=assigner,
        atss_topk=atss_topk,
    )


def faster_rcnn(
    *,
    backbone: PyramidBackbone,
    num_classes: int,
    anchor_generator: PyramidAnchorGenerator,
    min_size: int = 320,
    max_size: int = 320,
    score_thresh: float = 0.05,
    nms_thresh: float = 0.5,
    detections_per_img: int = 300,
    fg_iou_thresh: float = 0.5,
    bg_iou_thresh: float = 0.4,
) -> FasterRCNN:
    """torchvision Faster R-CNN whose RPN uses ``anchor_generator`` and whose RoI pooling spans every level.

    ``fg_iou_thresh``/``bg_iou_thresh`` are the RPN's anchor thresholds (the anchors are RPN anchors);
    the box head keeps torchvision's 0.5/0.5. There is no focal loss: the RPN and box head use
    torchvision's sampled cross-entropy, so ``detector.focal`` does not apply to this architecture.

    Args:
        num_classes: torchvision's meaning, background included (object classes + 1).
        Others: as ``torchvision.models.detection.FasterRCNN`` (``box_score_thresh`` etc.).
    """
    roi_pool = MultiScaleRoIAlign(featmap_names=backbone.feature_names, output_size=7, sampling_ratio=2)
    return FasterRCNN(
        backbone,
        num_classes,
        min_size=min_size,
        max_size=max_size,
        rpn_anchor_generator=anchor_generator,
        rpn_fg_iou_thresh=fg_iou_thresh,
        rpn_bg_iou_thresh=bg_iou_thresh,
        box_roi_pool=roi_pool,
        box_score_thresh=score_thresh,
        box_nms_thresh=nms_thresh,
        box_detections_per_img=detections_per_img,
    )


def build_detector(
    cfg: DetectorConfig,
    num_classes: int,
    anchors: dict[str, Any] | None = None,
    load_pretrained: bool = True,
    upscaler: SRUpscaler | None = None,
) -> nn.Module:
    """The detector that ``cfg`` describes: the one place where config keys meet constructor arguments.

    Args:
        cfg: the ``detector`` params section.
        num_classes: number of object classes K; targets' ``labels`` are 1..K (see the module docstring).
        anchors: the anchors stage's ``models/anchors.json`` content, or None for torchvision's default rule.
        load_pretrained: False skips reading ImageNet weights (the architecture is the same).
        upscaler: the SR model, required by ``cfg.input_upscale == "sr"`` (ignored otherwise).

    Returns:
        A torchvision RetinaNet or FasterRCNN; with ``cfg.input_upscale`` bicubic or sr, that detector (built
        for ``cfg.input_size()``) inside an :class:`~sod.models.upscale.UpscaledDetector`. Train mode:
        ``model(images, targets) -> dict of losses``; eval mode: ``model(images) -> [{"boxes": Tensor[D, 4]
        xyxy in input-image pixels, "labels", "scores"}]``. Images are float Tensor[3, H, W] in 0..1.

    Raises:
        DataError: ``anchors`` does not fit ``cfg.levels`` or the input size; ImageNet weights missing or
            corrupt; ``input_upscale: sr`` without an SR model of scale ``upscale_factor``.
    """
    min_size, max_size = cfg.input_size()
    fitted_for = (anchors.get("min_size"), anchors.get("max_size")) if anchors else None
    if fitted_for and fitted_for[0] is not None and fitted_for != (min_size, max_size):
        raise DataError(
            f"anchors file was fitted for a {fitted_for[0]}/{fitted_for[1]} px input, but the "
            f"detector sees {min_size}/{max_size} px (detector.min_size/max_size × upscale_factor when "
            "input_upscale is on); rerun `sod anchors` with the current params"
        )
    if cfg.input_upscale == "sr" and upscaler is None:
        raise DataError("detector.input_upscale is sr but no SR model was given (`sod train-detector --sr-model`)")
    if cfg.input_upscale == "sr" and upscaler is not None and upscaler.scale != cfg.upscale_factor:
        raise DataError(
            f"the SR model upscales ×{upscaler.scale} but detector.upscale_factor is {cfg.upscale_factor}; "
            "retrain it with sr.scale set to the factor"
        )
    backbone = build_backbone(
        name=cfg.backbone,
        levels=cfg.levels,
        neck=cfg.neck,
        pretrained=cfg.pretrained,
        trainable_layers=cfg.trainable_layers,
        fpn_channels=cfg.fpn_channels,
        channels_last=cfg.channels_last,
        load_pretrained=load_pretrained,
    )
    if anchors is None:
        anchor_generator = PyramidAnchorGenerator.default([2**lv for lv in cfg.levels])
    else:
        anchor_generator = anchor_generator_from_file(anchors, cfg.levels)
    common: dict[str, Any] = {
        "backbone": backbone,
        "num_classes": num_classes + 1,  # label 0 is background (Faster R-CNN) / never used (RetinaNet)
        "anchor_generator": anchor_generator,
        "min_size": min_size,
        "max_size": max_size,
        "score_thresh": cfg.score_thresh,
        "nms_thresh": cfg.nms_thresh,
        "detections_per_img": cfg.detections_per_img,
        "fg_iou_thresh": cfg.fg_iou_thresh,
        "bg_iou_thresh": cfg.bg_iou_thresh,
    }
    if cfg.arch == "retinanet":
        model = retinanet(
            **common,
            gamma=cfg.focal.gamma,
            alpha=cfg.focal.alpha,
            head_norm=cfg.head_norm,
            assigner=cfg.assigner,
            atss_topk=cfg.atss_topk,
        )
    else:
        if cfg.focal != FocalConfig():
            log.warning("detector.focal.* is ignored by arch faster_rcnn (its RPN and box head use cross-entropy)")
        if cfg.assigner != "iou":
            log.warning("detector.assigner is ignored by arch faster_rcnn (its RPN matches by IoU)")
        if cfg.head_norm != "none":
            log.warning("detector.head_norm is ignored by arch faster_rcnn (it applies to RetinaNet's head)")
        model = faster_rcnn(**common)
    if cfg.input_upscale == "none":
        return model
    sr = upscaler if cfg.input_upscale == "sr" else None
    return UpscaledDetector(
        model, cfg.upscale_factor, sr, finetune=cfg.sr_finetune, min_size=cfg.min_size, max_size=cfg.max_size
    )


def load_detector(path: str | Path, device: torch.device | str = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a trained detector from ``models/detector.pt`` (written by ``sod train-detector``), in eval mode.

    Returns:
        ``(model, meta)``; ``meta`` holds ``detector`` (its config), ``anchors``, ``num_classes``,
        ``categories`` and ``label_to_category`` (model label → COCO category id).

    Raises:
        DataError: missing, unreadable or foreign file.
    """
    from sod.config import from_dict

    path = Path(path)
    if not path.is_file():
        raise DataError(f"detector model not found: {path} (run `sod train-detector` first)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a damaged or foreign file
        raise DataError(f"cannot read detector model {path}: {type(exc).__name__}: {exc}") from None
    missing = {"model", "detector", "anchors", "num_classes", "label_to_category"} - set(state)
    if missing:
        raise DataError(f"{path} is not a sod detector model (missing {', '.join(sorted(missing))})")
    cfg = from_dict(DetectorConfig, state["detector"], "detector.")
    upscaler = None
    if cfg.input_upscale == "sr":
        if not isinstance(state.get("sr"), dict):
            raise DataError(f"{path}: an SR-input detector without its SR model's architecture ('sr')")
        upscaler = build_sr(**state["sr"])  # its weights are in the state dict, under upscaler.
    model = build_detector(cfg, state["num_classes"], state["anchors"], load_pretrained=False, upscaler=upscaler)
    model.load_state_dict(state["model"])
    model.to(device).eval()
    meta = {k: v for k, v in state.items() if k != "model"}
    meta["label_to_category"] = {int(k): int(v) for k, v in state["label_to_category"].items()}
    return model, meta
