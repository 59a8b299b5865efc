"""Stand-ins for what the CARLA backend talks to, importable by service processes (``env.world_class=
tests.envs.carla.stand_ins:FakeWorld``), so the backend and its services run here without a CARLA server.

* :class:`FakeTown`, :class:`FakeServers`, :class:`FakeWorld`: the CarlaWorld interface on simple kinematics
  (an ego and one traffic car), with the real episode rules and observations.
* :class:`StandInClient`: a carla.Client / World / TrafficManager stand-in that the real
  :class:`envs.carla.world.CarlaWorld` drives: actors, batch commands, ticks, and a crowd simulation whose
  walker controllers behave as the carla client's do (a started controller's agent overwrites its walker's
  position on every tick; ``start()`` twice adds a second agent; only ``stop()`` removes it).
"""

import math

import numpy as np

from envs.carla.lights import StopLines
from envs.carla.routes import Route, polyline_yaw
from envs.carla.state import ActorStates, StepEvents, advance_episode, start_episode
from envs.carla.world import PlannedRoute, route_data


class FakeTown:
    """A town with straight 200 m routes, one per lane offset, and no lights."""

    vehicle_blueprints = ["vehicle.lincoln.mkz_2020", "vehicle.tesla.model3"]
    walker_blueprints: list[str] = []
    light_keys = [(0.0, 0.0)]
    route_files: dict = {}
    stop_lines = StopLines.empty()

    def route_key(self, episode_seed, attempt=0):
        return 0, episode_seed % 3

    def route(self, kind, route_id):
        x = np.arange(0.0, 201.0)
        points = np.stack([x, np.full_like(x, 4.0 * route_id)], axis=1)
        route = Route(points, np.zeros(len(x)), x.copy(), polyline_yaw(points), [(1, -1)])
        return PlannedRoute(route, route_data(route, self.stop_lines))


class FakeServer:
    def __init__(self, index):
        self.index, self.address, self.dead = index, f"fake:{2000 + 4 * index}", False


class FakeServers:
    """Stands in for ServerManager: servers can be marked dead; restart gives a fresh one."""

    launched = True

    def __init__(self, count):
        self.servers = [FakeServer(i) for i in range(count)]
        self.restarted: list[int] = []

    def healthy(self, index, timeout_s=5.0):
        return not self.servers[index].dead

    def restart(self, index):
        self.restarted.append(index)
        self.servers[index] = FakeServer(index)
        return self.servers[index]

    def start(self):
        return self

    def stop(self):
        self.servers = []


class FakeWorld:
    """The CarlaWorld interface on a kinematic ego and one traffic car driving at 5 m/s (deterministic, so
    restores are exact unless ``drift_per_restore`` adds a growing error to the traffic car)."""

    drift_per_restore = 0.0

    def __init__(self, index, server, config, town):
        self.index, self.server, self.config = index, server, config
        self.town = town or FakeTown()
        self.actors = self.episode = None
        self.restores = 0

    def reset(self, episode_seed):
        if getattr(self.server, "dead", False):
            raise RuntimeError("time-out of 60000ms while waiting for the simulator")
        kind, route_id = self.town.route_key(episode_seed)
        planned = self.town.route(kind, route_id)
        actors = ActorStates.empty(self.config.traffic.num_vehicles, 0, len(self.town.light_keys))
        actors.vehicle_valid[:2] = True
        actors.vehicle_extent[:] = (2.4, 0.95, 0.8)
        actors.vehicle_pose[0] = (float(episode_seed % 5), 4.0 * route_id, 0.0, 0.0, 0.0, 0.0)
        actors.vehicle_pose[1] = (30.0, 4.0 * route_id, 0.0, 0.0, 0.0, 0.0)
        actors.vehicle_velocity[1] = (5.0, 0.0, 0.0)
        self.actors = actors
        self.episode = start_episode(episode_seed, kind, route_id, planned.data, actors, 0.5,
                                     self.config.red_light_rule)

    def step(self, control):
        if getattr(self.server, "dead", False):
            raise RuntimeError("time-out of 60000ms while waiting for the simulator")
        if self.episode.done:
            return 0.0, {}
        dt = self.config.fixed_delta_seconds
        throttle, brake, steer = (float(v) for v in control)
        actors = self.actors.copy()
        speed = float(np.hypot(*actors.vehicle_velocity[0, :2]))
        speed = min(20.0, max(0.0, speed + (3.0 * throttle - 6.0 * brake) * dt))
        yaw = actors.vehicle_pose[0, 5] + 20.0 * steer * dt
        actors.vehicle_pose[0, 5] = yaw
        actors.vehicle_velocity[0, :2] = (speed * math.cos(math.radians(yaw)), speed * math.sin(math.radians(yaw)))
        actors.vehicle_pose[:, :2] += actors.vehicle_velocity[:, :2] * dt
        actors.vehicle_control[0] = (throttle, steer, brake, 0.0, 0.0)
        planned = self.town.route(self.episode.route_kind, self.episode.route_id)
        self.episode, reward, info = advance_episode(self.config, self.episode, planned.data, self.town.stop_lines,
                                                     actors, np.array([throttle, brake, steer]), StepEvents())
        self.actors = actors
        return reward, info

    def restore(self, actors, episode):
        if getattr(self.server, "dead", False):
            raise RuntimeError("connection refused")
        self.restores += 1
        self.actors = actors.copy()
        self.actors.vehicle_pose[1, 0] += self.drift_per_restore * self.restores
        self.episode = episode

    def close(self):
        pass

    def release(self):
        self.released = True


