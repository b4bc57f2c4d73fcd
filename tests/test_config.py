"""params.yaml loading: unknown keys name the nearest valid one, ranges name the key, overrides work."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from sod.config import Params, flatten, load_params, to_dict
from sod.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "params.yaml"
    p.write_text(text)
    return p


def test_project_params_file_loads_and_lists_every_key() -> None:
    params = load_params(ROOT / "params.yaml")
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    # Every config field is spelled out in params.yaml (no hidden defaults), and nothing else is there.
    assert set(flatten(raw)) == set(flatten(to_dict(params)))


def test_defaults_without_a_file() -> None:
    p = load_params(None)
    assert isinstance(p, Params)
    assert p.data.source == "embedded"


@pytest.mark.parametrize(
    ("text", "words"),
    [
        (
            "augment:\n  copy_past:\n    times: 1\n",
            ["'augment.copy_past'", "did you mean 'augment.copy_paste'"],
        ),
        ("prepair:\n  seed: 1\n", ["'prepair'", "did you mean 'prepare'"]),
        ("prepare:\n  val_fractoin: 0.2\n", ["'prepare.val_fractoin'", "'prepare.val_fraction'"]),
        ("prepare:\n  zzz: 1\n", ["'prepare.zzz'", "valid keys:", "val_fraction"]),
        ("prepare:\n  slice:\n    tiles: 512\n", ["'prepare.slice.tiles'", "'prepare.slice.tile'"]),
    ],
)
def test_unknown_key_names_full_path_and_nearest(tmp_path: Path, text: str, words: list[str]) -> None:
    with pytest.raises(ConfigError) as err:
        load_params(_write(tmp_path, text))
    for w in words:
        assert w in str(err.value)


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("prepare:\n  val_fraction: 1.5\n", ["'prepare.val_fraction' = 1.5", "> 0 and < 1"]),
        ("augment:\n  oversample_ratio: 0.5\n", ["'augment.oversample_ratio'", "≥ 1"]),
        ("augment:\n  copy_paste:\n    times: -1\n", ["'augment.copy_paste.times'", "≥ 0"]),
        ("prepare:\n  on_bad_image: ignore\n", ["'prepare.on_bad_image'", "error | skip"]),
        ("prepare:\n  seed: 1.5\n", ["'prepare.seed'", "integer"]),
        ("prepare:\n  slice:\n    keep_empty: 1.5\n", ["'prepare.slice.keep_empty' = 1.5", "≤ 1"]),
        ("prepare:\n  slice:\n    overlap: 1\n", ["'prepare.slice.overlap'", "< 1"]),
        ("data:\n  embedded:\n    faces: 'yes'\n", ["'data.embedded.faces'", "true or false"]),
        ("data:\n  source: coco\n", ["'data.coco.train_annotations' is required"]),
        ("data:\n  embedded:\n    objects_min: 9\n    objects_max: 3\n", ["objects_min", "exceeds"]),
        ("prepare: 3\n", ["'prepare'", "expected a mapping"]),
        ("- a\n- b\n", ["expected a mapping of sections"]),
        ("a: [\n", ["not valid YAML"]),
    ],
)
def test_bad_values_name_the_key(tmp_path: Path, text: str, words: list[str]) -> None:
    with pytest.raises(ConfigError) as err:
        load_params(_write(tmp_path, text))
    for w in words:
        assert w in str(err.value)


def test_overrides_parse_yaml_values_and_validate(tmp_path: Path) -> None:
    path = _write(tmp_path, "prepare:\n  seed: 1\n")
    p = load_params(path, ["prepare.seed=7", "augment.copy_paste.rotation=0", "data.embedded.digits=[1, 2]"])
    assert p.prepare.seed == 7
    assert p.augment.copy_paste.rotation == 0.0 and isinstance(p.augment.copy_paste.rotation, float)
    assert p.data.embedded.digits == [1, 2]
    with pytest.raises(ConfigError, match="did you mean 'augment.copy_paste.times'"):
        load_params(path, ["augment.copy_paste.time=2"])
    with pytest.raises(ConfigError, match="expected key.path=value"):
        load_params(path, ["prepare.seed"])
    with pytest.raises(ConfigError, match="'prepare.val_fraction'"):
        load_params(path, ["prepare.val_fraction=2"])


def test_missing_params_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="params file not found"):
        load_params(tmp_path / "nope.yaml")
