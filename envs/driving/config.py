"""What every driving backend shares in its config: the ego vehicle's limits and the reward (the built-in
simulator and CARLA both use these, so a policy trained on one sees the same reward on the other)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

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
