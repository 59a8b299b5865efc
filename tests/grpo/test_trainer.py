"""The trainer end to end: the smoke run through train.py, learning, exact resume, and failure handling."""

import glob
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from envs.api import BackendError
from envs.factory import env_config_from_dict
from envs.typed_config import ConfigError
from grpo.checkpoint import load_checkpoint
from grpo.config import EvalConfig, train_config_from_dict
from grpo.evaluation import evaluate_policy
from grpo.rollout import BranchingRollout
from grpo.trainer import Trainer, TrainingError
from tests.processes import process_alive

ROOT = Path(__file__).parents[2]


def quiet_config(tmp_path, **sections):
    """A small run on the straight road that writes only under tmp_path."""
    data = {
        "run_name": "t", "seed": 0,
        # An empty straight road: no traffic, pedestrians or lights (the trainer's mechanics, not driving skill).
        "env": {"map": "straight", "num_towns": 2, "town": {"num_routes": 8, "route_length_m": 150.0},
                "traffic": {"num_vehicles": 0}, "pedestrians": {"num_pedestrians": 0}, "lights": {"enabled": False}},
        "grpo": {"iterations": 4, "num_trunks": 4, "group_size": 4, "branch_horizon": 8, "num_minibatches": 2},
        "policy": {"hidden_sizes": [32, 32]},
        "eval": {"every": 0, "num_routes": 4, "max_steps": 60},
        "pretrain": {"updates": 0},  # the warm start has tests of its own (test_pretrain.py)
        "checkpoint": {"dir": str(tmp_path / "ckpt"), "every": 2},
        "logger": {"log_dir": str(tmp_path / "runs"), "tensorboard": True, "wandb": {"mode": "disabled"},
                   "picture_every": 0, "progress_bar": False},
    }
    for section, values in sections.items():
        data[section] = {**data.get(section, {}), **values} if isinstance(values, dict) else values
    return train_config_from_dict(data)


def test_smoke_experiment_through_train_py(tmp_path):
    command = [sys.executable, str(ROOT / "train.py"), "experiment=smoke", "run_name=smoke",
               f"checkpoint.dir={tmp_path / 'ckpt'}", f"logger.log_dir={tmp_path / 'runs'}",
               "logger.progress_bar=false", f"hydra.run.dir={tmp_path / 'hydra'}"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    run = tmp_path / "ckpt" / "smoke"
    assert {p.name for p in run.glob("*.pt")} >= {"last.pt", "best.pt", "iter_000004.pt"}
    state = load_checkpoint(run / "last.pt")
    assert state["iteration"] == 4 and state["config"]["grpo"]["group_size"] == 4
    events = glob.glob(str(tmp_path / "runs" / "smoke" / "events.out.tfevents.*"))
    accumulator = EventAccumulator(events[0], size_guidance={"images": 0})
    accumulator.Reload()
    assert {"reward/mean", "policy_loss", "eval/driving_score", "clip_ratio/high"} <= set(accumulator.Tags()["scalars"])
    assert "pictures/group" in accumulator.Tags()["images"]
    assert list((tmp_path / "runs" / "smoke" / "wandb").glob("offline-run-*")), "wandb offline run missing"


def test_config_errors_are_one_line(tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "train.py"), "grpo.group_size=1",
                           f"hydra.run.dir={tmp_path}"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert "config error: grpo.group_size must be >= 2" in done.stderr


def test_short_training_raises_the_return_on_an_empty_road(tmp_path):
    config = quiet_config(tmp_path, grpo={"iterations": 40, "num_trunks": 16, "group_size": 8,
                                          "branch_horizon": 30, "num_minibatches": 4},
                          policy={"hidden_sizes": [256, 256]}, logger={"tensorboard": False},
                          checkpoint={"every": 1000})
    trainer = Trainer(config)
    suite = EvalConfig(num_routes=8, max_steps=300)
    before = evaluate_policy(trainer.policy, config.env, suite, "cpu").metrics["eval/route_completion"]
    trainer.train()
    after = evaluate_policy(trainer.policy, config.env, suite, "cpu").metrics["eval/route_completion"]
    # 300 steps (30 s) cover the whole 150 m route at 5 m/s; the untrained policy barely creeps forward.
    assert after > before + 40, (before, after)


def _scalars(log_dir: Path) -> dict[tuple[str, int], float]:
    values = {}
    for path in sorted(glob.glob(str(log_dir / "events.out.tfevents.*"))):
        accumulator = EventAccumulator(path)
        accumulator.Reload()
        for tag in accumulator.Tags()["scalars"]:
            if not tag.startswith(("time/", "perf/")):  # wall-clock figures differ by nature
                for event in accumulator.Scalars(tag):
                    values[(tag, event.step)] = event.value
    return values


def test_resumed_run_logs_the_same_metrics_as_an_uninterrupted_one(tmp_path, monkeypatch):
    Trainer(quiet_config(tmp_path / "a", deterministic=True, eval={"every": 2})).train()

    interrupted = Trainer(quiet_config(tmp_path / "b", deterministic=True, eval={"every": 2}))
    real_iteration = interrupted.train_iteration

    def iteration_then_ctrl_c():
        if interrupted.iteration == 2:  # last.pt of iteration 2 is on disk; the user presses Ctrl-C
            raise KeyboardInterrupt
        return real_iteration()

    monkeypatch.setattr(interrupted, "train_iteration", iteration_then_ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        interrupted.train()
    Trainer(quiet_config(tmp_path / "b", deterministic=True, eval={"every": 2}, resume="auto")).train()
    uninterrupted = _scalars(tmp_path / "a" / "runs" / "t")
    resumed = _scalars(tmp_path / "b" / "runs" / "t")
    assert {step for _, step in uninterrupted} == {1, 2, 3, 4}
    assert ("eval/driving_score", 4) in uninterrupted
    assert uninterrupted.keys() == resumed.keys()
    # NaN equals NaN here: per-km rates are not available on the short suite (envs.metrics.MIN_KM_FOR_RATES)
    different = {key for key in uninterrupted if uninterrupted[key] != resumed[key]
                 and not (math.isnan(uninterrupted[key]) and math.isnan(resumed[key]))}
    assert not different, sorted(different)[:5]


def test_non_finite_rewards_stop_with_a_clear_error_and_a_checkpoint(tmp_path):
    trainer = Trainer(quiet_config(tmp_path))
    real_step = trainer.backend.step

    def poisoned_step(actions):
        result = real_step(actions)
        result.reward[5] = float("nan")  # group 1 (worlds 4..7)
        return result

    trainer.backend.step = poisoned_step
    with pytest.raises(TrainingError, match=r"non-finite rewards in groups \[1\] at iteration 0"):
        trainer.train()
    assert (tmp_path / "ckpt" / "t" / "last.pt").is_file()


def test_non_finite_gradients_skip_the_update(tmp_path):
    trainer = Trainer(quiet_config(tmp_path, grpo={"iterations": 1}))
    first = next(trainer.policy.parameters())
    first.register_hook(lambda grad: torch.full_like(grad, float("nan")))
    before = [p.detach().clone() for p in trainer.policy.parameters()]
    metrics = trainer.train()
    assert metrics["updates/skipped"] == 2 * 2  # num_epochs x num_minibatches
    assert all(torch.equal(a, b) for a, b in zip(before, trainer.policy.parameters(), strict=True))


def test_held_actions_train_with_every_loss_option(tmp_path):
    # Acceleration held 4 steps, steer every step, over 8-step branches: 8 decisions, 2 of them also sample
    # the acceleration. The analytic KL and entropy count the sampled dimensions only; the update stays finite.
    config = quiet_config(tmp_path, policy={"action_repeat": [4, 1]},
                          grpo={"iterations": 2, "aggregation": "dr_grpo", "beta": 0.04, "kl_estimator": "analytic",
                                "entropy_coef": 0.01})
    trainer = Trainer(config)
    assert trainer.loss_config.dr_grpo_normalizer == 8
    metrics = trainer.train()
    assert metrics["updates/applied"] == 2 * 2 and all(torch.isfinite(torch.tensor(v)) for v in metrics.values())
    whole = Trainer(quiet_config(tmp_path / "whole", policy={"action_repeat": 4}, grpo={"aggregation": "dr_grpo"}))
    assert whole.loss_config.dr_grpo_normalizer == 2  # decisions at steps 0 and 4


def test_checkpoint_of_another_config_is_refused(tmp_path):
    Trainer(quiet_config(tmp_path, grpo={"iterations": 2})).train()
    other = quiet_config(tmp_path, resume="auto", policy={"hidden_sizes": [8]})
    from grpo.checkpoint import CheckpointError

    with pytest.raises(CheckpointError, match=r"cannot change on resume: policy.hidden_sizes: \[32, 32\] -> \[8\]"):
        Trainer(other).train()


def test_env_config_of_the_checkpoint_rebuilds_the_backend(tmp_path):
    Trainer(quiet_config(tmp_path, grpo={"iterations": 2})).train()
    state = load_checkpoint(tmp_path / "ckpt" / "t" / "last.pt")
    assert env_config_from_dict(state["config"]["env"]).backend_config.map == "straight"


def test_multirun_sweep_gives_each_job_its_own_run(tmp_path):
    command = [sys.executable, str(ROOT / "train.py"), "-m", "experiment=smoke", "grpo.group_size=2,4",
               "run_name=sweep", "grpo.iterations=2", "eval.every=0", "logger.wandb.mode=disabled",
               "logger.progress_bar=false", f"checkpoint.dir={tmp_path / 'ckpt'}",
               f"logger.log_dir={tmp_path / 'runs'}", f"hydra.sweep.dir={tmp_path / 'sweep'}"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    sizes = {path.parent.name: load_checkpoint(path)["config"]["grpo"]["group_size"]
             for path in (tmp_path / "ckpt").glob("*/last.pt")}
    assert sizes == {"sweep-0": 2, "sweep-1": 4}


def test_training_on_two_services_in_waves_survives_a_killed_service(tmp_path, monkeypatch):
    # 4 trunks x 4 branches = 16 branches on 2 services of 4 worlds: two waves per iteration.
    config = quiet_config(tmp_path, env={"num_services": 2, "worlds_per_service": 4}, grpo={"iterations": 3})
    trainer = Trainer(config)
    pids = list(trainer.backend.pids)
    real_step, steps = trainer.backend.step, []

    def step_with_a_crash(actions):
        steps.append(1)
        if len(steps) == 30:  # in the middle of a wave of the second iteration
            os.kill(trainer.backend.pids[1], signal.SIGKILL)
        return real_step(actions)

    monkeypatch.setattr(trainer.backend, "step", step_with_a_crash)
    metrics = trainer.train()
    assert trainer.iteration == 3  # training went on
    assert metrics["perf/waves"] == 2
    assert metrics["services/restarts"] == 1 and metrics["groups/dropped_service_failure"] >= 1
    assert not any(process_alive(pid) for pid in pids + list(trainer.backend.pids or []))


def test_ctrl_c_stops_every_service(tmp_path, monkeypatch):
    trainer = Trainer(quiet_config(tmp_path, env={"num_services": 2}))
    pids = list(trainer.backend.pids)
    monkeypatch.setattr(trainer, "train_iteration", lambda: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        trainer.train()
    assert pids and not any(process_alive(pid) for pid in pids)


@pytest.mark.parametrize("kind", ["mlp", "entity", "cnn"])
def test_a_real_iteration_of_every_policy_kind(tmp_path, kind):
    # Every shipped policy kind trains and evaluates: the CNN's rasters go through the rollout, the update and
    # the evaluation; the entity policy's tokens through all three too.
    policy = {"kind": kind, "hidden_sizes": [16], "token_size": 16, "token_layers": 1, "raster_size": 16,
              "conv_channels": [4, 4, 4]}
    config = quiet_config(tmp_path, policy=policy, grpo={"iterations": 2, "beta": 0.0},
                          env={"raster_size": 16}, eval={"every": 2, "num_routes": 2, "max_steps": 10})
    trainer = Trainer(config)
    before = [p.detach().clone() for p in trainer.policy.parameters()]
    metrics = trainer.train()
    assert metrics["updates/applied"] > 0 and torch.isfinite(torch.tensor(metrics["policy_loss"]))
    assert "eval/driving_score" in metrics
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.policy.parameters(), strict=True))


def test_a_raster_policy_trains_over_services_and_needs_a_backend_that_renders_rasters(tmp_path):
    config = quiet_config(tmp_path, policy={"kind": "cnn", "hidden_sizes": [8], "raster_size": 16,
                                            "conv_channels": [4, 4, 4]},
                          grpo={"iterations": 1, "beta": 0.0}, env={"raster_size": 16, "num_services": 2})
    trainer = Trainer(config)  # the services forward the simulator's rasters (their spec says rasters=True)
    assert trainer.backend.spec.rasters and trainer.train()["updates/applied"] > 0
    from envs.gym_backend import GymBackend, GymConfig

    gym = GymBackend(GymConfig(num_worlds=16))
    with pytest.raises(BackendError, match="bird's-eye raster, which this backend \\(gym\\) does not render"):
        BranchingRollout(gym, trainer.policy, config.grpo, seed=0, device=torch.device("cpu"),
                         generator=torch.Generator())
    gym.close()


def _children(pid: int) -> list[int]:
    """Every live descendant of ``pid`` (from /proc)."""
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    fields = stat.read().rsplit(")", 1)[1].split()
                parents[int(entry)] = (int(fields[1]), fields[0])
            except (FileNotFoundError, ProcessLookupError, IndexError):
                continue
    found, frontier = [], [pid]
    while frontier:
        parent = frontier.pop()
        kids = [child for child, (ppid, state) in parents.items() if ppid == parent and state != "Z"]
        found += kids
        frontier += kids
    return found


def _train_until(tmp_path, marker: str, *overrides: str) -> subprocess.Popen:
    """train.py experiment=smoke (two services, many iterations) started and read until a line holds ``marker``."""
    command = [sys.executable, "-u", str(ROOT / "train.py"), "experiment=smoke", "run_name=stop", "env.num_services=2",
               "grpo.iterations=10000", f"checkpoint.dir={tmp_path / 'ckpt'}", f"logger.log_dir={tmp_path / 'runs'}",
               "logger.progress_bar=false", "logger.wandb.mode=disabled", f"hydra.run.dir={tmp_path / 'hydra'}",
               *overrides]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in process.stdout:
        if marker in line:
            return process
    process.wait(timeout=60)
    raise AssertionError(f"train.py ended before {marker!r}: {process.stderr.read()[-2000:]}")


def test_ctrl_c_during_grpo_saves_last_pt_and_prints_the_resume_command(tmp_path):
    process = _train_until(tmp_path, "the clone is saved in")
    children = _children(process.pid)
    assert children, "the services run as child processes"
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr[-2000:]
    assert "Traceback" not in stderr and "resume with:" in stderr
    command = stderr.strip().splitlines()[-1].strip()
    assert command.startswith("python train.py") and f"resume={tmp_path / 'ckpt' / 'stop' / 'last.pt'}" in command
    assert "run_name=stop" in command and "env.num_services=2" in command
    state = load_checkpoint(tmp_path / "ckpt" / "stop" / "last.pt")
    assert state["iteration"] >= 1  # stopped after a whole iteration, not inside one
    deadline = time.monotonic() + 60  # the fork server leaves once its parent is gone: at once, or seconds if busy
    while any(process_alive(child) for child in children) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not [child for child in children if process_alive(child)], "no service process outlives the trainer"


def test_ctrl_c_during_the_warm_start_stops_within_a_step(tmp_path):
    process = _train_until(tmp_path, "pretrain: cloning the expert", "pretrain.demo_steps=100000")
    start = time.monotonic()
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 130 and "interrupted during the warm start" in stderr, stderr[-2000:]
    # within a step, not after the 100,000 demonstration steps (minutes); generous for a busy machine
    assert time.monotonic() - start < 120 and "Traceback" not in stderr
    assert not (tmp_path / "ckpt" / "stop" / "last.pt").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without CUDA")
@pytest.mark.parametrize("section", [{"device": "cuda"}, {"env": {"device": "cuda:0"}}])
def test_a_missing_cuda_device_is_named_before_any_work(tmp_path, section):
    config = quiet_config(tmp_path, **section)
    with pytest.raises(ConfigError, match=r"device=cuda(:0)?, but this machine has no CUDA device .* use .*=cpu"):
        Trainer(config)


def test_an_unwritable_output_folder_is_named_before_any_work(tmp_path):
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    config = quiet_config(tmp_path, checkpoint={"dir": str(blocked)})
    with pytest.raises(ConfigError, match=r"checkpoint.dir: cannot write to .*file/t"):
        Trainer(config)
    config = quiet_config(tmp_path, logger={"log_dir": str(blocked)})
    with pytest.raises(ConfigError, match=r"logger.log_dir: cannot write to"):
        Trainer(config)


def test_the_progress_bar_shows_a_box_envs_evaluation_return_not_a_driving_score():
    from grpo.trainer import _key_figures

    metrics = {"reward/mean": 1.0, "eval/driving_score": 0.0, "eval/return": -160.0}
    assert _key_figures(metrics, driving=False) == {"R": "1", "eval_return": "-160"}
    assert _key_figures(metrics) == {"R": "1", "DS": "0"}
