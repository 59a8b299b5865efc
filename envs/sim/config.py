"""Typed configuration of the built-in simulator. Hydra-free: the entry points build these once."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

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
    """Per-step reward = progress_per_m * (metres of route progress this step) - the penalty of each
    infraction that happened this step. Terminal infractions also end the episode, so their penalty comes
    on top of the progress the branch can no longer earn. Returns are normalised within a GRPO group, so
    only the ratios between weights matter."""

    progress_per_m: float = 0.1  # a 300 m route is worth 30
    collision_pedestrian: float = 10.0
    collision_vehicle: float = 10.0
    collision_static: float = 10.0
    red_light: float = 5.0
    off_road: float = 10.0
    route_deviation: float = 10.0
    blocked: float = 5.0
    timeout: float = 0.0
    lateral_offset_per_m: float = 0.0  # optional shaping: per metre off the route centre line, per step

    def penalty(self, infraction: str) -> float:
        return getattr(self, infraction)


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
        if self.num_towns < 1:
            raise ValueError(f"env.num_towns must be >= 1, got {self.num_towns}")
        if self.max_episode_steps < 1:
            raise ValueError(f"env.max_episode_steps must be >= 1, got {self.max_episode_steps}")
        unknown = set(self.terminate_on) - set(INFRACTIONS)
        if unknown:
            raise ValueError(f"env.terminate_on has unknown infractions {sorted(unknown)}; "
                             f"choose from {list(INFRACTIONS)}")
        if not (self.device == "cpu" or self.device.startswith("cuda")):
            raise ValueError(f"env.device must be 'cpu' or 'cuda[:N]', got {self.device!r}")
