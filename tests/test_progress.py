"""Progress without a TTY: a few plain lines, no carriage returns; a tqdm bar on a terminal; nothing when off."""

from __future__ import annotations

import io
import itertools

import pytest

from sod import progress
from sod.progress import progress_bar


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_without_a_tty_many_steps_give_one_plain_line() -> None:
    log = io.StringIO()  # like `dvc repro > log` or a Prefect worker: isatty() is False
    bar = progress_bar(range(1000), desc="epoch 3", unit="batch", stream=log)
    for i in bar:
        bar.set_postfix(loss=f"{1 / (i + 1):.3f}")
    text = log.getvalue()
    assert "\r" not in text
    (line,) = text.splitlines()
    assert line.startswith("epoch 3: 1000/1000 batch, ") and line.endswith(", loss=0.001")


def test_without_a_tty_a_long_loop_writes_a_line_per_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    # A fake clock: each step takes 10 s, so 12 steps with a 30 s interval write at steps 3, 6, 9, 12.
    ticks = itertools.count(0.0, 10.0)
    monkeypatch.setattr(progress, "_clock", lambda: next(ticks))
    log = io.StringIO()
    assert list(progress_bar(range(12), desc="scenes", unit="img", stream=log, interval_s=30.0)) == list(range(12))
    lines = log.getvalue().splitlines()
    # The closing line is the one of step 12 (written once, not twice).
    assert [ln.split(" ")[1] for ln in lines] == ["3/12", "6/12", "9/12", "12/12"]
    assert lines[0] == "scenes: 3/12 img, 30.0 s, 0.1 img/s"


def test_without_a_tty_an_iterator_without_length_counts_up() -> None:
    log = io.StringIO()
    list(progress_bar(iter("abc"), desc="x", stream=log))
    assert log.getvalue().startswith("x: 3 it, ")


def test_on_a_terminal_it_is_a_tqdm_bar() -> None:
    term = Terminal()
    assert list(progress_bar(range(5), desc="epoch 0", stream=term)) == list(range(5))
    assert "\r" in term.getvalue()  # tqdm redraws in place: fine on a terminal


def test_disabled_writes_nothing() -> None:
    log = Terminal()
    bar = progress_bar(range(5), desc="epoch 0", enabled=False, stream=log)
    for _ in bar:
        bar.set_postfix(loss="1")
    assert log.getvalue() == ""
