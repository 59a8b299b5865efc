"""Traffic: the intelligent driver model, leaders by lane, lights, yielding, spawning, and no crashes."""

import pytest
import torch

from envs.driving.lights import RED
from envs.sim.config import PedestrianConfig, SimConfig, TrafficConfig
from envs.sim.towngen import TownConfig, cross_junction_ids
from envs.sim.traffic import FAR, idm_acceleration, lane_leaders, traffic_overlaps
from envs.sim.world import DrivingSim

pytestmark = pytest.mark.usefixtures("one_thread")

IDM = TrafficConfig()
NO_PEDESTRIANS = PedestrianConfig(num_pedestrians=0)


def brake(num_worlds):
    return torch.tensor([[0.0, 1.0, 0.0]]).repeat(num_worlds, 1)


def test_idm_free_road_and_approach_to_a_stopped_leader():
    speed, desired = torch.tensor([0.0, 10.0]), torch.tensor([10.0, 10.0])
    free = idm_acceleration(speed, desired, torch.full((2,), FAR), torch.zeros(2), IDM)
    assert free[0] == pytest.approx(IDM.max_accel) and free[1] == pytest.approx(0.0, abs=1e-6)
    # Follow the model from 10 m/s towards a stopped car 60 m ahead: it stops about s0 behind it and
    # never touches it.
    position, v = torch.tensor([0.0]), torch.tensor([10.0])
    leader = 60.0
    gaps = []
    for _ in range(600):
        gap = leader - position
        a = idm_acceleration(v, torch.tensor([10.0]), gap, torch.zeros(1), IDM)
        v = (v + a * 0.1).clamp(min=0)
        position = position + v * 0.1
        gaps.append(float(leader - position))
    assert min(gaps) > 0.9 * IDM.min_gap
    assert gaps[-1] == pytest.approx(IDM.min_gap, abs=0.3)
    assert float(v) < 0.05


def straight_world(num_worlds=1, pedestrians=NO_PEDESTRIANS, **traffic):
    config = SimConfig(num_worlds=num_worlds, map="straight", num_towns=1, pedestrians=pedestrians,
                       traffic=TrafficConfig(**traffic), max_episode_steps=5000, terminate_on=())
    sim = DrivingSim(config)
    sim.reset([0] * num_worlds)
    for world in range(num_worlds):
        sim.remove_vehicles(world)
    return sim


def ego_lane_and_s(sim, world=0):
    lanes, cum = sim.bank.route_lanes(sim.state.town_slot, sim.state.route_id)
    index = int(sim.state.route_index[world])
    return int(lanes[world, index]), float(sim.state.route_s[world] - cum[world, index])


def test_traffic_keeps_its_gap_behind_the_stopped_ego():
    sim = straight_world()
    lane, ego_s = ego_lane_and_s(sim)
    sim.place_vehicle(0, 0, lane, ego_s - 60.0 if ego_s > 70 else 0.0, speed=10.0)
    start_gap = ego_s - float(sim.state.traffic_s[0, 0])
    for _ in range(150):
        sim.step(brake(1))
        gap = float(sim.state.route_s[0] - sim.state.traffic_s[0, 0]) - sim.config.vehicle.length
        assert gap > 0.5, "the follower never reaches the ego"
    assert start_gap > 20
    assert float(sim.state.traffic_speed[0, 0]) < 0.05
    assert gap == pytest.approx(sim.config.traffic.min_gap, abs=1.0)


def park_ego_beside_the_junction(sim, world=0):
    """The ego off the road north-west of the junction: a spectator, near enough that traffic stays (and
    with an unreachable goal, so its episode never ends)."""
    sim.state.x[world], sim.state.y[world], sim.state.yaw[world] = -20.0, 40.0, 0.0
    sim.state.route_end_s[world] = 1e6


def empty_junction(**overrides):
    """One world on the 4-way junction with its traffic removed and the ego parked beside it, plus the
    junction's lane ids and its town: a stage for hand-placed vehicles."""
    sim = DrivingSim(SimConfig(num_worlds=1, map="junction", num_towns=1, pedestrians=NO_PEDESTRIANS,
                               terminate_on=(), **overrides))
    sim.reset([0])
    sim.remove_vehicles(0)
    park_ego_beside_the_junction(sim)
    return sim, cross_junction_ids(), sim.town(0)


def test_follower_stops_behind_a_leader_on_the_next_lane():
    sim, ids, town = empty_junction()
    approach = ids.approach["eastbound"][0]
    straight = next(int(c) for c in town.lane_successors[approach]
                    if c >= 0 and town.lane_successors[c, 0] == ids.exit["eastbound"][0])
    # A stopped leader 4 m into the straight connector, a follower 25 m before the approach's end.
    sim.place_vehicle(0, 0, straight, 4.0, speed=0.0, desired_speed=0.1)
    sim.place_vehicle(0, 1, approach, float(town.lane_length[approach]) - 25.0, speed=8.0, next_lane=straight)
    for _ in range(120):
        sim.step(brake(1))
    overlaps = traffic_overlaps(sim._vehicles(), sim.config.vehicle.length, sim.config.vehicle.width)
    assert int(overlaps[0]) == 0
    assert float(sim.state.traffic_speed[0, 1]) < 0.1


def test_lane_leaders_on_hand_made_cases():
    # One world, actors: 0 on lane 5 at s 10; 1 on lane 5 at s 30; 2 on lane 7 (the next of 0 and 1) at
    # s 3; 3 on lane 9 at s 45 of 50 (merging into lane 7 from another lane, 5 m from the merge).
    lane = torch.tensor([[5, 5, 7, 9]], dtype=torch.int32)
    s = torch.tensor([[10.0, 30.0, 3.0, 45.0]])
    next_lane = torch.tensor([[7, 7, -1, 7]], dtype=torch.int32)
    length = torch.tensor([[40.0, 40.0, 60.0, 50.0]])
    remaining = length - s
    no_predecessor = torch.full_like(lane, -1)
    speed = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    position, leader_speed = lane_leaders(
        lane, s, next_lane, remaining, no_predecessor, torch.zeros_like(s), speed, next_lane,
        torch.full_like(lane, -1), length, torch.tensor([[60.0, 60.0, 0.0, 60.0]]), max_lanes=10)
    # 0 follows 1 on its own lane (at 30).
    assert position[0, 0] == pytest.approx(30.0) and leader_speed[0, 0] == 2.0
    # 1: on its lane nobody is ahead; the merger 3 is 5 m from the merge, nearer than 1 (10 m), so 1
    # follows it, projected onto its lane at 40 - 5 = 35, before 2 on the next lane (at 40 + 3 = 43).
    assert position[0, 1] == pytest.approx(35.0) and leader_speed[0, 1] == 4.0
    # 2 has no leader; 3 has nobody ahead (1 and 0 are farther from the merge), so it sees 2 on lane 7.
    assert position[0, 2] == -FAR
    assert position[0, 3] == pytest.approx(50.0 + 3.0) and leader_speed[0, 3] == 3.0


def test_traffic_stops_at_a_red_light_and_never_enters_on_red():
    sim, ids, town = empty_junction(max_episode_steps=5000)
    approach = ids.approach["eastbound"][0]
    light = ids.light["eastbound"]
    # Put the junction's cycle where this approach has just turned red: the vehicle (8 m/s, 60 m away)
    # arrives on red, waits, and goes on the next green.
    phase = int(town.light_phase[light])
    cycle = len(town.light_phase) * sim.config.lights.phase_s
    start = (phase + 1) * sim.config.lights.phase_s - sim.config.lights.all_red_s - sim.config.lights.yellow_s
    sim.state.light_offset[0] = start / cycle  # junction 0 starts at the fraction frac(offset) of its cycle
    sim.place_vehicle(0, 0, approach, float(town.lane_length[approach]) - 60.0, speed=8.0)
    entered_on = []
    was_on_approach = True
    for _ in range(600):
        state = int(sim.light_state_of(torch.tensor([[light]]), torch.tensor([0]))[0, 0])
        sim.step(brake(1))
        on_approach = int(sim.state.traffic_lane[0, 0]) == approach
        if was_on_approach and not on_approach:
            entered_on.append(state)
        was_on_approach = on_approach
        if not on_approach:
            break
    assert entered_on and entered_on[0] != RED
    assert int(sim.state.step[0]) > 300  # it waited for the other three approaches' phases


@pytest.mark.parametrize("seed", [3])
def test_a_traffic_only_world_runs_without_traffic_collisions(seed):
    # The ego stands still (braking) at its start; traffic keeps respawning around it.
    config = SimConfig(num_worlds=8, num_towns=2, town=TownConfig(num_routes=8, route_length_m=200.0),
                       pedestrians=NO_PEDESTRIANS, max_episode_steps=5000, terminate_on=(), blocked_time_s=1e6)
    sim = DrivingSim(config)
    sim.reset(seed)
    active = moving = 0
    for _ in range(200):
        sim.step(brake(8))
        vehicles = sim._vehicles()
        assert int(traffic_overlaps(vehicles, 4.8, 1.9).sum()) == 0
        active += int((vehicles.lane >= 0).sum())
        moving += int((vehicles.speed > 1.0).sum())
    assert active / 200 / 8 > 6 and moving / 200 / 8 > 3  # busy, and not a traffic jam


@pytest.mark.slow
def test_busy_worlds_run_long_without_traffic_collisions():
    config = SimConfig(num_worlds=64, max_episode_steps=100_000, terminate_on=(), blocked_time_s=1e6)
    sim = DrivingSim(config)
    sim.reset(11)
    for _ in range(1500):
        sim.step(brake(64))
        assert int(traffic_overlaps(sim._vehicles(), 4.8, 1.9).sum()) == 0


def test_spawns_are_in_range_apart_and_deterministic():
    config = SimConfig(num_worlds=16, num_towns=2, town=TownConfig(num_routes=8, route_length_m=200.0))
    a, b = DrivingSim(config), DrivingSim(config)
    a.reset(5)
    b.reset(5)
    assert torch.equal(a.state.floats, b.state.floats) and torch.equal(a.state.ints, b.state.ints)
    vehicles = a._vehicles()
    active = vehicles.lane >= 0
    assert active.sum(1).min() >= 6  # populated at reset
    distance = ((vehicles.x - a.state.x[:, None]) ** 2 + (vehicles.y - a.state.y[:, None]) ** 2).sqrt()
    assert (distance[active] >= 14.9).all() and (distance[active] <= a.config.traffic.spawn_distance_m[1]).all()
    apart = ((vehicles.x[:, :, None] - vehicles.x[:, None]) ** 2 + (vehicles.y[:, :, None] - vehicles.y[:, None]) ** 2)
    pair = active[:, :, None] & active[:, None] & ~torch.eye(active.shape[1], dtype=torch.bool)
    assert (apart[pair] >= 11.9 ** 2).all()


def test_traffic_yields_to_a_pedestrian_crossing_ahead():
    sim = straight_world(pedestrians=PedestrianConfig(spawn_per_minute=0.0))
    sim.state.x[0] = sim.state.y[0] = 1000.0  # the ego out of the way
    sim.place_vehicle(0, 0, 0, 100.0, speed=8.0)  # eastbound lane 0 (y = -1.75)
    sim.place_pedestrian(0, 0, x=140.0, y=-6.0, vx=0.0, vy=1.3, walk_s=10.0)
    for _ in range(80):
        sim.step(brake(1))
        front = float(sim.state.traffic_x[0, 0]) + 2.4
        assert not (abs(float(sim.state.ped_y[0, 0]) + 1.75) < 1.3 and abs(front - 140.0) < 0.3)
    assert float(sim.state.traffic_x[0, 0]) < 140.0 - 2.4  # it waited before the crossing line
