"""Evaluation arithmetic on hand-built numbers, config plumbing, and the baselines on the straight road."""

import dataclasses
import math

import numpy as np
import pytest
import torch

from envs.api import INFRACTIONS, OBSERVATION_LAYOUT, BackendBase, BackendSpec, StepResult
from envs.driving.expert import route_follower
from envs.factory import env_config_from_dict
from envs.sim.render import ROAD_COLOR
from grpo.baselines import ControllerDriver, build_baseline
from grpo.checkpoint import CheckpointError, save_checkpoint
from grpo.config import EvalConfig
from grpo.evaluation import (
    EvalReportConfig,
    EvaluateConfig,
    aggregate,
    ci95,
    env_for_evaluation,
    evaluate_checkpoint,
    evaluate_config_from_dict,
    evaluate_policy,
    mean_abs_jerk,
    ratio_ci95,
)
from grpo.policy import PolicyConfig, build_policy

# A short empty straight road: the expert completes a route in about 90 steps.
STRAIGHT = {"map": "straight", "num_towns": 2, "town": {"num_routes": 8, "route_length_m": 60.0},
            "traffic": {"num_vehicles": 0}, "pedestrians": {"num_pedestrians": 0}}


class ScriptedBackend(BackendBase):
    """A backend without physics whose worlds replay scripted steps: (route completion %, events, how the step
    ends). After its script a world stays frozen, as the contract says. Routes are 200 m long. Its spec gives no
    time step (evaluation takes 0.1 s) and no episode limit."""

    spec = BackendSpec("scripted")

    def __init__(self, scripts: list[list[tuple[float, tuple[str, ...], str]]]):
        self.scripts, self.num_worlds, self.observation_size = scripts, len(scripts), 4
        self.device = torch.device("cpu")

    def reset(self, seed, world_ids=None) -> torch.Tensor:
        self.t = 0
        return torch.zeros(self.num_worlds, 4)

    def step(self, actions: torch.Tensor) -> StepResult:
        self.t += 1
        worlds = range(self.num_worlds)
        info = {name: torch.zeros(self.num_worlds, dtype=torch.bool) for name in (*INFRACTIONS, "route_completed")}
        completion, done = torch.zeros(self.num_worlds), torch.zeros(self.num_worlds, dtype=torch.bool)
        for world, script in zip(worlds, self.scripts, strict=True):
            percent, events, end = script[min(self.t, len(script)) - 1]
            completion[world] = percent
            done[world] = end != "" and self.t >= len(script)
            if self.t <= len(script):  # frozen worlds report no more events
                for name in events:
                    info[name][world] = True
        info.update(route_completion=completion, route_progress_m=2.0 * completion, distance_m=2.0 * completion,
                    speed=torch.ones(self.num_worlds))
        return StepResult(torch.zeros(self.num_worlds, 4), torch.zeros(self.num_worlds), done,
                          torch.zeros(self.num_worlds, dtype=torch.bool), info)

    def close(self) -> None:
        pass


def test_driving_score_of_scripted_routes_follows_the_leaderboard():
    scripts = [
        [(20, (), ""), (40, (), ""), (60, (), ""), (80, ("collision_vehicle",), "end")],
        [(50, ("collision_pedestrian",), ""), (100, ("red_light", "route_completed"), "end")],
        [(10, (), ""), (30, ("off_road",), "end")],
        [(25, ("collision_static",), ""), (50, ("collision_static",), "")],  # still driving at eval.max_steps
        [(50, (), ""), (100, ("route_completed",), "end")],
    ]
    stopped = ControllerDriver(lambda obs: torch.zeros(len(obs), 3))
    result = evaluate_policy(stopped, None, EvalConfig(num_routes=5, max_steps=10), "cpu",
                             backend=ScriptedBackend(scripts))
    scores = [route["driving_score"] for route in result.routes]
    assert scores == pytest.approx([
        48.0,  # 80% completion, one vehicle collision: 80 x 0.60
        35.0,  # completed, one pedestrian collision and one red light: 100 x 0.50 x 0.70
        30.0,  # off-road at 30%: off-road costs completion, not a coefficient
        21.125,  # 50% and two static collisions when the step cap comes: 50 x 0.65^2
        100.0,  # a clean, completed route: the only success
    ])
    assert [route["outcome"] for route in result.routes] == ["collision_vehicle", "completed", "off_road",
                                                             "step_limit", "completed"]
    assert [route["success"] for route in result.routes] == [False, False, False, False, True]
    assert [route["steps"] for route in result.routes] == [4, 2, 2, 10, 2]
    assert result.trajectories is None and not result.maps  # no simulator state: no pictures
    metrics = result.metrics
    assert metrics["eval/driving_score"] == pytest.approx(234.125 / 5)
    # 6 infractions over 160 + 200 + 60 + 100 + 200 = 720 m of route driven
    assert metrics["eval/infractions_per_km"] == pytest.approx(6 / 0.72)
    assert metrics["eval/success_rate"] == 0.2 and metrics["eval/num_routes"] == 5


def test_confidence_intervals_over_routes():
    # mean 2.5, sample std sqrt(5/3) = 1.29099: 1.96 x 1.29099 / sqrt(4) = 1.26516
    assert ci95([1.0, 2.0, 3.0, 4.0]) == pytest.approx(1.959964 * math.sqrt(5 / 3) / 2)
    assert ci95([7.0]) == 0.0 and ci95([3.0, 3.0, 3.0]) == 0.0
    # infractions per km over routes of equal length: the interval of the counts' mean, per km
    assert ratio_ci95(torch.tensor([1.0, 0.0]), torch.tensor([1.0, 1.0])) == pytest.approx(ci95([1.0, 0.0]))
    # 3 events over 2 km + 0 over 1 km: R = 1 /km; residuals 3 - 2 = 1 and 0 - 1 = -1; variance 2 / (1 x 2 x 1.5^2)
    assert ratio_ci95(torch.tensor([3.0, 0.0]), torch.tensor([2.0, 1.0])) == pytest.approx(1.959964 * math.sqrt(4 / 9))
    # nothing driven, or less than the floor: no rate, so no interval either (as envs.metrics.per_km)
    assert math.isnan(ratio_ci95(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 0.0])))
    assert math.isnan(ratio_ci95(torch.tensor([1.0, 0.0]), torch.tensor([0.03, 0.05]), min_total=0.1))


def test_jerk_differences_the_speed_twice_over_live_steps():
    dt = 0.1
    speeds = torch.tensor([
        [0.0, 0.1, 0.3, 0.6, 1.0],  # acceleration 1, 2, 3, 4 m/s^2: jerk 10 m/s^3 throughout
        [0.0, 0.2, 0.4, 0.6, 0.8],  # constant acceleration: no jerk
        [0.0, 0.1, 0.3, 0.6, 1.0],  # only two live steps: too short to measure, 0
        [0.0, 0.1, 0.3, 0.6, 9.0],  # the last step is after the route ended and does not count: 10
    ], dtype=torch.float64).T
    live = torch.tensor([[True] * 5, [True] * 5, [True, True, False, False, False],
                         [True, True, True, True, False]]).T
    assert mean_abs_jerk(speeds, live, dt).tolist() == pytest.approx([10.0, 0.0, 0.0, 10.0])


def test_aggregate_infractions_per_km_and_success():
    common = {"route_completion": 100.0, "outcome": "completed", "steps": 100}
    routes = [{**common, "driving_score": 60.0, "success": False, "infraction_penalty": 0.6, "mean_speed": 8.0,
               "jerk": 1.0, "return": 5.0, "route_progress_m": 1000.0, "distance_m": 1010.0,
               **dict.fromkeys(INFRACTIONS, 0), "collision_vehicle": 1},
              {**common, "driving_score": 100.0, "success": True, "infraction_penalty": 1.0, "mean_speed": 6.0,
               "jerk": 3.0, "return": 9.0, "route_progress_m": 3000.0, "distance_m": 3020.0,
               **dict.fromkeys(INFRACTIONS, 0)}]
    metrics = aggregate(routes)
    assert metrics["eval/driving_score"] == 80.0 and metrics["eval/success_rate"] == 0.5
    assert metrics["eval/collision_vehicle_per_km"] == 0.25  # one collision in 4 km of route driven
    assert metrics["eval/infractions_per_km"] == 0.25 and metrics["eval/km_driven"] == 4.0
    assert metrics["eval/mean_speed"] == 7.0 and metrics["eval/jerk"] == 2.0  # means over routes
    assert metrics["eval/return"] == 7.0
    assert metrics["eval/infraction_penalty"] == 0.8 and metrics["eval/infraction_penalty_ci95"] > 0


def test_per_km_rates_of_a_suite_that_barely_moved_are_not_available():
    """Issue 17: one blocked route after 1.6 mm of route driven read as 611,950 blocked per km."""
    common = {"route_completion": 0.0, "outcome": "blocked", "steps": 600, "driving_score": 0.0, "success": False,
              "infraction_penalty": 1.0, "mean_speed": 0.0, "jerk": 0.0, "return": -5.0, "distance_m": 0.0}
    routes = [{**common, "route_progress_m": 0.0016, **dict.fromkeys(INFRACTIONS, 0), "blocked": 1},
              {**common, "route_progress_m": 0.0, **dict.fromkeys(INFRACTIONS, 0), "blocked": 1}]
    metrics = aggregate(routes)
    assert math.isnan(metrics["eval/blocked_per_km"]) and math.isnan(metrics["eval/infractions_per_km"])
    assert math.isnan(metrics["eval/blocked_per_km_ci95"])
    assert metrics["eval/km_driven"] == pytest.approx(1.6e-6)


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


def test_expert_is_well_above_random_and_waves_give_the_same_routes(straight_sim):
    env = env_config_from_dict(STRAIGHT)
    suite = EvalConfig(num_routes=3, max_steps=120)
    expert = evaluate_policy(build_baseline("expert"), env, suite, "cpu", num_gifs=1, num_maps=1)
    random = evaluate_policy(build_baseline("random"), env, dataclasses.replace(suite, max_steps=60), "cpu")
    assert expert.metrics["eval/driving_score"] > random.metrics["eval/driving_score"] + 50, (expert.metrics,
                                                                                              random.metrics)
    assert expert.metrics["eval/success_rate"] == 1.0 and {r["outcome"] for r in expert.routes} == {"completed"}

    # two worlds for three routes: two waves, the same records (the cheap route follower: any deterministic driver)
    follower = ControllerDriver(route_follower)
    two_worlds = straight_sim(2, split="eval", town=env.backend_config.town, traffic=env.backend_config.traffic,
                              pedestrians=env.backend_config.pedestrians)
    short = dataclasses.replace(suite, max_steps=30)
    waves = evaluate_policy(follower, env, short, "cpu", backend=two_worlds)
    assert waves.routes == evaluate_policy(follower, env, short, "cpu").routes

    # the recorded pictures: a trajectory per route, GIF frames every other step, the map under the start
    first = expert.routes[0]
    assert [len(t) for t in expert.trajectories] == [r["steps"] + 1 for r in expert.routes]
    assert len(expert.frames[first["seed"]]) == first["steps"] // 2 + 1
    view = expert.maps[first["seed"]]
    (x, y), (x0, x1, y0, y1) = expert.trajectories[0][0], view.extent
    height, width = view.image.shape[:2]
    pixel = view.image[int((y1 - y) / (y1 - y0) * height), int((x - x0) / (x1 - x0) * width)]
    assert tuple(pixel) == ROAD_COLOR


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


def test_suite_is_reproducible_for_a_sampled_policy():
    env = env_config_from_dict(STRAIGHT)
    suite = EvalConfig(num_routes=2, max_steps=15, deterministic=False)
    policy = build_policy(OBSERVATION_LAYOUT.size, PolicyConfig(hidden_sizes=(16,)))
    first, second = (evaluate_policy(policy, env, suite, "cpu") for _ in range(2))
    assert first.routes == second.routes
    assert np.array_equal(first.trajectories[1], second.trajectories[1])


def test_a_policy_decides_every_action_repeat_steps_in_evaluation():
    env = env_config_from_dict(STRAIGHT)
    suite = EvalConfig(num_routes=1, max_steps=12)
    policy = build_policy(OBSERVATION_LAYOUT.size, PolicyConfig(hidden_sizes=(16,), action_repeat=4))
    calls = []
    policy.register_forward_hook(lambda *_: calls.append(1))
    evaluate_policy(policy, env, suite, "cpu")
    assert len(calls) == 3  # steps 0, 4 and 8 of 12


def test_a_checkpoint_from_before_held_actions_is_driven_every_step(tmp_path, monkeypatch):
    import grpo.evaluation as evaluation

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
    from grpo.evaluation import _policy_from_state

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
