"""The exceptions the command line turns into a one-line message and an exit code a caller can act on.

* :class:`SodError` (bad params, data, files): exit code 2 (:data:`EXIT_USAGE`); rerunning will not help.
* a transient failure (:func:`is_transient`: the network, a timeout, a lock): exit code 75
  (:data:`EXIT_TRANSIENT`, ``EX_TEMPFAIL`` of sysexits.h); the same command may pass when retried.
  ``flows/pipeline.py`` retries a stage on this code only (and when a signal killed it), never because of
  what the stage printed.
"""

from __future__ import annotations

EXIT_USAGE = 2
EXIT_TRANSIENT = 75  # EX_TEMPFAIL: "temporary failure, the user is invited to retry"


class SodError(Exception):
    """A problem with the user's input (params, data, files) that they can fix.

    The message names the bad record, key or path; the CLI prints it without a traceback.
    Programming errors stay ordinary exceptions so they keep their traceback.
    """


class ConfigError(SodError):
    """A params.yaml key that is unknown, mistyped or out of range."""


class DataError(SodError):
    """A dataset record or file that cannot be used as it is."""


class TransientError(RuntimeError):
    """A failure that may pass when the same command is retried unchanged (a lock held, a peer gone, a timeout).

    The CLI exits with :data:`EXIT_TRANSIENT`; the pipeline flow raises it for a stage worth a retry.
    """


# What counts as transient besides TransientError itself: OSError subclasses that say the other side (a
# server, a peer process, a network file system) did not answer or went away, not that the input is bad.
# BrokenPipeError, ConnectionResetError and ConnectionRefusedError are ConnectionErrors; socket.timeout is
# TimeoutError.
_TRANSIENT_TYPES: tuple[type[BaseException], ...] = (TransientError, ConnectionError, TimeoutError)


def is_transient(exc: BaseException) -> bool:
    """True when ``exc``, or an exception it was raised from, is transient (see :data:`_TRANSIENT_TYPES`).

    Follows the chain a traceback shows: ``__cause__`` (``raise ... from``), else ``__context__`` unless
    suppressed (``from None``), so a ``URLError`` raised while handling a ``ConnectionRefusedError`` counts.
    A :class:`SodError` anywhere in the chain wins: the input is bad whatever else went wrong on the way.
    """
    seen: set[int] = set()
    transient = False
    node: BaseException | None = exc
    while node is not None and id(node) not in seen:
        seen.add(id(node))
        if isinstance(node, SodError):
            return False
        transient = transient or isinstance(node, _TRANSIENT_TYPES)
        node = node.__cause__ or (None if node.__suppress_context__ else node.__context__)
    return transient
