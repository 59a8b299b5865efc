"""Pedestrians: crossings from kerb to kerb ahead of the ego, at the configured rate, waiting beside the ego."""

import pytest
import torch

from envs.sim.config import PedestrianConfig, SimConfig, TrafficConfig
from envs.sim.pedestrians import KERB_OFFSET_M, spawn_pedestrian
from envs.sim.world import DrivingSim

pytestmark = pytest.mark.usefixtures("one_thread")

NO_TRAFFIC = TrafficConfig(num_vehicles=0)


def straight(num_worlds=4, **pedestrians):
    sim = DrivingSim(SimConfig(num_worlds=num_worlds, map="straight", num_towns=1, traffic=NO_TRAFFIC,
                               pedestrians=PedestrianConfig(**pedestrians), terminate_on=()))
    sim.reset(list(range(num_worlds)))
    return sim


def force_crossings(sim):
    s = sim.state
    lanes, cum = sim.bank.route_lanes(s.town_slot, s.route_id)
    return spawn_pedestrian(sim.bank, sim.config, s.town_slot, sim._pedestrians(), lanes, cum, s.route_s, s.route_end_s,
                            s.speed, s.rng_key, s.step, force=True)


def test_a_crossing_goes_from_kerb_to_kerb_ahead_of_the_ego():
    sim = straight()
    crossing = force_crossings(sim)
    start_x, start_y = crossing.x[:, 0], crossing.y[:, 0]
    end_y = start_y + crossing.vy[:, 0] * crossing.time_left[:, 0]
    # The straight road spans y in [-3.5, 3.5]: crossings start and end 1 m onto the pavement, across it.
    assert torch.allclose(start_y.abs(), torch.full_like(start_y, 3.5 + KERB_OFFSET_M), atol=0.3)
    assert torch.allclose(end_y, -start_y, atol=0.3)
    assert torch.allclose(crossing.vx[:, 0], torch.zeros(4), atol=1e-4)  # perpendicular to the road
    speed = crossing.vy[:, 0].abs()
    assert ((speed >= 1.2 - 1e-5) & (speed <= 1.5 + 1e-5)).all()
    ahead = (start_x - sim.state.x) * torch.cos(sim.state.yaw)  # eastbound or westbound
    assert ((ahead >= 25.0 - 1e-3) & (ahead <= 60.0 + 1e-3)).all()  # spawn_ahead_m along the straight route


def test_crossings_start_at_the_configured_rate():
    sim = straight(num_worlds=64, spawn_per_minute=12.0, num_pedestrians=1, walk_speed=(1.4, 1.4))
    started = 0
    hold = torch.tensor([[0.0, 1.0, 0.0]]).repeat(64, 1)
    was_active = sim.state.ped_time_left > 0
    for _ in range(150):  # 15 s
        sim.step(hold)
        active = sim.state.ped_time_left > 0
        started += int((active & ~was_active).sum())
        was_active = active
    # 12 per minute while the slot is free; a crossing lasts (7 + 2) / 1.4 = 6.4 s, so a slot is free
    # about 44% of the time (more at first): 12 x 0.25 min x ~0.5 ~ 1.5 per world.
    assert 0.9 < started / 64 < 2.2


def test_a_pedestrian_waits_beside_the_ego_and_walks_on_after_it_leaves():
    sim = straight(num_worlds=1, spawn_per_minute=0.0)
    x, y = float(sim.state.x[0]), float(sim.state.y[0])
    # Walking towards the ego's side from 2.5 m away.
    sim.place_pedestrian(0, 0, x, y + 2.5 + 0.95, 0.0, -1.3, walk_s=10.0)
    hold = torch.tensor([[0.0, 1.0, 0.0]])
    for _ in range(30):
        result = sim.step(hold)
        assert not result.info["collision_pedestrian"][0]
    assert float(sim.state.ped_moving[0, 0]) == 0.0  # waiting
    obs = sim.observe()
    walker = obs[0, sim.layout.slices["pedestrians"]].view(-1, 5)[0]
    assert walker[4] == 1 and walker[2] == 0 and walker[3] == 0  # seen, standing still
    for _ in range(40):  # the ego drives off; the pedestrian walks on
        sim.step(torch.tensor([[1.0, 0.0, 0.0]]))
    assert float(sim.state.ped_moving[0, 0]) == 1.0


@pytest.mark.parametrize("num", [0])
def test_pedestrians_can_be_switched_off(num):
    sim = straight(num_pedestrians=num)
    result = sim.step(torch.zeros(4, 3))
    assert (result.observation[:, sim.layout.slices["pedestrians"]] == 0).all()
