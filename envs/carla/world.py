"""One CARLA server's world: set it up, start episodes, step, capture and restore its state.

:class:`TownData` is what every server of a run shares because they all load the same town: the client-side
``carla.Map`` (waypoint queries need no server), the lane graph and planned routes, the traffic lights' order,
stop lines and schedule, and the sorted blueprint tables that snapshots index into.

:class:`CarlaWorld` drives one server through one ``carla.Client``:

* **set-up**: load the town if another is loaded, synchronous mode with a fixed step, no-rendering mode, a
  traffic manager in synchronous mode on this world's own port, the traffic-manager seed (re-set after
  every map load and at every reset and restore), lights frozen when the backend drives them;
* **reset**: destroy this backend's actors (found by role name), plan or load the route, spawn the ego
  (``hero``) at its start with a collision and a lane-invasion sensor, spawn traffic (``traffic_i``) at the
  map's spawn points near the route under the traffic manager, and walkers (``walker_i``) if asked, all
  drawn from the episode seed; let them settle;
* **step**: apply the ego's control, set the scheduled light states, tick, read every actor from the tick's
  world snapshot, drain the sensors, and apply the episode rules (:func:`envs.carla.state.advance_episode`);
* **capture** is free (the last read state); **restore** matches actors by role name, spawns the missing,
  destroys the extra, re-seeds the traffic manager and registers the traffic with it afresh, stops and
  destroys every walker's AI controller and spawns a new one (a teleported walker would otherwise be pulled
  back by its old crowd agent, and ``start()`` on an old controller adds a second agent), places every
  vehicle back-dated by the settling ticks with its velocity (world frame, m/s), angular velocity (deg/s) and
  control, and every walker exactly (it stands through the settling ticks), sets the lights, ticks to settle,
  and then **reads the world back from the server**: the state
  a restore returns (and the observation built from it) is what the server holds after the settling tick,
  not the snapshot, and :attr:`CarlaWorld.restore_error` says how far each actor landed from its snapshot
  pose. Only then are the new walker controllers started, from where the walkers stand, towards the
  snapshot's destinations at the snapshot's speeds.

**One world per process.** The carla client keeps one process-wide registry of traffic managers, and every
``world.tick()`` steps all of them (``TrafficManager::Tick``, blocking on each without a timeout), so two
worlds in one process would couple their traffic and serialise their ticks, and a dead server's traffic
manager would hang the other. A :class:`CarlaWorld` therefore refuses to start while another one is live in
the same process; :mod:`envs.factory` runs every CARLA server from its own service process. A world's
traffic manager is shut down (:meth:`CarlaWorld.release`) before the world is dropped or its server
restarted.

What CARLA cannot restore (so a restored world drifts from its source; :func:`envs.carla.backend.measure_drift`
measures by how much):

* the traffic manager's internal state: its path buffers, PID controllers, lane-change timers and the position
  of its random stream. A restore re-seeds it from (tm_seed, episode seed, step) and re-registers every traffic
  vehicle in slot order, so all branches restored from one snapshot start from the same traffic-manager state
  (they agree with each other); the source world had older state, so it is not reproduced exactly;
* the vehicles' drivetrain and suspension: engine rpm, gear timing, wheel spin, spring compression (the
  settling tick lets wheels catch up with the restored velocity);
* walkers' AI navigation: the crowd agent and its path are new after every restore (a fresh controller
  plans from where the walker stands to the snapshot's destination, at the snapshot's speed), so a walker
  follows the source's path only where the new plan happens to match it; every branch restored from one
  snapshot plans the same way, so branches agree with each other more closely than with the source;
* with ``light_control=server``, a light group's phase: only each light's state and green / yellow / red times
  can be set (not its elapsed time), and re-seeding the traffic manager restarts the server's light cycles;
* anything the physics engine keeps between frames (contacts, sleeping bodies), and a collision reported by
  the sensor one tick late (sensor data arrives asynchronously), which a restore does not replay.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass

import numpy as np

from envs.api import BackendError
from envs.carla.config import CarlaConfig
from envs.carla.lights import (
    LightSchedule,
    StopLines,
    light_key,
    route_stop_lines,
    schedule_from_lights,
    scheduled_states,
    stop_lines_for_light,
)
from envs.carla.raster import MapRaster, build_map_raster, lane_lines_from_graph
from envs.carla.routes import (
    LaneGraph,
    Route,
    RoutePlanningError,
    load_route_file,
    plan_random_route,
    plan_route,
    town_matches,
)
from envs.carla.server import CarlaServer
from envs.carla.state import (
    ActorStates,
    EpisodeState,
    RouteData,
    StepEvents,
    advance_episode,
    collision_kind,
    contact_key,
    remeasure_episode,
    restore_error,
    start_episode,
    vehicle_keys,
    walker_keys,
)
from envs.seeding import mix

ROUTE_PLANNED, ROUTE_FILE, ROUTE_EVAL_FILE = 0, 1, 2
EVAL_SEED_SALT = 0xE7A1  # mixed into planning seeds on split=eval: evaluation routes are not training routes
SPAWN_LIFT_M = 0.5  # spawn this far above the road (CARLA's spawn points do the same), so nothing collides
PARKING_LIFT_M = 200.0  # spawn here first when the target spot is taken, then teleport
SENSOR_ROLES = ("hero_collision", "hero_lane_invasion")
_LIVE_WORLDS: dict[int, str] = {}  # id(CarlaWorld) -> server address: worlds holding a traffic manager here
_LIVE_LOCK = threading.Lock()
OUR_ROLES = ("hero", "traffic_", "walker_", *SENSOR_ROLES)


def mix_seed(*parts: int) -> int:
    """A 31-bit seed from integers, the same in every process: for the traffic manager and numpy generators.
    The project's one mixer (:func:`envs.seeding.mix`) over each part's low and high 32-bit words."""
    words = [word for part in parts for word in (int(part) & 0xFFFFFFFF, (int(part) >> 32) & 0xFFFFFFFF)]
    return int(mix(*words)) & 0x7FFFFFFF


def world_settings_values(config: CarlaConfig) -> dict:
    """The ``carla.WorldSettings`` fields this backend sets: synchronous mode, the fixed step, rendering, and
    physics substeps of at most 10 ms that cover the step (CARLA needs substep * count >= fixed step)."""
    substep = 0.01
    count = max(1, math.ceil(config.fixed_delta_seconds / substep - 1e-9))
    return {"synchronous_mode": True, "fixed_delta_seconds": config.fixed_delta_seconds,
            "no_rendering_mode": config.no_rendering, "substepping": True, "max_substep_delta_time": substep,
            "max_substeps": min(16, count)}


def make_world_settings(config: CarlaConfig, base=None):
    """A ``carla.WorldSettings`` (``base``'s other fields kept) with :func:`world_settings_values`."""
    import carla

    settings = base if base is not None else carla.WorldSettings()
    for name, value in world_settings_values(config).items():
        setattr(settings, name, value)
    return settings


def is_ours(role_name: str) -> bool:
    return role_name == "hero" or role_name.startswith(OUR_ROLES[1:])


def backdated_pose(pose: np.ndarray, velocity: np.ndarray, angular_velocity: np.ndarray, seconds: float
                   ) -> np.ndarray:
    """Where an actor with ``pose`` [6] (x, y, z, roll, pitch, yaw), ``velocity`` [3] m/s and
    ``angular_velocity`` [3] deg/s was ``seconds`` earlier, to first order: placed there, it reaches ``pose``
    after that much simulated time (how restore lets physics settle without moving the world ahead)."""
    out = np.array(pose, dtype=np.float64)
    out[:3] -= np.asarray(velocity, dtype=np.float64) * seconds
    out[5] -= float(angular_velocity[2]) * seconds  # yaw rate is the z component in CARLA's frame
    return out


def route_data(route: Route, stop_lines: StopLines) -> RouteData:
    """The right-handed route with its stop-line crossings."""
    stop_s, stop_light = route_stop_lines(route.points, route.s, stop_lines)
    points = np.stack([route.points[:, 0], -route.points[:, 1]], axis=1)
    return RouteData(points, route.s.copy(), stop_s, stop_light)


@dataclass
class PlannedRoute:
    route: Route  # CARLA coordinates (spawning)
    data: RouteData  # right-handed, with stop lines (episode rules)


class TownData:
    """Static data of the town all servers load (see the module docstring); built from one server's world."""

    def __init__(self, config: CarlaConfig, world):
        self.config = config
        self.map = world.get_map()
        library = world.get_blueprint_library()
        self.vehicle_blueprints = sorted(bp.id for bp in library.filter("vehicle.*")
                                         if bp.has_attribute("number_of_wheels")
                                         and bp.get_attribute("number_of_wheels").as_int() == 4)
        if config.ego_blueprint not in self.vehicle_blueprints:
            raise BackendError(f"env.ego_blueprint={config.ego_blueprint!r} is not a four-wheeled vehicle of this "
                               f"server; choose one of {self.vehicle_blueprints}")
        self.walker_blueprints = sorted(bp.id for bp in library.filter("walker.pedestrian.*"))
        lights = sorted(world.get_actors().filter("traffic.traffic_light"),
                        key=lambda light: light_key(light.get_location().x, light.get_location().y))
        self.light_keys = [light_key(light.get_location().x, light.get_location().y) for light in lights]
        self.stop_lines = StopLines.concat([
            stop_lines_for_light(self.map, light.get_transform(), light.trigger_volume, index)
            for index, light in enumerate(lights)])
        self.schedule: LightSchedule = schedule_from_lights(lights)
        self.spawn_points = self.map.get_spawn_points()
        self.route_files = {ROUTE_FILE: config.routes_file, ROUTE_EVAL_FILE: config.eval_routes_file}
        self.route_specs = {kind: load_route_file(path, config.town) for kind, path in self.route_files.items()
                            if path}
        self._graph: LaneGraph | None = None
        self._raster: MapRaster | None = None
        self._routes: dict[tuple[int, int], PlannedRoute] = {}
        self._lock = threading.Lock()

    @property
    def num_lights(self) -> int:
        return len(self.light_keys)

    @property
    def graph(self) -> LaneGraph:
        if self._graph is None:
            self._graph = LaneGraph(self.map, self.config.planner_resolution_m, self.config.lane_change_cost_m)
        return self._graph

    @property
    def raster(self) -> MapRaster:
        """The map's layers of the bird's-eye raster (drivable area, markings, stop lines; envs.carla.raster),
        drawn from the lane graph the first time a raster is asked for."""
        with self._lock:
            if self._raster is None:
                self._raster = build_map_raster(lane_lines_from_graph(self.graph), self.stop_lines, self.num_lights)
            return self._raster

    def route_key(self, episode_seed: int, attempt: int = 0) -> tuple[int, int]:
        """(kind, id) of the route episode ``episode_seed`` drives (``attempt`` > 0 after a failed spawn)."""
        config = self.config
        if config.split == "eval" and ROUTE_EVAL_FILE in self.route_specs:
            kind = ROUTE_EVAL_FILE
        elif ROUTE_FILE in self.route_specs:
            kind = ROUTE_FILE
        else:
            salt = EVAL_SEED_SALT if config.split == "eval" else 0
            return ROUTE_PLANNED, mix_seed(episode_seed, salt, attempt)
        return kind, (episode_seed + attempt) % len(self.route_specs[kind])

    def route(self, kind: int, route_id: int) -> PlannedRoute:
        """The route named by a key, planned once per process (planning is deterministic)."""
        with self._lock:
            cached = self._routes.get((kind, route_id))
            if cached is None:
                config = self.config
                if kind == ROUTE_PLANNED:
                    route = plan_random_route(self.graph, config.route_length_m, route_id, config.route_resolution_m)
                else:
                    specs = self.route_specs.get(kind)
                    if specs is None or not 0 <= route_id < len(specs):
                        raise BackendError(f"route {route_id} of {self.route_files.get(kind)} is not available here: "
                                           "the snapshot comes from a backend with other route files")
                    route = plan_route(self.graph, specs[route_id].keypoints, config.route_resolution_m)
                cached = PlannedRoute(route, route_data(route, self.stop_lines))
                self._routes[(kind, route_id)] = cached
            return cached


class CarlaWorld:
    """One server's world (see the module docstring). Methods raise RuntimeError (from ``carla``) when the
    server fails; the backend decides whether that is a dead server."""

    def __init__(self, index: int, server: CarlaServer, config: CarlaConfig, town: TownData | None = None, *,
                 client=None):
        import carla

        self.index, self.server, self.config = index, server, config
        self.traffic_manager = None
        self._events: list = []
        self._events_lock = threading.Lock()
        self._listening: set[int] = set()  # ids of the sensors this client listens to
        self.walker_orders: list[tuple[np.ndarray, float] | None] = [None] * config.traffic.num_walkers
        self._ignore_until_frame = -1
        self.vehicles: list = [None] * (1 + config.traffic.num_vehicles)
        self.walkers: list = [None] * config.traffic.num_walkers
        self.controllers: list = [None] * config.traffic.num_walkers
        self.sensors: list = []
        self._applied_lights: np.ndarray | None = None
        self.actors: ActorStates | None = None
        self.episode: EpisodeState | None = None
        self.restore_error: dict[str, float] = {}  # how far the last restore's read-back landed from its snapshot
        with _LIVE_LOCK:
            if _LIVE_WORLDS:
                raise BackendError(f"this process already drives the CARLA world of {next(iter(_LIVE_WORLDS.values()))}"
                                   "; the carla client ticks every traffic manager of a process on every world.tick(),"
                                   " so each server needs a process of its own: build CARLA backends with "
                                   "envs.factory.build_backend (one service process per server), or close the other "
                                   "world first")
            _LIVE_WORLDS[id(self)] = server.address
        try:
            # ``client`` is given by tests (a stand-in for carla.Client); a real run connects here.
            self.client = client if client is not None else carla.Client(server.host, server.ports.rpc,
                                                                          worker_threads=2)
            self._connect(town)
        except BaseException:
            self.release()
            raise

    def _connect(self, town: TownData | None) -> None:
        config = self.config
        self.client.set_timeout(config.client_timeout_s)
        world = self.client.get_world()
        if not town_matches(world.get_map().name, config.town):
            settings = world.get_settings()
            if settings.synchronous_mode:  # a server left in synchronous mode would wait for ticks while loading
                settings.synchronous_mode = False
                settings.fixed_delta_seconds = None
                world.apply_settings(settings)
            world = self.client.load_world(config.town, reset_settings=True)
        self.world = world
        self.world.apply_settings(make_world_settings(config, self.world.get_settings()))
        self.library = self.world.get_blueprint_library()  # looked up once: every spawn finds its blueprint here
        self.tm_port = self.server.ports.traffic_manager
        self.traffic_manager = self.client.get_trafficmanager(self.tm_port)
        self.traffic_manager.set_synchronous_mode(True)
        self.traffic_manager.set_hybrid_physics_mode(False)
        self.traffic_manager.set_respawn_dormant_vehicles(False)
        self.traffic_manager.set_global_distance_to_leading_vehicle(config.traffic.distance_to_leading_m)
        self.traffic_manager.global_percentage_speed_difference(config.traffic.speed_difference_percent)
        self.traffic_manager.set_random_device_seed(config.tm_seed)  # re-set after every map load
        self.frame = self._tick()  # the client knows actors' transforms only from a tick's world snapshot
        self.town = town if town is not None else TownData(config, self.world)
        self.map = self.town.map
        self.lights = self._light_actors()
        if config.light_control == "backend":
            self.world.freeze_all_traffic_lights(True)
        self.destroy_ours()
        self.frame = self._tick()

    # --- set-up helpers ---

    def ensure_settings(self) -> None:
        """Re-apply synchronous mode, the step and the frozen lights if another client changed them (another
        backend on the same server hands it back in asynchronous mode when it closes)."""
        settings = self.world.get_settings()
        wanted = world_settings_values(self.config)
        same = all(math.isclose(float(getattr(settings, name) or 0.0), float(value), abs_tol=1e-9)
                   if isinstance(value, float) else getattr(settings, name) == value for name, value in wanted.items())
        if same:
            return
        self.world.apply_settings(make_world_settings(self.config, settings))
        self.traffic_manager.set_synchronous_mode(True)
        if self.config.light_control == "backend":
            self.world.freeze_all_traffic_lights(True)

    def _tick(self) -> int:
        """One synchronous tick (its wait bounded by client_timeout_s, not the API's 10 s default)."""
        return self.world.tick(self.config.client_timeout_s)

    def _light_actors(self) -> list:
        lights = {light_key(light.get_location().x, light.get_location().y): light
                  for light in self.world.get_actors().filter("traffic.traffic_light")}
        missing = [key for key in self.town.light_keys if key not in lights]
        if missing:
            raise BackendError(f"server {self.server.address} lacks traffic lights at {missing[:3]}...: every server "
                               f"must run the same CARLA version and map ({self.config.town})")
        return [lights[key] for key in self.town.light_keys]

    def destroy_ours(self) -> None:
        """Destroy every actor whose role name this backend uses (ours, or left by an earlier client)."""
        import carla

        doomed = []
        for actor in self.world.get_actors():
            role = actor.attributes.get("role_name", "")
            if is_ours(role) or (actor.type_id == "controller.ai.walker" and actor.parent is not None
                                 and is_ours(actor.parent.attributes.get("role_name", ""))):
                doomed.append(actor)
        self._stop_controllers([a for a in doomed if a.type_id == "controller.ai.walker"])
        self._stop_listening(doomed)
        if doomed:
            self.client.apply_batch_sync([carla.command.DestroyActor(actor.id) for actor in doomed], False)
        self.vehicles = [None] * len(self.vehicles)
        self.walkers = [None] * len(self.walkers)
        self.controllers = [None] * len(self.controllers)
        self.walker_orders = [None] * len(self.walkers)
        self.sensors = []
        self._listening = set()

    def _discover(self) -> None:
        """Find this backend's actors on the server by role name (never by server-assigned id); destroy
        duplicates of a role."""
        vehicle_slots = {key: slot for slot, key in enumerate(vehicle_keys(len(self.vehicles) - 1))}
        walker_slots = {key: slot for slot, key in enumerate(walker_keys(len(self.walkers)))}
        self.vehicles = [None] * len(self.vehicles)
        self.walkers = [None] * len(self.walkers)
        self.controllers = [None] * len(self.controllers)
        sensors, duplicates = [], []
        actors = list(self.world.get_actors())
        for actor in actors:
            role = actor.attributes.get("role_name", "")
            if role in vehicle_slots:
                table, slot = self.vehicles, vehicle_slots[role]
            elif role in walker_slots:
                table, slot = self.walkers, walker_slots[role]
            else:
                if role in SENSOR_ROLES:
                    sensors.append(actor)
                continue
            if table[slot] is None:
                table[slot] = actor
            else:
                duplicates.append(actor)
        for actor in actors:
            if actor.type_id == "controller.ai.walker" and actor.parent is not None:
                slot = walker_slots.get(actor.parent.attributes.get("role_name", ""))
                if slot is not None and self.walkers[slot] is not None and actor.parent.id == self.walkers[slot].id:
                    self.controllers[slot] = actor
        ego = self.vehicles[0]
        # Keep the sensors only if this client listens to them and they ride on the current ego.
        mine = [sensor for sensor in sensors if sensor.id in self._listening and ego is not None
                and sensor.parent is not None and sensor.parent.id == ego.id]
        if len(mine) != len(SENSOR_ROLES):
            duplicates.extend(sensors)
            mine = []
        self.sensors = mine
        if duplicates:
            self._destroy(duplicates)

    def _stop_listening(self, actors: list) -> None:
        """Stop the sensors this client listens to among ``actors`` before they are destroyed."""
        for actor in actors:
            if actor.id in self._listening:
                try:
                    actor.stop()
                except RuntimeError:
                    pass  # already gone on the server
                self._listening.discard(actor.id)

    @staticmethod
    def _stop_controllers(controllers: list) -> None:
        """Stop walker AI controllers before they are destroyed: ``stop()`` removes the walker's agent from this
        client's crowd simulation, which would otherwise keep steering a walker that no longer has a controller."""
        for controller in controllers:
            if controller is None:
                continue
            try:
                controller.stop()
            except RuntimeError:
                pass  # already gone on the server

    def _destroy(self, actors: list) -> None:
        import carla

        actors = [a for a in actors if a is not None]
        self._stop_controllers([a for a in actors if a.type_id == "controller.ai.walker"])
        self._stop_listening(actors)
        if actors:
            self.client.apply_batch_sync([carla.command.DestroyActor(a.id) for a in actors], False)

    # --- spawning ---

    def _blueprint(self, blueprint_id: str, role_name: str, color_seed: int | None = None):
        blueprint = self.library.find(blueprint_id)
        if blueprint.has_attribute("role_name"):
            blueprint.set_attribute("role_name", role_name)
        if color_seed is not None and blueprint.has_attribute("color"):
            colors = blueprint.get_attribute("color").recommended_values
            if colors:
                blueprint.set_attribute("color", colors[color_seed % len(colors)])
        if blueprint.has_attribute("is_invincible"):
            blueprint.set_attribute("is_invincible", "false")
        return blueprint

    def _spawn(self, blueprint, pose: np.ndarray, lift: float = SPAWN_LIFT_M):
        """Spawn at ``pose`` (lifted); if that spot is taken, spawn far above it (the caller places it)."""
        import carla

        def transform(z_lift: float):
            return carla.Transform(carla.Location(x=float(pose[0]), y=float(pose[1]), z=float(pose[2]) + z_lift),
                                   carla.Rotation(roll=float(pose[3]), pitch=float(pose[4]), yaw=float(pose[5])))

        actor = self.world.try_spawn_actor(blueprint, transform(lift))
        if actor is None:
            actor = self.world.try_spawn_actor(blueprint, transform(PARKING_LIFT_M))
        return actor

    def _attach_sensors(self, ego) -> None:
        import carla

        library = self.library
        self._destroy(self.sensors)
        self.sensors = []
        for role, blueprint_id, callback in (("hero_collision", "sensor.other.collision", self._on_collision),
                                             ("hero_lane_invasion", "sensor.other.lane_invasion",
                                              self._on_lane_invasion)):
            blueprint = library.find(blueprint_id)
            blueprint.set_attribute("role_name", role)
            sensor = self.world.spawn_actor(blueprint, carla.Transform(), attach_to=ego)
            sensor.listen(callback)
            self._listening.add(sensor.id)
            self.sensors.append(sensor)

    def _on_collision(self, event) -> None:
        other = event.other_actor
        type_id = other.type_id if other is not None else "static.unknown"
        role = other.attributes.get("role_name", "") if other is not None else ""
        with self._events_lock:
            self._events.append((event.frame, "collision", contact_key(role, type_id), collision_kind(type_id)))

    def _on_lane_invasion(self, event) -> None:
        import carla

        solid = sum(1 for marking in event.crossed_lane_markings
                    if marking.type in (carla.LaneMarkingType.Solid, carla.LaneMarkingType.SolidSolid,
                                        carla.LaneMarkingType.SolidBroken, carla.LaneMarkingType.BrokenSolid))
        with self._events_lock:
            self._events.append((event.frame, "lane_invasion", solid, ""))

    def _drain_events(self, frame: int) -> StepEvents:
        with self._events_lock:
            events, self._events = self._events, []
        out = StepEvents()
        for event_frame, kind, value, name in events:
            if event_frame <= self._ignore_until_frame or event_frame > frame:
                continue
            if kind == "collision":
                out.collisions.append((value, name))
            else:
                out.lane_invasions += value
        return out

    def _setup_traffic_vehicle(self, vehicle) -> None:
        traffic = self.config.traffic
        vehicle.set_autopilot(True, self.tm_port)
        self.traffic_manager.auto_lane_change(vehicle, traffic.auto_lane_change)
        self.traffic_manager.ignore_lights_percentage(vehicle, traffic.ignore_lights_percent)
        self.traffic_manager.update_vehicle_lights(vehicle, False)

    # --- episodes ---

    def reset(self, episode_seed: int, attempts: int = 5) -> None:
        """Start episode ``episode_seed``: route, ego, traffic, walkers, lights, all from the seed."""
        last_error: Exception | None = None
        for attempt in range(attempts):
            kind, route_id = self.town.route_key(episode_seed, attempt)
            try:
                planned = self.town.route(kind, route_id)
            except RoutePlanningError as error:
                last_error = error
                continue
            if self._start(episode_seed, kind, route_id, planned):
                return
            last_error = BackendError(f"the ego could not be spawned at the start of route {(kind, route_id)}")
        raise BackendError(f"world {self.index}: could not start episode {episode_seed}: {last_error}")

    def _start(self, episode_seed: int, kind: int, route_id: int, planned: PlannedRoute) -> bool:
        import carla

        config = self.config
        rng = np.random.default_rng(mix_seed(episode_seed, 0x5A17))
        self.ensure_settings()
        self.destroy_ours()
        self.traffic_manager.set_random_device_seed(mix_seed(config.tm_seed, episode_seed))
        self.world.set_pedestrians_seed(mix_seed(config.tm_seed, episode_seed, 0x3A1))
        x, y, z, yaw = planned.route.start_pose()
        ego = self.world.try_spawn_actor(self._blueprint(config.ego_blueprint, "hero", color_seed=0),
                                         carla.Transform(carla.Location(x=x, y=y, z=z + SPAWN_LIFT_M),
                                                         carla.Rotation(yaw=yaw)))
        if ego is None:
            return False
        self.vehicles[0] = ego
        self._attach_sensors(ego)
        self._spawn_traffic(rng, planned.route, np.array([x, y]))
        self._spawn_walkers(rng, planned.route)
        light_offset = float(rng.random())
        self._set_lights_at(0.0, light_offset, force=True)
        ego.apply_control(carla.VehicleControl(throttle=0.0, steer=0.0, brake=1.0))
        for _ in range(config.spawn_settle_steps):
            self.frame = self._tick()
        ego.apply_control(carla.VehicleControl(throttle=0.0, steer=0.0, brake=0.0))
        self._ignore_until_frame = self.frame
        self._drain_events(self.frame)
        self.actors = self.read()
        self.actors.vehicle_control[0] = 0.0
        self.episode = start_episode(episode_seed, kind, route_id, planned.data, self.actors, light_offset,
                                     config.red_light_rule)
        return True

    def _spawn_traffic(self, rng: np.random.Generator, route: Route, ego_xy: np.ndarray) -> None:
        import carla

        traffic = self.config.traffic
        if traffic.num_vehicles == 0:
            return
        candidates = []
        for point in self.town.spawn_points:
            location = point.location
            xy = np.array([location.x, location.y])
            near_route = np.min(np.linalg.norm(route.points - xy, axis=1)) <= traffic.spawn_radius_m
            if near_route and np.linalg.norm(xy - ego_xy) >= traffic.min_spawn_gap_m:
                candidates.append(point)
        order = rng.permutation(len(candidates))
        pool = [bp for bp in self.town.vehicle_blueprints]
        commands, slots = [], []
        for slot, candidate in zip(range(traffic.num_vehicles), order, strict=False):
            blueprint_id = pool[int(rng.integers(len(pool)))]
            blueprint = self._blueprint(blueprint_id, f"traffic_{slot}", color_seed=int(rng.integers(1 << 30)))
            commands.append(carla.command.SpawnActor(blueprint, candidates[candidate]))
            slots.append(slot)
        responses = self.client.apply_batch_sync(commands, False)
        ids = {slot: response.actor_id for slot, response in zip(slots, responses, strict=True) if not response.error}
        actors = {actor.id: actor for actor in self.world.get_actors(list(ids.values()))}
        for slot, actor_id in ids.items():
            vehicle = actors.get(actor_id)
            if vehicle is not None:
                self.vehicles[1 + slot] = vehicle
                self._setup_traffic_vehicle(vehicle)

    def _spawn_walkers(self, rng: np.random.Generator, route: Route) -> None:
        import carla

        traffic = self.config.traffic
        if traffic.num_walkers == 0 or not self.town.walker_blueprints:
            return
        controller_blueprint = self.library.find("controller.ai.walker")
        placed = 0
        for _ in range(traffic.num_walkers * 20):
            if placed == traffic.num_walkers:
                break
            location = self.world.get_random_location_from_navigation()
            if location is None:
                continue
            if np.min(np.linalg.norm(route.points - (location.x, location.y), axis=1)) > traffic.spawn_radius_m:
                continue
            blueprint_id = self.town.walker_blueprints[int(rng.integers(len(self.town.walker_blueprints)))]
            lifted = carla.Location(x=location.x, y=location.y, z=location.z + 1.0)
            walker = self.world.try_spawn_actor(self._blueprint(blueprint_id, f"walker_{placed}"),
                                                carla.Transform(lifted))
            if walker is None:
                continue
            controller = self.world.spawn_actor(controller_blueprint, carla.Transform(), attach_to=walker)
            self.walkers[placed], self.controllers[placed] = walker, controller
            placed += 1
        self.frame = self._tick()  # controllers start on a ticked world
        low, high = traffic.walker_speed
        for slot, controller in enumerate(self.controllers):
            if controller is None:
                continue
            target = self.world.get_random_location_from_navigation()
            speed = float(rng.uniform(low, high))
            controller.start()
            controller.go_to_location(target)
            controller.set_max_speed(speed)
            self.walker_orders[slot] = (np.array([target.x, target.y, target.z]), speed)

    # --- lights ---

    def _set_lights_at(self, time_s: float, offset: float, force: bool = False) -> None:
        """Backend light control: set every light whose scheduled state changed (all of them if ``force``)."""
        if self.config.light_control != "backend" or not self.lights:
            return
        states = scheduled_states(self.town.schedule, time_s, offset)
        self._apply_light_states(states, force)

    def _apply_light_states(self, states: np.ndarray, force: bool) -> None:
        import carla

        names = {0: carla.TrafficLightState.Red, 1: carla.TrafficLightState.Yellow, 2: carla.TrafficLightState.Green,
                 3: carla.TrafficLightState.Off}
        previous = self._applied_lights
        for index, state in enumerate(states):
            if force or previous is None or previous[index] != state:
                self.lights[index].set_state(names.get(int(state), carla.TrafficLightState.Green))
        self._applied_lights = np.array(states, dtype=np.int64)

    # --- stepping ---

    def step(self, control: np.ndarray) -> tuple[float, dict]:
        """Apply ``control`` (throttle, brake, steer), tick, and run the episode rules. An ended episode is not
        stepped: reward 0, no events, the same done flags."""
        import carla

        if self.episode is None or self.actors is None:
            raise BackendError(f"world {self.index}: step() before reset(); call reset(seed) first")
        if self.episode.done:
            return 0.0, {}
        throttle, brake, steer = (float(v) for v in control)
        ego = self.vehicles[0]
        ego.apply_control(carla.VehicleControl(throttle=throttle, steer=steer, brake=brake))
        self._set_lights_at((self.episode.step + 1) * self.config.fixed_delta_seconds, self.episode.light_offset)
        self.frame = self._tick()
        actors = self.read()
        actors.vehicle_control[0] = (throttle, steer, brake, 0.0, 0.0)
        events = self._drain_events(self.frame)
        lane = self._driving_lane(actors)
        events.on_road = lane is not None
        events.lane_yaw = None if lane is None else float(lane.transform.rotation.yaw)
        planned = self.town.route(self.episode.route_kind, self.episode.route_id)
        self.episode, reward, info = advance_episode(self.config, self.episode, planned.data, self.town.stop_lines,
                                                     actors, np.array([throttle, brake, steer]), events)
        self.actors = actors
        return reward, info

    def _driving_lane(self, actors: ActorStates):
        """The waypoint of the driving lane under the ego's centre (client-side map query), or None off-road."""
        import carla

        x, y, z = actors.vehicle_pose[0, :3]
        return self.map.get_waypoint(carla.Location(x=float(x), y=float(y), z=float(z)), project_to_road=False,
                                     lane_type=carla.LaneType.Driving | carla.LaneType.Bidirectional)

    def read(self) -> ActorStates:
        """Every actor's state from the last tick (the client's copy of the world snapshot: no server call)."""
        town = self.town
        out = ActorStates.empty(len(self.vehicles) - 1, len(self.walkers), town.num_lights)
        snapshot = self.world.get_snapshot()
        blueprint_index = {bp: i for i, bp in enumerate(town.vehicle_blueprints)}
        for slot, vehicle in enumerate(self.vehicles):
            if vehicle is None or not snapshot.has_actor(vehicle.id):
                self.vehicles[slot] = None
                continue
            out.vehicle_valid[slot] = True
            out.vehicle_blueprint[slot] = blueprint_index.get(vehicle.type_id, -1)
            out.vehicle_pose[slot] = _pose(vehicle.get_transform())
            out.vehicle_velocity[slot] = _vector(vehicle.get_velocity())
            out.vehicle_angular_velocity[slot] = _vector(vehicle.get_angular_velocity())
            control = vehicle.get_control()
            out.vehicle_control[slot] = (control.throttle, control.steer, control.brake, float(control.hand_brake),
                                         float(control.reverse))
            out.vehicle_gear[slot] = control.gear
            extent = vehicle.bounding_box.extent
            out.vehicle_extent[slot] = (extent.x, extent.y, extent.z)
        walker_index = {bp: i for i, bp in enumerate(town.walker_blueprints)}
        for slot, walker in enumerate(self.walkers):
            if walker is None or not snapshot.has_actor(walker.id):
                self.walkers[slot] = None
                continue
            out.walker_valid[slot] = True
            out.walker_blueprint[slot] = walker_index.get(walker.type_id, -1)
            out.walker_pose[slot] = _pose(walker.get_transform())
            out.walker_velocity[slot] = _vector(walker.get_velocity())
            if self.walker_orders[slot] is not None:
                out.walker_target[slot], out.walker_speed[slot] = self.walker_orders[slot]
        for index, light in enumerate(self.lights):
            out.light_state[index] = int(light.get_state())
            out.light_elapsed[index] = light.get_elapsed_time()
            out.light_times[index] = (light.get_green_time(), light.get_yellow_time(), light.get_red_time())
            out.light_frozen[index] = light.is_frozen()
        return out

    # --- restoring ---

    def restore(self, actors: ActorStates, episode: EpisodeState) -> None:
        """Put ``actors`` and ``episode`` into this server's world, then read it back (see the module
        docstring): afterwards ``self.actors`` is the server's state after the settling ticks, ``self.episode``
        the snapshot's episode re-measured on it, and ``self.restore_error`` how far the actors landed from
        the snapshot."""
        import carla

        config = self.config
        if len(actors.vehicle_valid) != len(self.vehicles) or len(actors.walker_valid) != len(self.walkers) or \
                len(actors.light_state) != len(self.lights):
            raise BackendError("snapshot has other actor slots than this backend: it comes from another traffic "
                               "config or map")
        planned = self.town.route(episode.route_kind, episode.route_id)  # planned here if this process has not
        self.ensure_settings()
        self._discover()
        self.traffic_manager.set_random_device_seed(mix_seed(config.tm_seed, episode.episode_seed, episode.step))
        settle = config.restore_settle_ticks
        back = settle * config.fixed_delta_seconds
        vehicle_ids = vehicle_keys(len(self.vehicles) - 1)
        for slot, key in enumerate(vehicle_ids):
            want = bool(actors.vehicle_valid[slot]) and actors.vehicle_blueprint[slot] >= 0
            have = self.vehicles[slot]
            blueprint = self.town.vehicle_blueprints[int(actors.vehicle_blueprint[slot])] if want else None
            if have is not None and (not want or have.type_id != blueprint):
                self._destroy([have] + (list(self.sensors) if slot == 0 else []))
                if slot == 0:
                    self.sensors = []
                have = self.vehicles[slot] = None
            if want and have is None:
                pose = backdated_pose(actors.vehicle_pose[slot], actors.vehicle_velocity[slot],
                                      actors.vehicle_angular_velocity[slot], back)
                vehicle = self._spawn(self._blueprint(blueprint, key, color_seed=slot), pose)
                if vehicle is None:
                    raise BackendError(f"world {self.index}: could not spawn {key} to restore it")
                self.vehicles[slot] = vehicle
        # The traffic manager's state of a vehicle (path buffer, controller memory, lane-change timers) cannot
        # be captured, so every restore forgets it and registers the traffic afresh, in slot order, after the
        # seed is re-set: every branch restored from one snapshot starts from the same traffic-manager state.
        traffic = [vehicle for vehicle in self.vehicles[1:] if vehicle is not None]
        for vehicle in traffic:
            vehicle.set_autopilot(False, self.tm_port)
        if self.vehicles[0] is not None and not self.sensors:
            self._attach_sensors(self.vehicles[0])
        self._restore_walkers(actors)
        self._place(actors, back)
        for vehicle in traffic:
            self._setup_traffic_vehicle(vehicle)
        if config.light_control == "backend":
            self._set_lights_at(episode.step * config.fixed_delta_seconds, episode.light_offset, force=True)
        else:
            self._restore_server_lights(actors)
        for _ in range(settle):
            self.frame = self._tick()
        # Read the world back: what the next step starts from is what the server holds now, not the snapshot.
        landed = self.read()
        landed.vehicle_control[0] = actors.vehicle_control[0]  # the control the snapshot's ego last applied
        landed.walker_target[:], landed.walker_speed[:] = actors.walker_target, actors.walker_speed
        self.restore_error = restore_error(actors, landed)
        # The new walker controllers start only now, from where the walkers landed (start() registers a crowd
        # agent at the walker's position of the last tick, so it must follow the settling tick).
        for slot, controller in enumerate(self.controllers):
            if controller is not None and actors.walker_valid[slot]:
                target, speed = actors.walker_target[slot], float(actors.walker_speed[slot])
                controller.start()
                controller.go_to_location(carla.Location(x=float(target[0]), y=float(target[1]), z=float(target[2])))
                controller.set_max_speed(speed)
                self.walker_orders[slot] = (target.copy(), speed)
        self._ignore_until_frame = self.frame
        self._drain_events(self.frame)
        self.actors = landed
        self.episode = remeasure_episode(episode, planned.data, landed, config.red_light_rule)

    def _restore_walkers(self, actors: ActorStates) -> None:
        """Walkers of the snapshot spawned (or destroyed), each with a new AI controller that is not started yet.
        Old controllers are stopped and destroyed: their crowd agents would pull a teleported walker back."""
        import carla

        walker_ids = walker_keys(len(self.walkers))
        self._destroy([controller for controller in self.controllers if controller is not None])
        self.controllers = [None] * len(self.walkers)
        controller_blueprint = None
        for slot, key in enumerate(walker_ids):
            have, want = self.walkers[slot], bool(actors.walker_valid[slot])
            blueprint = self.town.walker_blueprints[int(actors.walker_blueprint[slot])] if want else None
            if have is not None and (not want or have.type_id != blueprint):
                self._destroy([have])
                have = self.walkers[slot] = None
                self.walker_orders[slot] = None
            if want and have is None:
                walker = self._spawn(self._blueprint(blueprint, key), actors.walker_pose[slot], lift=0.0)
                if walker is None:
                    raise BackendError(f"world {self.index}: could not spawn {key} to restore it")
                self.walkers[slot] = walker
            if want:
                controller_blueprint = controller_blueprint or self.library.find("controller.ai.walker")
                self.controllers[slot] = self.world.spawn_actor(controller_blueprint, carla.Transform(),
                                                                attach_to=self.walkers[slot])

    def _place(self, actors: ActorStates, back_seconds: float) -> None:
        """One batch: every vehicle's transform (back-dated by ``back_seconds``), velocity, angular velocity and
        control, and every walker's exact transform; applied by the server in this order before its next physics
        step."""
        import carla

        commands = []
        for slot, vehicle in enumerate(self.vehicles):
            if vehicle is None or not actors.vehicle_valid[slot]:
                continue
            pose = backdated_pose(actors.vehicle_pose[slot], actors.vehicle_velocity[slot],
                                  actors.vehicle_angular_velocity[slot], back_seconds)
            throttle, steer, brake, hand_brake, reverse = (float(v) for v in actors.vehicle_control[slot])
            commands += [
                carla.command.ApplyTransform(vehicle.id, _transform(pose)),
                carla.command.ApplyTargetVelocity(vehicle.id, carla.Vector3D(*actors.vehicle_velocity[slot])),
                carla.command.ApplyTargetAngularVelocity(vehicle.id,
                                                         carla.Vector3D(*actors.vehicle_angular_velocity[slot])),
                carla.command.ApplyVehicleControl(vehicle.id, carla.VehicleControl(
                    throttle=throttle, steer=steer, brake=brake, hand_brake=hand_brake > 0.5, reverse=reverse > 0.5,
                    manual_gear_shift=False, gear=int(actors.vehicle_gear[slot])))]
        for slot, walker in enumerate(self.walkers):
            if walker is None or not actors.walker_valid[slot]:
                continue
            # Walkers are placed exactly and stand still through the settling ticks (a zero WalkerControl; a
            # walker that had a crowd agent has its physics off, so nothing else would move it predictably);
            # their new controllers start from there (restore). They lose the settling ticks' motion, a few cm.
            commands += [carla.command.ApplyTransform(walker.id, _transform(actors.walker_pose[slot])),
                         carla.command.ApplyWalkerControl(walker.id, carla.WalkerControl(speed=0.0))]
        if commands:
            for response in self.client.apply_batch_sync(commands, False):
                if response.error:
                    raise BackendError(f"world {self.index}: restoring an actor failed: {response.error}")

    def _restore_server_lights(self, actors: ActorStates) -> None:
        """light_control=server: each light's state, times and frozen flag (not its group's phase)."""
        for index, light in enumerate(self.lights):
            light.set_green_time(float(actors.light_times[index, 0]))
            light.set_yellow_time(float(actors.light_times[index, 1]))
            light.set_red_time(float(actors.light_times[index, 2]))
        self._apply_light_states(actors.light_state, force=True)
        frozen = bool(actors.light_frozen.any()) if len(actors.light_frozen) else False
        self.world.freeze_all_traffic_lights(frozen)

    # --- shutting down ---

    def close(self) -> None:
        """Destroy our actors, hand the server back in asynchronous mode (so it does not wait for ticks), and
        shut the traffic manager down (:meth:`release`)."""
        try:
            self.destroy_ours()
            if self.traffic_manager is not None:
                self.traffic_manager.set_synchronous_mode(False)
            settings = self.world.get_settings()
            settings.synchronous_mode = False
            settings.fixed_delta_seconds = None
            self.world.apply_settings(settings)
            if self.config.light_control == "backend":
                self.world.freeze_all_traffic_lights(False)
        except (RuntimeError, AttributeError):
            pass  # the server is gone or unreachable (or was never reached): nothing to hand back
        finally:
            self.release()

    def release(self) -> None:
        """Shut this world's traffic manager down and free the process for another world. Called before the
        world is dropped or its server restarted: a traffic manager left registered would still be ticked by
        every later ``world.tick()`` of this process (and block it, if its server is dead). Safe to call twice."""
        traffic_manager, self.traffic_manager = self.traffic_manager, None
        try:
            if traffic_manager is not None:
                traffic_manager.shut_down()
        except RuntimeError:
            pass  # the server is gone: the local traffic manager is unregistered all the same
        finally:
            with _LIVE_LOCK:
                _LIVE_WORLDS.pop(id(self), None)


def _pose(transform) -> tuple[float, ...]:
    location, rotation = transform.location, transform.rotation
    return location.x, location.y, location.z, rotation.roll, rotation.pitch, rotation.yaw


def _vector(vector) -> tuple[float, float, float]:
    return vector.x, vector.y, vector.z


def _transform(pose: np.ndarray):
    import carla

    return carla.Transform(carla.Location(x=float(pose[0]), y=float(pose[1]), z=float(pose[2])),
                           carla.Rotation(roll=float(pose[3]), pitch=float(pose[4]), yaw=float(pose[5])))


__all__ = ["CarlaWorld", "TownData", "backdated_pose", "make_world_settings", "mix_seed", "world_settings_values"]
