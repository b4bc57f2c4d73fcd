"""flows/ablation.py: overrides, isolated workspaces, and the flow on the tiny repo (after the pipeline test)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml

import flows.ablation as ablation_module
from flows.ablation import (
    OWNER,
    ablation,
    clear_results,
    make_workspace,
    reusable,
    thread_budget,
    thread_env,
    variant_params,
)
from sod.errors import ConfigError, DataError
from sod.io import OWNER_MARKER, read_json, read_owner, write_json, write_owner_marker

REPO = Path(__file__).resolve().parents[2]


def test_variant_params_applies_and_validates_overrides(tiny_repo: Path) -> None:
    params = variant_params(tiny_repo / "params.yaml", {"detector.focal.gamma": 0.0, "anchors.method": "default"})
    assert params["detector"]["focal"]["gamma"] == 0.0 and params["anchors"]["method"] == "default"
    assert params["data"]["embedded"]["images"] == 8  # the rest is the file's
    with pytest.raises(ConfigError, match="did you mean 'detector.focal'"):
        variant_params(tiny_repo / "params.yaml", {"detector.focl.gamma": 0.0})


def test_workspace_shares_the_cache_and_leaves_outputs_behind(tiny_repo: Path, tmp_path: Path) -> None:
    # MLflow's SQLite store and its journal (which comes and goes while the flow's own MLflow run writes) stay
    # out. On a copy: the session's tiny repo holds a live mlflow.db that a stray journal would corrupt.
    repo = Path(shutil.copytree(tiny_repo, tmp_path / "repo", ignore=shutil.ignore_patterns("cache", "mlflow.db*")))
    for name in ("mlflow.db", "mlflow.db-journal", "mlflow.db-wal"):
        (repo / name).write_bytes(b"sqlite")
    ws = make_workspace(repo, tmp_path / "ws")
    assert (ws / "dvc.yaml").is_file() and (ws / "sod").is_dir()
    assert not (ws / "data" / "prepared").exists() and not (ws / "reports" / "ablation").exists()
    assert not list(ws.glob("mlflow.db*"))
    config = (ws / ".dvc" / "config.local").read_text()
    assert str(repo / ".dvc" / "cache") in config and "no_scm = true" in config


def test_thread_budget_shares_the_cores() -> None:
    assert thread_budget(2, cores=2) == 1  # the default ablation on a 2-core machine
    assert thread_budget(1, cores=2) == 2
    assert thread_budget(3, cores=8) == 2  # 8 // 3, rounded down: never more threads than cores
    assert thread_budget(4, cores=2) == 1  # more processes than cores still get one thread each
    assert thread_budget(0, cores=4) == 4
    assert thread_env(3) == {"SOD_THREADS": "3", "OMP_NUM_THREADS": "3"}


def _marker(directory: Path) -> dict:
    return json.loads((directory / OWNER_MARKER).read_text())


def test_clear_results_deletes_the_flows_old_rows_only(tmp_path: Path) -> None:
    runs = tmp_path / "ablation"
    runs.mkdir()
    for name in ("old.json", "pipeline.json", ".gitkeep", "notes.txt"):
        (runs / name).write_text("{}")
    write_owner_marker(runs, OWNER, ["old.json", "pipeline.json"])
    clear_results(runs, ["baseline.seed0.json", "pipeline.seed0.json"])
    assert sorted(p.name for p in runs.iterdir()) == [".gitkeep", OWNER_MARKER, "notes.txt"]  # not .json: kept
    assert _marker(runs) == {"stage": OWNER, "files": ["baseline.seed0.json", "pipeline.seed0.json"]}


def test_clear_results_keeps_what_resume_reuses(tmp_path: Path) -> None:
    runs = tmp_path / "ablation"
    runs.mkdir()
    for name in ("old.json", "pipeline.seed0.json"):
        (runs / name).write_text("{}")
    write_owner_marker(runs, OWNER, ["old.json", "pipeline.seed0.json"])
    clear_results(runs, ["pipeline.seed0.json", "pipeline.seed1.json"], keep={"pipeline.seed0.json"})
    assert sorted(p.name for p in runs.glob("*.json")) == ["pipeline.seed0.json"]  # old.json is not this grid's
    assert _marker(runs)["files"] == ["pipeline.seed0.json", "pipeline.seed1.json"]


def test_reusable_needs_the_flows_file_with_the_same_params_and_code(tmp_path: Path) -> None:
    runs = tmp_path / "ablation"
    params = {"train": {"seed": 1}, "detector": {"focal": {"gamma": 2.0}}}
    write_json(runs / "pipeline.seed1.json", {"params": {"train.seed": 1, "detector.focal.gamma": 2.0}, "code": "c1"})
    assert not reusable(runs / "pipeline.seed1.json", params, "c1")  # no marker: not provably the flow's
    write_owner_marker(runs, OWNER, ["pipeline.seed1.json"])
    assert reusable(runs / "pipeline.seed1.json", params, "c1")
    assert not reusable(runs / "pipeline.seed1.json", params, "c2")  # other code
    assert not reusable(runs / "pipeline.seed1.json", {**params, "train": {"seed": 2}}, "c1")  # other params
    assert not reusable(runs / "pipeline.seed2.json", params, "c1")  # no file


def test_clear_results_refuses_a_users_json_and_leaves_it(tmp_path: Path) -> None:
    runs = tmp_path / "ablation"
    runs.mkdir()
    (runs / "mine.json").write_text('{"variant": "my own run"}')
    with pytest.raises(DataError, match=r"ablation holds mine\.json, not written by the ablation flow"):
        clear_results(runs, ["baseline.seed0.json"])
    assert (runs / "mine.json").read_text() == '{"variant": "my own run"}'
    assert not (runs / OWNER_MARKER).exists()  # nothing was changed
    # In a directory the flow owns, a file the user added since is refused too; the flow's own old rows go.
    write_owner_marker(runs, OWNER, ["old.json"])
    (runs / "old.json").write_text("{}")
    with pytest.raises(DataError, match=r"holds mine\.json,"):
        clear_results(runs, ["baseline.seed0.json"])
    # Refused before anything was deleted: the flow's own old row stays too.
    assert (runs / "mine.json").read_text() == '{"variant": "my own run"}' and (runs / "old.json").exists()
    # Another stage's directory is not the flow's to fill.
    write_owner_marker(runs, "report", [])
    (runs / "mine.json").unlink()
    with pytest.raises(DataError, match="belongs to sod stage 'report'"):
        clear_results(runs, ["baseline.seed0.json"])


def test_every_stage_process_of_a_variant_gets_its_share_of_the_cores(
    prefect_server: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The flow on a repo of params.yaml + dvc.yaml, DVC replaced by a recorder: 3 variants, 2 at a time, on 8
    # cores give every child 8 // 2 = 4 threads.
    root = tmp_path / "repo"
    root.mkdir()
    for name in ("params.yaml", "dvc.yaml"):
        shutil.copy(REPO / name, root / name)
    calls: list[tuple[list[str], dict[str, str]]] = []

    def fake_dvc(args: list[str], cwd: Path, env: dict[str, str]) -> str:
        calls.append((args, env))
        if args[:2] == ["repro", "evaluate"]:
            write_json(Path(cwd) / "reports" / "evaluate.json", {"AP": 0.5})
        return ""

    monkeypatch.setattr(ablation_module, "run_dvc", fake_dvc)
    monkeypatch.setattr(ablation_module, "available_cores", lambda: 8)
    monkeypatch.setattr(ablation_module, "WORKERS", 2)  # as the task runner was built (SOD_ABLATION_WORKERS unset)
    monkeypatch.setenv("SOD_TRACKING", "off")
    monkeypatch.setenv("OMP_NUM_THREADS", "16")  # the flow's own setting does not leak into the children
    grid = {"gamma_0": {"detector.focal.gamma": 0.0}}
    ablation(root=str(root), grid=grid, work_dir=str(tmp_path), seeds=[0])
    repros = [env for args, env in calls if args == ["repro", "evaluate"]]
    assert len(repros) == 3
    assert all(env["SOD_THREADS"] == env["OMP_NUM_THREADS"] == "4" for env in repros)
    runs = root / "reports" / "ablation"
    assert read_owner(runs) == OWNER
    results = sorted(p.name for p in runs.glob("*.json"))
    assert results == ["baseline.seed0.json", "gamma_0.seed0.json", "pipeline.seed0.json"]
    # A user's file in the way on the next run: the flow stops before any variant runs, and the file survives.
    (runs / "mine.json").write_text('{"variant": "mine"}')
    calls.clear()
    with pytest.raises(DataError, match="mine.json"):
        ablation(root=str(root), grid=grid, work_dir=str(tmp_path), seeds=[0])
    assert (runs / "mine.json").read_text() == '{"variant": "mine"}' and not calls


def _fake_repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, list[dict]]:
    """A repo of params.yaml + dvc.yaml + one sod module; DVC replaced by a recorder whose AP_small depends on the
    variant's focal gamma and training seed (returns the root and the list of params each repro ran with)."""
    root = tmp_path / "repo"
    (root / "sod").mkdir(parents=True)
    for name in ("params.yaml", "dvc.yaml"):
        shutil.copy(REPO / name, root / name)
    (root / "sod" / "stage.py").write_text("X = 1\n")
    ran: list[dict] = []

    def fake_dvc(args: list[str], cwd: Path, env: dict[str, str]) -> str:
        if args[:2] == ["repro", "evaluate"]:
            params = yaml.safe_load((Path(cwd) / "params.yaml").read_text())
            ran.append(params)
            gamma, seed = params["detector"]["focal"]["gamma"], params["train"]["seed"]
            # pipeline (gamma 2): 0.10, 0.12, 0.14 over seeds 0..2 (mean 0.12, 2 std 0.04); gamma 0: 0.02 lower
            # (inside the noise); gamma 5: 0.3 higher (far outside).
            ap_small = 0.10 + 0.02 * seed + {2.0: 0.0, 0.0: -0.02, 5.0: 0.3}[gamma]
            write_json(Path(cwd) / "reports" / "evaluate.json", {"AP": 0.5, "AP_small": ap_small})
        return ""

    monkeypatch.setattr(ablation_module, "run_dvc", fake_dvc)
    monkeypatch.setattr(ablation_module, "available_cores", lambda: 2)
    monkeypatch.setenv("SOD_TRACKING", "off")
    return root, ran


def test_seeds_run_for_the_references_and_for_levers_inside_the_noise(
    prefect_server: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root, ran = _fake_repo(tmp_path, monkeypatch)
    grid = {"gamma_0": {"detector.focal.gamma": 0.0}, "gamma_5": {"detector.focal.gamma": 5.0}}
    work = tmp_path / "not" / "yet"  # --work-dir need not exist: the flow creates it
    ablation(root=str(root), grid=grid, work_dir=str(work), seeds=[0, 1, 2])
    assert work.is_dir()
    runs = root / "reports" / "ablation"
    # References: 3 seeds each; gamma_0 (0.10 vs 0.12 ± 0.04) is inside the noise: all 3 seeds; gamma_5 once.
    assert sorted(p.name for p in runs.glob("*.json")) == [
        "baseline.seed0.json", "baseline.seed1.json", "baseline.seed2.json",
        "gamma_0.seed0.json", "gamma_0.seed1.json", "gamma_0.seed2.json",
        "gamma_5.seed0.json",
        "pipeline.seed0.json", "pipeline.seed1.json", "pipeline.seed2.json",
    ]  # fmt: skip
    assert len(ran) == 10 and sorted(p["train"]["seed"] for p in ran).count(0) == 4
    row = read_json(runs / "gamma_0.seed2.json")
    assert row["seed"] == 2 and row["params"]["train.seed"] == 2 and row["changed"] == {"detector.focal.gamma": 0.0}
    assert row["evaluate"]["AP_small"] == pytest.approx(0.12) and len(row["code"]) == 64
    assert _marker(runs)["files"] == sorted(p.name for p in runs.glob("*.json"))

    # Resume with the same params and code: nothing reruns. After a code change, everything does.
    ran.clear()
    ablation(root=str(root), grid=grid, work_dir=str(tmp_path), seeds=[0, 1, 2], resume=True)
    assert ran == [] and len(list(runs.glob("*.json"))) == 10
    (root / "sod" / "stage.py").write_text("X = 2\n")
    ablation(root=str(root), grid=grid, work_dir=str(tmp_path), seeds=[0, 1, 2], resume=True)
    assert len(ran) == 10


def test_cli_validates_before_running(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        ablation_module.main(["--variants", "gamma_9"])
    assert exc.value.code == 2 and "unknown lever(s) gamma_9" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        ablation_module.main(["--set", "train.seed"])
    assert "expected KEY=VALUE" in capsys.readouterr().err


@pytest.mark.slow
def test_grid_gives_a_row_per_variant(pipeline_summary: dict, tiny_repo: Path, tmp_path: Path) -> None:
    # After the pipeline test's run (its DVC cache is shared): one lever, focal gamma 0, besides the two
    # references. It differs from `pipeline` in the detector's training only, so the data stages are restored
    # from DVC's run cache.
    grid = {"gamma_0": {"detector.focal.gamma": 0.0}}
    table = Path(ablation(root=str(tiny_repo), grid=grid, work_dir=str(tmp_path), seeds=[0]))
    df = pd.read_csv(table)
    assert list(df["variant"]) == ["baseline", "pipeline", "gamma_0"]
    base, pipe, gamma_0 = (df.iloc[i] for i in range(3))
    # Each row holds its own value of every param that differs between the variants.
    assert list(df["detector.focal.gamma"]) == [2.0, 2.0, 0.0]
    # The baseline's matcher thresholds are torchvision's; the assigner (iou in both) is the same, so no column.
    assert base["detector.fg_iou_thresh"] == 0.5 and pipe["detector.fg_iou_thresh"] == gamma_0["detector.fg_iou_thresh"]
    assert "detector.assigner" not in df.columns
    assert base["augment.copy_paste.times"] == 0 and pipe["augment.copy_paste.times"] == 1
    assert pd.isna(base["sliced_AP"]) and not pd.isna(pipe["sliced_AP"])  # the baseline is full-image only
    assert df["AP"].notna().all()
    # The variant's result records what it changed and the params it ran with.
    result = read_json(tiny_repo / "reports" / "ablation" / "gamma_0.seed0.json")
    assert result["changed"] == {"detector.focal.gamma": 0.0} and result["params"]["detector.focal.gamma"] == 0.0
    plots = tiny_repo / "reports" / "plots" / "ablation"
    assert (plots / "full_vs_sliced.png").is_file() and (plots / "ap_vs_focal_gamma.png").is_file()
    assert sorted(p.name for p in (tiny_repo / "reports" / "ablation").glob("*.json")) == [
        "baseline.seed0.json",
        "gamma_0.seed0.json",
        "pipeline.seed0.json",
    ]
    assert not list(tmp_path.iterdir())  # the workspaces are gone
