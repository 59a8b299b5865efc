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
from envs.carla.raster import LaneLine, build_map_raster
from envs.carla.routes import Route, polyline_yaw
from envs.carla.state import ActorStates, StepEvents, advance_episode, start_episode
from envs.carla.world import PlannedRoute, route_data


class FakeTown:
    """A town with straight 200 m routes along +x, one per 4 m wide lane (at CARLA y = 0, 4 and 8), and no stop
    lines; its raster layers (``raster``) are drawn from those lanes by the real map rasteriser."""

    vehicle_blueprints = ["vehicle.lincoln.mkz_2020", "vehicle.tesla.model3"]
    walker_blueprints: list[str] = []
    light_keys = [(0.0, 0.0)]
    route_files: dict = {}
    stop_lines = StopLines.empty()

    def route_key(self, episode_seed, attempt=0):
        return 0, episode_seed % 3

    _rasters: dict = {}  # light count -> raster layers (a subclass may have other lights)

    @property
    def raster(self):
        lights = len(self.light_keys)
        if lights not in FakeTown._rasters:
            x = np.arange(0.0, 201.0, 10.0)
            lanes = [LaneLine(np.stack([x, np.full_like(x, -4.0 * lane)], axis=1), np.full(len(x), 4.0))
                     for lane in range(3)]  # right-handed: CARLA's y changes sign
            FakeTown._rasters[lights] = build_map_raster(lanes, self.stop_lines, lights)
        return FakeTown._rasters[lights]

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
        if self.server_down():
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
        if self.server_down():
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

    def server_down(self) -> bool:
        """A FakeServer marked dead, or a launched (stand-in) server whose process has exited (a zombie counts:
        a killed leader with threads cannot be reaped until they are gone, but it serves nothing)."""
        if getattr(self.server, "dead", False):
            return True
        pid = getattr(self.server, "pid", None)
        if pid is None:
            return False
        try:
            with open(f"/proc/{pid}/stat") as handle:
                return handle.read().split(")")[-1].split()[0] == "Z"
        except FileNotFoundError:
            return True

    def restore(self, actors, episode):
        if self.server_down():
            raise RuntimeError("connection refused")
        self.restores += 1
        self.actors = actors.copy()
        self.actors.vehicle_pose[1, 0] += self.drift_per_restore * self.restores
        self.episode = episode

    def close(self):
        pass

    def release(self):
        self.released = True




# --- a stand-in carla client that the real CarlaWorld drives ---------------------------------------------------

DT = 0.05


class Recorder:
    """Accepts any method call and records it (a traffic manager's settings need no behaviour here)."""

    def __init__(self, log: list):
        self.log = log

    def __getattr__(self, name):
        return lambda *args, **kwargs: self.log.append((name, args))


class StandInBlueprint:
    def __init__(self, blueprint_id: str):
        self.id, self.attributes = blueprint_id, {}

    def has_attribute(self, name):
        return name == "role_name"

    def set_attribute(self, name, value):
        self.attributes[name] = value


class StandInLibrary:
    def find(self, blueprint_id):
        return StandInBlueprint(blueprint_id)


class StandInActor:
    """An actor with a pose and velocity (CARLA frame), as the server would hold it."""

    def __init__(self, world, actor_id, blueprint, transform, parent=None):
        self.world, self.id, self.type_id = world, actor_id, blueprint.id
        self.attributes = dict(blueprint.attributes)
        self.parent = parent
        self.location = np.array([transform.location.x, transform.location.y, transform.location.z])
        self.rotation = np.array([transform.rotation.roll, transform.rotation.pitch, transform.rotation.yaw])
        self.velocity = np.zeros(3)
        self.seen = self.location.copy()  # the client's copy: where the last tick's world snapshot put it
        self.bounding_box = type("Box", (), {"extent": type("E", (), {"x": 2.4, "y": 0.95, "z": 0.8})()})()
        self.control = None

    # what the client reads (from the last tick's world snapshot)
    def get_transform(self):
        import carla

        return carla.Transform(carla.Location(*map(float, self.seen)),
                               carla.Rotation(pitch=float(self.rotation[1]), yaw=float(self.rotation[2]),
                                              roll=float(self.rotation[0])))

    def get_velocity(self):
        import carla

        return carla.Vector3D(*map(float, self.velocity))

    def get_angular_velocity(self):
        import carla

        return carla.Vector3D(0.0, 0.0, 0.0)

    def get_control(self):
        import carla

        return self.control or carla.VehicleControl()

    def apply_control(self, control):
        self.control = control

    def set_autopilot(self, *args):
        pass

    # sensors
    def listen(self, callback):
        self.listening = True

    # walker AI controllers
    def start(self):
        self.world.crowd_add(self)

    def stop(self):
        self.world.log.append(("stop", self.id, self.world.frame))
        self.world.crowd.pop(self.id, None)
        self.listening = False

    def go_to_location(self, location):
        self.world.crowd[self.id]["target"] = np.array([location.x, location.y, location.z])

    def set_max_speed(self, speed):
        self.world.crowd[self.id]["speed"] = float(speed)


class StandInWorld:
    """The server side and the client's crowd simulation. The crowd behaves as the carla client's does: a
    started controller adds an agent at its walker's position as of the last tick; every tick each agent
    walks towards its target and *sets* its walker's position (so a teleport of a walker whose agent lives
    on is undone); only ``stop()`` removes an agent (destroying the controller does not)."""

    def __init__(self):
        self.actors: dict[int, StandInActor] = {}
        self.crowd: dict[int, dict] = {}  # controller id -> agent (walker id, position, target, speed)
        self.frame, self.next_id, self.log = 0, 100, []
        self.settings = type("Settings", (), {"synchronous_mode": False, "fixed_delta_seconds": None,
                                               "no_rendering_mode": False, "substepping": True,
                                               "max_substep_delta_time": 0.01, "max_substeps": 10})()

    # --- the client API CarlaWorld uses ---
    def get_map(self):
        return type("Map", (), {"name": "Carla/Maps/Town10HD_Opt"})()

    def get_settings(self):
        return self.settings

    def apply_settings(self, settings):
        self.settings = settings

    def get_blueprint_library(self):
        return StandInLibrary()

    def freeze_all_traffic_lights(self, frozen):
        pass

    def set_pedestrians_seed(self, seed):
        pass

    def get_random_location_from_navigation(self):
        import carla

        return carla.Location(x=20.0 + 0.5 * (self.next_id % 7), y=3.0, z=0.0)

    def get_actors(self, ids=None):
        actors = list(self.actors.values()) if ids is None else [self.actors[i] for i in ids if i in self.actors]
        return ActorList(actors)

    def get_snapshot(self):
        ids = set(self.actors)
        return type("Snapshot", (), {"has_actor": staticmethod(lambda actor_id: actor_id in ids)})()

    def try_spawn_actor(self, blueprint, transform):
        return self.spawn_actor(blueprint, transform)

    def spawn_actor(self, blueprint, transform, attach_to=None):
        self.next_id += 1
        actor = StandInActor(self, self.next_id, blueprint, transform, parent=attach_to)
        self.actors[actor.id] = actor
        self.log.append(("spawn", actor.id, actor.type_id, self.frame))
        return actor

    def tick(self, timeout=None):
        for actor in self.actors.values():
            if actor.parent is None and not any(a["walker"] == actor.id for a in self.crowd.values()):
                actor.location = actor.location + actor.velocity * DT
        for agent in self.crowd.values():  # the crowd sets its walkers' velocities (read back as such)
            walker = self.actors.get(agent["walker"])
            heading = agent["target"] - agent["position"]
            distance = float(np.linalg.norm(heading[:2]))
            if walker is not None:
                walker.velocity = heading / distance * agent["speed"] if distance > 1e-9 else np.zeros(3)
        for agent in self.crowd.values():
            walker = self.actors.get(agent["walker"])
            heading = agent["target"] - agent["position"]
            distance = float(np.linalg.norm(heading[:2]))
            if distance > 1e-9 and agent["speed"] > 0:
                agent["position"] = agent["position"] + heading * min(1.0, agent["speed"] * DT / distance)
            if walker is not None:
                walker.location = agent["position"].copy()
        self.frame += 1
        for actor in self.actors.values():
            actor.seen = actor.location.copy()
        return self.frame

    # --- helpers the stand-in actors call ---
    def crowd_add(self, controller):
        walker = controller.parent
        self.log.append(("start", controller.id, self.frame))
        self.crowd[controller.id] = {"walker": walker.id, "position": walker.seen.copy(),
                                     "target": walker.seen.copy(), "speed": 0.0}

    def agents_of(self, walker_id) -> int:
        return sum(1 for agent in self.crowd.values() if agent["walker"] == walker_id)

    def apply(self, command):
        name = type(command).__name__
        actor = self.actors.get(command.actor_id)
        if actor is None:
            return f"actor {command.actor_id} not found"
        if name == "DestroyActor":
            self.log.append(("destroy", actor.id, self.frame))
            del self.actors[actor.id]
        elif name == "ApplyTransform":
            t = command.transform
            actor.location = np.array([t.location.x, t.location.y, t.location.z])
            actor.rotation = np.array([t.rotation.roll, t.rotation.pitch, t.rotation.yaw])
            self.log.append(("place", actor.id, self.frame))
        elif name == "ApplyTargetVelocity":
            actor.velocity = np.array([command.velocity.x, command.velocity.y, command.velocity.z])
        elif name == "ApplyWalkerControl":  # a walker without a crowd agent walks as its control says
            direction = command.control.direction
            actor.velocity = np.array([direction.x, direction.y, direction.z]) * command.control.speed
        return ""


class ActorList(list):
    def filter(self, pattern):
        prefix = pattern.rstrip("*")
        return ActorList(a for a in self if a.type_id.startswith(prefix))


class StandInClient:
    """carla.Client over a :class:`StandInWorld`."""

    def __init__(self):
        self.world = StandInWorld()
        self.traffic_manager_log: list = []

    def set_timeout(self, seconds):
        pass

    def get_world(self):
        return self.world

    def get_trafficmanager(self, port):
        return Recorder(self.traffic_manager_log)

    def apply_batch_sync(self, commands, due_tick=False):
        return [type("Response", (), {"error": self.world.apply(command), "actor_id": command.actor_id})()
                for command in commands]


class StandInMap:
    def get_waypoint(self, location, project_to_road=False, lane_type=None):
        return type("Waypoint", (), {"transform": type("T", (), {"rotation": type("R", (), {"yaw": 0.0})()})()})()


class WalkerTown(FakeTown):
    """FakeTown with a walker blueprint, no lights, and a map for lane queries."""

    light_keys: list = []
    num_lights = 0
    walker_blueprints = ["walker.pedestrian.0001"]
    spawn_points: list = []
    map = StandInMap()
