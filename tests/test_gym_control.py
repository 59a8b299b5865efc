"""env=gym as a user meets it: every `python train.py ...` example for env=gym (conf/env/gym.yaml, the
gym backend's docstring, the README) composes into a valid run, and experiment=gym_control trains and
evaluates Pendulum-v1. Whether it learns is bench/gym_learning.py's question (a benchmark, not a test)."""

import re
import shlex
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from envs.typed_config import ConfigError
from grpo.config import train_config_from_dict

ROOT = Path(__file__).parents[1]
SOURCES = ("conf/env/gym.yaml", "envs/gym_backend.py", "README.md", "bench/gym_learning.py")


def examples() -> list[tuple[str, list[str]]]:
    """(source, overrides) of every documented `python train.py` command that uses env=gym or gym_control."""
    found = []
    for source in SOURCES:
        for line in (ROOT / source).read_text().splitlines():
            match = re.search(r"python train\.py ([^`#]*)", line)  # up to a comment or the end of inline code
            if match and ("env=gym" in line or "gym_control" in line):
                words = shlex.split(match.group(1))
                found.append((source, [w for w in words if "my_package" not in w]))
    return found


def composed(*overrides: str):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[*overrides, "run_name=t"])
    data = OmegaConf.to_container(cfg, resolve=True)
    data.pop("hydra", None)
    return train_config_from_dict(data)


def test_the_documented_gym_commands_compose():
    """Issue 17: conf/env/gym.yaml's own example failed its action_repeat check, and the README's Pendulum
    command kept grpo.beta=0.2 (a KL anchor to the random initial policy, which the trainer warns about)."""
    commands = examples()
    assert {source for source, _ in commands} >= {"conf/env/gym.yaml", "envs/gym_backend.py", "README.md"}
    for source, overrides in commands:
        if any(o.startswith("env.id=my_package") for o in overrides):
            continue
        config = composed(*overrides)
        assert config.env.backend == "gym", (source, overrides)
        assert config.grpo.beta == 0.0 or config.grpo.reference == "none", (source, overrides)


def test_gym_control_is_a_continuous_control_preset():
    config = composed("experiment=gym_control")
    assert config.env.backend_config.id == "Pendulum-v1" and config.env.backend_config.max_episode_steps == 200
    assert config.policy.action_repeat == 1 and config.grpo.beta == 0.0 and config.pretrain.updates == 0
    assert config.eval.every > 0  # evaluation episodes report eval/return; best.pt follows it
    assert config.num_threads == 1 and composed().num_threads is None  # the driving default keeps torch's own
    other = composed("experiment=gym_control", "env.id=MountainCarContinuous-v0")
    assert other.env.backend_config.max_episode_steps == 999


def test_num_threads_must_be_positive():
    with pytest.raises(ConfigError, match="num_threads must be >= 1"):
        composed("num_threads=0")


@pytest.mark.parametrize("env_id", ["Pendulum-v1", "MountainCarContinuous-v0"])
def test_gym_control_trains_evaluates_and_keeps_the_best_return(tmp_path, env_id):
    from grpo.trainer import Trainer

    config = composed("experiment=gym_control", f"env.id={env_id}", "grpo.iterations=2", "grpo.num_trunks=2",
                      "grpo.group_size=2", "grpo.num_minibatches=1", "eval.every=1", "eval.num_routes=2",
                      "eval.max_steps=20", "logger.wandb.mode=disabled", "logger.progress_bar=false",
                      "logger.tensorboard=false", f"checkpoint.dir={tmp_path}", f"logger.log_dir={tmp_path / 'runs'}")
    threads = torch.get_num_threads()
    try:
        trainer = Trainer(config)
        assert torch.get_num_threads() == 1  # the preset's num_threads
        metrics = trainer.train()
    finally:
        torch.set_num_threads(threads)
    # best.pt follows the mean return (negative on both envs), not the driving score (always 0 here)
    assert metrics["eval/return"] <= trainer.best_score < 0
    assert (tmp_path / "t" / "best.pt").exists() and (tmp_path / "t" / "last.pt").exists()


@pytest.mark.slow  # two interpreters start: about 10 s (the in-process test is in tests/grpo/test_evaluation.py)
def test_train_py_then_evaluate_py_on_a_gym_checkpoint(tmp_path):
    """Issue 17, as a user meets it: evaluate.py on what train.py experiment=gym_control wrote."""
    import json
    import subprocess
    import sys

    def run(script: str, *overrides: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, str(ROOT / script), *overrides], cwd=ROOT, capture_output=True,
                              text=True, timeout=300)

    trained = run("train.py", "experiment=gym_control", "run_name=g", "grpo.iterations=2", "grpo.num_trunks=2",
                  "grpo.group_size=2", "grpo.num_minibatches=1", "eval.every=0", "logger.progress_bar=false",
                  "logger.wandb.mode=disabled", "logger.tensorboard=false", f"checkpoint.dir={tmp_path / 'ckpt'}",
                  f"logger.log_dir={tmp_path / 'runs'}", f"hydra.run.dir={tmp_path / 'hydra'}")
    assert trained.returncode == 0, trained.stderr[-2000:]
    done = run("evaluate.py", f"checkpoint={tmp_path / 'ckpt' / 'g' / 'last.pt'}", "eval.num_routes=2",
               "eval.max_steps=25", f"eval.output_dir={tmp_path / 'report'}")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "no expert baseline" in done.stdout and "| policy |" in done.stdout and "| random |" in done.stdout
    summary = json.loads((tmp_path / "report" / "summary.json").read_text())
    assert list(summary["drivers"]) == ["policy", "random"]
    assert summary["env_config"]["id"] == "Pendulum-v1" and summary["env_config"]["split"] == "eval"
    assert summary["drivers"]["policy"]["eval/return"] < 0
