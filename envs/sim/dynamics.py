"""Kinematic bicycle model of a car, batched: a pure function from state and control to the next state.

Referenced at the centre of gravity with the slip angle ``beta = atan(lr / wheelbase * tan(delta))``
(Rajamani, *Vehicle Dynamics and Control*, 2.2; Kong et al., 2015). Frames: x east, y north, yaw
counter-clockwise. CARLA's control convention is kept: positive steer turns right, so the front wheel
angle is ``delta = -steer * max_steer``. There is no reverse gear: speed stays in [0, max_speed].
"""

from __future__ import annotations

import torch

from envs.driving.config import VehicleConfig


def longitudinal_acceleration(speed: torch.Tensor, throttle: torch.Tensor, brake: torch.Tensor,
                              vehicle: VehicleConfig) -> torch.Tensor:
    """Acceleration (m/s^2) from throttle and brake in [0, 1]. The engine is traction-limited at low speed
    and power-limited above ``power_to_mass / max_accel``; rolling resistance and aerodynamic drag act
    while moving. Top speed is a hard cap (``max_speed``), applied by :func:`bicycle_step`."""
    drive = throttle * torch.minimum(torch.full_like(speed, vehicle.max_accel),
                                     vehicle.power_to_mass / speed.clamp(min=1e-3))
    resist = vehicle.rolling_resistance + vehicle.drag_coefficient * speed * speed
    return drive - brake * vehicle.max_brake - resist * (speed > 0)


def bicycle_step(x: torch.Tensor, y: torch.Tensor, yaw: torch.Tensor, speed: torch.Tensor,
                 control: torch.Tensor, vehicle: VehicleConfig, dt: float):
    """One step of ``dt`` seconds for every world; ``control`` [B, 3] = throttle, brake, steer (clipped).

    Semi-implicit Euler: the new speed moves the car, which keeps the model stable at dt = 0.1 s.
    Returns (x, y, yaw, speed, acceleration).
    """
    throttle = control[:, 0].clamp(0.0, 1.0)
    brake = control[:, 1].clamp(0.0, 1.0)
    steer = control[:, 2].clamp(-1.0, 1.0)
    accel = longitudinal_acceleration(speed, throttle, brake, vehicle)
    new_speed = (speed + accel * dt).clamp(0.0, vehicle.max_speed)
    delta = -steer * vehicle.max_steer
    rear = vehicle.rear_axle_to_cog
    beta = torch.atan(rear / vehicle.wheelbase * torch.tan(delta))
    heading = yaw + beta
    new_x = x + new_speed * torch.cos(heading) * dt
    new_y = y + new_speed * torch.sin(heading) * dt
    new_yaw = wrap_angle(yaw + new_speed / rear * torch.sin(beta) * dt)
    return new_x, new_y, new_yaw, new_speed, (new_speed - speed) / dt


def wrap_angle(angle: torch.Tensor) -> torch.Tensor:
    """Angle wrapped to [-pi, pi)."""
    return torch.remainder(angle + torch.pi, 2 * torch.pi) - torch.pi
