"""Detector builder: archs × backbones train and predict, pyramid levels, PAFPN, focal and GroupNorm heads,
anchors, sizes, save/load."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import nn
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.retinanet import RetinaNetClassificationHead, _default_anchorgen
from torchvision.ops import sigmoid_focal_loss

from sod.config import DetectorConfig, FocalConfig, to_dict
from sod.engine import save_checkpoint
from sod.errors import DataError
from sod.models.detector import (
    FocalClassificationHead,
    PyramidAnchorGenerator,
    anchor_generator_from_file,
    build_backbone,
    build_detector,
    head_norm_layer,
    load_detector,
)
from sod.models.pretrained import load_imagenet_state_dict


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _cfg(**kwargs: object) -> DetectorConfig:
    """A small, fast detector config: random init, narrow FPN."""
    base: dict[str, object] = {"pretrained": "none", "fpn_channels": 32, "min_size": 96, "max_size": 96}
    return DetectorConfig(**{**base, **kwargs})


def _targets() -> list[dict[str, torch.Tensor]]:
    # One image with a tiny and a medium box (xyxy px), one with no objects.
    return [
        {"boxes": torch.tensor([[10.0, 8.0, 18.0, 17.0], [30.0, 20.0, 60.0, 44.0]]), "labels": torch.tensor([1, 2])},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)},
    ]


# ------------------------------------------------------------------------------------- whole models
@pytest.mark.parametrize(
    ("arch", "backbone"),
    [
        ("retinanet", "mobilenet_v2"),
        ("retinanet", "resnet18"),
        ("faster_rcnn", "mobilenet_v3_large"),
        ("faster_rcnn", "resnet18"),
    ],
)
def test_train_step_and_eval_forward(arch: str, backbone: str) -> None:
    torch.manual_seed(0)
    model = build_detector(_cfg(arch=arch, backbone=backbone, score_thresh=0.0), num_classes=2)
    # 48×64 inputs, min_size = max_size = 96: resized by 1.5 to 72×96 inside the model.
    images = [torch.rand(3, 48, 64), torch.rand(3, 48, 64)]

    model.train()
    losses = model(images, _targets())
    assert losses and all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.backbone.parameters())

    model.eval()
    with torch.no_grad():
        detections = model(images)
    assert len(detections) == 2
    boxes = detections[0]["boxes"]
    assert boxes.shape[1] == 4 and len(boxes) > 0
    # xyxy in the input image's pixels (64 wide, 48 high), not the resized 96×72.
    assert (boxes[:, 0] <= boxes[:, 2]).all() and (boxes[:, 1] <= boxes[:, 3]).all()
    assert boxes.min() >= 0
    assert boxes[:, 2].max() <= 64 + 1e-4 and boxes[:, 3].max() <= 48 + 1e-4
    # Anchors taller than the image are clipped to its bottom border: 48 here, not the resized 72.
    assert boxes[:, 3].max().item() == pytest.approx(48.0)
    assert set(detections[0]["labels"].tolist()) <= {0, 1, 2}


def test_min_and_max_size_are_passed_to_the_model() -> None:
    model = build_detector(_cfg(min_size=320, max_size=320), num_classes=1).eval()
    batch, _ = model.transform([torch.rand(3, 320, 320), torch.rand(3, 200, 320)])
    # torchvision's default (800) would have upscaled both.
    assert batch.image_sizes == [(320, 320), (200, 320)]


def test_focal_params_reach_the_retinanet_head() -> None:
    model = build_detector(_cfg(focal=FocalConfig(gamma=0.5, alpha=None)), num_classes=3)
    head = model.head.classification_head
    assert isinstance(head, FocalClassificationHead)
    assert (head.gamma, head.alpha, head.num_classes) == (0.5, None, 4)  # 3 classes + unused label 0


# ------------------------------------------------------------------------------------------ head norm
def _group_norms(module: nn.Module) -> list[nn.GroupNorm]:
    return [m for m in module.modules() if isinstance(m, nn.GroupNorm)]


def test_head_norm_group_puts_groupnorm_after_every_head_conv() -> None:
    model = build_detector(_cfg(fpn_channels=64, head_norm="group", focal=FocalConfig(gamma=1.5)), num_classes=2)
    cls_head, reg_head = model.head.classification_head, model.head.regression_head
    # 4 convs per sub-head, each followed by GroupNorm(32 groups, 64 channels) as torchvision's v2 head.
    for sub in (cls_head, reg_head):
        norms = _group_norms(sub)
        assert [(n.num_groups, n.num_channels) for n in norms] == [(32, 64)] * 4
        assert all(sub.conv[i][0].bias is None for i in range(4))  # the norm's shift replaces the conv bias
    assert isinstance(cls_head, FocalClassificationHead) and cls_head.gamma == 1.5  # still from params
    assert not _group_norms(model.backbone)  # the head only

    plain = build_detector(_cfg(fpn_channels=64), num_classes=2)
    assert not _group_norms(plain)
    assert plain.head.classification_head.conv[0][0].bias is not None  # torchvision's v1 head


@pytest.mark.parametrize(("channels", "groups"), [(256, 32), (128, 32), (64, 32), (48, 16), (40, 8), (8, 8)])
def test_head_groups_divide_the_fpn_width(channels: int, groups: int) -> None:
    norm = head_norm_layer("group", channels)(channels)
    assert (norm.num_groups, norm.num_channels) == (groups, channels)
    assert head_norm_layer("none", channels) is None


def test_groupnorm_head_trains_and_predicts() -> None:
    torch.manual_seed(0)
    model = build_detector(_cfg(fpn_channels=32, head_norm="group", score_thresh=0.0), num_classes=2)
    images = [torch.rand(3, 48, 64), torch.rand(3, 48, 64)]
    model.train()
    losses = model(images, _targets())
    assert set(losses) == {"classification", "bbox_regression"}
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    for norm in _group_norms(model.head):
        assert norm.weight.grad is not None and norm.weight.grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        (det, _) = model(images)
    assert det["boxes"].shape[1] == 4 and len(det["boxes"]) > 0


def _save(path: Path, model: nn.Module, detector: dict[str, object]) -> None:
    """A ``models/detector.pt`` as ``sod.stages.train_detector.save_model`` writes it."""
    state = {
        "model": model.state_dict(),
        "detector": detector,
        "anchors": None,
        "num_classes": 2,
        "categories": [{"id": 7, "name": "a"}, {"id": 9, "name": "b"}],
        "label_to_category": {1: 7, 2: 9},
    }
    save_checkpoint(path, state)


def test_groupnorm_detector_saves_and_loads_back(tmp_path: Path) -> None:
    torch.manual_seed(0)
    cfg = _cfg(head_norm="group")
    model = build_detector(cfg, num_classes=2)
    with torch.no_grad():  # move the norms off their init (weight 1, bias 0) so the load is really checked
        for norm in _group_norms(model.head):
            norm.weight.uniform_(0.5, 1.5)
            norm.bias.uniform_(-0.5, 0.5)
    model.eval()
    _save(tmp_path / "detector.pt", model, to_dict(cfg))

    loaded, meta = load_detector(tmp_path / "detector.pt")
    assert meta["detector"]["head_norm"] == "group"
    assert len(_group_norms(loaded.head)) == 8
    for (name, a), b in zip(model.state_dict().items(), loaded.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    images = [torch.rand(3, 96, 96)]
    with torch.no_grad():
        torch.testing.assert_close(model(images)[0]["scores"], loaded(images)[0]["scores"])


def test_model_saved_before_head_norm_loads_as_none(tmp_path: Path) -> None:
    model = build_detector(_cfg(), num_classes=2).eval()
    old = to_dict(_cfg())
    del old["head_norm"]  # a detector.pt written before the key existed
    _save(tmp_path / "old.pt", model, old)
    loaded, _ = load_detector(tmp_path / "old.pt")
    assert not _group_norms(loaded)


# ------------------------------------------------------------------------------------------- pyramid
def _shapes(features: dict[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    return {name: tuple(f.shape) for name, f in features.items()}


def test_levels_2_to_5_give_a_stride_4_map() -> None:
    backbone = build_backbone(name="mobilenet_v2", levels=[2, 3, 4, 5], pretrained="none", fpn_channels=16).eval()
    with torch.no_grad():
        features = backbone(torch.rand(1, 3, 64, 64))
    assert _shapes(features) == {
        "p2": (1, 16, 16, 16),
        "p3": (1, 16, 8, 8),
        "p4": (1, 16, 4, 4),
        "p5": (1, 16, 2, 2),
    }


def test_levels_above_5_come_from_extra_convs() -> None:
    backbone = build_backbone(name="resnet18", levels=[3, 4, 5, 6, 7], pretrained="none", fpn_channels=16).eval()
    with torch.no_grad():
        features = backbone(torch.rand(1, 3, 128, 128))
    assert [name for name in features] == ["p3", "p4", "p5", "p6", "p7"]
    assert [f.shape[-1] for f in features.values()] == [16, 8, 4, 2, 1]


def test_pafpn_outputs_have_the_fpn_shapes() -> None:
    shapes = {}
    for neck in ("fpn", "pafpn"):
        backbone = build_backbone(
            name="resnet18", levels=[2, 3, 4, 5, 6], neck=neck, pretrained="none", fpn_channels=16
        ).eval()
        with torch.no_grad():
            shapes[neck] = _shapes(backbone(torch.rand(1, 3, 96, 64)))
    assert shapes["pafpn"] == shapes["fpn"]
    assert list(shapes["fpn"]) == ["p2", "p3", "p4", "p5", "p6"]


def test_channels_last_gives_the_same_features() -> None:
    torch.manual_seed(0)
    fast = build_backbone(name="resnet18", levels=[3, 4, 5], pretrained="none", fpn_channels=16, channels_last=True)
    plain = build_backbone(name="resnet18", levels=[3, 4, 5], pretrained="none", fpn_channels=16, channels_last=False)
    plain.load_state_dict(fast.state_dict())
    fast.eval()
    plain.eval()
    assert fast.body["conv1"].weight.is_contiguous(memory_format=torch.channels_last)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        a, b = fast(x), plain(x)
    for name in a:
        assert a[name].is_contiguous()  # heads get the default layout
        torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-5)


def test_imagenet_weights_load_and_early_stages_freeze() -> None:
    backbone = build_backbone(name="mobilenet_v2", levels=[3, 4, 5], pretrained="imagenet", trainable_layers=3)
    reference = load_imagenet_state_dict("mobilenet_v2")
    torch.testing.assert_close(backbone.body["0"][0].weight, reference["features.0.0.weight"], rtol=0, atol=0)
    # mobilenet_v2 features: 0-1 at stride 2, 2-3 at stride 4 (frozen); 4 onwards at stride 8+ (trained).
    assert not any(p.requires_grad for p in backbone.body["3"].parameters())
    assert all(p.requires_grad for p in backbone.body["4"].parameters())


# ---------------------------------------------------------------------------------------- focal loss
def _loss(head: FocalClassificationHead | RetinaNetClassificationHead, logits: torch.Tensor) -> torch.Tensor:
    # One image, four anchors, three classes: anchor 0 matches GT 0 (label 2), 1 and 3 are
    # background, 2 is ignored (between the IoU thresholds).
    targets = [{"labels": torch.tensor([2])}]
    matched = [torch.tensor([0, -1, -2, -1])]
    return head.compute_loss(targets, {"cls_logits": logits[None]}, matched)


def _head(gamma: float, alpha: float | None) -> FocalClassificationHead:
    return FocalClassificationHead(8, 1, 3, gamma=gamma, alpha=alpha)


def test_focal_gamma_0_at_zero_logits_is_hand_computed_alpha_weighted_bce() -> None:
    logits = torch.zeros(4, 3)
    # 3 valid anchors × 3 classes: 1 positive (weight α = 0.25), 8 negatives (weight 0.75), each BCE = log 2;
    # divided by 1 foreground anchor.
    assert _loss(_head(0.0, 0.25), logits).item() == pytest.approx((0.25 * 1 + 0.75 * 8) * math.log(2))
    assert _loss(_head(0.0, None), logits).item() == pytest.approx(9 * math.log(2))
    # γ = 2: every p_t is 0.5, so each term is scaled by (1 − 0.5)² = 0.25.
    assert _loss(_head(2.0, 0.25), logits).item() == pytest.approx(0.25 * (0.25 + 0.75 * 8) * math.log(2))


def test_focal_gamma_0_matches_bce_and_torchvision_on_random_logits() -> None:
    torch.manual_seed(0)
    logits = torch.randn(4, 3)
    valid = torch.tensor([True, True, False, True])
    target = torch.zeros(4, 3)
    target[0, 2] = 1.0
    x, t = logits[valid], target[valid]
    bce = -(t * torch.log(torch.sigmoid(x)) + (1 - t) * torch.log(1 - torch.sigmoid(x)))
    by_hand = ((0.25 * t + 0.75 * (1 - t)) * bce).sum()
    by_torchvision = sigmoid_focal_loss(x, t, alpha=0.25, gamma=0.0, reduction="sum")
    ours = _loss(_head(0.0, 0.25), logits)
    torch.testing.assert_close(ours, by_hand)
    torch.testing.assert_close(ours, by_torchvision)


def test_focal_defaults_equal_torchvisions_head() -> None:
    torch.manual_seed(0)
    logits = torch.randn(4, 3)
    theirs = RetinaNetClassificationHead(8, 1, 3)
    torch.testing.assert_close(_loss(_head(2.0, 0.25), logits), _loss(theirs, logits))


# ------------------------------------------------------------------------------------------- anchors
ANCHORS = {
    "method": "kmeans",
    "levels": [3, 4],
    "strides": [8, 16],
    "anchors_wh": [[[10.0, 20.0], [6.0, 6.0]], [[40.0, 30.0], [24.0, 48.0]]],
}


def test_custom_anchors_are_the_given_wh_at_each_levels_grid() -> None:
    generator = anchor_generator_from_file(ANCHORS, [3, 4])
    assert generator.num_anchors_per_location() == [2, 2]
    images = ImageList(torch.zeros(1, 3, 32, 32), [(32, 32)])
    (anchors,) = generator(images, [torch.zeros(1, 4, 4, 4), torch.zeros(1, 4, 2, 2)])
    assert anchors.shape == (4 * 4 * 2 + 2 * 2 * 2, 4)
    # Level 3 (stride 8), cell (row 0, col 0): centre (0, 0).
    assert anchors[0].tolist() == [-5.0, -10.0, 5.0, 10.0]
    assert anchors[1].tolist() == [-3.0, -3.0, 3.0, 3.0]
    # Level 3, cell (row 1, col 2) -> index (1 * 4 + 2) * 2: centre (x 16, y 8), 10 × 20.
    assert anchors[12].tolist() == [11.0, -2.0, 21.0, 18.0]
    # Level 4 (stride 16) starts at 32; cell (1, 1), anchor 1 -> 32 + 3 * 2 + 1: centre (16, 16), 24 × 48.
    assert anchors[32].tolist() == [-20.0, -15.0, 20.0, 15.0]
    assert anchors[39].tolist() == [4.0, -8.0, 28.0, 40.0]


def test_detector_uses_the_anchors_file() -> None:
    model = build_detector(_cfg(levels=[3, 4]), num_classes=1, anchors=ANCHORS)
    assert model.anchor_generator.anchors_wh() == ANCHORS["anchors_wh"]
    assert model.head.classification_head.num_anchors == 2


def test_default_anchors_are_torchvisions_rule() -> None:
    ours = PyramidAnchorGenerator.default([8, 16, 32, 64, 128])
    theirs = _default_anchorgen()
    for a, b in zip(ours.cell_anchors, theirs.cell_anchors, strict=True):
        torch.testing.assert_close(a, b)
    # A stride-4 level gets 16 px anchors by the same rule (4 × stride); ratio-major order, so index 3 is
    # ratio 1 at scale 1.
    assert PyramidAnchorGenerator.default([4]).anchors_wh()[0][3] == [16.0, 16.0]


@pytest.mark.parametrize(
    ("anchors", "levels"),
    [
        (ANCHORS, [2, 3, 4]),  # fitted for other levels
        ({"anchors_wh": ANCHORS["anchors_wh"]}, [3, 4, 5]),  # one level short
        ({**ANCHORS, "anchors_wh": [[[10.0, 20.0]], [[40.0, 30.0], [24.0, 48.0]]]}, [3, 4]),  # counts differ
        ({**ANCHORS, "anchors_wh": [[[10.0, -1.0]], [[40.0, 30.0]]]}, [3, 4]),  # negative height
    ],
)
def test_mismatched_anchors_file_is_a_clear_error(anchors: dict, levels: list[int]) -> None:
    with pytest.raises(DataError, match="rerun `sod anchors`"):
        build_detector(_cfg(levels=levels), num_classes=1, anchors=anchors)
