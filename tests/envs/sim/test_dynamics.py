"""Physics sanity of the kinematic bicycle (CARLA's control convention: positive steer turns right)."""

import math

import torch

from envs.driving.config import VehicleConfig
from envs.sim.dynamics import bicycle_step, wrap_angle

VEHICLE = VehicleConfig()


def drive(control, steps, speed=0.0, dt=0.1):
    x = y = yaw = torch.zeros(1)
    v = torch.full((1,), speed)
    control = torch.tensor([control])
    for _ in range(steps):
        x, y, yaw, v, _ = bicycle_step(x, y, yaw, v, control, VEHICLE, dt)
    return x.item(), y.item(), yaw.item(), v.item()


def test_full_throttle_reaches_a_plausible_speed():
    _, _, _, v_10s = drive([1.0, 0.0, 0.0], 100)
    # A sedan reaches 60-110 km/h in 10 s of full throttle; never past its top speed.
    assert 60 / 3.6 < v_10s < 110 / 3.6
    _, _, _, v_60s = drive([1.0, 0.0, 0.0], 600)
    assert v_60s <= VEHICLE.max_speed


def test_zero_to_hundred_time_is_realistic():
    v, t = torch.zeros(1), 0.0
    zero = torch.zeros(1)
    while v.item() < 100 / 3.6 and t < 30:
        _, _, _, v, _ = bicycle_step(zero, zero, zero, v, torch.tensor([[1.0, 0.0, 0.0]]), VEHICLE, 0.1)
        t += 0.1
    assert 6.0 < t < 15.0


def test_positive_steer_turns_right():
    x, y, yaw, _ = drive([0.3, 0.0, 0.5], 30, speed=8.0)
    assert yaw < 0 and y < 0  # heading east, a right turn goes clockwise, towards -y (south)
    x, y, yaw, _ = drive([0.3, 0.0, -0.5], 30, speed=8.0)
    assert yaw > 0 and y > 0


def test_turning_radius_matches_the_bicycle_geometry():
    # Full lock at low speed: R = rear / sin(beta) at the centre of gravity.
    steps, speed = 400, 3.0
    _, _, yaw, _ = drive([0.0, 0.0, 1.0], steps, speed=speed, dt=0.01)
    beta = math.atan(VEHICLE.rear_axle_to_cog / VEHICLE.wheelbase * math.tan(VEHICLE.max_steer))
    radius = VEHICLE.rear_axle_to_cog / math.sin(beta)
    travelled = -yaw * radius  # yaw turned (clockwise) times radius = arc length
    # The quoted turning circle is kerb to kerb, traced by the outer front wheel: ~11.9 m for a Lincoln MKZ.
    rear_radius = VEHICLE.wheelbase / math.tan(VEHICLE.max_steer)
    kerb_circle = 2 * math.hypot(rear_radius + VEHICLE.width / 2, VEHICLE.wheelbase)
    assert 10.5 < kerb_circle < 13.0
    # Speed decays a little from rolling resistance, so the arc is a bit shorter than speed * time.
    assert 0.9 * speed * steps * 0.01 < travelled <= speed * steps * 0.01 + 1e-3


def test_braking_stops_and_never_reverses():
    _, _, _, v = drive([0.0, 1.0, 0.0], 25, speed=15.0)
    assert v == 0.0  # 15 m/s at 8 m/s^2 stops in under 2 s
    x, _, _, _ = drive([0.0, 1.0, 0.0], 50, speed=0.0)
    assert x == 0.0


def test_stopping_distance_is_physical():
    x, _, _, v = drive([0.0, 1.0, 0.0], 40, speed=20.0)
    assert v == 0.0
    ideal = 20.0**2 / (2 * VEHICLE.max_brake)  # 25 m
    assert 0.9 * ideal < x < 1.15 * ideal


def test_wrap_angle():
    angles = torch.tensor([0.0, math.pi + 0.1, -math.pi - 0.1, 4 * math.pi])
    wrapped = wrap_angle(angles)
    assert torch.all(wrapped >= -math.pi) and torch.all(wrapped < math.pi)
    assert torch.allclose(torch.cos(wrapped), torch.cos(angles), atol=1e-5)
