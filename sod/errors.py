"""The one exception type that the command line turns into a one-line message and exit code 2."""

from __future__ import annotations


class SodError(Exception):
    """A problem with the user's input (params, data, files) that they can fix.

    The message names the bad record, key or path; the CLI prints it without a traceback.
    Programming errors stay ordinary exceptions so they keep their traceback.
    """


class ConfigError(SodError):
    """A params.yaml key that is unknown, mistyped or out of range."""


class DataError(SodError):
    """A dataset record or file that cannot be used as it is."""
