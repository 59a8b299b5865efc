"""Checkpoint files: atomic writes, safe loading, clear errors, keep-last-k, resume resolution."""

import io
import os
import pickle
import subprocess

import pytest
import torch

from grpo.checkpoint import (
    CheckpointError,
    CheckpointManager,
    check_resume_config,
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
    with pytest.raises(CheckpointError, match="is truncated or not a torch checkpoint.*use another checkpoint"):
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
    with pytest.raises(CheckpointError) as refused:
        load_checkpoint(tmp_path / "evil.pt")
    assert not marker.exists()
    torch.save({"format_version": 1, "x": Payload()}, tmp_path / "evil_zip.pt")  # torch's own format
    refusal = r"holds pickled Python objects \(.*makedirs\).*nothing in it ran"
    with pytest.raises(CheckpointError, match=refusal) as zipped:
        load_checkpoint(tmp_path / "evil_zip.pt")
    assert not marker.exists()
    for error in (refused.value, zipped.value):  # the line never advises loading it unsafely
        assert "weights_only" not in str(error) and "\n" not in str(error)


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
    with pytest.raises(CheckpointError, match="is a folder; pass a checkpoint file in it"):
        find_resume_checkpoint(str(tmp_path / "run"), tmp_path, "run")


def test_empty_file_folder_and_wrong_version_each_get_one_line(tmp_path):
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"is empty \(0 bytes\)"):
        load_checkpoint(tmp_path / "empty.pt")
    save_checkpoint({}, tmp_path / "run" / "last.pt")
    with pytest.raises(CheckpointError, match=r"is a folder holding \['last.pt'\]; pass one of them"):
        load_checkpoint(tmp_path / "run")
    torch.save({"format_version": 99}, tmp_path / "future.pt")
    with pytest.raises(CheckpointError, match="has checkpoint format 99; this version reads format 1"):
        load_checkpoint(tmp_path / "future.pt")


@pytest.fixture
def small_disk(tmp_path):
    """A real 256 KiB tmpfs (needs root to mount; the check is skipped where mounting is not allowed)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {done.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


def test_a_full_disk_is_named_and_leaves_no_temporary_file(small_disk):
    path = save_checkpoint({"w": torch.ones(1000)}, small_disk / "last.pt")
    with pytest.raises(CheckpointError, match="the disk is full .* the previous checkpoint there is intact"):
        save_checkpoint({"w": torch.ones(200_000)}, path)  # 800 KB on a 256 KiB disk
    assert sorted(p.name for p in small_disk.iterdir()) == ["last.pt"]
    assert torch.equal(load_checkpoint(path)["w"], torch.ones(1000))
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    with pytest.raises(CheckpointError, match="read-only file system.*set checkpoint.dir to a writable folder"):
        save_checkpoint({"w": torch.ones(10)}, path)


def resume_state(**config):
    from grpo.config import train_config_from_dict

    stored = train_config_from_dict({"grpo": {"num_trunks": 4, "group_size": 4}}).to_dict()
    for key, value in config.items():
        section, name = key.split(".")
        stored[section][name] = value
    trunks = {"num_worlds": 4, "tensors": {"floats": torch.zeros(4, 3)}}
    return {"policy": {}, "optimizer": {}, "scheduler": {}, "iteration": 2, "best_score": 0.0, "counters": {},
            "rng": {}, "rollout": {"trunks": trunks, "trunk_done": torch.zeros(4, dtype=torch.bool)},
            "config": stored}


def test_resume_names_the_keys_that_differ_and_whether_they_may():
    from grpo.config import train_config_from_dict

    requested = train_config_from_dict({"grpo": {"num_trunks": 4, "group_size": 4, "iterations": 50}}).to_dict()
    notices = check_resume_config(resume_state(), requested, "last.pt")
    assert notices == ["resume: grpo.iterations changed from 2000 to 50"]
    with pytest.raises(CheckpointError, match=r"cannot change on resume: grpo.num_trunks: 8 -> 4"):
        check_resume_config(resume_state(**{"grpo.num_trunks": 8}), requested, "last.pt")
    with pytest.raises(CheckpointError, match="holds a config this version refuses.*group_size"):
        check_resume_config(resume_state(**{"grpo.group_size": 0}), requested, "last.pt")  # a tampered file
    with pytest.raises(CheckpointError, match="holds a config this version refuses.*surprise"):
        check_resume_config(resume_state(**{"grpo.surprise": 1}), requested, "last.pt")
    state = resume_state()
    state["rollout"]["trunks"]["tensors"]["floats"] = torch.zeros(3, 3)  # wrong shapes in an edited file
    with pytest.raises(CheckpointError, match=r"trunk states of the wrong shape .*'floats': \[3, 3\]"):
        check_resume_config(state, requested, "last.pt")
    del state["rollout"]
    with pytest.raises(CheckpointError, match="cannot be resumed: it holds no rollout"):
        check_resume_config(state, requested, "last.pt")


def test_resume_auto_never_takes_a_run_of_another_backend_or_policy(tmp_path, capsys):
    from grpo.config import train_config_from_dict

    def stored(**sections):
        config = train_config_from_dict({"grpo": {"num_trunks": 4, "group_size": 4}, **sections}).to_dict()
        return {**resume_state(), "config": config}

    requested = train_config_from_dict({"grpo": {"num_trunks": 4, "group_size": 4}}).to_dict()
    driving = save_checkpoint(stored(), tmp_path / "driving" / "last.pt")
    os.utime(driving, (1, 1))  # the oldest
    save_checkpoint(stored(policy={"kind": "entity"}), tmp_path / "entity" / "last.pt")
    save_checkpoint(stored(env={"backend": "gym", "id": "Pendulum-v1"}, policy={"action_repeat": 1}),
                    tmp_path / "pendulum" / "last.pt")  # the newest: a Pendulum run
    assert find_resume_checkpoint("auto", tmp_path, "new", requested) == driving
    said = capsys.readouterr().out
    assert f"continuing {driving}" in said and "2 newer run(s) skipped" in said
    driving.unlink()
    with pytest.raises(CheckpointError, match="resume=auto found no run this config can resume among 2"):
        find_resume_checkpoint("auto", tmp_path, "new", requested)
