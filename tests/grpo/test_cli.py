"""What the entry points share: --help documents every key, interrupts print the resume command."""

import subprocess
import sys
from pathlib import Path

import pytest

from grpo.cli import resume_command, yaml_comments

ROOT = Path(__file__).parents[2]


def test_comments_above_keys_document_them(tmp_path):
    config = tmp_path / "sim.yaml"
    config.write_text("# The file as a whole.\n# backend kind\nbackend: sim\n\n# seconds before a service counts as "
                      "dead\nstart_timeout_s: 1\ncall_timeout_s: 2\n# traffic\ntraffic:\n  num_vehicles: 10\n"
                      "  # vehicle slots\n  slots: 10\n  plain: 1\n")
    assert yaml_comments(config, "env") == {
        "env.backend": "backend kind",  # the file's opening lines describe the file; the last one the first key
        "env.start_timeout_s": "seconds before a service counts as dead",
        "env.call_timeout_s": "seconds before a service counts as dead",  # one comment above two keys: both
        "env.traffic": "traffic",  # a mapping's comment is not its children's
        "env.traffic.slots": "vehicle slots", "env.traffic.plain": "vehicle slots"}


@pytest.mark.parametrize("choice", ["", "env=carla", "experiment=gpu"])
def test_help_gives_every_key_its_meaning(choice):
    done = subprocess.run([sys.executable, str(ROOT / "train.py"), *([choice] if choice else []), "--help"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    keys = [line for line in done.stdout.splitlines() if line.startswith("  ") and "=" in line.split()[0]]
    assert len(keys) > 80
    assert [line for line in keys if "  # " not in line] == []
    group_size = [line for line in keys if line.startswith("  grpo.group_size=")]
    assert len(group_size) == 1 and "branches restored from one snapshot" in group_size[0]


def test_the_resume_command_keeps_the_overrides_and_names_the_run():
    command = resume_command(["experiment=smoke", "run_name=old", "resume=auto", "env.num_services=2"], "run7",
                             "checkpoints/run7/last.pt")
    assert command == ("python train.py experiment=smoke env.num_services=2 run_name=run7 "
                       "resume=checkpoints/run7/last.pt")


@pytest.mark.parametrize("override, line", [
    ("grpo.groupsize=4", "config error: grpo.groupsize is not a config key (did you mean grpo.group_size"),
    ("policy=mpl", "config error: policy=mpl is not an option of policy; options: cnn, entity, mlp"),
])
def test_an_unknown_key_or_option_is_one_line(override, line):
    done = subprocess.run([sys.executable, str(ROOT / "train.py"), override], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 1 and done.stderr.strip().startswith(line), done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
