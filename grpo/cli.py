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
from pathlib import Path
from typing import Any

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


def yaml_comments(path: Path, prefix: str = "") -> dict[str, str]:
    """Dotted key -> the comment lines just above it, for one of our YAML files (values in YAML, meanings in the
    comments above them: STYLE.md). ``prefix`` is the package the file's keys land in (``env`` for
    conf/env/*.yaml); a file marked ``# @package _global_`` lands at the root."""
    lines = path.read_text().splitlines()
    if lines and lines[0].strip() == "# @package _global_":
        prefix = ""
    comments: dict[str, str] = {}
    stack: list[tuple[int, str]] = []  # (indent, key) of the enclosing mappings
    pending: list[str] = []
    shared, shared_indent = "", 0  # a comment above several consecutive keys documents each of them
    first = True  # the file's opening comment describes the file: only its last line is the first key's
    for line in lines:
        stripped = line.strip()
        if stripped.startswith("#"):
            pending.append(stripped.lstrip("#").strip())
            continue
        if not stripped or stripped.startswith("-") or ":" not in stripped:
            pending, shared = [], ""
            continue
        indent = len(line) - len(line.lstrip())
        key = stripped.split(":", 1)[0].strip()
        while stack and stack[-1][0] >= indent:
            stack.pop()
        dotted = ".".join([part for part in (prefix, *[k for _, k in stack], key) if part])
        if pending:
            shared, shared_indent = " ".join(pending[-1:] if first else pending), indent
        elif indent != shared_indent:  # a shared comment covers the following keys of its own mapping only
            shared = ""
        if shared and key != "defaults":
            comments[dotted] = shared
        pending, first = [], False
        stack.append((indent, key))
    return comments


def config_help(config: dict[str, Any], sources: list[tuple[Path, str]], title: str) -> str:
    """Every leaf key of a composed ``config`` with its value and the comment above it in ``sources``
    ((file, package) pairs, the most specific first: the chosen group options before the others)."""
    comments: dict[str, str] = {}
    for path, prefix in reversed(sources):  # the most specific file's comment wins
        comments.update(yaml_comments(path, prefix))
    rows = []

    def walk(node: Any, path: str) -> None:
        if isinstance(node, dict) and node:
            for key, value in node.items():
                walk(value, f"{path}.{key}" if path else str(key))
            return
        shown = "null" if node is None else str(node).lower() if isinstance(node, bool) else str(node)
        rows.append((path, shown, comments.get(path, "")))

    walk(config, "")
    width = min(48, max(len(f"{key}={value}") for key, value, _ in rows))
    body = "\n".join(f"  {key}={value}".ljust(width + 4) + (f"  # {comment}" if comment else "")
                     for key, value, comment in rows)
    return (f"{title}\n\nEvery key, its value with the overrides given, and what it means (override with "
            f"key=value):\n\n{body}\n")


def help_sources(conf_dir: Path, config_name: str, choices: dict[str, str | None]) -> list[tuple[Path, str]]:
    """The YAML files whose comments document a composed config, the most specific first: each chosen group
    option (``choices``, e.g. {"env": "carla"}), then the primary config, then every other option of each
    group (for keys a chosen option inherits through its defaults list)."""
    sources = [(conf_dir / group / f"{choice}.yaml", group) for group, choice in choices.items()
               if choice and not group.startswith("hydra") and (conf_dir / group / f"{choice}.yaml").is_file()]
    sources.append((conf_dir / f"{config_name}.yaml", ""))
    for group in sorted({group for group in choices if (conf_dir / group).is_dir()}):
        sources += [(path, group) for path in sorted((conf_dir / group).glob("*.yaml"))
                    if (path, group) not in sources]
    return sources


def override_error_line(message: str, known: list[str], options: dict[str, list[str]]) -> str:
    """One line for Hydra's multi-line refusal of a command line: an unknown key (with the nearest ``known``
    keys), an unknown group option (with the group's ``options``), or an override it cannot parse."""
    import difflib

    lines = [line.strip() for line in message.splitlines() if line.strip()]
    first = lines[0] if lines else message
    if first.startswith("Could not override '"):
        key = first.split("'")[1]
        near = difflib.get_close_matches(key, known, n=2, cutoff=0.6)
        hint = f" (did you mean {' or '.join(near)}?)" if near else ""
        return (f"config error: {key} is not a config key{hint}; python train.py --help lists every key, and "
                f"+{key}=... adds a new one")
    if "Could not find '" in first:
        group, _, name = first.split("Could not find '")[1].rstrip("'").rpartition("/")
        return f"config error: {group}={name} is not an option of {group}; options: {', '.join(options.get(group, []))}"
    return f"config error: {first} (override syntax: https://hydra.cc/docs/advanced/override_grammar/basic)"
