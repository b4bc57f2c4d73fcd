"""flows/ablation.py: overrides, isolated workspaces, and the flow on the tiny repo (after the pipeline test)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from flows.ablation import ablation, make_workspace, variant_params
from sod.errors import ConfigError
from sod.io import read_json


def test_variant_params_applies_and_validates_overrides(tiny_repo: Path) -> None:
    params = variant_params(tiny_repo / "params.yaml", {"detector.focal.gamma": 0.0, "anchors.method": "default"})
    assert params["detector"]["focal"]["gamma"] == 0.0 and params["anchors"]["method"] == "default"
    assert params["data"]["embedded"]["images"] == 8  # the rest is the file's
    with pytest.raises(ConfigError, match="did you mean 'detector.focal'"):
        variant_params(tiny_repo / "params.yaml", {"detector.focl.gamma": 0.0})


def test_workspace_shares_the_cache_and_leaves_outputs_behind(tiny_repo: Path, tmp_path: Path) -> None:
    ws = make_workspace(tiny_repo, tmp_path / "ws")
    assert (ws / "dvc.yaml").is_file() and (ws / "sod").is_dir()
    assert not (ws / "data" / "prepared").exists() and not (ws / "reports" / "ablation").exists()
    config = (ws / ".dvc" / "config.local").read_text()
    assert str(tiny_repo / ".dvc" / "cache") in config and "no_scm = true" in config


@pytest.mark.slow
def test_grid_gives_a_row_per_variant(pipeline_summary: dict, tiny_repo: Path, tmp_path: Path) -> None:
    # After the pipeline test's run (its DVC cache is shared): one lever, focal gamma 0, besides the two
    # references. It differs from `pipeline` in the detector's training only, so the data stages are restored
    # from DVC's run cache.
    table = Path(ablation(root=str(tiny_repo), grid={"gamma_0": {"detector.focal.gamma": 0.0}}, work_dir=str(tmp_path)))
    df = pd.read_csv(table)
    assert list(df["variant"]) == ["baseline", "pipeline", "gamma_0"]
    base, pipe, gamma_0 = (df.iloc[i] for i in range(3))
    # Each row holds its own value of every param that differs between the variants.
    assert list(df["detector.focal.gamma"]) == [2.0, 2.0, 0.0]
    assert base["anchors.method"] == "default" and pipe["anchors.method"] == gamma_0["anchors.method"] == "kmeans"
    assert base["augment.copy_paste.times"] == 0 and pipe["augment.copy_paste.times"] == 1
    assert pd.isna(base["sliced_AP"]) and not pd.isna(pipe["sliced_AP"])  # the baseline is full-image only
    assert df["AP"].notna().all()
    # The variant's result records what it changed and the params it ran with.
    result = read_json(tiny_repo / "reports" / "ablation" / "gamma_0.json")
    assert result["changed"] == {"detector.focal.gamma": 0.0} and result["params"]["detector.focal.gamma"] == 0.0
    plots = tiny_repo / "reports" / "plots" / "ablation"
    assert (plots / "full_vs_sliced.png").is_file() and (plots / "ap_vs_focal_gamma.png").is_file()
    assert sorted(p.name for p in (tiny_repo / "reports" / "ablation").glob("*.json")) == [
        "baseline.json",
        "gamma_0.json",
        "pipeline.json",
    ]
    assert not list(tmp_path.iterdir())  # the workspaces are gone
