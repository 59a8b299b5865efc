"""evaluate.py's job: its config and env-override plumbing, and checkpoints of every kind (sim, gym, CARLA-built,
from before held actions) rebuilt and driven beside the baselines."""

import pytest

from envs.api import OBSERVATION_LAYOUT
from envs.factory import env_config_from_dict
from grpo.checkpoint import CheckpointError, save_checkpoint
from grpo.checkpoint_eval import (
    EvalReportConfig,
    EvaluateConfig,
    env_for_evaluation,
    evaluate_checkpoint,
    evaluate_config_from_dict,
)
from grpo.config import EvalConfig
from grpo.policy import PolicyConfig, build_policy
from tests.grpo.test_evaluation import STRAIGHT


def test_env_overrides_apply_on_top_of_the_checkpoints_env():
    checkpoint_env = env_config_from_dict(STRAIGHT).to_flat_dict()
    composed = env_config_from_dict({}).to_flat_dict()  # conf/env/sim.yaml with the user's keys
    composed["num_towns"], composed["town"]["grid_size"] = 3, 4
    data = {"checkpoint": "c.pt", "env": composed, "eval": {"num_routes": 2, "baselines": ["expert"]}}
    config = evaluate_config_from_dict(data, ["checkpoint=c.pt", "env.num_towns=3", "+env.town.grid_size=4",
                                              "eval.num_routes=2"])
    assert config.env_overrides == {"num_towns": 3, "town": {"grid_size": 4}} and not config.replace_env
    assert config.eval.num_routes == 2 and config.report.baselines == ("expert",)
    env = env_for_evaluation(checkpoint_env, config).backend_config
    assert (env.map, env.num_towns, env.town.grid_size, env.town.route_length_m) == ("straight", 3, 4, 60.0)
    # env=<name>: the composed group config replaces the checkpoint's env
    replaced = evaluate_config_from_dict(data, ["checkpoint=c.pt", "env=sim"])
    assert env_for_evaluation(checkpoint_env, replaced).backend_config.map == "procedural"
    assert EvaluateConfig(checkpoint="runs/x/best.pt").output_dir() == "runs/x/eval_best"


def test_a_policy_that_does_not_fit_its_stored_config_is_a_checkpoint_error(tmp_path):
    policy = build_policy(OBSERVATION_LAYOUT.size, PolicyConfig(hidden_sizes=(16,)))
    state = {"config": {"env": env_config_from_dict(STRAIGHT).to_flat_dict(), "policy": {"hidden_sizes": [8]},
                        "run_name": "x"},
             "policy": policy.state_dict(), "observation_size": OBSERVATION_LAYOUT.size, "iteration": 0}
    path = save_checkpoint(state, tmp_path / "last.pt")
    config = EvaluateConfig(checkpoint=str(path), eval=EvalConfig(num_routes=1, max_steps=2))
    with pytest.raises(CheckpointError, match="policy weights do not fit its policy config"):
        evaluate_checkpoint(config)
    state["observation_size"] += 1  # e.g. a policy trained on a larger observation
    save_checkpoint(state, path)
    with pytest.raises(CheckpointError, match=f"observations of size {OBSERVATION_LAYOUT.size + 1}, but this "
                                              f"environment gives {OBSERVATION_LAYOUT.size}"):
        evaluate_checkpoint(config)
    save_checkpoint({"iteration": 3}, path)
    with pytest.raises(CheckpointError, match="holds no policy and run config"):
        evaluate_checkpoint(config)


def test_a_checkpoint_from_before_held_actions_is_driven_every_step(tmp_path, monkeypatch):
    import grpo.checkpoint_eval as evaluation

    # from before held actions and the obstacle inputs: no action_repeat or obstacle_features stored
    policy = build_policy(OBSERVATION_LAYOUT.size, PolicyConfig(hidden_sizes=(16,), obstacle_features=False))
    state = {"config": {"env": env_config_from_dict(STRAIGHT).to_flat_dict(), "policy": {"hidden_sizes": [16]},
                        "run_name": "x"},
             "policy": policy.state_dict(), "observation_size": OBSERVATION_LAYOUT.size, "iteration": 0}
    path = save_checkpoint(state, tmp_path / "last.pt")
    config = EvaluateConfig(checkpoint=str(path), eval=EvalConfig(num_routes=1, max_steps=2),
                            report=EvalReportConfig(baselines=()))
    repeats = []
    real = evaluation.evaluate_policy

    def recording(driver, *args, **kwargs):
        repeats.append(driver.action_repeat)
        assert not driver.obstacle_features  # it reads the observation alone, as it was trained
        return real(driver, *args, **kwargs)

    monkeypatch.setattr(evaluation, "evaluate_policy", recording)
    evaluate_checkpoint(config)  # no action_repeat stored: the policy acted every step
    state["config"]["policy"]["action_repeat"] = [5, 1]
    save_checkpoint(state, path)
    evaluate_checkpoint(config)
    assert repeats == [(1, 1), (5, 1)]


def _trained_checkpoint(tmp_path, env: dict, policy: dict | None = None):
    """last.pt of a real two-iteration run of the trainer on ``env`` (what train.py writes)."""
    from grpo.config import train_config_from_dict
    from grpo.trainer import Trainer

    config = train_config_from_dict({
        "run_name": "t", "env": env, "policy": {"hidden_sizes": [16], "action_repeat": 1, **(policy or {})},
        "grpo": {"iterations": 2, "num_trunks": 2, "group_size": 2, "branch_horizon": 5, "num_minibatches": 1,
                 "beta": 0.0, "reference": "none"},
        "pretrain": {"updates": 0}, "eval": {"every": 0},
        "checkpoint": {"dir": str(tmp_path / "ckpt"), "every": 2},
        "logger": {"log_dir": str(tmp_path / "runs"), "tensorboard": False, "wandb": {"mode": "disabled"},
                   "picture_every": 0, "progress_bar": False}})
    Trainer(config).train()
    return tmp_path / "ckpt" / "t" / "last.pt"


def test_evaluate_a_checkpoint_trained_on_a_gymnasium_env(tmp_path):
    """Issue 17: a checkpoint of env=gym did not load ("the policy weights do not fit its policy config"): its
    policy acts in Pendulum's [-2, 2] box (one action), and the rebuild used the driving mapping (two)."""
    from grpo.report import summary_table, write_report

    path = _trained_checkpoint(tmp_path, {"backend": "gym", "id": "Pendulum-v1"})
    config = EvaluateConfig(checkpoint=str(path), eval=EvalConfig(num_routes=3, seed=5, max_steps=30))
    evaluation = evaluate_checkpoint(config)
    assert list(evaluation.results) == ["policy", "random"]  # no expert outside driving, and a notice says so
    assert any("no expert baseline" in notice for notice in evaluation.notices)
    for result in evaluation.results.values():
        assert [route["steps"] for route in result.routes] == [30, 30, 30]
        assert all(-16.3 * 30 <= route["return"] < 0 for route in result.routes)  # Pendulum: -16.27 per step at worst
    assert evaluation.results["policy"].metrics["eval/return"] != evaluation.results["random"].metrics["eval/return"]
    assert evaluation.context()["routes"].startswith("3 evaluation episodes (episode seeds 5..7)")
    summary = write_report(evaluation.results, tmp_path / "report", context=evaluation.context())
    assert "| random |" in summary_table(evaluation.results) and summary.exists()


def test_evaluate_rebuilds_a_policy_through_its_backends_action_mapping(tmp_path):
    """A sim checkpoint (driving controls) and a gym checkpoint with a 1-d box: each loads, and the rebuilt
    policy maps its raw actions as the trainer's did."""
    from envs.gym_backend import GymBackend, GymConfig
    from grpo.checkpoint import load_checkpoint
    from grpo.checkpoint_eval import _policy_from_state

    gym_path = _trained_checkpoint(tmp_path / "gym", {"backend": "gym", "id": "Pendulum-v1"})
    backend = GymBackend(GymConfig(num_worlds=1))
    state = load_checkpoint(gym_path)
    policy = _policy_from_state(state, PolicyConfig(hidden_sizes=(16,), action_repeat=1), backend, str(gym_path))
    assert policy.actions.kind == "box" and policy.actions.low == (-2.0,) and policy.actions.high == (2.0,)
    backend.close()
    sim_path = _trained_checkpoint(tmp_path / "sim", STRAIGHT)
    config = EvaluateConfig(checkpoint=str(sim_path), eval=EvalConfig(num_routes=2, max_steps=10),
                            report=EvalReportConfig(baselines=("random",)))
    evaluation = evaluate_checkpoint(config)
    assert [route["steps"] for route in evaluation.results["policy"].routes] == [10, 10]


def test_a_carla_built_checkpoint_rebuilds_and_drives_on_the_simulator(tmp_path):
    """No CARLA server here: a checkpoint as the trainer writes it for env=carla (its stored env is CARLA's,
    the policy acts in driving controls on the shared observation) loads, rebuilds through the driving mapping
    and is driven on the built-in simulator with env=sim (evaluate.py's replace_env)."""
    import torch as torch_

    from grpo.checkpoint import load_checkpoint

    path = _trained_checkpoint(tmp_path, STRAIGHT)
    state = load_checkpoint(path)
    state["config"]["env"] = env_config_from_dict({"backend": "carla", "worlds_per_service": 1}).to_flat_dict()
    carla_path = save_checkpoint(state, tmp_path / "carla_last.pt")
    config = EvaluateConfig(checkpoint=str(carla_path), eval=EvalConfig(num_routes=2, max_steps=10),
                            report=EvalReportConfig(baselines=("expert",)),
                            env_overrides={"backend": "sim", **STRAIGHT}, replace_env=True)
    evaluation = evaluate_checkpoint(config)
    assert evaluation.env.backend == "sim" and evaluation.train_config["env"]["backend"] == "carla"
    assert [route["steps"] for route in evaluation.results["policy"].routes] == [10, 10]
    rebuilt = build_policy(OBSERVATION_LAYOUT.size, PolicyConfig(hidden_sizes=(16,), action_repeat=1))
    rebuilt.load_state_dict(state["policy"])
    assert rebuilt.actions.kind == "driving" and torch_.equal(rebuilt.actions.to_env(torch_.full((1, 2), 0.5)),
                                                               torch_.tensor([[0.0, 0.0, 0.0]]))
