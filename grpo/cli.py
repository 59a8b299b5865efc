"""What the entry points (train.py, evaluate.py) share: every error the product raises on purpose ends in one
line on stderr and exit status 1; anything else is a bug and keeps its traceback. An interrupted run (Ctrl-C,
SIGTERM) ends with the command that resumes it and exit status 130, without a traceback.

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
from grpo.progress import Interrupted
from grpo.trainer import TrainingError

INTERRUPTED_EXIT = 130
"""The exit status of a run stopped by SIGINT (128 + 2), as shells report it."""

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


def resume_command(overrides: list[str], run_name: str, checkpoint: str) -> str:
    """The train.py command that continues an interrupted run: its own overrides, its run name, its last.pt."""
    kept = [override for override in overrides if override.split("=", 1)[0].lstrip("+~") not in ("resume", "run_name")]
    return " ".join(["python train.py", *kept, f"run_name={run_name}", f"resume={checkpoint}"])


@contextmanager
def one_line_errors(overrides: list[str] | None = None, run_name: str | None = None) -> Iterator[None]:
    """Turn a product error raised inside the block into one line on stderr and ``sys.exit(1)``; an interrupt
    into the command that resumes the run (from ``overrides`` and ``run_name``) and ``sys.exit(130)``."""
    try:
        yield
    except Interrupted as stop:
        if stop.checkpoint is None:
            print("interrupted during the warm start: nothing to resume yet (the clone is saved as soon as it is "
                  "complete); run the same command again", file=sys.stderr)
        else:
            print(f"{stop}\nresume with:\n  {resume_command(overrides or [], run_name or '', str(stop.checkpoint))}",
                  file=sys.stderr)
        sys.exit(INTERRUPTED_EXIT)
    except KeyboardInterrupt:  # the second Ctrl-C: stopped at once, services closed on the way out
        print("interrupted", file=sys.stderr)
        sys.exit(INTERRUPTED_EXIT)
    except tuple(PRODUCT_ERRORS) as error:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        sys.exit(one_line(error))
