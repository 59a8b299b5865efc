"""Checkpoints: one format for training and evaluation, written atomically, loaded without running code.

A checkpoint is a dict of tensors and plain values (``torch.load(weights_only=True)`` reads it, so a
malicious file cannot execute code). It holds the policy, optimiser, scheduler and reference policy, the
counters, the RNG states, the state of every world (so a resumed run continues the same episodes), and the
resolved config, from which ``evaluate.py`` rebuilds everything.
"""

from __future__ import annotations

import errno
import io
import os
import pickle
import re
import shutil
from pathlib import Path
from typing import Any

import torch

FORMAT_VERSION = 1
_PERIODIC = re.compile(r"iter_(\d+)\.pt$")


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable or from an incompatible run; the message says which and why."""


def save_checkpoint(state: dict[str, Any], path: str | Path) -> Path:
    """Write ``state`` to ``path`` atomically: serialised in memory, written to a temporary file in the same
    folder, flushed to disk, then renamed over ``path``. On any failure the temporary file is removed and the
    previous ``path`` is untouched; a full or read-only disk is a CheckpointError that says so."""
    path = Path(path)
    buffer = io.BytesIO()  # in memory first: a disk error is then an OSError naming its cause, not torch's
    torch.save({"format_version": FORMAT_VERSION, **state}, buffer)  # "unexpected pos" from its zip writer
    temporary = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(temporary, "wb") as file:
            file.write(buffer.getbuffer())
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException as error:
        try:
            temporary.unlink(missing_ok=True)
        except OSError:  # nothing was created there (a read-only disk refuses the unlink too)
            pass
        if isinstance(error, OSError):
            raise CheckpointError(_write_failure(path, error, buffer.getbuffer().nbytes)) from error
        raise
    return path


def _write_failure(path: Path, error: OSError, size: int) -> str:
    """One line on why ``path`` could not be written, naming a full or read-only disk as such."""
    kept = "; the previous checkpoint there is intact" if path.is_file() else ""
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        folder = path.parent if path.parent.is_dir() else Path(path.anchor or ".")
        free = shutil.disk_usage(folder).free
        return (f"cannot write checkpoint {path}: the disk is full ({free / 2**20:.1f} MiB free, the checkpoint "
                f"needs {size / 2**20:.1f} MiB){kept}; free some space or set checkpoint.dir to another disk")
    if error.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return (f"cannot write checkpoint {path}: {error.strerror.lower()}{kept}; set checkpoint.dir to a "
                "writable folder")
    return f"cannot write checkpoint {path}: {error.strerror or error}{kept}"


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`; CheckpointError explains any failure in one line."""
    path = Path(path)
    if path.is_dir():
        inside = sorted(p.name for p in path.glob("*.pt"))
        hint = f" holding {inside}; pass one of them, e.g. {path / inside[0]}" if inside else " with no .pt files"
        raise CheckpointError(f"checkpoint {path} is a folder{hint}")
    if not path.is_file():
        there = sorted(p.name for p in path.parent.glob("*.pt")) if path.parent.is_dir() else []
        hint = f"; checkpoints there: {there}" if there else ""
        raise CheckpointError(f"checkpoint {path} does not exist{hint}")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes): it was not written completely; use another "
                              "checkpoint (e.g. an iter_*.pt beside it)")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        found = re.search(r"GLOBAL (\S+)", str(error))
        what = f" ({found.group(1)})" if found else ""
        raise CheckpointError(f"checkpoint {path} holds pickled Python objects{what} that grpo-drive checkpoints "
                              "never contain; it was refused unread and nothing in it ran; it was not written "
                              "by this trainer, so do not load it") from error
    except Exception as error:  # truncated files, other formats
        detail = str(error).splitlines()[0][:120] if str(error) else type(error).__name__
        raise CheckpointError(f"checkpoint {path} is truncated or not a torch checkpoint ({type(error).__name__}: "
                              f"{detail}); use another checkpoint (e.g. an iter_*.pt beside it)") from error
    if not isinstance(state, dict) or "format_version" not in state:
        raise CheckpointError(f"{path} is a torch file but not a grpo-drive checkpoint (no format_version)")
    if state["format_version"] != FORMAT_VERSION:
        raise CheckpointError(f"{path} has checkpoint format {state['format_version']}; this version reads "
                              f"format {FORMAT_VERSION}")
    return state


RESUMABLE = ("resume", "run_name", "deterministic", "grpo.iterations", "pretrain.", "logger.", "eval.", "checkpoint.",
             "env.num_services", "env.launcher", "env.ray_address", "env.ray_cpus_per_service",
             "env.start_timeout_s", "env.call_timeout_s", "env.hang_timeout_factor", "env.hang_timeout_min_s",
             "env.heartbeat_s", "env.worlds_per_service", "env.device")
"""Config keys (or key prefixes ending in '.') that may differ on resume: how long to train, how to log,
evaluate and checkpoint, and how many services host the worlds. Everything else shapes the state in the
checkpoint (policy, optimiser, trunks, RNG streams) or the meaning of the run, and must match."""

RESUME_KEYS = ("policy", "optimizer", "scheduler", "iteration", "best_score", "counters", "rng", "rollout", "config")
"""What a checkpoint must hold for training to resume from it."""


def check_resume_config(state: dict[str, Any], requested: dict[str, Any], path: str | Path) -> list[str]:
    """Compare the config stored in a checkpoint with the one a resumed run asks for. Returns notices for the
    keys that differ but may (:data:`RESUMABLE`); raises CheckpointError naming the keys that may not, a
    stored config this version refuses (a tampered or foreign file), or missing parts of the state."""
    from grpo.config import train_config_from_dict  # grpo.config is the schema; imported here, not at load

    missing = [key for key in RESUME_KEYS if key not in state]
    if missing:
        raise CheckpointError(f"{path} cannot be resumed: it holds no {', '.join(missing)} (written by evaluate-only "
                              "tooling or damaged); start a new run, or evaluate it with evaluate.py")
    stored = state["config"]
    try:
        train_config_from_dict(stored)
    except Exception as error:  # ConfigError, or worse for a hand-edited file
        line = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise CheckpointError(f"{path} holds a config this version refuses ({line}); it was edited or written by "
                              "another version: start a new run") from error
    old, new = _flatten(stored), _flatten(requested)
    changed = sorted(key for key in old.keys() & new.keys() if old[key] != new[key])
    fixed = [key for key in changed if not key.startswith(RESUMABLE)]
    if fixed:
        differences = "; ".join(f"{key}: {old[key]!r} -> {new[key]!r}" for key in fixed[:6])
        more = f" (+{len(fixed) - 6} more)" if len(fixed) > 6 else ""
        raise CheckpointError(f"{path} was trained with another config, and these keys cannot change on resume: "
                              f"{differences}{more}; resume with the stored values, or start a new run (another "
                              "run_name, or resume=null)")
    _check_trunks(state["rollout"], int(stored["grpo"]["num_trunks"]), path)
    notices = [f"resume: {key} changed from {old[key]!r} to {new[key]!r}" for key in changed
               if key not in ("resume", "run_name")]
    added = sorted(new.keys() - old.keys())
    if added:
        notices.append(f"resume: the checkpoint predates {', '.join(added[:6])}{' ...' if len(added) > 6 else ''}; "
                       "this run's values apply")
    return notices


def _check_trunks(rollout: Any, num_trunks: int, path: str | Path) -> None:
    """The saved trunk states must be one per trunk of the stored config (a file edited or mixed up)."""
    try:
        worlds, done = int(rollout["trunks"]["num_worlds"]), rollout["trunk_done"]
        shapes = {name: list(value.shape) for name, value in rollout["trunks"]["tensors"].items()}
    except (KeyError, TypeError, AttributeError) as error:
        raise CheckpointError(f"{path} holds no readable trunk states ({type(error).__name__}: {error}); start a "
                              "new run") from error
    bad = {name: shape for name, shape in shapes.items() if not shape or shape[0] != worlds}
    if worlds != num_trunks or list(done.shape) != [num_trunks] or bad:
        raise CheckpointError(f"{path} holds trunk states of the wrong shape ({worlds} trunks, done flags "
                              f"{list(done.shape)}, tensors {bad or shapes}) for its grpo.num_trunks={num_trunks}; "
                              "the file was edited or damaged: start a new run")


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in data.items():
        if isinstance(value, dict) and value:
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


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


def find_resume_checkpoint(resume: str | None, checkpoint_dir: str | Path, run_name: str,
                           requested: dict[str, Any] | None = None) -> Path | None:
    """Resolve ``resume``: None -> start fresh; anything but "auto" is a path that must exist; "auto" -> this
    run's last.pt (``run_name``), else the newest run's last.pt whose stored config this run may resume
    (``requested``, the run's config: same backend, policy and every key :func:`check_resume_config` fixes;
    it says which run it took), else start fresh when there is no run at all. When runs exist but none is
    compatible, a CheckpointError names the newest and why (never a run of another backend or policy)."""
    if resume is None:
        return None
    if resume == "auto":
        own = Path(checkpoint_dir) / run_name / "last.pt"
        if own.is_file():
            return own
        candidates = sorted(Path(checkpoint_dir).glob("*/last.pt"), key=lambda p: p.stat().st_mtime, reverse=True)
        if not candidates or requested is None:
            return candidates[0] if candidates else None
        refusals = []
        for candidate in candidates:
            try:
                check_resume_config(load_checkpoint(candidate), requested, candidate)
            except CheckpointError as error:
                refusals.append(str(error))
                continue
            print(f"resume=auto: no checkpoint of run {run_name!r}; continuing {candidate}, the newest run whose "
                  f"config this run can resume ({len(refusals)} newer run(s) skipped)", flush=True)
            return candidate
        raise CheckpointError(f"resume=auto found no run this config can resume among {len(candidates)} in "
                              f"{checkpoint_dir} (the newest: {refusals[0]}); name the run (run_name=...), pass "
                              "resume=<path>, or start fresh with resume=null")
    path = Path(resume)
    if path.is_dir():
        raise CheckpointError(f"resume={resume} is a folder; pass a checkpoint file in it (e.g. {path / 'last.pt'}) "
                              "or resume=auto")
    if not path.is_file():
        raise CheckpointError(f"resume={resume}: no such checkpoint file; use resume=auto or a path to a .pt file")
    return path
