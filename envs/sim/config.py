"""Typed configuration of the built-in simulator. Hydra-free: the entry points build these once."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from envs.driving.config import TERMINAL_INFRACTIONS, RewardConfig, VehicleConfig
from envs.sim.towngen import TownConfig


@dataclass(frozen=True)
class TrafficConfig:
    """Traffic vehicles: lane followers driven by the intelligent driver model (IDM; Treiber, Hennecke and
    Helbing, *Congested traffic states in empirical observations and microscopic simulations*, 2000).

    IDM acceleration: ``a * (1 - (v / v0)^delta - (s_star / gap)^2)`` with the desired gap
    ``s_star = min_gap + max(0, v * time_headway + v * dv / (2 * sqrt(a * b)))``, ``dv`` the closing speed
    on the leader. The leader is the nearest actor ahead on the vehicle's path (traffic, the ego,
    pedestrians in its corridor, a red or yellow stop line). Defaults: Treiber's urban values (T 1.0-1.5 s,
    s0 2 m, b 1.5-2 m/s^2, delta 4) with a brisker start (a = 2 m/s^2, SUMO's default is 2.6) so queues at
    lights discharge at about one car per 2 s.
    Traffic vehicles have the ego's size (``vehicle.length`` x ``vehicle.width``).
    """

    num_vehicles: int = 10  # vehicle slots per world; 0 disables traffic
    desired_speed: tuple[float, float] = (8.0, 11.0)  # m/s, IDM v0 range; each vehicle draws its own
    time_headway: float = 1.2  # s, IDM T
    min_gap: float = 2.0  # m, IDM s0: bumper-to-bumper gap kept when stopped
    max_accel: float = 2.0  # m/s^2, IDM a
    comfortable_decel: float = 2.0  # m/s^2, IDM b
    accel_exponent: float = 4.0  # IDM delta
    max_decel: float = 8.0  # m/s^2, emergency braking limit applied to the IDM output
    lateral_accel: float = 2.5  # m/s^2, desired speed in a curve is at most sqrt(lateral_accel / curvature)
    yellow_stop_decel: float = 4.0  # m/s^2: on yellow a vehicle stops if it can with this deceleration
    spawn_distance_m: tuple[float, float] = (40.0, 90.0)  # m from the ego where vehicles (re)spawn
    despawn_distance_m: float = 100.0  # m from the ego beyond which a vehicle is removed (and respawned)
    route_spawn_prob: float = 0.15  # chance per spawn that the vehicle is placed on the ego's route ahead

    def __post_init__(self) -> None:
        if self.num_vehicles < 0 or self.num_vehicles > 60:
            raise ValueError(f"traffic.num_vehicles must lie in [0, 60], got {self.num_vehicles}")
        low, high = self.desired_speed
        if not 0 < low <= high:
            raise ValueError(f"traffic.desired_speed={self.desired_speed} must be (min, max) with 0 < min <= max")
        for name in ("time_headway", "min_gap", "max_accel", "comfortable_decel", "accel_exponent", "max_decel",
                     "lateral_accel", "yellow_stop_decel"):
            if getattr(self, name) <= 0:
                raise ValueError(f"traffic.{name} must be positive, got {getattr(self, name)}")
        near, far = self.spawn_distance_m
        if not 0 <= near < far < self.despawn_distance_m:
            raise ValueError(f"traffic.spawn_distance_m={self.spawn_distance_m} must be (near, far) with "
                             f"0 <= near < far < despawn_distance_m={self.despawn_distance_m}")
        if not 0 <= self.route_spawn_prob <= 1:
            raise ValueError(f"traffic.route_spawn_prob must lie in [0, 1], got {self.route_spawn_prob}")


@dataclass(frozen=True)
class PedestrianConfig:
    """Pedestrians crossing the ego's route ahead, straight from kerb to kerb, at crosswalks just past
    junctions or mid-block. They do not yield; traffic (and a good driver) yields to them."""

    num_pedestrians: int = 4  # pedestrian slots per world; 0 disables pedestrians
    spawn_per_minute: float = 6.0  # mean crossings started per minute while a slot is free
    walk_speed: tuple[float, float] = (1.2, 1.5)  # m/s range; each pedestrian draws its own
    spawn_ahead_m: tuple[float, float] = (25.0, 60.0)  # m along the route ahead of the ego where a crossing
    # starts (at least 3 s of the ego's current speed ahead)
    crosswalk_prob: float = 0.5  # chance a crossing is at the crosswalk just past the next junction
    radius: float = 0.35  # m, a pedestrian's footprint is a disc of this radius

    def __post_init__(self) -> None:
        if self.num_pedestrians < 0 or self.num_pedestrians > 60:
            raise ValueError(f"pedestrians.num_pedestrians must lie in [0, 60], got {self.num_pedestrians}")
        if self.spawn_per_minute < 0:
            raise ValueError(f"pedestrians.spawn_per_minute must be >= 0, got {self.spawn_per_minute}")
        low, high = self.walk_speed
        if not 0 < low <= high:
            raise ValueError(f"pedestrians.walk_speed={self.walk_speed} must be (min, max) with 0 < min <= max")
        near, far = self.spawn_ahead_m
        if not 0 <= near <= far:
            raise ValueError(f"pedestrians.spawn_ahead_m={self.spawn_ahead_m} must be (near, far), 0 <= near <= far")
        if not 0 <= self.crosswalk_prob <= 1:
            raise ValueError(f"pedestrians.crosswalk_prob must lie in [0, 1], got {self.crosswalk_prob}")
        if self.radius <= 0:
            raise ValueError(f"pedestrians.radius must be positive, got {self.radius}")


@dataclass(frozen=True)
class LightConfig:
    """Traffic lights. Each junction cycles through its approaches (one green at a time): green, yellow,
    then all-red clearance, then the next approach. A world's junctions start at offsets drawn from the
    world's randomness, so the light state is a pure function of (world key, time)."""

    enabled: bool = True  # False: every light stays green and the light observation is empty
    green_s: float = 8.0  # s of green per approach
    yellow_s: float = 3.0  # s of yellow after each green
    all_red_s: float = 1.5  # s of all-red after each yellow (lets the junction clear)

    def __post_init__(self) -> None:
        if self.green_s <= 0 or self.yellow_s < 0 or self.all_red_s < 0:
            raise ValueError(f"lights need green_s > 0, yellow_s >= 0 and all_red_s >= 0, got {self.green_s}, "
                             f"{self.yellow_s}, {self.all_red_s}")

    @property
    def phase_s(self) -> float:
        """Seconds one approach's phase lasts (green + yellow + all-red)."""
        return self.green_s + self.yellow_s + self.all_red_s


@dataclass(frozen=True)
class SimConfig:
    """The built-in batched simulator: how many worlds, where they run, and the rules of an episode."""

    num_worlds: int = 64  # B, independent worlds stepped together
    device: str = "cpu"  # "cpu", "cuda" or "cuda:N"
    dt: float = 0.1  # s per step
    map: Literal["procedural", "straight", "junction"] = "procedural"  # procedural towns, or one
    # hand-built straight road / 4-way junction (easy scenarios and tests)
    split: Literal["train", "eval"] = "train"  # eval uses held-out towns, never seen in training
    num_towns: int = 16  # procedural towns in the split's pool; an episode seed picks one
    town: TownConfig = field(default_factory=TownConfig)
    vehicle: VehicleConfig = field(default_factory=VehicleConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    max_episode_steps: int = 1500  # truncation (timeout): 150 s covers a 300 m route at 2 m/s average
    blocked_time_s: float = 60.0  # standing still (< blocked_speed) this long ends the episode
    blocked_speed: float = 0.1  # m/s
    route_deviation_m: float = 15.0  # lateral distance from the route that counts as leaving it
    terminate_on: tuple[str, ...] = TERMINAL_INFRACTIONS  # infractions that end an episode
    traffic: TrafficConfig = field(default_factory=TrafficConfig)
    pedestrians: PedestrianConfig = field(default_factory=PedestrianConfig)
    lights: LightConfig = field(default_factory=LightConfig)
    raster_size: int = 64  # pixels per side of the bird's-eye raster observation (observe_raster)
    raster_metres: float = 48.0  # metres per side of that raster (ego at the centre, facing up)

    def __post_init__(self) -> None:
        from envs.api import INFRACTIONS  # local: envs.api does not depend on the simulator

        if self.num_worlds < 1:
            raise ValueError(f"env.num_worlds must be >= 1, got {self.num_worlds}")
        if self.dt <= 0 or self.dt > 0.5:
            raise ValueError(f"env.dt must lie in (0, 0.5] seconds, got {self.dt}")
        if self.map not in ("procedural", "straight", "junction"):
            raise ValueError(f"env.map must be 'procedural', 'straight' or 'junction', got {self.map!r}")
        if self.split not in ("train", "eval"):
            raise ValueError(f"env.split must be 'train' or 'eval', got {self.split!r}")
        if not 1 <= self.num_towns <= 4096:
            raise ValueError(f"env.num_towns must lie in [1, 4096] (each town is generated at start and held in "
                             f"memory), got {self.num_towns}")
        if self.max_episode_steps < 1:
            raise ValueError(f"env.max_episode_steps must be >= 1, got {self.max_episode_steps}")
        unknown = set(self.terminate_on) - set(INFRACTIONS)
        if unknown:
            raise ValueError(f"env.terminate_on has unknown infractions {sorted(unknown)}; "
                             f"choose from {list(INFRACTIONS)}")
        if self.raster_size < 8 or self.raster_metres <= 0:
            raise ValueError(f"env.raster_size must be >= 8 and env.raster_metres > 0, got {self.raster_size}, "
                             f"{self.raster_metres}")
        if not (self.device == "cpu" or self.device.startswith("cuda")):
            raise ValueError(f"env.device must be 'cpu' or 'cuda[:N]', got {self.device!r}")
