"""The vehicle, pedestrian and light slots of the observation: ego frame, nearest first, normalised."""

import math

import pytest
import torch

from envs.api import OBSERVATION_LAYOUT
from envs.driving.observation import SIZE_SCALE_M
from envs.sim.config import PedestrianConfig, SimConfig, TrafficConfig
from envs.sim.world import DrivingSim

pytestmark = pytest.mark.usefixtures("one_thread")
LAYOUT = OBSERVATION_LAYOUT


@pytest.fixture
def sim():
    sim = DrivingSim(SimConfig(num_worlds=1, map="straight", num_towns=1, traffic=TrafficConfig(num_vehicles=10),
                               pedestrians=PedestrianConfig(spawn_per_minute=0.0)))
    sim.reset([0])
    sim.remove_vehicles(0)
    return sim


def ahead_on_ego_lane(sim, metres):
    """(lane, s) of the point ``metres`` ahead of the ego on its lane of the straight road."""
    x, yaw = float(sim.state.x[0]), float(sim.state.yaw[0])
    east = abs(yaw) < 1.0
    return (0, x + metres) if east else (1, 600.0 - x + metres)


def test_vehicle_slots_hold_the_nearest_vehicles_in_the_ego_frame(sim):
    for slot, metres in enumerate([30.0, 10.0, 20.0]):
        lane, s = ahead_on_ego_lane(sim, metres)
        sim.place_vehicle(0, slot, lane, s, speed=5.0)
    other_lane = 1 - ahead_on_ego_lane(sim, 0.0)[0]
    sim.place_vehicle(0, 3, other_lane, 300.0, speed=4.0)  # the oncoming lane, farther
    vehicles = sim.observe()[0, LAYOUT.slices["vehicles"]].view(LAYOUT.num_vehicles, -1)
    x, y, cos_yaw, sin_yaw, vx, vy, length, width, valid = vehicles.T
    assert valid[:4].tolist() == [1, 1, 1, 1] and (vehicles[4:] == 0).all()
    # Nearest first: 10, 20, 30 m straight ahead, in metres / distance_scale.
    assert torch.allclose(x[:3] * LAYOUT.distance_scale, torch.tensor([10.0, 20.0, 30.0]), atol=1e-3)
    assert torch.allclose(y[:3], torch.zeros(3), atol=1e-4)
    # Same heading as the ego; velocity 5 m/s forward, in m/s / speed_scale.
    assert torch.allclose(cos_yaw[:3], torch.ones(3), atol=1e-5) and torch.allclose(vx[:3], torch.full((3,), 0.5))
    # The oncoming car faces the ego and moves towards it, 3.5 m to its left.
    assert cos_yaw[3] == pytest.approx(-1.0, abs=1e-5) and vx[3] == pytest.approx(-0.4, abs=1e-5)
    assert y[3] * LAYOUT.distance_scale == pytest.approx(3.5, abs=1e-3)
    assert length[0] == pytest.approx(4.8 / SIZE_SCALE_M) and width[0] == pytest.approx(1.9 / SIZE_SCALE_M)


def test_pedestrian_slots(sim):
    x, y, yaw = (float(v[0]) for v in (sim.state.x, sim.state.y, sim.state.yaw))
    forward = torch.tensor([math.cos(yaw), math.sin(yaw)])
    left = torch.tensor([-math.sin(yaw), math.cos(yaw)])
    at = torch.tensor([x, y]) + 15.0 * forward + 4.0 * left
    velocity = -1.3 * left  # walking towards the ego's path
    sim.place_pedestrian(0, 2, float(at[0]), float(at[1]), float(velocity[0]), float(velocity[1]), walk_s=5.0)
    walkers = sim.observe()[0, LAYOUT.slices["pedestrians"]].view(LAYOUT.num_pedestrians, -1)
    assert torch.allclose(walkers[0], torch.tensor([15.0 / 50, 4.0 / 50, 0.0, -0.13, 1.0]), atol=1e-4)
    assert (walkers[1:] == 0).all()


def test_no_light_on_a_road_without_junctions(sim):
    light = sim.observe()[0, LAYOUT.slices["light"]]
    assert (light == 0).all()
