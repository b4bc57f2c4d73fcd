"""sod/errors.py: what counts as transient, and the exit codes ``sod`` gives for it (2, 75, a traceback)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from sod import cli
from sod.config import Params
from sod.errors import EXIT_TRANSIENT, EXIT_USAGE, DataError, TransientError, is_transient

REPO = Path(__file__).resolve().parents[1]


def _raised(
    exc: BaseException, cause: BaseException | None = None, context: BaseException | None = None
) -> BaseException:
    """``exc`` raised ``from cause``, or while ``context`` was being handled (the chain a traceback shows)."""
    try:
        if context is None:
            raise exc from cause
        try:
            raise context
        except BaseException:
            raise exc  # noqa: B904  (the implicit context is the point)
    except BaseException as caught:
        return caught


def test_connection_and_timeout_errors_are_transient_and_others_are_not() -> None:
    assert EXIT_TRANSIENT == 75 and EXIT_USAGE == 2
    for exc in (
        TransientError("lock held"),
        ConnectionRefusedError(111, "Connection refused"),
        ConnectionResetError(104, "reset by peer"),
        TimeoutError("read timed out"),
    ):
        assert is_transient(exc), exc
    for exc in (ValueError("Timeout"), FileNotFoundError(2, "No such file", "/data/Timeout/x.png"), RuntimeError()):
        assert not is_transient(exc), exc  # a type decides, not a word in the message


def test_the_chain_a_traceback_shows_is_followed() -> None:
    from urllib.error import URLError

    # urllib raises URLError (an OSError) while handling the socket's error: the context makes it transient.
    assert is_transient(_raised(URLError("unreachable"), context=ConnectionRefusedError(111, "refused")))
    assert is_transient(_raised(RuntimeError("upload failed"), cause=TimeoutError("timed out")))
    assert not is_transient(_raised(RuntimeError("x"), cause=ValueError("y")))
    # `raise ... from None` hides the context, as in the traceback.
    hidden = _raised(RuntimeError("x"), context=TimeoutError())
    hidden.__suppress_context__ = True
    assert not is_transient(hidden)
    # Bad input stays bad input, even when a timeout led to it.
    assert not is_transient(_raised(DataError("/data/x.png: cannot be read"), cause=TimeoutError()))


def _main_raising(monkeypatch: pytest.MonkeyPatch, exc: BaseException) -> int:
    """``sod prepare`` through :func:`sod.cli.main`, with the stage replaced by one that raises ``exc``."""

    def fail(args: argparse.Namespace, params: Params) -> dict:
        raise exc

    monkeypatch.setattr(cli, "_prepare", fail)
    argv = ["prepare", "--params", str(REPO / "params.yaml"), "--out", "o", "--report", "r"]
    return cli.main([*argv, "--sizes-csv", "c", "--sizes-png", "p"])


def test_cli_exits_75_on_a_transient_failure(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    assert _main_raising(monkeypatch, TimeoutError("read timed out")) == EXIT_TRANSIENT
    err = capsys.readouterr().err
    assert err == "sod prepare: transient error, a retry may pass: TimeoutError: read timed out\n"
    assert _main_raising(monkeypatch, ConnectionResetError(104, "Connection reset by peer")) == 75


def test_cli_exits_2_on_bad_input_whatever_the_message(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    assert _main_raising(monkeypatch, DataError("/data/Timeout_Connection/7.png: cannot be read")) == EXIT_USAGE
    assert capsys.readouterr().err == "sod prepare: error: /data/Timeout_Connection/7.png: cannot be read\n"


def test_cli_keeps_the_traceback_of_a_bug(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ZeroDivisionError):  # exit code 1 with its traceback, not a retry
        _main_raising(monkeypatch, ZeroDivisionError("Timeout"))
