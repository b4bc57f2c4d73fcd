"""Progress for every loop in sod: a tqdm bar on a terminal, a few plain lines in a log.

Under ``dvc repro > log``, a Prefect worker or CI, stderr is not a terminal, and a tqdm bar would write a
carriage-return frame on every step: a log of one unreadable line that grows by a frame per batch. Without a
TTY, :func:`progress_bar` prints one plain line when the loop ends (one per epoch for the training loop),
and one every ``interval_s`` seconds (30 by default) while a long loop runs.

Usage::

    bar = progress_bar(loader, desc="epoch 3", unit="batch", enabled=show)
    for images, targets in bar:
        ...
        bar.set_postfix(loss=f"{loss:.3f}")
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, Generic, Protocol, TextIO, TypeVar

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)

INTERVAL_S = 30.0  # seconds between plain lines while a loop runs without a TTY

# The clock of plain progress lines; tests replace it to step through time.
_clock = time.monotonic


class ProgressBar(Protocol[T_co]):
    """What :func:`progress_bar` returns: iterate over it; ``set_postfix`` adds ``key=value`` to the display."""

    def __iter__(self) -> Iterator[T_co]: ...

    def set_postfix(self, **values: Any) -> Any: ...


def progress_bar(
    iterable: Iterable[T],
    *,
    desc: str,
    total: int | None = None,
    unit: str = "it",
    enabled: bool = True,
    stream: TextIO | None = None,
    interval_s: float = INTERVAL_S,
) -> ProgressBar[T]:
    """Wrap ``iterable`` with the progress display that suits ``stream``.

    Args:
        desc: what the loop does, e.g. ``"epoch 3"``; starts every line.
        total: the number of items; ``len(iterable)`` when None and it has one.
        enabled: False shows nothing (``--quiet``, DDP ranks other than 0).
        stream: where to write; ``sys.stderr`` (at call time) when None.
        interval_s: without a TTY, the least time between two lines while the loop runs.

    Returns:
        A tqdm bar (cleared when the loop ends) when ``stream`` is a terminal; otherwise an iterator that
        writes plain lines ``"<desc>: <n>/<total> <unit>, <s> s, <rate> <unit>/s[, key=value ...]"``.
    """
    stream = sys.stderr if stream is None else stream
    if not enabled:
        return _Silent(iterable)
    if _isatty(stream):
        from tqdm import tqdm

        return tqdm(iterable, desc=desc, total=total, unit=unit, file=stream, leave=False, dynamic_ncols=True)
    return _Lines(iterable, desc, total, unit, stream, interval_s)


def _isatty(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


class _Silent(Generic[T]):
    def __init__(self, iterable: Iterable[T]) -> None:
        self.iterable = iterable

    def __iter__(self) -> Iterator[T]:
        return iter(self.iterable)

    def set_postfix(self, **values: Any) -> None:
        pass


class _Lines(Generic[T]):
    """Plain progress lines: one every ``interval_s`` while the loop runs, one when it ends."""

    def __init__(
        self, iterable: Iterable[T], desc: str, total: int | None, unit: str, stream: TextIO, interval_s: float
    ) -> None:
        self.iterable, self.desc, self.unit, self.stream, self.interval_s = iterable, desc, unit, stream, interval_s
        if total is None and hasattr(iterable, "__len__"):
            total = len(iterable)  # type: ignore[arg-type]
        self.total = total
        self.postfix: dict[str, Any] = {}

    def set_postfix(self, **values: Any) -> None:
        self.postfix = values

    def __iter__(self) -> Iterator[T]:
        start = last = _clock()
        n, written = 0, -1
        for item in self.iterable:
            yield item
            n += 1
            now = _clock()
            if now - last >= self.interval_s:
                self._write(n, now - start)
                last, written = now, n
        if written != n:  # the closing line, unless the last step just wrote it
            self._write(n, _clock() - start)

    def _write(self, n: int, elapsed: float) -> None:
        count = f"{n}/{self.total}" if self.total is not None else str(n)
        rate = f"{n / elapsed:.3g} {self.unit}/s" if elapsed > 0 else f"- {self.unit}/s"
        extra = "".join(f", {k}={v}" for k, v in self.postfix.items())
        self.stream.write(f"{self.desc}: {count} {self.unit}, {elapsed:.1f} s, {rate}{extra}\n")
        self.stream.flush()
