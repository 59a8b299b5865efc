"""The entry points' error handling: a product error is one line on stderr and exit status 1; a bug keeps its
traceback; HYDRA_FULL_ERROR=1 shows everything."""

import subprocess
import sys
from pathlib import Path

import pytest

from envs.api import BackendError, ServiceFailure
from envs.typed_config import ConfigError
from grpo.checkpoint import CheckpointError
from grpo.cli import one_line, one_line_errors
from grpo.trainer import TrainingError

ROOT = Path(__file__).parents[2]


@pytest.mark.parametrize(("error", "line"), [
    (ConfigError("grpo.group_size must be >= 2"), "config error: grpo.group_size must be >= 2"),
    (CheckpointError("last.pt is empty"), "checkpoint error: last.pt is empty"),
    (TrainingError("non-finite rewards"), "training error: non-finite rewards"),
    (BackendError("actions contain NaN"), "backend error: actions contain NaN"),
    # A service's start-up traceback: the first line names the service, the last one the cause.
    (ServiceFailure(1, "failed to start:\nTraceback (most recent call last):\n  File x\nValueError: boom"),
     "service failure: service 1: failed to start: ... ValueError: boom"),
])
def test_each_product_error_is_one_labelled_line(error, line):
    assert one_line(error) == line


def test_one_line_errors_exits_and_lets_bugs_through(monkeypatch):
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    with pytest.raises(SystemExit) as exited:
        with one_line_errors():
            raise CheckpointError("no such file")
    assert exited.value.code == "checkpoint error: no such file"  # sys.exit(str): stderr, status 1
    with pytest.raises(KeyError):  # a bug: its traceback stays
        with one_line_errors():
            raise KeyError("bug")
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    with pytest.raises(CheckpointError):
        with one_line_errors():
            raise CheckpointError("no such file")


def test_train_py_reports_a_bad_resume_in_one_line(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    done = subprocess.run([sys.executable, str(ROOT / "train.py"), "experiment=smoke", f"resume={folder}",
                           "logger.wandb.mode=disabled", "logger.progress_bar=false", "pretrain.updates=0",
                           f"checkpoint.dir={tmp_path / 'ckpt'}", f"logger.log_dir={tmp_path / 'runs'}",
                           f"hydra.run.dir={tmp_path / 'hydra'}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert lines == [f"checkpoint error: resume={folder} is a folder; pass a checkpoint file in it (e.g. "
                     f"{folder / 'last.pt'}) or resume=auto"], done.stderr[-2000:]
