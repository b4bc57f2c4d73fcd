"""How many CPU threads a stage process may use, and a context manager that applies a thread count.

Several torch processes that each take every core fight over them: on a 2-core machine a second training
process slowed ``train_sr`` about 50×. So every stage runs under a budget: ``SOD_THREADS`` (an integer ≥ 1),
else ``OMP_NUM_THREADS`` (which OpenMP and BLAS read too, so a flow that starts N processes at once sets both to
``cores // N`` for each child), else torch's default (one thread per core). The ``sod`` command applies it
around the stage call; ``--threads`` and, for ``train_detector``, ``train.threads > 0`` take precedence.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import torch

from sod.errors import ConfigError

THREADS_ENV = "SOD_THREADS"
# Read in this order; the first one set (and not blank) gives the budget.
BUDGET_ENVS = (THREADS_ENV, "OMP_NUM_THREADS")


def thread_budget(environ: Mapping[str, str] | None = None) -> int | None:
    """The CPU thread budget from the environment, or None to keep torch's default.

    Args:
        environ: the environment to read (default: ``os.environ``).

    Raises:
        ConfigError: the first variable set is not an integer ≥ 1 (the message names it).
    """
    env = os.environ if environ is None else environ
    for name in BUDGET_ENVS:
        value = env.get(name, "").strip()
        if not value:
            continue
        try:
            threads = int(value)
        except ValueError:
            threads = 0
        if threads < 1:
            raise ConfigError(f"environment variable {name} must be an integer ≥ 1 (CPU threads), got {value!r}")
        return threads
    return None


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run the block with ``n`` torch intra-op threads (None: leave the count alone), then restore the count.

    Raises:
        ValueError: ``n`` < 1.
    """
    if n is not None and n < 1:
        raise ValueError(f"thread count must be at least 1, got {n}")
    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
