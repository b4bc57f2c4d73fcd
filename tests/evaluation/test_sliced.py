"""Sliced inference: tile layout, the tile scale rule, box mapping, batching and the merge of cut objects."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from sod.config import EvaluateConfig, SlicedConfig
from sod.evaluation.sliced import (
    OBJECTNESS,
    OBJECTNESS_BOXES,
    SlicedPredictor,
    _tiles_with_small_boxes,
    full_image_factor,
    merge_predictions,
    tile_grid,
)


def _fixed_box(images: list[Tensor]) -> list[dict[str, Tensor]]:
    """A 'detector' that finds one box at (1, 2, 5, 6) in every input."""
    return [
        {"boxes": torch.tensor([[1.0, 2.0, 5.0, 6.0]]), "scores": torch.tensor([0.9]), "labels": torch.tensor([1])}
        for _ in images
    ]


def _bright_box(images: list[Tensor]) -> list[dict[str, Tensor]]:
    """A 'detector' that boxes the bright pixels of each input; bigger (less cut) boxes score higher."""
    outs = []
    for im in images:
        ys, xs = torch.nonzero(im[0] > 0.5, as_tuple=True)
        if len(xs) == 0:
            outs.append(
                {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.int64)}
            )
            continue
        box = torch.stack([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]).float()
        area = float((box[2] - box[0]) * (box[3] - box[1]))
        outs.append({"boxes": box[None], "scores": torch.tensor([0.5 + area / 10_000]), "labels": torch.tensor([3])})
    return outs


def test_tiles_cover_the_image_with_the_requested_overlap() -> None:
    tiles = tile_grid(100, 230, tile=64, overlap=0.25)
    # step = 64 * 0.75 = 48: x origins 0, 48, 96, 144 and the last aligned to the border at 230 - 64 = 166;
    # y origins 0 and 100 - 64 = 36.
    assert sorted(set(tiles[:, 0].tolist())) == [0, 48, 96, 144, 166]
    assert sorted(set(tiles[:, 1].tolist())) == [0, 36]
    assert len(tiles) == 10
    assert ((tiles[:, 2] - tiles[:, 0]) == 64).all() and ((tiles[:, 3] - tiles[:, 1]) == 64).all()
    covered = torch.zeros(100, 230, dtype=torch.bool)
    for x0, y0, x1, y1 in tiles.tolist():
        covered[y0:y1, x0:x1] = True
    assert covered.all()
    # Neighbours share at least 25% of a tile (16 px).
    xs = sorted(set(tiles[:, 0].tolist()))
    assert all(64 - (b - a) >= 16 for a, b in zip(xs, xs[1:], strict=False))

    # An image smaller than the tile is one tile, clipped to the image.
    assert tile_grid(50, 40, tile=64, overlap=0.2).tolist() == [[0, 0, 40, 50]]


def test_tile_boxes_shift_back_by_the_tile_origin() -> None:
    image = torch.zeros(3, 100, 230)
    pred = SlicedPredictor(_fixed_box, tile=64, overlap=0.25, include_full=False, batch_size=3)
    (passes,) = pred.passes([image])
    tiles = tile_grid(100, 230, 64, 0.25)
    assert len(passes) == len(tiles)
    for p, (x0, y0, _, _) in zip(passes, tiles.tolist(), strict=True):
        assert p["boxes"].tolist() == [[1 + x0, 2 + y0, 5 + x0, 6 + y0]]


def test_upscaled_tiles_and_pyramid_scales_map_back() -> None:
    seen: list[tuple[int, int]] = []

    def centre_box(images: list[Tensor]) -> list[dict[str, Tensor]]:
        """Boxes the middle half of each input, in the input's own (resized) pixels."""
        outs = []
        for im in images:
            h, w = im.shape[-2:]
            seen.append((h, w))
            box = torch.tensor([[0.25 * w, 0.25 * h, 0.75 * w, 0.75 * h]])
            outs.append({"boxes": box, "scores": torch.tensor([0.9]), "labels": torch.tensor([1])})
        return outs

    image = torch.zeros(3, 96, 128)
    pred = SlicedPredictor(centre_box, tile=64, overlap=0.5, upscale=2.0, scales=(1.0, 0.5), batch_size=4)
    (passes,) = pred.passes([image])
    # Full image at scale 1 and 0.5, then 3 x 2 tiles of 64 px each upscaled to 128 px.
    assert seen == [(96, 128), (48, 64)] + [(128, 128)] * 6
    for p in passes[:2]:  # both pyramid levels map back to the middle of the whole image
        assert p["boxes"][0].tolist() == pytest.approx([32, 24, 96, 72])
    for p, (x0, y0, _, _) in zip(passes[2:], tile_grid(96, 128, 64, 0.5).tolist(), strict=True):
        assert p["boxes"][0].tolist() == pytest.approx([x0 + 16, y0 + 16, x0 + 48, y0 + 48])


class _CentreBox:
    """A 'detector' that records each input's (h, w) and boxes the middle half of it, in its own pixels."""

    def __init__(self) -> None:
        self.seen: list[tuple[int, int]] = []

    def __call__(self, images: list[Tensor]) -> list[dict[str, Tensor]]:
        outs = []
        for im in images:
            h, w = im.shape[-2:]
            self.seen.append((h, w))
            box = torch.tensor([[0.25 * w, 0.25 * h, 0.75 * w, 0.75 * h]])
            outs.append({"boxes": box, "scores": torch.tensor([0.9]), "labels": torch.tensor([1])})
        return outs


@pytest.mark.parametrize(
    ("height", "width", "min_size", "max_size", "factor"),
    [
        (320, 320, 320, 320, 1.0),  # the embedded scenes: no resize
        (480, 640, 320, 320, 0.5),  # short side → 320 is 2/3, but the long side caps it: 320 / 640
        (100, 200, 400, 1000, 4.0),  # short side 100 → 400; the long side 800 stays under 1000
        (100, 400, 200, 600, 1.5),  # short side wants 2, the long side caps at 600 / 400
        (512, 256, 256, 1024, 1.0),  # portrait: the short side is the width
    ],
)
def test_full_image_factor_is_torchvisions_rule(
    height: int, width: int, min_size: int, max_size: int, factor: float
) -> None:
    assert full_image_factor(height, width, min_size, max_size) == pytest.approx(factor)


def test_default_tile_scale_is_the_full_images_factor() -> None:
    # A 320 px image, detector min_size = max_size = 320: factor 1, so 160 px tiles run at 160 px.
    detector = _CentreBox()
    pred = SlicedPredictor(detector, tile=160, overlap=0.25, input_size=(320, 320))
    assert pred.upscale is None and pred.tile_scale(320, 320) == 1.0
    (passes,) = pred.passes([torch.zeros(3, 320, 320)])
    tiles = tile_grid(320, 320, 160, 0.25)  # step 120: origins 0, 120, 160 per axis → 9 tiles
    assert len(tiles) == 9
    assert detector.seen == [(320, 320)] + [(160, 160)] * 9
    for p, (x0, y0, _, _) in zip(passes[1:], tiles.tolist(), strict=True):
        assert p["boxes"][0].tolist() == pytest.approx([x0 + 40, y0 + 40, x0 + 120, y0 + 120])

    # An explicit upscale is relative to that factor: today's 2.0 shows the same tiles at 320 px.
    detector = _CentreBox()
    SlicedPredictor(detector, tile=160, overlap=0.25, upscale=2.0, input_size=(320, 320)).passes(
        [torch.zeros(3, 320, 320)]
    )
    assert detector.seen == [(320, 320)] + [(320, 320)] * 9


def test_tiles_of_a_large_image_shrink_with_the_full_image() -> None:
    # 480 x 640 at min_size = max_size = 320: the detector shrinks the full image by 0.5, so a 160 px tile
    # runs at 80 px and its objects keep the pixel size they have in the full-image pass.
    detector = _CentreBox()
    pred = SlicedPredictor(detector, tile=160, overlap=0.0, input_size=(320, 320), batch_size=16)
    (passes,) = pred.passes([torch.zeros(3, 480, 640)])
    assert pred.tile_scale(480, 640) == 0.5
    assert detector.seen == [(240, 320)] + [(80, 80)] * 12  # 3 rows x 4 columns of tiles
    assert passes[0]["boxes"][0].tolist() == pytest.approx([160, 120, 480, 360])  # back in image pixels
    assert passes[1]["boxes"][0].tolist() == pytest.approx([40, 40, 120, 120])


def test_tiles_of_an_image_larger_than_the_training_tiles_run_at_their_scale() -> None:
    # Trained on 320 px tiles (prepare.slice.tile = 320) at min_size = max_size = 320: training tiles ran at
    # factor 1. A 480 x 640 val image is larger than that tile, so its 160 px tiles run at 160 px (factor 1),
    # not at the full image's 0.5; the full-image pass still shrinks by 0.5.
    detector = _CentreBox()
    pred = SlicedPredictor(detector, tile=160, overlap=0.0, input_size=(320, 320), batch_size=16, train_tile=320)
    assert pred.tile_scale(480, 640) == 1.0 and pred.image_scale(480, 640) == 0.5
    (passes,) = pred.passes([torch.zeros(3, 480, 640)])
    assert detector.seen == [(240, 320)] + [(160, 160)] * 12
    assert passes[1]["boxes"][0].tolist() == pytest.approx([40, 40, 120, 120])  # tile pixels = image pixels
    # 4,000 x 3,000 trained on 640 px tiles: tiles at 320 / 640 = 0.5, where the full image's factor is
    # 320 / 4,000 = 0.08; an image no larger than the training tile keeps the full image's factor.
    pred = SlicedPredictor(detector, tile=160, input_size=(320, 320), train_tile=640)
    assert pred.tile_scale(3000, 4000) == 0.5 and pred.image_scale(3000, 4000) == pytest.approx(0.08)
    assert pred.tile_scale(480, 640) == 0.5 == pred.image_scale(480, 640)
    # A short side below the training tile: the training tile was that short too (300 x 640 → min(320/300,
    # 320/640) = 0.5); upscale still multiplies.
    assert SlicedPredictor(detector, input_size=(320, 320), train_tile=640, upscale=2.0).tile_scale(300, 2000) == 1.0
    with pytest.raises(ValueError, match="train_tile"):
        SlicedPredictor(detector, train_tile=0)


def test_config_default_upscale_keeps_tiles_at_model_scale() -> None:
    # The evaluate stage hands images already at the detector's scale (input_size None): factor 1.
    cfg = EvaluateConfig()
    assert cfg.sliced.upscale is None
    detector = _CentreBox()
    SlicedPredictor.from_config(detector, cfg, sliced=True).passes([torch.zeros(3, 320, 320)])
    assert detector.seen == [(320, 320)] + [(160, 160)] * 9


def test_tiles_are_batched() -> None:
    calls: list[int] = []

    def counting(images: list[Tensor]) -> list[dict[str, Tensor]]:
        calls.append(len(images))
        return _fixed_box(images)

    images = [torch.zeros(3, 100, 230), torch.zeros(3, 100, 230)]
    pred = SlicedPredictor(counting, tile=64, overlap=0.25, batch_size=4)
    out = pred(images)
    # Per image 1 full-image pass + 10 tiles; 22 inputs of both images pooled into batches of 4.
    assert calls == [4, 4, 4, 4, 4, 2]
    assert len(out) == 2


def test_memory_is_a_tile_batch_at_model_scale_never_the_whole_image_at_it() -> None:
    # A 1,200 x 1,600 image trained on 160 px tiles at native scale (input 160): at model scale the whole image
    # would be 1.9 M px. Every call gets at most batch_size inputs, each the full image shrunk to the input size
    # or one tile at its scale, so the largest call holds batch_size x 160² px, whatever the image's size.
    sizes: list[list[tuple[int, int]]] = []

    def recording(images: list[Tensor]) -> list[dict[str, Tensor]]:
        sizes.append([tuple(im.shape[-2:]) for im in images])
        return _fixed_box(images)

    image = torch.zeros(3, 1200, 1600)
    pred = SlicedPredictor(recording, tile=160, overlap=0.25, batch_size=8, input_size=(160, 160), train_tile=160)
    pred([image])
    assert sizes[0][0] == (120, 160)  # the full-image pass, at 0.1
    assert all(len(call) <= 8 for call in sizes)
    assert {s for call in sizes for s in call} == {(120, 160), (160, 160)}  # edge tiles padded to the tile shape
    assert sum(len(call) for call in sizes) == 1 + len(tile_grid(1200, 1600, 160, 0.25))
    assert max(sum(h * w for h, w in call) for call in sizes) <= 8 * 160 * 160 < 1200 * 1600


@pytest.mark.parametrize("include_full", [True, False])
@pytest.mark.parametrize("method", ["nms", "greedy_nmm"])
def test_object_cut_by_a_tile_border_is_found_once(method: str, include_full: bool) -> None:
    # Tiles of 60 px at 50% overlap start at x = 0, 30, 40. The object spans x 52..72: the first tile cuts
    # it (sees x 52..60), the other two hold it whole.
    image = torch.zeros(3, 100, 100)
    image[:, 10:30, 52:72] = 1.0
    pred = SlicedPredictor(
        _bright_box, tile=60, overlap=0.5, merge=method, match="ios", match_thresh=0.5, include_full=include_full
    )
    (passes,) = pred.passes([image])
    boxes = torch.cat([p["boxes"] for p in passes]).tolist()
    assert [52, 10, 60, 30] in boxes and [52, 10, 72, 30] in boxes  # unmerged: a part and the whole
    (out,) = pred([image])
    assert out["boxes"].tolist() == [[52, 10, 72, 30]]
    assert out["labels"].tolist() == [3]

    # The part has IoU 160 / 400 = 0.4 with the whole: IoU matching at 0.5 would count the object twice.
    iou = SlicedPredictor(_bright_box, tile=60, overlap=0.5, merge="nms", match="iou", include_full=include_full)
    assert len(iou([image])[0]["boxes"]) == 2


def test_merge_is_class_aware_and_greedy_nmm_takes_the_union() -> None:
    boxes = torch.tensor(
        [
            [0, 0, 10, 10],  # A, class 0
            [0, 0, 10, 10],  # B, class 1: same place, other class → never merged with A
            [0, 0, 5, 10],  # C, class 0: inside A (IoS 1, IoU 0.5)
            [8, 0, 20, 10],  # D, class 0: IoS with A 20 / 100 = 0.2, with E 40 / 100 = 0.4
            [2, 0, 12, 10],  # E, class 0: IoU with A 80 / 120 = 0.67
        ],
        dtype=torch.float32,
    )
    scores = torch.tensor([0.9, 0.8, 0.7, 0.95, 0.6])
    labels = torch.tensor([0, 1, 0, 0, 0])

    # Greedy by score: D keeps itself; A absorbs C and E (union 0..12); B stands alone.
    out = merge_predictions(boxes, scores, labels, "greedy_nmm", "ios", 0.5)
    assert out["boxes"].tolist() == [[8, 0, 20, 10], [0, 0, 12, 10], [0, 0, 10, 10]]
    assert out["scores"].tolist() == pytest.approx([0.95, 0.9, 0.8])
    assert out["labels"].tolist() == [0, 0, 1]

    out = merge_predictions(boxes, scores, labels, "nms", "ios", 0.5)
    assert out["boxes"].tolist() == [[8, 0, 20, 10], [0, 0, 10, 10], [0, 0, 10, 10]]

    # batched_nms drops IoU > 0.5: E (0.67) goes, C (exactly 0.5) stays.
    out = merge_predictions(boxes, scores, labels, "nms", "iou", 0.5)
    assert out["scores"].tolist() == pytest.approx([0.95, 0.9, 0.8, 0.7])

    empty = merge_predictions(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.int64))
    assert empty["boxes"].shape == (0, 4)


def test_from_config_and_max_dets() -> None:
    cfg = EvaluateConfig(max_dets=2, scales=[1.0], sliced=SlicedConfig(tile=64, overlap=0.25, batch_size=5))
    pred = SlicedPredictor.from_config(_fixed_box, cfg)
    assert (pred.tile, pred.overlap, pred.batch_size, pred.max_dets) == (64, 0.25, 5, 2)
    # 11 passes: the full image's box and the first tile's coincide (merged), the other 9 tiles' boxes lie
    # apart → 10 boxes, of which max_dets keeps 2.
    (out,) = pred([torch.zeros(3, 100, 230)])
    assert len(out["boxes"]) == 2
    # Without slicing and with one scale, the detector's own output comes back untouched.
    plain = SlicedPredictor.from_config(_fixed_box, cfg, sliced=False)
    assert plain([torch.zeros(3, 100, 230)])[0]["boxes"].tolist() == [[1, 2, 5, 6]]


def test_select_small_runs_only_tiles_with_small_candidates() -> None:
    calls: list[int] = []

    def counting(images: list[Tensor]) -> list[dict[str, Tensor]]:
        calls.append(len(images))
        return _fixed_box(images)

    image = torch.zeros(3, 100, 230)
    # The full-image pass finds one small box centred at (3, 4): only the tile at the origin holds it.
    pred = SlicedPredictor(counting, tile=64, overlap=0.25, select="small", include_full=False)
    (passes,) = pred.passes([image])
    assert calls == [1, 1]  # the probe, then 1 of the 10 tiles
    assert [p["boxes"].tolist() for p in passes] == [[[1, 2, 5, 6]]]  # the probe itself is left out

    # A probe box below select_score or not small selects no tile: nothing to merge, an empty prediction.
    pred = SlicedPredictor(counting, tile=64, overlap=0.25, select="small", select_score=0.95, include_full=False)
    (out,) = pred([image])
    assert out["boxes"].shape == (0, 4) and out["labels"].dtype == torch.int64


def test_select_small_also_opens_the_tiles_of_hot_objectness_cells() -> None:
    """A probe that carries its finest level's cells (Predictor's RetinaNet hook): a cell scoring ≥ select_score
    opens the tile holding its centre even where the probe boxed nothing; the cells never reach the output."""
    probe_calls: list[int] = []
    tile_calls: list[Tensor] = []

    def probe(images: list[Tensor]) -> list[dict[str, Tensor]]:
        probe_calls.append(len(images))
        # No box; two cells of the 100 x 230 image (scale 1): centre (150, 42) hot, centre (10, 10) cold.
        cells = torch.tensor([[148.0, 40.0, 152.0, 44.0], [8.0, 8.0, 12.0, 12.0]])
        empty = {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.int64)}
        return [empty | {OBJECTNESS_BOXES: cells, OBJECTNESS: torch.tensor([0.5, 0.1])} for _ in images]

    def tiles(images: list[Tensor]) -> list[dict[str, Tensor]]:
        tile_calls.extend(images)
        return _fixed_box(images)

    image = torch.arange(100 * 230, dtype=torch.float32).view(1, 100, 230).expand(3, -1, -1)
    pred = SlicedPredictor(tiles, tile=64, overlap=0.25, select="small", select_score=0.3, probe_fn=probe)
    (out,) = pred([image])
    assert probe_calls == [1]
    # Tiles: step floor(64 * 0.75) = 48, x origins 0, 48, 96, 144, 166 and y origins 0, 36. (150, 42) lies in
    # x 96–160 (centre 128, 22 px off) and 144–208 (centre 176, 26 px off), and in y 0–64 (centre 32, 10 px off)
    # and 36–100 (centre 68, 26 px off): four tiles hold it; the nearest centre (Chebyshev) is tile (96, 0),
    # max(22, 10) = 22 against 26, 26 and 26. Only that one runs.
    grid = tile_grid(100, 230, 64, 0.25)
    holds = [(x0 <= 150 < x1) and (y0 <= 42 < y1) for x0, y0, x1, y1 in grid.tolist()]
    assert sum(holds) == 4 and len(tile_calls) == 1
    assert int(tile_calls[0][0, 0, 0]) == 0 * 230 + 96  # the tile's top-left pixel: x 96, y 0
    assert set(out) == {"boxes", "scores", "labels"}
    # Above the hot cell's score: no tile; the probe (no boxes) is all there is.
    tile_calls.clear()
    SlicedPredictor(tiles, tile=64, overlap=0.25, select="small", select_score=0.6, probe_fn=probe)([image])
    assert tile_calls == []


def test_tile_selection_counts_every_hot_cell_of_a_probe_with_thousands_of_cells() -> None:
    # 5,000 cells (the selection runs them in chunks of 4,096): only the last one is hot, centre (250, 10).
    tiles = torch.tensor([[0, 0, 100, 100], [200, 0, 300, 100]])
    cells = torch.tensor([[0.0, 0.0, 2.0, 2.0]]).repeat(5000, 1)
    cells[-1] = torch.tensor([248.0, 8.0, 252.0, 12.0])
    hot = torch.zeros(5000)
    hot[-1] = 0.9
    empty = {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.int64)}
    probe = empty | {OBJECTNESS_BOXES: cells, OBJECTNESS: hot}
    assert _tiles_with_small_boxes(tiles, [probe], 0.5).tolist() == [False, True]
    assert _tiles_with_small_boxes(tiles, [probe], 0.0).tolist() == [True, True]  # every cell counts at 0


def test_each_candidate_opens_the_one_tile_that_holds_it_farthest_from_its_border() -> None:
    # Three tiles of 100 px overlapping by 50 along x (centres x 50, 100, 150), one row (centres y 50).
    tiles = torch.tensor([[0, 0, 100, 100], [50, 0, 150, 100], [100, 0, 200, 100]])
    empty = {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.int64)}

    def select(*centres: tuple[float, float]) -> list[bool]:
        cells = torch.tensor([[x - 1, y - 1, x + 1, y + 1] for x, y in centres])
        probe = empty | {OBJECTNESS_BOXES: cells, OBJECTNESS: torch.ones(len(centres))}
        return _tiles_with_small_boxes(tiles, [probe], 0.5).tolist()

    # x 60: tiles 0 (10 px off its centre) and 1 (40 px off) hold it; Chebyshev with y 50 (0 off): tile 0.
    assert select((60.0, 50.0)) == [True, False, False]
    # x 90: tile 0 (40 off), tile 1 (10 off): tile 1. y 95 is 45 off every centre: max(40, 45) = max(10, 45) ties,
    # and the first in grid order wins.
    assert select((90.0, 50.0)) == [False, True, False]
    assert select((90.0, 95.0)) == [True, False, False]
    # x 160: only tile 2 holds it. Several candidates: the union of their tiles.
    assert select((160.0, 50.0), (60.0, 50.0)) == [True, False, True]
    # A small probe box counts like a cell: centre (125, 50), 25 off tiles 1 and 2: the first, tile 1.
    box = {
        "boxes": torch.tensor([[120.0, 45.0, 130.0, 55.0]]),
        "scores": torch.tensor([0.9]),
        "labels": torch.tensor([1]),
    }
    assert _tiles_with_small_boxes(tiles, [box], 0.5).tolist() == [False, True, False]
