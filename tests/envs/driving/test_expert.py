"""The rule-based expert proves the busy world drivable: it reaches the driving-score bar on held-out routes."""

import pytest
import torch

from envs.api import INFRACTIONS, OBSERVATION_LAYOUT
from envs.driving.expert import ExpertDriver, route_follower
from envs.metrics import EpisodeAccumulator, summarise
from envs.sim.config import SimConfig
from envs.sim.towngen import TownConfig
from envs.sim.world import DrivingSim

pytestmark = pytest.mark.usefixtures("one_thread")

BAR = 90.0


def drive_suite(seeds, **overrides):
    """Driving-score summary of the expert on the eval split, one route per episode seed."""
    sim = DrivingSim(SimConfig(num_worlds=len(seeds), split="eval", **overrides))
    expert = ExpertDriver(vehicle=sim.config.vehicle)
    obs = sim.reset(list(seeds))
    metrics = EpisodeAccumulator(len(seeds))
    records = []
    for _ in range(sim.config.max_episode_steps):
        result = sim.step(expert(obs))
        obs = result.observation
        records += metrics.update(result.info, result.terminated | result.truncated)
        if len(records) == len(seeds):
            break
    return summarise(records), records


def test_expert_reaches_the_bar_on_a_small_route_set():
    # Four held-out routes of 150 m in the default busy world (traffic, pedestrians, lights).
    summary, records = drive_suite(range(4), town=TownConfig(num_routes=16, route_length_m=150.0), num_towns=4)
    assert summary["driving_score"] >= BAR, [(r.world, r.driving_score, r.infractions) for r in records]


@pytest.mark.slow
def test_expert_reaches_the_bar_on_sixty_four_held_out_routes():
    summary, records = drive_suite(range(64))
    assert summary["driving_score"] >= BAR, summary
    penalised = ("collision_pedestrian", "collision_vehicle", "collision_static", "red_light")
    assert sum(r.infractions[name] for r in records for name in penalised) <= 2


def test_expert_stops_for_a_red_light_ahead():
    obs = torch.zeros(1, OBSERVATION_LAYOUT.size)
    slices = OBSERVATION_LAYOUT.slices
    obs[0, slices["ego"].start] = 1.0  # 10 m/s
    obs[0, slices["route"]] = torch.stack([torch.arange(1, 11) * 5.0 / 50, torch.zeros(10)], 1).reshape(-1)
    free = ExpertDriver()(obs)
    obs[0, slices["light"]] = torch.tensor([1.0, 0.0, 0.0, 20.0 / 50, 1.0])  # red, 20 m ahead
    red = ExpertDriver()(obs)
    assert free[0, 1] == 0 and red[0, 1] > 0.2  # brakes for the red light
    obs[0, slices["light"]] = torch.tensor([0.0, 0.0, 1.0, 20.0 / 50, 1.0])  # green
    assert ExpertDriver()(obs)[0, 1] == 0


def test_expert_keeps_its_gap_to_a_slow_car_ahead():
    obs = torch.zeros(1, OBSERVATION_LAYOUT.size)
    slices = OBSERVATION_LAYOUT.slices
    obs[0, slices["ego"].start] = 1.0
    obs[0, slices["route"]] = torch.stack([torch.arange(1, 11) * 5.0 / 50, torch.zeros(10)], 1).reshape(-1)
    car = torch.tensor([12.0 / 50, 0.0, 1.0, 0.0, 0.2, 0.0, 0.96, 0.38, 1.0])  # 12 m ahead at 2 m/s
    obs[0, slices["vehicles"].start:slices["vehicles"].start + 9] = car
    action = ExpertDriver()(obs)
    assert action[0, 0] == 0 and action[0, 1] > 0.3
    car[1] = 3.5 / 50  # the same car in the next lane: no reason to brake
    obs[0, slices["vehicles"].start:slices["vehicles"].start + 9] = car
    assert ExpertDriver()(obs)[0, 1] == 0


def test_obstacle_in_way_is_the_gap_less_the_standstill_gap_to_what_is_in_the_way():
    obs = torch.zeros(3, OBSERVATION_LAYOUT.size)
    slices = OBSERVATION_LAYOUT.slices
    obs[:, slices["ego"].start] = 1.0  # 10 m/s
    obs[:, slices["route"]] = torch.stack([torch.arange(1, 11) * 5.0 / 50, torch.zeros(10)], 1).reshape(-1)
    vehicles = slices["vehicles"].start
    # world 0: nothing ahead; world 1: a car 20 m ahead (centre to centre) at 2 m/s; world 2: that car one lane over
    car = torch.tensor([20.0 / 50, 0.0, 1.0, 0.0, 0.2, 0.0, 0.96, 0.38, 1.0])
    obs[1, vehicles:vehicles + 9] = car
    car[1] = 3.5 / 50
    obs[2, vehicles:vehicles + 9] = car
    expert = ExpertDriver()
    room, lead_speed, pedestrian = expert.obstacle_in_way(obs)
    # bumper to bumper: 20 m less half of each car (4.8 m long), less the expert's 3 m standstill gap
    assert room[1].item() == pytest.approx(20.0 - 4.8 - expert.config.vehicle_gap, abs=1e-4)
    assert lead_speed[1].item() == pytest.approx(2.0, abs=1e-5)
    assert room[0] >= 1e5 and room[2] >= 1e5 and lead_speed[0] == 0 and lead_speed[2] == 0
    assert not pedestrian.any()
    # a pedestrian standing on the route 12 m ahead of world 1's bumper... is nearer than its car: it counts
    walker = slices["pedestrians"].start
    obs[1, walker:walker + 5] = torch.tensor([(12.0 + 2.4) / 50, 0.0, 0.0, 0.0, 1.0])
    room, lead_speed, pedestrian = expert.obstacle_in_way(obs)
    assert room[1].item() == pytest.approx(12.0 - expert.config.pedestrian_gap, abs=1e-4)
    assert lead_speed[1] == 0 and pedestrian.tolist() == [False, True, False]


def test_route_follower_is_still_there():
    obs = torch.zeros(2, OBSERVATION_LAYOUT.size)
    assert route_follower(obs).shape == (2, 3)
    assert set(INFRACTIONS) >= {"red_light"}


def test_points_project_onto_their_nearest_segment_of_the_path():
    from envs.driving.expert import _project

    # An L: 10 m east, 10 m north, then the goal repeated (a zero-length segment that is never nearest).
    path = torch.tensor([[[0.0, 0.0], [10.0, 0.0], [10.0, 10.0], [10.0, 10.0]]])
    segment = path[:, 1:] - path[:, :-1]
    raw = segment.norm(dim=-1)
    cumulative = torch.cat([torch.zeros(1, 1), raw.cumsum(1)], 1)
    points = torch.tensor([[
        [4.0, 1.5],  # beside the first leg, to its left: 4 m along, 1.5 m left
        [-3.0, -2.0],  # behind the start: the first segment extends backwards
        [8.0, 6.0],  # left of the second leg: 10 + 6 m along, 2 m left of it
        [12.0, 4.0],  # right of the second leg
        [10.0, 13.0],  # beyond the goal: clamped to the end, on the last real segment's line
    ]])
    along, lateral, tangent = _project(points, path, segment, raw.clamp(min=1e-3), cumulative)
    assert torch.allclose(along, torch.tensor([[4.0, -3.0, 16.0, 14.0, 20.0]]), atol=1e-5)
    assert torch.allclose(lateral, torch.tensor([[1.5, -2.0, 2.0, -2.0, 0.0]]), atol=1e-5)
    assert torch.allclose(tangent, torch.tensor([[[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [0.0, 1.0]]]))


def test_actors_along_route_measure_gaps_along_and_clearances_across_the_path():
    obs = torch.zeros(1, OBSERVATION_LAYOUT.size)
    slices = OBSERVATION_LAYOUT.slices
    obs[:, slices["route"]] = torch.stack([torch.arange(1, 11) * 5.0 / 50, torch.zeros(10)], 1).reshape(-1)
    vehicles, walker = slices["vehicles"].start, slices["pedestrians"].start
    # slot 0: a car 20 m ahead in the ego's lane, standing; slot 1: a car 30 m ahead one lane (3.5 m) to the
    # left, driving towards the ego at 5 m/s (heading reversed); slot 2: empty
    obs[0, vehicles:vehicles + 9] = torch.tensor([20.0 / 50, 0.0, 1.0, 0.0, 0.0, 0.0, 0.96, 0.38, 1.0])
    obs[0, vehicles + 9:vehicles + 18] = torch.tensor([30.0 / 50, 3.5 / 50, -1.0, 0.0, -0.5, 0.0, 0.96, 0.38, 1.0])
    # a pedestrian 15 m ahead, 4 m to the right, walking left at 1.2 m/s
    obs[0, walker:walker + 5] = torch.tensor([15.0 / 50, -4.0 / 50, 0.0, 0.12, 1.0])
    cars, walkers = ExpertDriver().actors_along_route(obs)
    length, width = 4.8, 1.9
    # gaps (now, 1 s, 2 s) from bumper to near edge / 50; clearances between the bodies' sides / 5
    standing_gap = (20.0 - length) / 50
    assert cars[0, 0, :3].tolist() == pytest.approx([standing_gap] * 3, abs=1e-4)
    assert cars[0, 0, 3:6].tolist() == pytest.approx([-width / 5] * 3, abs=1e-4)  # fully overlapping sideways
    assert cars[0, 0, 6:].tolist() == pytest.approx([1.0, 0.0, 0.0, 0.0, 1.0], abs=1e-4)
    oncoming_gaps = [(30.0 - 5.0 * t - length) / 50 for t in (0, 1, 2)]
    assert cars[0, 1, :3].tolist() == pytest.approx(oncoming_gaps, abs=1e-4)
    assert cars[0, 1, 3:6].tolist() == pytest.approx([(3.5 - width) / 5] * 3, abs=1e-4)  # 1.6 m of air between
    assert cars[0, 1, 6:].tolist() == pytest.approx([-1.0, 0.0, -0.5, 0.0, 1.0], abs=1e-4)
    assert (cars[0, 2] == 0).all()
    # pedestrian: gap now and at the horizon's end (5 s: 6 m to the left), lateral then and now, velocity
    horizon = ExpertDriver().config.pedestrian_horizon_s
    assert walkers[0, 0].tolist() == pytest.approx(
        [(15.0 - length / 2) / 50] * 2 + [-4.0 / 5, (-4.0 + 1.2 * horizon) / 5, 0.0, 0.12, 1.0], abs=1e-4)
    assert (walkers[0, 1:] == 0).all()
