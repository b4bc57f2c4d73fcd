"""The Predictor: tiles cut from the original pixels, one tensor shape per tile batch (edge tiles zero-padded),
boxes mapped back to the original pixels exactly, and on a 320 px image the same output as before."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn
from torchvision.models.detection import RetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.ops.misc import FrozenBatchNorm2d

from sod.config import DetectorConfig, EvaluateConfig, SlicedConfig
from sod.evaluation.predictor import Predictor, _finest_level_cells, config_mode, detector_input_size
from sod.evaluation.sliced import OBJECTNESS, OBJECTNESS_BOXES, SlicedPredictor, tile_grid
from sod.models.detector import build_detector
from tests.tiny_models import TinyBackbone

# What the stub returns for every input, in that input's own pixels: a box partly below y = 120 (in the pad of
# a strip's tile), one wholly below it, and a label-0 box that no output may keep.
STUB_BOXES = [[10.0, 100.0, 30.0, 200.0], [10.0, 150.0, 30.0, 200.0], [0.0, 0.0, 5.0, 5.0]]
STUB_LABELS = [1, 2, 0]


class _Transform:
    """The two attributes of torchvision's GeneralizedRCNNTransform that the Predictor sets."""

    def __init__(self, min_size: int, max_size: int) -> None:
        self.min_size, self.max_size = (min_size,), max_size


class StubDetector(nn.Module):
    """A 'detector' that records every forward call: its inputs and the transform size it ran under."""

    def __init__(self, min_size: int, max_size: int) -> None:
        super().__init__()
        self.transform = _Transform(min_size, max_size)
        self.calls: list[tuple[list[Tensor], tuple[tuple[int, ...], int]]] = []

    def forward(self, images: list[Tensor]) -> list[dict[str, Tensor]]:
        self.calls.append(([im.clone() for im in images], (self.transform.min_size, self.transform.max_size)))
        return [
            {
                "boxes": torch.tensor(STUB_BOXES),
                "scores": torch.tensor([0.9, 0.8, 0.7]),
                "labels": torch.tensor(STUB_LABELS),
            }
            for _ in images
        ]


def _pattern(height: int, width: int) -> Tensor:
    """An image whose every pixel differs from its neighbours' (values in 0..1), so a crop identifies its origin."""
    y = torch.arange(height, dtype=torch.float64)[:, None]
    x = torch.arange(width, dtype=torch.float64)[None, :]
    gray = ((y * 1009 + x * 31) % 997 / 997).float()
    return torch.stack([gray, gray.flip(0), gray.flip(1)])


def test_tiles_come_from_the_original_pixels_in_one_shape_and_map_back_exactly() -> None:
    # Detector input 500 px: a 1000 x 1000 image is shrunk by 0.5 for the full pass; upscale 2 shows the tiles
    # at 0.5 x 2 = 1, i.e. at their original pixels.
    stub = StubDetector(500, 500)
    pred = Predictor(stub, mode="sliced", tile=250, overlap=0.2, upscale=2.0, batch_size=8, merge="nms", match="iou")
    image = _pattern(1000, 1000)
    (passes,) = pred.engine.passes([image])
    # step = floor(250 * 0.8) = 200: origins 0, 200, 400, 600 and the border-aligned 750 → 5 x 5 tiles.
    tiles = tile_grid(1000, 1000, 250, 0.2).tolist()
    assert sorted({t[0] for t in tiles}) == [0, 200, 400, 600, 750] and len(tiles) == 25
    inputs = [im for call, _ in stub.calls for im in call]
    assert [tuple(im.shape) for im in inputs] == [(3, 500, 500)] + [(3, 250, 250)] * 25
    # Every forward call holds one shape, and runs with torchvision's resize set to the identity for it.
    for call, (min_size, max_size) in stub.calls:
        (shape,) = {tuple(im.shape[-2:]) for im in call}
        assert (min_size, max_size) == ((min(shape),), max(shape))
    # The tiles are the original pixels, not a crop of the shrunk image.
    for im, (x0, y0, x1, y1) in zip(inputs[1:], tiles, strict=True):
        assert torch.equal(im, image[:, y0:y1, x0:x1])
    # Boxes back in original pixels: the full pass's by 1 / 0.5, each tile's shifted by its origin.
    assert passes[0]["boxes"].tolist() == [[20, 200, 60, 400], [20, 300, 60, 400]]
    for p, (x0, y0, _, _) in zip(passes[1:], tiles, strict=True):
        assert p["boxes"].tolist() == [[x0 + 10, y0 + 100, x0 + 30, y0 + 200], [x0 + 10, y0 + 150, x0 + 30, y0 + 200]]
        assert p["labels"].tolist() == [1, 2]  # label 0 dropped


def test_a_side_shorter_than_the_tile_is_zero_padded_and_boxes_in_the_pad_are_clipped_or_dropped() -> None:
    stub = StubDetector(500, 500)
    pred = Predictor(stub, mode="sliced", tile=250, overlap=0.2, upscale=2.0, batch_size=3, merge="nms", match="iou")
    image = _pattern(120, 1000)  # a strip: 120 px high, the tile is 250
    (passes,) = pred.engine.passes([image])
    tiles = tile_grid(120, 1000, 250, 0.2).tolist()
    assert tiles == [[x, 0, x + 250, 120] for x in (0, 200, 400, 600, 750)]
    inputs = [im for call, _ in stub.calls for im in call]
    # Full pass at min(500 / 120, 500 / 1000) = 0.5: 60 x 500. Tiles: 250 x 120 padded to 250 x 250, scale 1.
    assert [tuple(im.shape) for im in inputs] == [(3, 60, 500)] + [(3, 250, 250)] * 5
    assert [len(call) for call, _ in stub.calls] == [1, 2, 3]  # batch_size 3: [full, t, t], [t, t, t] by shape
    for im, (x0, _, x1, _) in zip(inputs[1:], tiles, strict=True):
        assert torch.equal(im[:, :120], image[:, :, x0:x1]) and not im[:, 120:].any()
    for p, (x0, _, _, _) in zip(passes[1:], tiles, strict=True):
        # (10, 100, 30, 200) is clipped at the image's bottom, 120; (10, 150, 30, 200) lies in the pad: dropped.
        assert p["boxes"].tolist() == [[x0 + 10, 100, x0 + 30, 120]]
        assert p["labels"].tolist() == [1] and p["scores"].tolist() == pytest.approx([0.9])


def test_full_mode_runs_the_image_at_the_detectors_scale() -> None:
    stub = StubDetector(320, 640)
    (out,) = Predictor(stub, mode="full")([_pattern(400, 800)])
    # min(320 / 400, 640 / 800) = 0.8: the network sees 320 x 640, boxes come back / 0.8, label 0 dropped.
    assert [tuple(im.shape) for call, _ in stub.calls for im in call] == [(3, 320, 640)]
    assert out["boxes"].flatten().tolist() == pytest.approx([12.5, 125, 37.5, 250, 12.5, 187.5, 37.5, 250])
    assert out["labels"].tolist() == [1, 2]


def test_mode_from_config() -> None:
    assert config_mode(EvaluateConfig()) == "sliced"
    assert config_mode(EvaluateConfig(sliced=SlicedConfig(enabled=False))) == "full"
    assert config_mode(EvaluateConfig(sliced=SlicedConfig(select="small"))) == "adaptive"
    assert config_mode(EvaluateConfig(sliced=SlicedConfig(enabled=False)), sliced=True) == "sliced"
    assert Predictor.from_config(StubDetector(8, 8), EvaluateConfig(), "adaptive").engine.select == "small"
    with pytest.raises(ValueError, match="unknown mode"):
        Predictor(StubDetector(8, 8), mode="tiles")  # type: ignore[arg-type]


def _tiny_detector() -> RetinaNet:
    torch.manual_seed(0)
    anchors = AnchorGenerator(sizes=((8, 16),), aspect_ratios=((1.0,),))
    model = RetinaNet(
        TinyBackbone(), 3, min_size=320, max_size=320, anchor_generator=anchors, score_thresh=0.0,
        detections_per_img=50,
    )  # fmt: skip
    return model.eval()


@pytest.mark.parametrize("mode", ["full", "sliced"])
def test_on_a_320_px_image_it_equals_the_old_path(mode: str, one_thread: None) -> None:
    """The embedded default (320 px scenes, min_size = max_size = 320): the Predictor on the original image gives
    what the old evaluate path gave: the engine on the image taken at model scale (input_size None), with the
    detector at its own 320 px transform (a no-op on this image).

    One thread: the Predictor runs same-shape tiles as one batch, the old path one by one. With more threads a
    batch of 2 takes another convolution reduction order than a batch of 1 (about 1e-7 apart), and this
    untrained detector's near-tied scores turn that into different NMS survivors (18 boxes against 23 on one
    160 px tile, measured on 2 cores); with one thread both orders are the same and the paths agree exactly."""
    model = _tiny_detector()
    assert detector_input_size(model) == (320, 320)
    image = torch.rand(3, 320, 320, generator=torch.Generator().manual_seed(1))
    cfg = EvaluateConfig(max_dets=300)
    # One tile per call, as the old path: on a CPU without AVX-512 (AVX2 kernels) a batch of 2 took another
    # reduction order even with one thread, and the near-tied scores kept 300 boxes against 224.
    cfg.sliced.batch_size = 1
    new = Predictor.from_config(model, cfg, mode)([image])[0]

    def old_forward(images: list[Tensor]) -> list[dict[str, Tensor]]:
        outs = []
        for im in images:  # one by one, at the size it comes in (160 px tiles: the transform set to 160)
            h, w = im.shape[-2:]
            model.transform.min_size, model.transform.max_size = (min(h, w),), max(h, w)
            (o,) = model([im])
            outs.append({k: v[o["labels"] > 0] for k, v in o.items()})
        model.transform.min_size, model.transform.max_size = (320,), 320
        return outs

    with torch.inference_mode():
        old = SlicedPredictor.from_config(old_forward, cfg, sliced=mode == "sliced")([image])[0]
    assert len(new["boxes"]) > 0
    for k in ("boxes", "scores", "labels"):
        torch.testing.assert_close(new[k], old[k], rtol=0, atol=1e-5)
    if mode == "full":  # and the full pass is torchvision's own inference on the image
        with torch.inference_mode():
            (plain,) = model([image])
        keep = plain["labels"] > 0
        torch.testing.assert_close(new["boxes"], plain["boxes"][keep], rtol=0, atol=1e-5)


def test_finest_level_cells_by_hand() -> None:
    # Two levels, 2 x 2 and 1 x 1 cells, of an 8 x 8 padded batch; 1 anchor, 2 classes. torchvision's layout:
    # level by level, (H, W, A) rows of K logits.
    logits = torch.tensor([[[0.0, 2.0], [-1.0, -3.0], [1.0, 0.5], [-4.0, -2.0], [9.0, 9.0]]])
    cells = _finest_level_cells((8, 8), [(2, 2), (1, 1)], logits, 0, (8, 8))
    assert cells[OBJECTNESS_BOXES].tolist() == [[0, 0, 4, 4], [4, 0, 8, 4], [0, 4, 4, 8], [4, 4, 8, 8]]
    expected = torch.tensor([2.0, -1.0, 1.0, -2.0]).sigmoid()  # each cell's best class; the 1 x 1 level unused
    torch.testing.assert_close(cells[OBJECTNESS], expected)
    # An input of 5 x 3 in that batch: cells starting in the padding (x ≥ 3 or y ≥ 5) are left out.
    cells = _finest_level_cells((8, 8), [(2, 2), (1, 1)], logits, 0, (5, 3))
    assert cells[OBJECTNESS_BOXES].tolist() == [[0, 0, 4, 4], [0, 4, 4, 8]]


def test_adaptive_probe_reads_the_retinanet_heads_map_and_the_output_stays_plain(one_thread: None) -> None:
    model = _tiny_detector()  # one level at stride 4
    # batch_size 1: tiles batched in another grouping can take another reduction order (AVX2 CPUs) and
    # this untrained detector's near-tied scores turn that into other NMS survivors.
    pred = Predictor(model, mode="adaptive", tile=160, overlap=0.25, batch_size=1, select_score=0.0)
    image = _pattern(320, 320)
    with torch.inference_mode():
        (probe,) = pred._probe([image])
        (out,) = pred([image])
    # 320 / 4 = 80 cells a side, each 4 px: they tile the input exactly; one score per cell, in (0, 1).
    boxes = probe[OBJECTNESS_BOXES]
    assert (
        boxes.shape == (80 * 80, 4) and boxes[0].tolist() == [0, 0, 4, 4] and boxes[-1].tolist() == [316, 316, 320, 320]
    )
    assert ((probe[OBJECTNESS] > 0) & (probe[OBJECTNESS] < 1)).all()
    # The probe's boxes are the plain forward pass's; the merged output holds no cells.
    (plain,) = pred._forward([image])
    assert set(plain) == {"boxes", "scores", "labels"} and torch.equal(plain["boxes"], probe["boxes"])
    assert set(out) == {"boxes", "scores", "labels"}
    # Score 0 opens every tile: the same tiles as select=all, so the same merged prediction.
    with torch.inference_mode():
        (every,) = Predictor(model, mode="sliced", tile=160, overlap=0.25, batch_size=1)([image])
    torch.testing.assert_close(out["boxes"], every["boxes"])


def test_predictor_runs_a_folded_copy_and_leaves_the_model(one_thread: None) -> None:
    # A detector as load_detector builds it (frozen ImageNet-style norms), ImageNet file not read.
    cfg = DetectorConfig(min_size=64, max_size=64, fpn_channels=16, pretrained="imagenet", score_thresh=0.0)
    model = build_detector(cfg, 3, load_pretrained=False).eval()
    norms = sum(isinstance(m, FrozenBatchNorm2d) for m in model.modules())
    assert norms > 0
    folded = Predictor(model, mode="full")
    assert folded.model is not model and not any(isinstance(m, FrozenBatchNorm2d) for m in folded.model.modules())
    assert sum(isinstance(m, FrozenBatchNorm2d) for m in model.modules()) == norms  # the caller's model as it was
    plain = Predictor(model, mode="full", fold_bn=False)
    assert plain.model is model
    image = torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(0))
    (a,), (b,) = folded([image]), plain([image])
    # The same detections up to float rounding: compare the best scores (ties below them may reorder).
    torch.testing.assert_close(a["scores"][:20], b["scores"][:20], rtol=1e-4, atol=1e-5)
