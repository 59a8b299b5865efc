"""The server-free core of the CARLA backend: snapshot packing, observations from captured states (with
CARLA's left-handed frame turned into the observation's right-handed one), the episode rules, and the
settings and restore helpers."""

import dataclasses
import math

import numpy as np
import pytest
import torch

from envs.api import INFRACTIONS, OBSERVATION_LAYOUT, Snapshot
from envs.carla.config import CarlaConfig, CarlaTrafficConfig
from envs.carla.lights import GREEN, RED, StopLines
from envs.carla.state import (
    ActorStates,
    EpisodeState,
    RouteData,
    StepEvents,
    advance_episode,
    build_observations,
    collision_kind,
    contact_key,
    episode_from_arrays,
    episode_to_arrays,
    observation_view,
    pack_snapshot,
    project_onto_route,
    start_episode,
    unpack_snapshot,
    vehicle_keys,
)
from envs.carla.world import backdated_pose, mix_seed, world_settings_values

SLICES = OBSERVATION_LAYOUT.slices
CONFIG = CarlaConfig(traffic=CarlaTrafficConfig(num_vehicles=3, num_walkers=1))


def straight_route(length=200.0, stop_at=None, light=0):
    """A route along CARLA's +x axis at y = 0 (right-handed: the same line)."""
    x = np.arange(0.0, length + 1.0)
    points = np.stack([x, np.zeros_like(x)], axis=1)
    stop_s = np.array([stop_at]) if stop_at is not None else np.zeros(0)
    return RouteData(points, x.copy(), stop_s, np.array([light] * len(stop_s), dtype=np.int64))


def actors_with_ego(x=10.0, y=0.0, yaw=0.0, speed=0.0, num_vehicles=3, num_walkers=1, num_lights=2):
    actors = ActorStates.empty(num_vehicles, num_walkers, num_lights)
    actors.vehicle_valid[0] = True
    actors.vehicle_pose[0] = (x, y, 0.0, 0.0, 0.0, yaw)
    actors.vehicle_velocity[0] = (speed * math.cos(math.radians(yaw)), speed * math.sin(math.radians(yaw)), 0.0)
    actors.vehicle_extent[:] = (2.4, 0.95, 0.8)
    actors.light_state[:] = GREEN
    return actors


def test_keys_and_collision_classes():
    assert vehicle_keys(2) == ["hero", "traffic_0", "traffic_1"]
    assert collision_kind("vehicle.tesla.model3") == "collision_vehicle"
    assert collision_kind("walker.pedestrian.0001") == "collision_pedestrian"
    assert collision_kind("static.prop.streetbarrier") == "collision_static"
    assert collision_kind("traffic.traffic_light") == "collision_static"
    assert contact_key("traffic_3", "vehicle.audi.tt") == 4
    assert contact_key("walker_2", "walker.pedestrian.0001") == 100_002
    assert contact_key("", "static.building") == contact_key("", "static.building") >= 1_000_000


def test_episode_arrays_round_trip():
    episode = EpisodeState(episode_seed=2**40 + 3, route_kind=1, route_id=17, step=42, terminated=True,
                           route_s=12.5, last_control=(0.5, 0.0, -0.25), light_offset=0.75,
                           contact_keys=(4, -1, -1, -1, -1, -1, -1, -1), contact_steps=(40, 0, 0, 0, 0, 0, 0, 0))
    assert episode_from_arrays(*episode_to_arrays(episode)) == episode


def test_snapshot_round_trip_through_bytes():
    rng = np.random.default_rng(0)
    worlds = []
    for world in range(3):
        actors = actors_with_ego(x=float(world))
        for name in ("vehicle_pose", "vehicle_velocity", "vehicle_angular_velocity", "vehicle_control",
                     "walker_pose", "walker_target", "light_elapsed", "light_times"):
            getattr(actors, name)[:] = rng.normal(size=getattr(actors, name).shape)
        actors.vehicle_valid[:] = [True, True, False, True]
        actors.vehicle_blueprint[:] = [0, 5, 0, 2]
        worlds.append((actors, EpisodeState(episode_seed=world, step=world * 10, route_s=1.0 + world)))
    snapshot = pack_snapshot("carla", "sig", worlds, {"town": "Town03"})
    assert snapshot.num_worlds == 3 and snapshot.tensors["vehicle_pose"].shape == (3, 4, 6)
    assert snapshot.tensors["vehicle_pose"].dtype == torch.float64  # millimetres in 10 km towns
    back = unpack_snapshot(Snapshot.from_bytes(snapshot.to_bytes()).select([2, 0]))
    for (actors, episode), (expected_actors, expected_episode) in zip(back, [worlds[2], worlds[0]], strict=True):
        assert episode == expected_episode
        for field in dataclasses.fields(ActorStates):
            assert np.array_equal(getattr(actors, field.name), getattr(expected_actors, field.name)), field.name


def test_projection_sign_conventions():
    route = straight_route()
    # right-handed: y > 0 is left of a route along +x
    s, lateral, heading = project_onto_route(route, 20.3, 1.5, math.radians(10), 19.0)
    assert s == pytest.approx(20.3) and lateral == pytest.approx(1.5) and heading == pytest.approx(math.radians(10))
    s, _, _ = project_onto_route(route, 203.0, 0.0, 0.0, 199.0)
    assert s == pytest.approx(203.0)  # past the end: the route counts as completed
    s, _, _ = project_onto_route(route, -3.0, 0.0, 0.0, 0.0)
    assert s == 0.0


def test_observation_turns_carla_frame_into_the_right_handed_ego_frame():
    route = straight_route(stop_at=50.0, light=1)
    # ego at CARLA (10, 1): one metre to the right of the route (CARLA y points right); heading 10 degrees to
    # the right (CARLA yaw is clockwise seen from above)
    actors = actors_with_ego(x=10.0, y=1.0, yaw=10.0, speed=5.0)
    actors.vehicle_valid[1:3] = True
    actors.vehicle_pose[1] = (40.0, 1.0, 0.0, 0.0, 0.0, 0.0)  # farther ahead
    actors.vehicle_pose[2] = (20.0, 1.0, 0.0, 0.0, 0.0, 0.0)  # 10 m ahead, nearest
    actors.vehicle_extent[2] = (3.0, 1.2, 1.0)  # a van: 6 m x 2.4 m
    actors.walker_valid[0] = True
    actors.walker_pose[0] = (15.0, 4.0, 0.0, 0.0, 0.0, 0.0)
    actors.light_state[1] = RED
    x, y, yaw = 10.0, -1.0, -math.radians(10)
    s, lateral, heading = project_onto_route(route, x, y, yaw, 10.0)
    episode = EpisodeState(route_s=s, lateral_offset=lateral, heading_error=heading, speed=5.0,
                           last_control=(0.3, 0.0, 0.1))
    obs = build_observations(OBSERVATION_LAYOUT, [observation_view(OBSERVATION_LAYOUT, actors, episode, route)])[0]
    ego = obs[SLICES["ego"]]
    assert ego[0] == pytest.approx(0.5)  # 5 m/s / 10
    assert ego[1:4].tolist() == pytest.approx([0.3, 0.0, 0.1])
    assert ego[4] == pytest.approx(-1.0 / 5.0)  # right of the route: negative
    assert ego[5] == pytest.approx(math.sin(-math.radians(10)), abs=1e-6)  # turned right: negative
    vehicles = obs[SLICES["vehicles"]].view(OBSERVATION_LAYOUT.num_vehicles, -1)
    cos, sin = math.cos(math.radians(10)), math.sin(math.radians(10))
    # the van: 10 m ahead on the same line in the world; in the ego frame rotated by the ego's 10 degree turn
    assert vehicles[0, 0] == pytest.approx(10 * cos / 50, abs=1e-5)
    assert vehicles[0, 1] == pytest.approx(10 * sin / 50, abs=1e-5)  # left of an ego that points right
    assert vehicles[0, 6] == pytest.approx(6.0 / 5.0) and vehicles[0, 7] == pytest.approx(2.4 / 5.0)
    assert vehicles[1, 6] == pytest.approx(4.8 / 5.0)  # the car behind it keeps its own size
    assert vehicles[:2, 8].tolist() == [1.0, 1.0] and vehicles[2:, 8].sum() == 0
    walker = obs[SLICES["pedestrians"]].view(OBSERVATION_LAYOUT.num_pedestrians, -1)[0]
    assert walker[4] == 1.0 and walker[1] < 0  # CARLA y = 4 > 1: to the ego's right
    light = obs[SLICES["light"]]
    assert light.tolist() == pytest.approx([1.0, 0.0, 0.0, (50.0 - s - 2.4) / 50.0, 1.0], abs=1e-5)
    route_slice = obs[SLICES["route"]].view(-1, 2)
    assert route_slice[0, 0] == pytest.approx(5 * cos / 50, abs=0.01)


def step(episode, actors, route=None, lines=None, config=CONFIG, events=None, control=(0.5, 0.0, 0.0)):
    return advance_episode(config, episode, route or straight_route(), StopLines.empty() if lines is None else lines,
                           actors, np.array(control), events or StepEvents())


def test_progress_reward_and_info():
    route = straight_route()
    start = start_episode(7, 0, 3, route, actors_with_ego(x=10.0), 0.25)
    assert start.route_s == pytest.approx(10.0) and start.light_offset == 0.25
    episode, reward, info = step(start, actors_with_ego(x=11.0, speed=20.0))
    assert reward == pytest.approx(0.1) and episode.step == 1
    assert info["route_progress_m"] == pytest.approx(11.0) and info["route_completion"] == pytest.approx(5.5)
    assert info["distance_m"] == pytest.approx(1.0) and info["speed"] == pytest.approx(20.0)
    assert not any(info[name] for name in INFRACTIONS) and not episode.done
    assert episode.last_control == (0.5, 0.0, 0.0)


def test_a_red_light_ahead_lowers_the_progress_limit_with_stop_decel():
    reward = dataclasses.replace(CONFIG.reward, stop_decel=2.0, overspeed_per_ms=0.1)
    config = dataclasses.replace(CONFIG, reward=reward)
    route = straight_route(stop_at=21.4, light=1)  # ego front at 11 + 2.4 = 13.4 after the step: 8 m to the line
    start = start_episode(7, 0, 3, route, actors_with_ego(x=10.0), 0.0)
    actors = actors_with_ego(x=11.0, speed=6.0)
    actors.light_state[1] = RED
    _, red, _ = step(start, actors, route=route, config=config)
    limit = math.sqrt(2.0 * 2.0 * 7.0)  # stop 1 m short of the line braking at 2 m/s^2
    assert red == pytest.approx(0.1 * limit * CONFIG.fixed_delta_seconds - 0.1 * (6.0 - limit), abs=1e-5)
    actors.light_state[1] = GREEN
    assert step(start, actors, route=route, config=config)[1] == pytest.approx(0.1)  # 1 m of progress


def test_a_car_ahead_lowers_the_progress_limit_with_obstacle_decel():
    reward = dataclasses.replace(CONFIG.reward, stop_decel=0.0, obstacle_decel=2.0, overspeed_per_ms=0.1)
    config = dataclasses.replace(CONFIG, reward=reward)
    start = start_episode(7, 0, 3, straight_route(), actors_with_ego(x=10.0), 0.0)
    actors = actors_with_ego(x=11.0, speed=6.0)
    actors.vehicle_valid[1] = True  # a standing car whose centre is 20 m ahead of the ego's, on the route
    actors.vehicle_pose[1] = (31.0, 0.0, 0.0, 0.0, 0.0, 0.0)
    _, behind, _ = step(start, actors, config=config)
    room = 20.0 - 4.8 - 3.0  # bumper to bumper, less the expert's 3 m standstill gap
    limit = math.sqrt(2.0 * 2.0 * room)
    dt = CONFIG.fixed_delta_seconds  # the step's 1 m of progress counts up to limit * dt metres
    assert behind == pytest.approx(0.1 * limit * dt, abs=1e-4)  # limit 6.99 m/s: no overspeed at 6 m/s
    actors.vehicle_pose[1] = (21.0, 0.0, 0.0, 0.0, 0.0, 0.0)  # 10 m ahead: 2.2 m of room, 2.97 m/s
    _, close, _ = step(start, actors, config=config)
    limit = math.sqrt(2.0 * 2.0 * (10.0 - 4.8 - 3.0))
    assert close == pytest.approx(0.1 * limit * dt - 0.1 * (6.0 - limit), abs=1e-4)
    actors.vehicle_pose[1] = (21.0, 7.0, 0.0, 0.0, 0.0, 0.0)  # two lanes over: not in the way
    assert step(start, actors, config=config)[1] == pytest.approx(0.1)


def test_a_lasting_contact_is_one_collision():
    episode = start_episode(0, 0, 0, straight_route(), actors_with_ego(), 0.0)
    config = dataclasses.replace(CONFIG, terminate_on=())
    hit = StepEvents(collisions=[(2, "collision_vehicle")])
    counted = []
    for _ in range(3 * config.collision_repeat_steps):
        episode, reward, info = step(episode, actors_with_ego(), config=config, events=hit)
        counted.append(info["collision_vehicle"])
    assert counted[0] and sum(counted) == 1  # touching on every step
    for _ in range(config.collision_repeat_steps + 1):
        episode, _, info = step(episode, actors_with_ego(), config=config)
    episode, reward, info = step(episode, actors_with_ego(), config=config, events=hit)
    assert info["collision_vehicle"] and reward == pytest.approx(-10.0)


def test_terminal_infractions_end_the_episode():
    episode = start_episode(0, 0, 0, straight_route(), actors_with_ego(), 0.0)
    ended, reward, info = step(episode, actors_with_ego(), events=StepEvents(on_road=False))
    assert info["off_road"] and ended.terminated and reward == pytest.approx(-10.0)
    # leaderboard 2.0 (the CARLA default): 30 m off the route is a deviation; the built-in simulator's 15 m
    assert not step(episode, actors_with_ego(y=-16.0))[2]["route_deviation"]  # CARLA y = -16: 16 m to the left
    ended, _, info = step(episode, actors_with_ego(y=-31.0))
    assert info["route_deviation"] and ended.terminated
    ended, _, info = step(episode, actors_with_ego(y=-16.0), config=dataclasses.replace(CONFIG, route_deviation_m=15))
    assert info["route_deviation"] and ended.terminated
    hit = StepEvents(collisions=[(1_000_123, "collision_static")])
    ended, _, info = step(episode, actors_with_ego(), events=hit)
    assert info["collision_static"] and ended.terminated


def test_red_light_blocked_timeout_and_completion():
    lines = StopLines(np.array([[30.0, -2.0]]), np.array([[30.0, 2.0]]), np.array([[1.0, 0.0]]), np.array([1]))
    front = dataclasses.replace(CONFIG, red_light_rule="front")  # the built-in simulator's rule
    episode = start_episode(0, 0, 0, straight_route(), actors_with_ego(x=27.0), 0.0, "front")  # front at 29.4
    actors = actors_with_ego(x=28.0)  # front at 30.4: crosses the line
    actors.light_state[1] = RED
    _, reward, info = step(episode, actors, lines=lines, config=front)
    assert info["red_light"] and reward == pytest.approx(0.1 - CONFIG.reward.red_light)
    actors.light_state[1] = GREEN
    assert not step(episode, actors, lines=lines, config=front)[2]["red_light"]
    # leaderboard 2.0 (the CARLA default): the tail counts, 0.8 half-lengths (1.92 m) behind the centre
    actors.light_state[1] = RED
    episode = start_episode(0, 0, 0, straight_route(), actors_with_ego(x=27.0), 0.0)
    assert not step(episode, actors, lines=lines)[2]["red_light"]  # the front crossed under red: not yet
    episode = start_episode(0, 0, 0, straight_route(), actors_with_ego(x=31.5), 0.0)  # tail at 29.58
    tail_over = actors_with_ego(x=32.5)  # tail at 30.58
    tail_over.light_state[1] = RED
    assert step(episode, tail_over, lines=lines)[2]["red_light"]

    config = dataclasses.replace(CONFIG, blocked_time_s=1.0, max_episode_steps=100)
    episode = start_episode(0, 0, 0, straight_route(), actors_with_ego(), 0.0)
    for number in range(1, 21):  # 20 steps of 0.05 s standing still
        episode, _, info = step(episode, actors_with_ego(), config=config)
        assert info["blocked"] == (number == 20)
    assert episode.terminated

    config = dataclasses.replace(CONFIG, max_episode_steps=3)
    episode = start_episode(0, 0, 0, straight_route(), actors_with_ego(), 0.0)
    for _ in range(3):
        episode, _, info = step(episode, actors_with_ego(speed=1.0), config=config)
    assert info["timeout"] and episode.truncated and not episode.terminated

    episode = dataclasses.replace(start_episode(0, 0, 0, straight_route(), actors_with_ego(x=199.5), 0.0))
    episode, reward, info = step(episode, actors_with_ego(x=201.0))
    assert info["route_completed"] and episode.terminated and reward == pytest.approx(0.05)  # progress capped


def test_restore_helpers():
    pose = np.array([10.0, 5.0, 0.3, 0.0, 1.0, 90.0])
    back = backdated_pose(pose, np.array([0.0, 10.0, 0.0]), np.array([0.0, 0.0, 20.0]), 0.05)
    assert back.tolist() == pytest.approx([10.0, 4.5, 0.3, 0.0, 1.0, 89.0])
    assert mix_seed(1, 2, 3) == mix_seed(1, 2, 3) != mix_seed(1, 2, 4)
    assert 0 <= mix_seed(2**63, -5) < 2**31


def test_world_settings():
    values = world_settings_values(CarlaConfig(fixed_delta_seconds=0.05))
    assert values == {"synchronous_mode": True, "fixed_delta_seconds": 0.05, "no_rendering_mode": True,
                      "substepping": True, "max_substep_delta_time": 0.01, "max_substeps": 5}
    assert world_settings_values(CarlaConfig(fixed_delta_seconds=0.1, no_rendering=False))["max_substeps"] == 10
    pytest.importorskip("carla")
    from envs.carla.world import make_world_settings

    settings = make_world_settings(CarlaConfig(fixed_delta_seconds=0.025))  # a real carla.WorldSettings
    assert settings.synchronous_mode and settings.no_rendering_mode
    assert settings.fixed_delta_seconds == pytest.approx(0.025) and settings.max_substeps == 3


def test_settings_are_reapplied_only_after_another_client_changed_them():
    carla = pytest.importorskip("carla")
    from envs.carla.world import CarlaWorld, make_world_settings

    class Recorder:
        def __init__(self, settings):
            self.settings, self.calls = settings, []

        def get_settings(self):
            return self.settings

        def apply_settings(self, settings):
            self.calls.append("apply")
            self.settings = settings

        def freeze_all_traffic_lights(self, frozen):
            self.calls.append(f"freeze {frozen}")

        def set_synchronous_mode(self, on):
            self.calls.append(f"tm sync {on}")

    world = object.__new__(CarlaWorld)  # no server: only the settings logic
    world.config = CarlaConfig()
    world.world = world.traffic_manager = Recorder(make_world_settings(world.config))
    world.ensure_settings()
    assert world.world.calls == []
    world.world.settings = carla.WorldSettings()  # asynchronous, variable step: as another client leaves it
    world.ensure_settings()
    assert world.world.calls == ["apply", "tm sync True", "freeze True"]
    assert world.world.settings.synchronous_mode and world.world.settings.fixed_delta_seconds == pytest.approx(0.05)


def test_leaderboard_measurements_outside_route_lanes_and_traffic_speed():
    episode = start_episode(0, 0, 0, straight_route(), actors_with_ego(x=10.0), 0.0)
    moved = actors_with_ego(x=11.0, speed=5.0)
    moved.vehicle_valid[1:3] = True
    moved.vehicle_velocity[1] = (4.0, 3.0, 0.0)  # 5 m/s
    moved.vehicle_velocity[2] = (0.0, 0.0, 0.0)
    _, _, info = step(episode, moved, events=StepEvents(on_road=True, lane_yaw=0.0))  # a lane running the route's way
    assert not info["outside_route_lanes"] and info["outside_route_lanes_m"] == 0.0
    assert info["traffic_speed"] == pytest.approx(2.5)  # the mean over the two traffic cars present
    _, _, info = step(episode, moved, events=StepEvents(on_road=True, lane_yaw=180.0))  # the opposite lane
    assert info["outside_route_lanes"] and info["outside_route_lanes_m"] == pytest.approx(1.0)
    assert step(episode, moved, events=StepEvents(on_road=False))[2]["outside_route_lanes"]
    assert step(episode, actors_with_ego(x=11.0))[2]["traffic_speed"] == 0.0  # no traffic


def test_a_restore_is_remeasured_on_what_the_server_holds():
    from envs.carla.state import remeasure_episode, restore_error

    wanted = actors_with_ego(x=50.0, speed=8.0)
    wanted.vehicle_valid[1] = True
    wanted.vehicle_pose[1, :2] = (80.0, 0.0)
    episode = dataclasses.replace(start_episode(3, 0, 0, straight_route(), wanted, 0.5), step=40, distance_m=40.0)
    landed = wanted.copy()
    landed.vehicle_pose[0, :2] = (50.3, -0.4)  # CARLA y = -0.4: 0.4 m left of the route
    landed.vehicle_velocity[0, 0] = 7.5
    landed.vehicle_pose[1, :2] = (80.0, 1.2)
    error = restore_error(wanted, landed)
    assert error["ego_m"] == pytest.approx(0.5) and error["actors_max_m"] == pytest.approx(1.2)
    assert error["ego_speed_ms"] == pytest.approx(0.5)
    again = remeasure_episode(episode, straight_route(), landed)
    assert again.route_s == pytest.approx(50.3) and again.lateral_offset == pytest.approx(0.4)
    assert again.speed == pytest.approx(7.5) and (again.step, again.distance_m) == (40, 40.0)
    assert again.front_x == pytest.approx(50.3 - 0.8 * 2.4)  # the tail point of the red-light rule
