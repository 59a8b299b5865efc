"""Checkpoint files: atomic writes, safe loading, clear errors, keep-last-k, resume resolution."""

import io
import os
import pickle

import pytest
import torch

from grpo.checkpoint import (
    CheckpointError,
    CheckpointManager,
    find_resume_checkpoint,
    load_checkpoint,
    save_checkpoint,
)


def test_round_trip_leaves_no_temporary_file(tmp_path):
    path = save_checkpoint({"policy": {"w": torch.ones(2)}, "iteration": 3}, tmp_path / "a" / "last.pt")
    state = load_checkpoint(path)
    assert state["iteration"] == 3 and torch.equal(state["policy"]["w"], torch.ones(2))
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.pt"]


def test_missing_file_lists_what_is_there(tmp_path):
    save_checkpoint({}, tmp_path / "best.pt")
    with pytest.raises(CheckpointError, match=r"does not exist; checkpoints there: \['best.pt'\]"):
        load_checkpoint(tmp_path / "last.pt")


def test_truncated_file(tmp_path):
    path = save_checkpoint({"x": torch.zeros(1000)}, tmp_path / "last.pt")
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_checkpoint(path)


def test_a_torch_file_that_is_not_a_checkpoint(tmp_path):
    torch.save({"weights": torch.zeros(2)}, tmp_path / "model.pt")
    with pytest.raises(CheckpointError, match="not a grpo-drive checkpoint"):
        load_checkpoint(tmp_path / "model.pt")


def test_pickled_code_is_never_run(tmp_path):
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (os.makedirs, (str(marker),))

    buffer = io.BytesIO()
    pickle.dump({"format_version": 1, "x": Payload()}, buffer)
    (tmp_path / "evil.pt").write_bytes(buffer.getvalue())
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "evil.pt")
    assert not marker.exists()


def test_keep_last_periodic_checkpoints(tmp_path):
    manager = CheckpointManager(tmp_path, keep_last=2)
    for iteration in (10, 20, 30):
        manager.save_periodic({"iteration": iteration}, iteration)
    assert sorted(p.name for p in tmp_path.glob("iter_*.pt")) == ["iter_000020.pt", "iter_000030.pt"]


def test_find_resume(tmp_path):
    assert find_resume_checkpoint(None, tmp_path, "run") is None
    assert find_resume_checkpoint("auto", tmp_path, "run") is None  # nothing yet: start fresh
    older = save_checkpoint({}, tmp_path / "old" / "last.pt")
    newer = save_checkpoint({}, tmp_path / "new" / "last.pt")
    os.utime(older, (1, 1))
    assert find_resume_checkpoint("auto", tmp_path, "run") == newer
    own = save_checkpoint({}, tmp_path / "run" / "last.pt")
    os.utime(own, (1, 1))
    assert find_resume_checkpoint("auto", tmp_path, "run") == own  # the run's own checkpoint wins
    with pytest.raises(CheckpointError, match="no such checkpoint file"):
        find_resume_checkpoint(str(tmp_path / "nope.pt"), tmp_path, "run")
