"""Checkpoints: one format for training and evaluation, written atomically, loaded without running code.

A checkpoint is a dict of tensors and plain values (``torch.load(weights_only=True)`` reads it, so a
malicious file cannot execute code). It holds the policy, optimiser, scheduler and reference policy, the
counters, the RNG states, the state of every world (so a resumed run continues the same episodes), and the
resolved config, from which ``evaluate.py`` rebuilds everything.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import torch

FORMAT_VERSION = 1
_PERIODIC = re.compile(r"iter_(\d+)\.pt$")


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable or from an incompatible run; the message says which and why."""


def save_checkpoint(state: dict[str, Any], path: str | Path) -> Path:
    """Write ``state`` to ``path`` atomically: a temporary file in the same folder, then a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp{os.getpid()}")
    torch.save({"format_version": FORMAT_VERSION, **state}, temporary)
    os.replace(temporary, path)
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`; CheckpointError explains any failure."""
    path = Path(path)
    if not path.is_file():
        there = sorted(p.name for p in path.parent.glob("*.pt")) if path.parent.is_dir() else []
        hint = f"; checkpoints there: {there}" if there else ""
        raise CheckpointError(f"checkpoint {path} does not exist{hint}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # truncated files, pickles with code, other formats
        raise CheckpointError(f"{path} is not a readable checkpoint ({type(error).__name__}: "
                              f"{str(error).splitlines()[0][:200]})") from error
    if not isinstance(state, dict) or "format_version" not in state:
        raise CheckpointError(f"{path} is a torch file but not a grpo-drive checkpoint (no format_version)")
    if state["format_version"] != FORMAT_VERSION:
        raise CheckpointError(f"{path} has checkpoint format {state['format_version']}; this version reads "
                              f"format {FORMAT_VERSION}")
    return state


class CheckpointManager:
    """``<dir>/<run>/last.pt``, ``best.pt`` and periodic ``iter_NNNNNN.pt`` files (the last ``keep_last``)."""

    def __init__(self, directory: str | Path, keep_last: int):
        self.directory = Path(directory)
        self.keep_last = keep_last

    @property
    def last(self) -> Path:
        return self.directory / "last.pt"

    @property
    def best(self) -> Path:
        return self.directory / "best.pt"

    def save_periodic(self, state: dict[str, Any], iteration: int) -> Path:
        path = save_checkpoint(state, self.directory / f"iter_{iteration:06d}.pt")
        periodic = sorted(self.directory.glob("iter_*.pt"), key=lambda p: int(_PERIODIC.search(p.name).group(1)))
        for old in periodic[: max(0, len(periodic) - self.keep_last)]:
            old.unlink()
        return path


def find_resume_checkpoint(resume: str | None, checkpoint_dir: str | Path, run_name: str) -> Path | None:
    """Resolve ``resume``: None -> start fresh; "auto" -> this run's last.pt, else the newest run's last.pt,
    else start fresh; anything else is a path that must exist."""
    if resume is None:
        return None
    if resume == "auto":
        own = Path(checkpoint_dir) / run_name / "last.pt"
        if own.is_file():
            return own
        candidates = sorted(Path(checkpoint_dir).glob("*/last.pt"), key=lambda p: p.stat().st_mtime)
        return candidates[-1] if candidates else None
    path = Path(resume)
    if not path.is_file():
        raise CheckpointError(f"resume={resume}: no such checkpoint file; use resume=auto or a path to a .pt file")
    return path
