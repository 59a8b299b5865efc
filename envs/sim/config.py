"""Typed configuration of the built-in simulator. Hydra-free: the entry points build these once."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch

from envs.sim.towngen import TownConfig

TERMINAL_INFRACTIONS = ("collision_pedestrian", "collision_vehicle", "collision_static", "off_road",
                        "route_deviation", "blocked")


@dataclass(frozen=True)
class VehicleConfig:
    """Ego and traffic car: a mid-size sedan close to CARLA's Lincoln MKZ.

    Steering: CARLA's vehicle blueprints allow up to ~70 degrees at the wheel, far past a real car's ~35;
    we keep the real figure, and a CARLA backend maps steer in [-1, 1] onto its own limit.
    """

    length: float = 4.8  # m, bumper to bumper
    width: float = 1.9  # m
    wheelbase: float = 2.9  # m, front to rear axle
    rear_axle_to_cog: float = 1.45  # m, rear axle to the centre of gravity (the reference point)
    max_steer: float = 0.61  # rad (35 deg), front wheel angle at steer = +-1
    max_accel: float = 4.0  # m/s^2 at standstill and full throttle (0-100 km/h in ~9 s)
    max_brake: float = 8.0  # m/s^2 at full brake (dry asphalt, ~0.8 g)
    max_speed: float = 30.0  # m/s (108 km/h), a cap for town driving
    power_to_mass: float = 60.0  # W/kg: engine power / mass (100 kW, 1.7 t); 0-100 km/h in ~9 s
    rolling_resistance: float = 0.1  # m/s^2 (c_rr 0.01 x g)
    drag_coefficient: float = 4e-4  # 1/m, aerodynamic deceleration per (m/s)^2

    def __post_init__(self) -> None:
        for name in ("length", "width", "wheelbase", "max_steer", "max_accel", "max_brake", "max_speed",
                     "power_to_mass"):
            if getattr(self, name) <= 0:
                raise ValueError(f"vehicle.{name} must be positive, got {getattr(self, name)}")
        if not 0 < self.rear_axle_to_cog < self.wheelbase:
            raise ValueError(f"vehicle.rear_axle_to_cog must lie in (0, wheelbase={self.wheelbase}), "
                             f"got {self.rear_axle_to_cog}")


@dataclass(frozen=True)
class RewardConfig:
    """Per-step reward = progress_per_m * (metres of route progress this step, counted up to the speed
    limit) - the penalty of each infraction that happened this step. Terminal infractions also end the
    episode, so their penalty comes on top of the progress the branch can no longer earn. Returns are
    normalised within a GRPO group, so only the ratios between weights matter."""

    progress_per_m: float = 0.1  # a 300 m route is worth 30
    collision_pedestrian: float = 10.0
    collision_vehicle: float = 10.0
    collision_static: float = 10.0
    red_light: float = 15.0
    off_road: float = 10.0
    route_deviation: float = 10.0
    blocked: float = 5.0
    timeout: float = 0.0
    lateral_offset_per_m: float = 0.0  # optional shaping: per metre off the route centre line, per step
    speed_limit: float = 0.0  # m/s; progress faster than this earns nothing more (0: no limit)
    stop_decel: float = 3.0  # m/s^2; > 0: before a red light the limit falls to what can stop 1 m short of
    # its line braking this hard, sqrt(2 * stop_decel * (distance - 1)) (0: off)
    obstacle_decel: float = 3.0  # m/s^2; > 0: behind a vehicle or pedestrian in the way the limit falls to the
    # speed that can still stop short of it braking this hard, sqrt(v_lead^2 + 2 * obstacle_decel * room) (0: off)
    overspeed_per_ms: float = 0.1  # penalty per m/s above the limit, per step
    forfeit_route: float = 0.0  # > 0: an episode that ends before its goal (a crash, off-road, blocked) also
    # pays forfeit_route * progress_per_m * the metres of route left, the progress it can no longer earn (0: off)

    def penalty(self, infraction: str) -> float:
        return getattr(self, infraction)

    def forfeit(self, remaining_m: torch.Tensor, ended_early: torch.Tensor) -> torch.Tensor:
        """[B] the penalty for ending an episode before its goal (``ended_early`` [B] bool, with
        ``remaining_m`` [B] metres of route left): ``forfeit_route * progress_per_m * remaining_m``, 0 elsewhere.

        Why: a GRPO branch is scored on its own H steps, where a crash costs its flat penalty plus the few
        metres the branch does not drive. The driving score charges far more: route completion stops where the
        episode ends, so a crash 50 m into a 300 m route forfeits 250 m of completion. With
        ``forfeit_route=1`` the branch's return pays for the rest of the route, as the score does."""
        if self.forfeit_route <= 0:
            return torch.zeros_like(remaining_m)
        return self.forfeit_route * self.progress_per_m * remaining_m.clamp(min=0.0) * ended_early.to(remaining_m.dtype)

    def dense(self, progress_m: torch.Tensor, speed: torch.Tensor, lateral_offset: torch.Tensor, dt: float,
              red_stop_distance: torch.Tensor | None = None,
              obstacle: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """The per-step reward before infraction penalties: progress (at most ``limit * dt`` metres a step, so
        speeding buys no reward), less the optional overspeed and lateral-offset shaping. The limit is
        ``speed_limit``, lowered before a red light (``red_stop_distance`` [B] metres to its stop line, inf
        where there is none) when ``stop_decel`` is on, and behind an obstacle in the way (``obstacle``: metres
        of room before the ego should stand behind it [B], inf where none, and its speed [B]) when
        ``obstacle_decel`` is on; no limit when none applies."""
        reward = -self.lateral_offset_per_m * lateral_offset.abs()
        red = self.stop_decel > 0 and red_stop_distance is not None
        behind = self.obstacle_decel > 0 and obstacle is not None
        if self.speed_limit <= 0 and not red and not behind:
            return reward + self.progress_per_m * progress_m  # no limit set: nothing to clamp or penalise
        limit = torch.full_like(speed, self.speed_limit if self.speed_limit > 0 else float("inf"))
        if red:
            limit = limit.minimum((2.0 * self.stop_decel * (red_stop_distance - 1.0).clamp(min=0.0)).sqrt())
        if behind:
            room, lead_speed = obstacle
            limit = limit.minimum((lead_speed ** 2 + 2.0 * self.obstacle_decel * room.clamp(min=0.0)).sqrt())
        progress_m = progress_m.minimum(limit * dt)
        overspeed = (speed - limit).clamp(min=0.0)
        reward = reward - self.overspeed_per_ms * torch.where(torch.isfinite(limit), overspeed, 0.0)
        return reward + self.progress_per_m * progress_m


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
