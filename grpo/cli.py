"""What the entry points (train.py, evaluate.py) share: every error the product raises on purpose ends in one
line on stderr and exit status 1; anything else is a bug and keeps its traceback.

``HYDRA_FULL_ERROR=1`` shows the full traceback of a product error too (as Hydra does for its own).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from envs.api import BackendError, ServiceFailure
from envs.typed_config import ConfigError
from grpo.checkpoint import CheckpointError
from grpo.trainer import TrainingError

PRODUCT_ERRORS: dict[type[BaseException], str] = {
    ConfigError: "config error",
    CheckpointError: "checkpoint error",
    TrainingError: "training error",
    ServiceFailure: "service failure",
    BackendError: "backend error",
}
"""Errors raised on purpose, with a message that says what to fix, and the label of their line (the first
matching class wins, so ServiceFailure comes before its base BackendError)."""


def one_line(error: BaseException) -> str:
    """``label: message`` on one line; a multi-line message (a service's start-up traceback) keeps its first and
    last lines, which name what failed and why."""
    label = next(label for kind, label in PRODUCT_ERRORS.items() if isinstance(error, kind))
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    message = lines[0] if len(lines) < 2 else f"{lines[0]} ... {lines[-1]}"
    return f"{label}: {message}"


@contextmanager
def one_line_errors() -> Iterator[None]:
    """Turn a product error raised inside the block into one line on stderr and ``sys.exit(1)``."""
    try:
        yield
    except tuple(PRODUCT_ERRORS) as error:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        sys.exit(one_line(error))
