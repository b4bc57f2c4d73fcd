"""flows.large_images: the two runs' params put every tile at its native scale, and a user's directory stops it."""

from __future__ import annotations

from pathlib import Path

import pytest

from flows.ablation import variant_params
from flows.large_images import large_images, variants
from sod.config import Params, from_dict
from sod.errors import DataError
from sod.evaluation.predictor import train_tile
from sod.evaluation.sliced import SlicedPredictor

ROOT = Path(__file__).resolve().parents[2]


def _predictor(overrides: dict) -> tuple[Params, SlicedPredictor]:
    params = from_dict(Params, variant_params(ROOT / "params.yaml", overrides))
    size = (params.detector.min_size, params.detector.max_size)
    return params, SlicedPredictor.from_config(
        lambda xs: [], params.evaluate, input_size=size, train_tile=train_tile(params)
    )


def test_both_runs_see_tiles_at_native_scale_and_the_whole_scene_shrunk() -> None:
    runs = variants(1280, 16, 320)
    assert set(runs) == {"whole", "tiles"}
    for name, overrides in runs.items():
        params, pred = _predictor(overrides)
        assert params.data.embedded.image_size == 1280 and params.evaluate.sliced.tile == 320
        # The whole 1,280 px val scene goes in at 320 / 1280; its 320 px tiles at 1.0, in both runs.
        assert pred.image_scale(1280, 1280) == pytest.approx(0.25), name
        assert pred.tile_scale(1280, 1280) == pytest.approx(1.0), name
    whole, _ = _predictor(runs["whole"])
    tiles, _ = _predictor(runs["tiles"])
    assert not whole.prepare.slice.enabled  # trained on whole scenes, each shrunk 4x
    assert tiles.prepare.slice.enabled and tiles.prepare.slice.tile == 320  # trained on native-scale tiles


def test_a_users_directory_in_the_way_stops_the_flow_before_it_runs(tmp_path: Path) -> None:
    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    mine = tmp_path / "reports" / "large_images" / "results.json"
    mine.parent.mkdir(parents=True)
    mine.write_text("my notes")
    with pytest.raises(DataError):
        large_images.fn(root=str(tmp_path))
    assert mine.read_text() == "my notes"
