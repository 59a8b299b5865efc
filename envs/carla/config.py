"""Typed configuration of the CARLA backend (``conf/env/carla.yaml`` mirrors it key for key).

This module must import on machines without the ``carla`` package (config parsing, ``train.py --help``), so
it imports nothing from ``carla``. Cross-field checks happen in ``__post_init__`` with messages that say how
to fix the value; checks that need the machine (is ``CARLA_ROOT`` set, is a server reachable) happen when the
backend is built (:mod:`envs.carla.server`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from envs.driving.config import TERMINAL_INFRACTIONS, RewardConfig

MAX_PORT = 65535


@dataclass(frozen=True)
class CarlaTrafficConfig:
    """Other road users, spawned at every reset from the episode seed and driven by CARLA's traffic manager
    (vehicles) and AI walker controllers (pedestrians)."""

    num_vehicles: int = 20  # traffic vehicles per world (role names traffic_0 ... traffic_{n-1}); 0 disables
    num_walkers: int = 0  # pedestrians per world (walker_0 ...); off by default: their AI controllers keep
    # navigation state that cannot be restored, so they drift more than vehicles after a restore
    spawn_radius_m: float = 150.0  # vehicles spawn at the map's spawn points within this distance of the route
    min_spawn_gap_m: float = 10.0  # no vehicle spawns closer than this to the ego's start
    speed_difference_percent: float = 30.0  # traffic drives this % below the speed limit (TM default 30; < 0 faster)
    distance_to_leading_m: float = 2.5  # metres traffic keeps to the vehicle ahead (traffic manager)
    auto_lane_change: bool = False  # allow the traffic manager's own lane changes (random, so off by default)
    ignore_lights_percent: float = 0.0  # % of the time traffic runs red lights
    walker_speed: tuple[float, float] = (1.0, 1.6)  # m/s range a walker's max speed is drawn from

    def __post_init__(self) -> None:
        if not 0 <= self.num_vehicles <= 200:
            raise ValueError(f"env.traffic.num_vehicles must lie in [0, 200], got {self.num_vehicles}")
        if not 0 <= self.num_walkers <= 200:
            raise ValueError(f"env.traffic.num_walkers must lie in [0, 200], got {self.num_walkers}")
        if self.spawn_radius_m <= 0 or self.min_spawn_gap_m < 0:
            raise ValueError("env.traffic.spawn_radius_m must be > 0 and env.traffic.min_spawn_gap_m >= 0, got "
                             f"{self.spawn_radius_m}, {self.min_spawn_gap_m}")
        if self.speed_difference_percent > 100:
            raise ValueError("env.traffic.speed_difference_percent must be <= 100 (100 = standing still), got "
                             f"{self.speed_difference_percent}")
        if self.distance_to_leading_m < 0:
            raise ValueError(f"env.traffic.distance_to_leading_m must be >= 0, got {self.distance_to_leading_m}")
        if not 0 <= self.ignore_lights_percent <= 100:
            raise ValueError(f"env.traffic.ignore_lights_percent must lie in [0, 100], got "
                             f"{self.ignore_lights_percent}")
        low, high = self.walker_speed
        if not 0 < low <= high:
            raise ValueError(f"env.traffic.walker_speed={self.walker_speed} must be (min, max) with 0 < min <= max")


@dataclass(frozen=True)
class CarlaConfig:
    """CARLA servers as a backend: where the servers come from, the world each one hosts, and the rules of an
    episode (the same observation, reward and infractions as every backend, see envs.api and DESIGN.md).

    One server hosts one world (one ego vehicle): ``num_worlds`` servers are launched from ``carla_root`` (or
    connected to from ``hosts``). The trainer sets ``num_worlds`` to ``env.num_services`` and runs branches in
    waves (``env.worlds_per_service`` must be 1).
    """

    num_worlds: int = 1  # worlds = servers used (one ego per server); the trainer sets it from env.num_services
    device: str = "cpu"  # device of the returned observation / reward tensors (the simulation runs in CARLA)
    split: Literal["train", "eval"] = "train"  # eval draws routes from eval_routes_file (if set) and salts the
    # planning seeds, so evaluation routes are not training routes
    # --- servers ---
    carla_root: str | None = None  # folder holding CarlaUE4.sh (CARLA 0.9.16); null = $CARLA_ROOT
    hosts: list[str] = field(default_factory=list)  # "host:port" of running servers to use instead of
    # launching; one per world
    gpus: list[int] = field(default_factory=list)  # CUDA device ids (as torch numbers them here, after
    # CUDA_VISIBLE_DEVICES) that launched servers take round-robin; each is mapped to its graphics adapter
    # (-graphicsadapter) by PCI bus id through nvidia-smi (envs.carla.gpus); empty = the server's default
    graphics_adapters: list[int] = field(default_factory=list)  # -graphicsadapter values given explicitly, used
    # round-robin instead of mapping env.gpus (where the graphics adapters do not follow PCI bus order); empty = map
    port: int = 2000  # first RPC port tried for launched servers; each uses rpc, rpc+1 (streaming), rpc+2
    # (secondary); ports in use are skipped
    port_stride: int = 4  # distance between the RPC ports of consecutive servers (>= 3)
    traffic_manager_port: int = 8000  # first traffic-manager port tried (one per server, opened by this process)
    server_args: list[str] = field(default_factory=lambda: ["-quality-level=Low"])  # extra CarlaUE4.sh
    # arguments (the backend always adds -RenderOffScreen -nosound and the ports)
    client_timeout_s: float = 60.0  # seconds one client call may take (a map load takes 10-60 s) before the
    # server counts as dead and is restarted
    max_restarts: int = 10  # server restarts allowed per backend before a failure is raised instead
    log_dir: str | None = None  # folder for launched servers' stdout/stderr; null = a temporary folder
    # --- world ---
    town: str = "Town10HD_Opt"  # map every server loads (routes from a file are filtered to this town)
    fixed_delta_seconds: float = 0.05  # simulated seconds per step (synchronous mode, fixed step)
    no_rendering: bool = True  # no-rendering mode (nothing here needs a camera)
    tm_seed: int = 0  # traffic-manager seed, the same on every server; mixed with the episode seed and step
    light_control: Literal["backend", "server"] = "backend"  # backend: lights frozen on the server and set
    # by this backend from a schedule in the world state (restores exactly); server: CARLA's own cycle (its
    # phase cannot be restored)
    ego_blueprint: str = "vehicle.lincoln.mkz_2020"  # ego vehicle (the built-in simulator models this car)
    spawn_settle_steps: int = 10  # ticks after spawning, so cars dropped onto the road come to rest
    restore_settle_ticks: int = 1  # ticks after placing actors on restore (>= 1): positions are back-dated by as
    # many steps, physics settles, and the state is then read back from the server
    world_class: str = "envs.carla.world:CarlaWorld"  # "module:Class" driving one server's world (a subclass can
    # add sensors; tests put a stand-in here)
    # --- routes ---
    routes_file: str | None = None  # leaderboard / Bench2Drive route XML; null = plan random routes
    eval_routes_file: str | None = None  # route XML used when split=eval; null = as for training
    route_length_m: float = 300.0  # metres of a planned route
    planner_resolution_m: float = 2.0  # metres between the waypoints of the planner's lane graph
    route_resolution_m: float = 1.0  # metres between the points of a route's dense polyline
    lane_change_cost_m: float = 10.0  # extra metres the planner charges for a lane change
    # --- episode ---
    max_episode_steps: int = 3000  # truncation (timeout): 3000 x 0.05 s = 150 s, as the built-in simulator
    blocked_time_s: float = 180.0  # standing still (< blocked_speed) this long ends the episode (leaderboard 2.0
    # AgentBlockedTest: 180 s; the built-in simulator: 60)
    blocked_speed: float = 0.1  # m/s
    route_deviation_m: float = 30.0  # lateral distance from the route that counts as leaving it (leaderboard 2.0
    # InRouteTest: 30 m; the built-in simulator: 15)
    red_light_rule: Literal["tail", "front"] = "tail"  # which ego point crossing a stop line under red is an
    # infraction: tail (leaderboard 2.0 RunningRedLightTest) or front bumper (the built-in simulator)
    terminate_on: tuple[str, ...] = TERMINAL_INFRACTIONS  # infractions that end an episode
    collision_repeat_s: float = 1.0  # contacts with the same actor closer than this in time count once
    reward: RewardConfig = field(default_factory=RewardConfig)
    traffic: CarlaTrafficConfig = field(default_factory=CarlaTrafficConfig)
    # --- bird's-eye raster (observe_raster, for policy=cnn; drawn from the map and the world state) ---
    raster_size: int = 64  # pixels per side (as the built-in simulator's env.raster_size)
    raster_metres: float = 48.0  # metres per side; the ego sits at the centre, facing up
    # --- drift of restores ---
    drift_check_steps: int = 20  # k: steps replayed when measuring restore drift
    drift_check_every: int = 100  # snapshot calls between automatic drift measurements (logged, and in
    # CarlaBackend.metrics()); 0 = never

    @property
    def dt(self) -> float:
        """Seconds per step (the name evaluation and other backends use)."""
        return self.fixed_delta_seconds

    def __post_init__(self) -> None:
        from envs.api import INFRACTIONS  # local: envs.api does not depend on backends

        if self.num_worlds < 1:
            raise ValueError(f"env.num_worlds must be >= 1, got {self.num_worlds}")
        if self.device != "cpu" and not self.device.startswith("cuda"):
            raise ValueError(f"env.device must be 'cpu' or 'cuda[:N]', got {self.device!r}")
        if self.split not in ("train", "eval"):
            raise ValueError(f"env.split must be 'train' or 'eval', got {self.split!r}")
        if self.hosts and self.carla_root:
            raise ValueError("set either env.hosts (connect to running servers) or env.carla_root (launch servers), "
                             "not both")
        for host in self.hosts:
            parse_host(host)
        if any(gpu < 0 for gpu in self.gpus):
            raise ValueError(f"env.gpus must hold CUDA device ids >= 0, got {list(self.gpus)}")
        if any(adapter < 0 for adapter in self.graphics_adapters):
            raise ValueError(f"env.graphics_adapters must hold adapter indices >= 0, got "
                             f"{list(self.graphics_adapters)}")
        if self.gpus and self.graphics_adapters and len(self.gpus) != len(self.graphics_adapters):
            raise ValueError(f"env.graphics_adapters={list(self.graphics_adapters)} must give one adapter per entry of "
                             f"env.gpus={list(self.gpus)} (or leave env.gpus empty)")
        if not 1024 <= self.port <= MAX_PORT - 2:
            raise ValueError(f"env.port must lie in [1024, {MAX_PORT - 2}] (it uses port, port+1, port+2), "
                             f"got {self.port}")
        if self.port_stride < 3:
            raise ValueError(f"env.port_stride must be >= 3 (each server uses rpc, rpc+1 and rpc+2), "
                             f"got {self.port_stride}")
        if not 1024 <= self.traffic_manager_port <= MAX_PORT:
            raise ValueError(f"env.traffic_manager_port must lie in [1024, {MAX_PORT}], got "
                             f"{self.traffic_manager_port}")
        if self.port <= self.traffic_manager_port < self.port + 2 + self.port_stride * 64:
            raise ValueError(f"env.traffic_manager_port={self.traffic_manager_port} lies in the RPC port range "
                             f"starting at env.port={self.port}; move one of them (defaults: 2000 and 8000)")
        if self.client_timeout_s <= 0:
            raise ValueError(f"env.client_timeout_s must be > 0, got {self.client_timeout_s}")
        if self.max_restarts < 0:
            raise ValueError(f"env.max_restarts must be >= 0, got {self.max_restarts}")
        if not isinstance(self.town, str) or not self.town:
            raise ValueError("env.town must name a CARLA map, e.g. Town10HD_Opt or Town03")
        if not 0 < self.fixed_delta_seconds <= 0.1:
            raise ValueError(f"env.fixed_delta_seconds must lie in (0, 0.1] seconds (CARLA's physics substeps "
                             f"need <= 0.1), got {self.fixed_delta_seconds}")
        if self.spawn_settle_steps < 0:
            raise ValueError(f"env.spawn_settle_steps must be >= 0, got {self.spawn_settle_steps}")
        if self.restore_settle_ticks < 1:
            raise ValueError(f"env.restore_settle_ticks must be >= 1 (a restore reads the world back after a tick), "
                             f"got {self.restore_settle_ticks}")
        if ":" not in self.world_class:
            raise ValueError(f"env.world_class must be 'module:Class' (e.g. envs.carla.world:CarlaWorld), got "
                             f"{self.world_class!r}")
        if self.red_light_rule not in ("tail", "front"):
            raise ValueError(f"env.red_light_rule must be 'tail' (leaderboard 2.0) or 'front', got "
                             f"{self.red_light_rule!r}")
        if self.route_length_m < 10:
            raise ValueError(f"env.route_length_m must be >= 10 m, got {self.route_length_m}")
        if not 0.5 <= self.planner_resolution_m <= 10:
            raise ValueError(f"env.planner_resolution_m must lie in [0.5, 10] m, got {self.planner_resolution_m}")
        if not 0.1 <= self.route_resolution_m <= self.planner_resolution_m:
            raise ValueError(f"env.route_resolution_m must lie in [0.1, planner_resolution_m="
                             f"{self.planner_resolution_m}] m, got {self.route_resolution_m}")
        if self.lane_change_cost_m < 0:
            raise ValueError(f"env.lane_change_cost_m must be >= 0, got {self.lane_change_cost_m}")
        if self.max_episode_steps < 1:
            raise ValueError(f"env.max_episode_steps must be >= 1, got {self.max_episode_steps}")
        if self.blocked_time_s <= 0 or self.blocked_speed < 0:
            raise ValueError("env.blocked_time_s must be > 0 and env.blocked_speed >= 0")
        if self.route_deviation_m <= 0:
            raise ValueError(f"env.route_deviation_m must be > 0, got {self.route_deviation_m}")
        unknown = set(self.terminate_on) - set(INFRACTIONS)
        if unknown:
            raise ValueError(f"env.terminate_on has unknown infractions {sorted(unknown)}; choose from "
                             f"{list(INFRACTIONS)}")
        if self.collision_repeat_s < 0:
            raise ValueError(f"env.collision_repeat_s must be >= 0, got {self.collision_repeat_s}")
        if self.raster_size < 8 or self.raster_metres <= 0:
            raise ValueError(f"env.raster_size must be >= 8 and env.raster_metres > 0, got {self.raster_size}, "
                             f"{self.raster_metres}")
        if self.drift_check_steps < 1 or self.drift_check_every < 0:
            raise ValueError("env.drift_check_steps must be >= 1 and env.drift_check_every >= 0 (0 = never)")

    @property
    def collision_repeat_steps(self) -> int:
        """``collision_repeat_s`` in steps."""
        return int(math.ceil(self.collision_repeat_s / self.fixed_delta_seconds))


def parse_host(text: str) -> tuple[str, int]:
    """"host:port" -> (host, port); ValueError with the expected form otherwise."""
    host, sep, port = str(text).rpartition(":")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= MAX_PORT:
        raise ValueError(f"env.hosts entries must look like 'host:port' (e.g. '127.0.0.1:2000'), got {text!r}")
    return host, int(port)
