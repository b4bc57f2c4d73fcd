"""The CPU thread budget: read from the environment, applied and restored by a context manager, and applied
by the ``sod`` command around every stage (with ``--threads`` and ``train.threads`` taking precedence)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from sod.cli import main
from sod.errors import ConfigError
from sod.runtime import thread_budget, torch_threads


@pytest.fixture(autouse=True)
def _one_thread(one_thread: None) -> None:
    """Every test starts at one thread, so a count the code under test leaves behind is visible."""


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({"SOD_THREADS": "3", "OMP_NUM_THREADS": "5"}, 3),
        ({"OMP_NUM_THREADS": "5"}, 5),
        ({"SOD_THREADS": " ", "OMP_NUM_THREADS": "2"}, 2),  # blank counts as unset
        ({}, None),
    ],
)
def test_budget_comes_from_sod_threads_then_omp(environ: dict[str, str], expected: int | None) -> None:
    assert thread_budget(environ) == expected


@pytest.mark.parametrize(
    ("environ", "named"),
    [
        ({"SOD_THREADS": "abc"}, "SOD_THREADS"),
        ({"SOD_THREADS": "0", "OMP_NUM_THREADS": "2"}, "SOD_THREADS"),
        ({"SOD_THREADS": "1.5"}, "SOD_THREADS"),
        ({"OMP_NUM_THREADS": "-1"}, "OMP_NUM_THREADS"),
    ],
)
def test_an_invalid_budget_is_an_error_naming_the_variable(environ: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError, match=f"^environment variable {named} must be an integer ≥ 1"):
        thread_budget(environ)


def test_torch_threads_sets_and_restores() -> None:
    with torch_threads(3):
        assert torch.get_num_threads() == 3
    assert torch.get_num_threads() == 1
    with pytest.raises(RuntimeError), torch_threads(2):
        raise RuntimeError("a failing stage")
    assert torch.get_num_threads() == 1
    with torch_threads(None):
        assert torch.get_num_threads() == 1
    with pytest.raises(ValueError, match="at least 1"), torch_threads(0):
        raise AssertionError("torch_threads(0) must refuse before its block runs")
    assert torch.get_num_threads() == 1


# ----------------------------------------------------------------------- the budget around a stage command
def _anchors_args(tmp_path: Path) -> list[str]:
    return ["--train", str(tmp_path / "train.json"), "--out", str(tmp_path / "a.json"),
            "--report", str(tmp_path / "r.json"), "--plot", str(tmp_path / "p.png")]  # fmt: skip


@pytest.fixture
def seen(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Replace the anchors and train_detector stages by stubs that record the thread count they run with."""
    from sod.stages import anchors, train_detector

    counts: list[int] = []

    def stub(*args: Any, **kwargs: Any) -> dict[str, Any]:
        counts.append(torch.get_num_threads())
        return {}

    monkeypatch.setattr(anchors, "run", stub)
    monkeypatch.setattr(train_detector, "run", stub)
    monkeypatch.delenv("SOD_THREADS", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    return counts


def test_a_stage_runs_under_the_environment_budget_and_restores_it(
    seen: list[int], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert main(["anchors", "-q", *_anchors_args(tmp_path)]) == 0  # no budget: torch's count is left alone
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert main(["anchors", "-q", *_anchors_args(tmp_path)]) == 0
    monkeypatch.setenv("SOD_THREADS", "3")
    assert main(["anchors", "-q", *_anchors_args(tmp_path)]) == 0
    assert main(["anchors", "-q", "--threads", "4", *_anchors_args(tmp_path)]) == 0
    assert seen == [1, 2, 3, 4]
    assert torch.get_num_threads() == 1


def test_train_threads_overrides_the_environment_for_train_detector(
    seen: list[int], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SOD_THREADS", "3")
    args = ["--train", "t.json", "--anchors", "a.json", "--out", "d.pt", "--report", "r.json",
            "--loss-csv", "l.csv", "--checkpoint-dir", str(tmp_path)]  # fmt: skip
    assert main(["train-detector", "-q", *args]) == 0  # params.yaml: train.threads 0, the budget applies
    assert main(["train-detector", "-q", "--set", "train.threads=2", *args]) == 0
    assert main(["train-detector", "-q", "--set", "train.threads=2", "--threads", "4", *args]) == 0
    # train.threads is the detector's own: other stages keep the environment's budget.
    assert main(["anchors", "-q", "--set", "train.threads=2", *_anchors_args(tmp_path)]) == 0
    assert seen == [3, 2, 4, 3]


def test_an_invalid_budget_is_a_one_line_error(
    seen: list[int], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SOD_THREADS", "abc")
    assert main(["anchors", "-q", *_anchors_args(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("sod anchors: error: environment variable SOD_THREADS")
    with pytest.raises(SystemExit) as exit_info:
        main(["anchors", "--threads", "0", *_anchors_args(tmp_path)])
    assert exit_info.value.code == 2 and "--threads: must be an integer ≥ 1" in capsys.readouterr().err
    assert seen == []
