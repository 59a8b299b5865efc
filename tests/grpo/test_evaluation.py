"""The evaluation suite driver: leaderboard scores of scripted routes, the baselines on the straight road, waves,
reproducibility, held actions, and the pictures it keeps."""

import dataclasses

import numpy as np
import pytest
import torch

from envs.api import INFRACTIONS, OBSERVATION_LAYOUT, BackendBase, BackendSpec, StepResult
from envs.driving.expert import route_follower
from envs.factory import env_config_from_dict
from envs.sim.render import ROAD_COLOR
from grpo.baselines import ControllerDriver, build_baseline
from grpo.config import EvalConfig
from grpo.evaluation import evaluate_policy
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
