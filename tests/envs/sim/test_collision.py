"""Collisions between oriented boxes and discs, and the infractions they (and red lights) raise."""

import math

import pytest
import torch

from envs.driving.lights import GREEN, RED
from envs.sim.collision import boxes_overlap, disc_box_overlap
from envs.sim.config import LightConfig, PedestrianConfig, SimConfig, TrafficConfig
from envs.sim.towngen import TownConfig
from envs.sim.world import DrivingSim

pytestmark = pytest.mark.usefixtures("one_thread")

T = torch.tensor


@pytest.mark.parametrize("bx,by,byaw,expected", [
    (4.7, 0.0, 0.0, True),  # nose to tail, 0.1 m overlap (two 4.8 m boxes)
    (4.9, 0.0, 0.0, False),  # 0.1 m apart
    (0.0, 1.8, 0.0, True),  # side by side, 0.1 m overlap (1.9 m wide)
    (0.0, 2.0, 0.0, False),  # side by side, 0.1 m apart
    (3.3, 0.0, math.pi / 2, True),  # T-bone: B's side (0.95 m half-width) reaches A's nose at 2.35 < 2.4
    (3.4, 0.0, math.pi / 2, False),  # B's side at 2.45 m: clear of A's nose (2.4 m)
    (4.6, 3.2, math.pi / 4, False),  # diagonal: the bounding boxes overlap, B's rear face separates them
    (2.4, 1.5, math.pi / 4, True),  # diagonal: B's rear corner (1.38, -0.87) is inside A
])
def test_box_overlap_on_hand_built_geometry(bx, by, byaw, expected):
    result = boxes_overlap(T(0.0), T(0.0), T(0.0), 4.8, 1.9, T(bx), T(by), T(byaw), 4.8, 1.9)
    assert bool(result) is expected
    # Symmetric.
    assert bool(boxes_overlap(T(bx), T(by), T(byaw), 4.8, 1.9, T(0.0), T(0.0), T(0.0), 4.8, 1.9)) is expected


@pytest.mark.parametrize("cx,cy,expected", [
    (2.6, 0.0, True),  # 0.2 m beyond the nose, radius 0.35
    (2.8, 0.0, False),  # 0.4 m beyond the nose
    (0.0, 1.2, True),  # 0.25 m from the side
    (2.7, 1.25, False),  # 0.3 m beyond the corner on both axes: 0.42 m from it
    (2.6, 1.15, True),  # 0.2 m beyond the corner on both axes: 0.28 m from it
])
def test_disc_box_overlap(cx, cy, expected):
    assert bool(disc_box_overlap(T(cx), T(cy), 0.35, T(0.0), T(0.0), T(0.0), 4.8, 1.9)) is expected


def straight(num_worlds=1, **overrides):
    config = SimConfig(num_worlds=num_worlds, map="straight", num_towns=1, terminate_on=(),
                       pedestrians=PedestrianConfig(spawn_per_minute=0.0), **overrides)
    sim = DrivingSim(config)
    sim.reset([0] * num_worlds)
    for world in range(num_worlds):
        sim.remove_vehicles(world)
    return sim


def hold(num_worlds=1):
    return torch.tensor([[0.0, 1.0, 0.0]]).repeat(num_worlds, 1)


def test_vehicle_collision_is_reported_once_per_contact():
    sim = straight()
    x, y = float(sim.state.x[0]), float(sim.state.y[0])
    lane = 0 if y < 0 else 1
    events = []
    # A stopped traffic car overlapping the ego's nose; it stays there (desired speed ~0).
    sim.place_vehicle(0, 0, lane, x + 4.0 if lane == 0 else 600.0 - x - 4.0, desired_speed=0.01)
    for _ in range(5):
        events.append(bool(sim.step(hold()).info["collision_vehicle"][0]))
    assert events == [True, False, False, False, False]
    # The contact ends, then a new one starts: one more event.
    sim.remove_vehicles(0)
    assert not bool(sim.step(hold()).info["collision_vehicle"][0])
    sim.place_vehicle(0, 1, lane, x + 4.0 if lane == 0 else 600.0 - x - 4.0, desired_speed=0.01)
    assert bool(sim.step(hold()).info["collision_vehicle"][0])


def test_vehicle_collision_terminates_by_default():
    sim = DrivingSim(SimConfig(num_worlds=1, map="straight", num_towns=1,
                               pedestrians=PedestrianConfig(num_pedestrians=0)))
    sim.reset([0])
    sim.remove_vehicles(0)
    x, y = float(sim.state.x[0]), float(sim.state.y[0])
    lane = 0 if y < 0 else 1
    sim.place_vehicle(0, 0, lane, x + 4.0 if lane == 0 else 600.0 - x - 4.0, desired_speed=0.01)
    result = sim.step(hold())
    assert result.terminated[0] and result.info["collision_vehicle"][0]
    assert result.reward[0] < -5


def test_pedestrian_collision_and_a_pedestrian_walking_past():
    sim = straight(num_worlds=2)
    x, y = float(sim.state.x[0]), float(sim.state.y[0])
    # World 0: a pedestrian standing right at the ego's nose. World 1: one 3 m to the side, walking away.
    sim.place_pedestrian(0, 0, x + 2.5, y, 0.0, 0.0, walk_s=5.0)
    sim.place_pedestrian(1, 0, x, y + 3.0, 0.0, 1.3, walk_s=5.0)
    result = sim.step(hold(2))
    assert result.info["collision_pedestrian"].tolist() == [True, False]


def test_static_collision_reports_the_start_of_each_contact():
    sim = straight()
    sim.state.y[0] = -8.0  # the body beyond the kerb
    events = [bool(sim.step(hold()).info["collision_static"][0]) for _ in range(3)]
    assert events == [True, False, False]


def junction_sim(state):
    """One world on the junction map, its light ahead put in ``state`` for the next seconds."""
    config = SimConfig(num_worlds=1, map="junction", num_towns=1, terminate_on=(), max_episode_steps=5000,
                       town=TownConfig(num_routes=8, route_length_m=150.0),
                       traffic=TrafficConfig(num_vehicles=0), pedestrians=PedestrianConfig(num_pedestrians=0),
                       lights=LightConfig(green_s=30.0, yellow_s=3.0, all_red_s=2.0))
    sim = DrivingSim(config)
    sim.reset([0])
    lanes, _ = sim.bank.route_lanes(sim.state.town_slot, sim.state.route_id)
    town = sim.town(0)
    light = next(int(town.lane_light[lane]) for lane in lanes[0].tolist() if lane >= 0 and town.lane_light[lane] >= 0)
    phase, cycle = int(town.light_phase[light]), 4 * config.lights.phase_s
    # Junction 0 is at frac(offset) of its cycle at time 0: start the light's phase (green) or the next one.
    start = phase * config.lights.phase_s + (1.0 if state == GREEN else config.lights.phase_s + 1.0)
    sim.state.light_offset[0] = (start / cycle) % 1.0
    # Put the ego 15 m before the stop line, at 10 m/s.
    stop_line = float(sim.bank.route_cum[sim.state.town_slot[0], sim.state.route_id[0], 1])
    route_s = stop_line - 15.0 - sim.config.vehicle.length / 2
    points, headings, _ = sim.bank.route_geometry(sim.state.town_slot, *sim.bank.route_lanes(
        sim.state.town_slot, sim.state.route_id), torch.tensor([[route_s]]))
    sim.state.x[0], sim.state.y[0] = points[0, 0, 0], points[0, 0, 1]
    sim.state.yaw[0], sim.state.route_s[0], sim.state.speed[0] = headings[0, 0], route_s, 10.0
    return sim, light


@pytest.mark.parametrize("state,expected", [(GREEN, 0), (RED, 1)])
def test_red_light_is_reported_when_the_front_crosses_the_stop_line_on_red(state, expected):
    sim, light = junction_sim(state)
    assert int(sim.light_state_of(torch.tensor([[light]]), torch.tensor([0]))[0, 0]) == state
    events = 0
    for _ in range(40):  # 4 s at ~10 m/s: well through the junction
        events += int(sim.step(torch.tensor([[0.3, 0.0, 0.0]])).info["red_light"][0])
    assert events == expected
    # The observation's light slot showed it: red one-hot, or green.
    assert int(sim.state.lights_passed[0]) >= 1
