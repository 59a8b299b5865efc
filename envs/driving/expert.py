"""Rule-based drivers over the privileged observation vector, batched.

They read only the observation of envs.api (so they drive any backend that fills it):

* :func:`route_follower`: pure pursuit on the route points with a proportional speed controller; it
  ignores other road users (a baseline for an empty road, and the benchmark's driver).
* :class:`ExpertDriver`: the privileged expert. Pure pursuit on the route with a lookahead that grows with
  speed; a target speed limited by the route's curvature ahead; and an intelligent-driver-model
  acceleration towards it behind the nearest obstacle in its path: a vehicle or pedestrian whose footprint
  (now, or where it will be over the next seconds at its current velocity) lies in a corridor along the
  route, or the stop line of a red light, or of a yellow one it can still stop for. It proves the
  simulated world is drivable, is an evaluation baseline, and is a source of demonstrations.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from envs.api import OBSERVATION_LAYOUT, ObservationLayout
from envs.driving.config import VehicleConfig
from envs.driving.observation import LATERAL_SCALE_M, SIZE_SCALE_M

FAR = 1e6


def route_follower(obs: torch.Tensor, target_speed: float = 8.0, layout: ObservationLayout = OBSERVATION_LAYOUT
                   ) -> torch.Tensor:
    """Controls [B, 3] that steer at the second route point (5-10 m ahead) and hold ``target_speed`` m/s."""
    route = obs[:, layout.slices["route"]].view(len(obs), -1, 2)
    aim = route[:, 1]
    steer = (-2.0 * torch.atan2(aim[:, 1], aim[:, 0])).clamp(-1, 1)  # target to the left -> negative steer
    speed = obs[:, layout.slices["ego"].start] * layout.speed_scale
    throttle = ((target_speed - speed) * 0.5).clamp(0, 1)
    brake = ((speed - target_speed) * 0.5).clamp(0, 1)
    return torch.stack([throttle, brake, steer], dim=1)


@dataclass(frozen=True)
class ExpertConfig:
    """Parameters of :class:`ExpertDriver` (metres, seconds, m/s, m/s^2)."""

    cruise_speed: float = 10.0  # desired speed on a straight free road
    lateral_accel: float = 2.0  # curve speed: at most sqrt(lateral_accel / curvature)
    comfortable_decel: float = 2.5  # braking towards a slower curve ahead, and IDM b
    max_accel: float = 2.0  # IDM a
    time_headway: float = 1.2  # IDM T behind vehicles
    vehicle_gap: float = 3.0  # IDM s0 behind vehicles
    pedestrian_gap: float = 4.0  # IDM s0 before pedestrians
    stop_line_gap: float = 1.5  # stop this far before a red light's stop line
    yellow_stop_decel: float = 4.0  # on yellow, stop if possible with this deceleration, else go on
    corridor_margin: float = 0.4  # metres beyond the two half-widths that count as in the way
    pedestrian_margin: float = 1.0  # the same, for pedestrians
    prediction_s: tuple[float, ...] = (1.0, 2.0)  # also check where actors will be after these times
    pedestrian_horizon_s: float = 5.0  # a pedestrian whose walk crosses the corridor within this is in the way
    pedestrian_pass_margin_s: float = 1.5  # ...unless the ego is past their crossing point this much earlier
    min_lookahead: float = 3.0  # pure pursuit lookahead: min_lookahead + lookahead_time * speed
    lookahead_time: float = 0.5


class ExpertDriver:
    """The privileged rule-based expert (see the module docstring). ``expert(obs)`` -> controls [B, 3].

    Stateless: every decision is a function of the current observation, so it is batched over any number
    of worlds and never needs a reset. ``vehicle`` gives the ego's size, wheelbase and limits.
    """

    def __init__(self, config: ExpertConfig | None = None, vehicle: VehicleConfig | None = None,
                 layout: ObservationLayout = OBSERVATION_LAYOUT):
        self.config = config or ExpertConfig()
        self.vehicle = vehicle or VehicleConfig()
        self.layout = layout

    def __call__(self, obs: torch.Tensor) -> torch.Tensor:
        return self.act(obs)

    def act(self, obs: torch.Tensor) -> torch.Tensor:
        cfg, vehicle, layout = self.config, self.vehicle, self.layout
        slices = layout.slices
        speed = obs[:, slices["ego"].start] * layout.speed_scale
        path, segment, raw_length, seg_length, cumulative = self._path(obs)

        # --- steering: pure pursuit at a speed-dependent lookahead ----------------------------------------
        lookahead = (cfg.min_lookahead + cfg.lookahead_time * speed).minimum(cumulative[:, -1])
        aim = _point_at(path, cumulative, lookahead)
        curvature = 2 * aim[:, 1] / (aim ** 2).sum(-1).clamp(min=1.0)
        wheel_angle = torch.atan(vehicle.wheelbase * curvature)
        steer = (-wheel_angle / vehicle.max_steer).clamp(-1, 1)

        # --- desired speed: cruise, limited by the curvature ahead ---------------------------------------
        heading = torch.atan2(segment[..., 1], segment[..., 0])
        turn = torch.remainder(heading[:, 1:] - heading[:, :-1] + math.pi, 2 * math.pi) - math.pi
        real = (raw_length[:, 1:] > 0.01) & (raw_length[:, :-1] > 0.01)
        bend = turn.abs() / (0.5 * (seg_length[:, 1:] + seg_length[:, :-1])) * real
        curve_speed = (cfg.lateral_accel / bend.clamp(min=1e-4)).sqrt()
        distance = (cumulative[:, 1:-1] - vehicle.length / 2).clamp(min=0)
        allowed = (curve_speed ** 2 + 2 * cfg.comfortable_decel * distance).sqrt().min(1).values
        desired = allowed.clamp(max=cfg.cruise_speed)

        # --- obstacles in the corridor along the path, then the stop line ---------------------------------
        gap, lead_speed, min_gap, _ = self._obstacle(obs, speed, path, segment, seg_length, cumulative)
        light = obs[:, slices["light"]]
        to_line = light[:, 3] * layout.distance_scale
        red, yellow, valid = light[:, 0] > 0.5, light[:, 1] > 0.5, light[:, 4] > 0.5
        can_stop = speed * speed <= 2 * cfg.yellow_stop_decel * to_line.clamp(min=0) + 1e-3
        stop = valid & (to_line > -0.5) & (red | (yellow & can_stop))
        line_gap = torch.where(stop, to_line - cfg.stop_line_gap, FAR)
        closer = line_gap < gap
        gap, lead_speed = gap.minimum(line_gap), torch.where(closer, 0.0, lead_speed)
        min_gap = torch.where(closer, 0.0, min_gap)

        # --- IDM acceleration -> throttle / brake -----------------------------------------------------------
        a, b = cfg.max_accel, cfg.comfortable_decel
        free = 1 - (speed / desired.clamp(min=0.1)) ** 4
        wanted_gap = min_gap + (speed * cfg.time_headway + speed * (speed - lead_speed) / (2 * math.sqrt(a * b))
                                ).clamp(min=0)
        interaction = torch.where(gap < FAR, (wanted_gap / gap.clamp(min=0.05)) ** 2, 0.0)
        accel = a * (free - interaction)
        accel = torch.where(gap <= 0.05, -vehicle.max_brake, accel)  # at or past the obstacle: full brake
        available = torch.minimum(torch.full_like(speed, vehicle.max_accel),
                                  vehicle.power_to_mass / speed.clamp(min=1e-3))
        resistance = vehicle.rolling_resistance + vehicle.drag_coefficient * speed * speed
        throttle = ((accel + resistance) / available).clamp(0, 1) * (accel > -0.2)
        brake = (-accel / vehicle.max_brake).clamp(0, 1) * (accel < -0.2)
        # Hold still at a standstill rather than creep.
        hold = (speed < 0.3) & (desired > 0) & (accel < 0.2)
        brake = torch.where(hold, 0.5, brake)
        throttle = torch.where(hold, 0.0, throttle)
        return torch.stack([throttle, brake, steer], 1)

    def obstacle_in_way(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The nearest vehicle or pedestrian in the ego's way (the obstacle shaping of the reward and the
        policy's optional obstacle inputs read it): metres [B] from the ego's front bumper to where it
        should stand behind it (the gap less the expert's standstill gap; may be negative; ``FAR`` when
        none), its speed along the path [B] (m/s; 0 for pedestrians and when none), and whether it is a
        pedestrian [B] bool."""
        speed = obs[:, self.layout.slices["ego"].start] * self.layout.speed_scale
        path, segment, _, seg_length, cumulative = self._path(obs)
        gap, lead_speed, min_gap, pedestrian = self._obstacle(obs, speed, path, segment, seg_length, cumulative)
        return torch.where(gap < FAR, gap - min_gap, FAR), lead_speed, pedestrian

    def actors_along_route(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Every vehicle and pedestrian slot of the observation expressed along the route (a Frenet frame):
        where it is and will be along the path and across it, rather than in the ego's Cartesian frame, so that
        "in my lane, ahead" is a threshold on one number instead of a curve in (x, y). Pure geometry, no rule
        of the expert's: the same projection the expert's obstacle reading starts from.

        Returns vehicles [B, K, 11] and pedestrians [B, Kp, 7], zero in empty slots. Per vehicle: for now and
        each of the expert's prediction times (1 and 2 s at its current velocity), the gap along the path from
        the ego's front bumper to the vehicle's near edge (/ distance_scale) and the clearance across it, the
        lateral distance between the two bodies' sides (negative: they overlap sideways; / LATERAL_SCALE_M);
        the vehicle's heading relative to the path (cos, sin) and its velocity along and across the path
        (/ speed_scale); valid. Per pedestrian: the gap along the path now and at the end of the expert's
        pedestrian horizon, the lateral offset from the centre line then and now (+ left; / LATERAL_SCALE_M),
        velocity along and across the path; valid. Values are clipped to [-4, 4]."""
        cfg, layout, vehicle = self.config, self.layout, self.vehicle
        num_worlds = obs.shape[0]
        path, segment, _, seg_length, cumulative = self._path(obs)
        vehicles, walkers, along, lateral, tangent = self._project_actors(obs, path, segment, seg_length, cumulative)
        horizons = (0.0, *cfg.prediction_s)
        along = along.clamp(-4 * layout.distance_scale, 4 * layout.distance_scale)
        k, kp = layout.num_vehicles, layout.num_pedestrians
        split = len(horizons) * k

        # vehicles: gaps and side clearances at each horizon, from their footprint turned onto the path
        cos_yaw, sin_yaw = vehicles[..., 2], vehicles[..., 3]
        now_tangent = tangent[:, :k]
        cos_rel = cos_yaw * now_tangent[..., 0] + sin_yaw * now_tangent[..., 1]
        sin_rel = sin_yaw * now_tangent[..., 0] - cos_yaw * now_tangent[..., 1]
        length, width = vehicles[..., 6] * SIZE_SCALE_M, vehicles[..., 7] * SIZE_SCALE_M
        depth = 0.5 * (length * cos_rel.abs() + width * sin_rel.abs())
        spread = 0.5 * (length * sin_rel.abs() + width * cos_rel.abs())
        v_along, v_lateral = along[:, :split].view(num_worlds, len(horizons), k), lateral[:, :split].view(
            num_worlds, len(horizons), k)
        gap = (v_along - depth[:, None] - vehicle.length / 2) / layout.distance_scale
        clearance = (v_lateral.abs() - spread[:, None] - vehicle.width / 2) / LATERAL_SCALE_M
        velocity = vehicles[..., 4:6] * layout.speed_scale
        speed_along = (velocity * now_tangent).sum(-1)
        speed_across = velocity[..., 1] * now_tangent[..., 0] - velocity[..., 0] * now_tangent[..., 1]
        valid = vehicles[..., 8:9]
        vehicle_features = torch.cat([gap.transpose(1, 2), clearance.transpose(1, 2), cos_rel[..., None],
                                      sin_rel[..., None], speed_along[..., None] / layout.speed_scale,
                                      speed_across[..., None] / layout.speed_scale, valid], -1)

        # pedestrians: now and at the end of the horizon
        p_along, p_lateral = along[:, split:].view(num_worlds, 2, kp), lateral[:, split:].view(num_worlds, 2, kp)
        walker_tangent = tangent[:, split:split + kp]
        walker_velocity = walkers[..., 2:4] * layout.speed_scale
        walker_along = (walker_velocity * walker_tangent).sum(-1)
        walker_across = walker_velocity[..., 1] * walker_tangent[..., 0] - walker_velocity[..., 0] * walker_tangent[
            ..., 1]
        pedestrian_features = torch.cat([
            ((p_along - vehicle.length / 2) / layout.distance_scale).transpose(1, 2),
            (p_lateral / LATERAL_SCALE_M).transpose(1, 2), walker_along[..., None] / layout.speed_scale,
            walker_across[..., None] / layout.speed_scale, walkers[..., 4:5]], -1)
        vehicle_features = (vehicle_features * valid).clamp(-4, 4)
        pedestrian_features = (pedestrian_features * walkers[..., 4:5]).clamp(-4, 4)
        return vehicle_features, pedestrian_features

    def _path(self, obs: torch.Tensor):
        """The path: the ego's projection onto the route (the route lies ``lateral`` to the right), then the
        route points, in the ego frame [B, P, 2]; its segments, their lengths (raw and floored) and the
        cumulative arc length at each point."""
        layout = self.layout
        lateral = obs[:, layout.slices["ego"].start + 4] * LATERAL_SCALE_M
        route = obs[:, layout.slices["route"]].view(obs.shape[0], -1, 2) * layout.distance_scale
        start = torch.stack([torch.zeros_like(lateral), -lateral], -1)[:, None]
        path = _extend_past_goal(torch.cat([start, route], 1), layout.route_point_spacing_m)
        segment = path[:, 1:] - path[:, :-1]
        raw_length = segment.norm(dim=-1)
        cumulative = torch.cat([torch.zeros_like(raw_length[:, :1]), raw_length.cumsum(1)], 1)
        return path, segment, raw_length, raw_length.clamp(min=1e-3), cumulative

    def _project_actors(self, obs, path, segment, seg_length, cumulative):
        """The vehicle [B, K, 9] and pedestrian [B, Kp, 5] slots, and every point the rules look at projected onto
        the path in one batched call: vehicles now and at each prediction time, then pedestrians now and at the
        end of their horizon ([B, H * K + 2 * Kp] arc lengths, lateral offsets, and tangents)."""
        cfg, layout, num_worlds = self.config, self.layout, obs.shape[0]
        vehicles = obs[:, layout.slices["vehicles"]].view(num_worlds, layout.num_vehicles, -1)
        walkers = obs[:, layout.slices["pedestrians"]].view(num_worlds, layout.num_pedestrians, -1)
        points = [vehicles[..., 0:2] * layout.distance_scale + vehicles[..., 4:6] * layout.speed_scale * h
                  for h in (0.0, *cfg.prediction_s)]
        walker_position = walkers[..., 0:2] * layout.distance_scale
        points += [walker_position, walker_position + walkers[..., 2:4] * layout.speed_scale * cfg.pedestrian_horizon_s]
        return vehicles, walkers, *_project(torch.cat(points, 1), path, segment, seg_length, cumulative)

    def _obstacle(self, obs, speed, path, segment, seg_length, cumulative):
        """Gap [B] to the nearest vehicle or pedestrian in the corridor along the path (``FAR`` when none), its
        speed along the path, the standstill gap the expert keeps to it, and whether it is a pedestrian. Every
        point the rules look at (vehicles now and at each prediction time, pedestrians now and at the end of
        their horizon) is projected onto the path in one batched call."""
        cfg, layout = self.config, self.layout
        vehicles, walkers, along, lateral, tangent = self._project_actors(obs, path, segment, seg_length, cumulative)
        horizons = (0.0, *cfg.prediction_s)
        split = len(horizons) * layout.num_vehicles
        gap = torch.full_like(speed, FAR)
        lead_speed = torch.zeros_like(speed)
        min_gap = torch.full_like(speed, cfg.vehicle_gap)
        pedestrian = torch.zeros_like(speed, dtype=torch.bool)
        if layout.num_vehicles:
            gap, lead_speed = self._vehicle_gaps(vehicles, len(horizons), along[:, :split], lateral[:, :split],
                                                 tangent[:, :split], cumulative)
        if layout.num_pedestrians:
            p_gap = self._pedestrian_gaps(walkers, along[:, split:], lateral[:, split:], cumulative, speed)
            closer = p_gap < gap
            gap, lead_speed = gap.minimum(p_gap), torch.where(closer, 0.0, lead_speed)
            min_gap = torch.where(closer, cfg.pedestrian_gap, min_gap)
            pedestrian = closer
        return gap, lead_speed, min_gap, pedestrian

    def _vehicle_gaps(self, vehicles, num_horizons, along, lateral, tangent, cumulative):
        """Gap [B] to the nearest vehicle in the corridor (now or at a prediction time) and its speed along the
        path. ``along``, ``lateral`` and ``tangent`` are the projections of the vehicles' centres [B, H * K],
        prediction time major (now first)."""
        cfg, layout, ego_length, ego_width = self.config, self.layout, self.vehicle.length, self.vehicle.width
        repeat = (1, num_horizons)
        cos_yaw, sin_yaw = vehicles[..., 2].repeat(repeat), vehicles[..., 3].repeat(repeat)
        length = (vehicles[..., 6] * SIZE_SCALE_M).repeat(repeat)
        width = (vehicles[..., 7] * SIZE_SCALE_M).repeat(repeat)
        valid = (vehicles[..., 8] > 0.5).repeat(repeat)
        cos_rel = (cos_yaw * tangent[..., 0] + sin_yaw * tangent[..., 1]).abs()
        sin_rel = (sin_yaw * tangent[..., 0] - cos_yaw * tangent[..., 1]).abs()
        depth = 0.5 * (length * cos_rel + width * sin_rel)
        spread = 0.5 * (length * sin_rel + width * cos_rel)
        inside = valid & (lateral.abs() < ego_width / 2 + spread + cfg.corridor_margin) & (along + depth > 0)
        inside &= along < cumulative[:, -1:]
        gap = torch.where(inside, along - depth - ego_length / 2, FAR)
        # Only the current velocity has a speed along the path; a predicted position counts as standing.
        now = vehicles.shape[1]
        velocity = vehicles[..., 4:6] * layout.speed_scale
        along_speed = torch.zeros_like(gap)
        along_speed[:, :now] = (velocity * tangent[:, :now]).sum(-1).clamp(min=0)
        nearest, which = gap.min(1)  # ties go to the earliest time, then the nearest slot
        return nearest, torch.where(nearest < FAR, along_speed.gather(1, which[:, None]).squeeze(1), 0.0)

    def _pedestrian_gaps(self, walkers, along, lateral, cumulative, speed):
        """Gap [B] to the nearest pedestrian in the way: in the corridor along the path now, or walking into
        it within ``pedestrian_horizon_s`` unless the ego will be past their crossing point a good second
        before they reach the corridor (then it goes on: stopping right at the line would be worse).
        ``along`` and ``lateral`` [B, 2 * Kp] project the pedestrians now, then at the end of the horizon."""
        cfg, ego_length, ego_width = self.config, self.vehicle.length, self.vehicle.width
        valid = walkers[..., 4] > 0.5
        horizon = cfg.pedestrian_horizon_s
        along_now, along_then = along.chunk(2, dim=1)
        lateral_now, lateral_then = lateral.chunk(2, dim=1)
        half = ego_width / 2 + cfg.pedestrian_margin
        sweeps = (lateral_now.minimum(lateral_then) < half) & (lateral_now.maximum(lateral_then) > -half)
        # Seconds until it is in the corridor: 0 if it is; distance over lateral speed if it walks towards it.
        lateral_speed = ((lateral_then - lateral_now) / horizon).abs().clamp(min=1e-3)
        reaches = ((lateral_now.abs() - half) / lateral_speed).clamp(min=0)
        along = along_now.minimum(along_then)
        passed = (along + ego_length / 2 + cfg.pedestrian_gap) / speed.clamp(min=0.1)[:, None]  # s until clear
        ego_first = passed < reaches - cfg.pedestrian_pass_margin_s
        inside = valid & sweeps & ~ego_first & (along_now > 0) & (along < cumulative[:, -1:])
        return torch.where(inside, along - ego_length / 2, FAR).min(1).values


def _extend_past_goal(path: torch.Tensor, spacing: float) -> torch.Tensor:
    """Route points past the goal repeat the goal; the first of them moves one spacing straight on, so a
    vehicle just past the goal (where the front bumper ends up) is still seen ahead. (Not further: the
    road may curve there.) The others stay repeated, zero-length segments that the projection skips."""
    step = path[:, 1:] - path[:, :-1]
    length = step.norm(dim=-1)
    repeated = length < 0.01  # [B, S]
    index = torch.arange(step.shape[1], device=path.device)
    first = torch.where(repeated, index, step.shape[1]).amin(1)  # the first repeated segment (S: none)
    before = (first - 1).clamp(min=0)[:, None]
    direction = step.gather(1, before[..., None].expand(-1, -1, 2)).squeeze(1) / length.gather(1, before).clamp(
        min=1e-6)
    straight_on = torch.tensor([1.0, 0.0], device=path.device, dtype=path.dtype)
    direction = torch.where((first > 0)[:, None], direction, straight_on)  # no segment before it: straight on
    goal = path.gather(1, first.clamp(max=step.shape[1] - 1)[:, None, None].expand(-1, 1, 2)).squeeze(1)
    # the unbroken run of repeated segments from the first one: their end points become the extended goal
    run = (repeated | (index < first[:, None])).cumprod(1).bool() & (index >= first[:, None])
    extended = path.clone()
    extended[:, 1:] = torch.where(run[..., None], (goal + direction * spacing)[:, None], path[:, 1:])
    return extended


def _point_at(path: torch.Tensor, cumulative: torch.Tensor, distance: torch.Tensor) -> torch.Tensor:
    """The point [B, 2] at arc length ``distance`` [B] along polylines ``path`` [B, P, 2]."""
    index = (torch.searchsorted(cumulative, distance[:, None].contiguous(), right=True) - 1).clamp(
        0, path.shape[1] - 2)
    start = path.gather(1, index[..., None].expand(-1, -1, 2)).squeeze(1)
    end = path.gather(1, (index + 1)[..., None].expand(-1, -1, 2)).squeeze(1)
    length = (cumulative.gather(1, index + 1) - cumulative.gather(1, index)).squeeze(1).clamp(min=1e-3)
    t = ((distance - cumulative.gather(1, index).squeeze(1)) / length).clamp(0, 1)
    return start + (end - start) * t[:, None]


def _project(points: torch.Tensor, path: torch.Tensor, segment: torch.Tensor, seg_length: torch.Tensor,
             cumulative: torch.Tensor):
    """Arc length along the path, signed lateral offset (+ left) and the path's unit tangent there, for
    points [B, K, 2] projected onto their nearest path segment (the first segment extends backwards; the
    offset is from that segment's line).

    Each point's metres along and across every segment come from one batched matrix product of its
    homogeneous coordinates with per-segment rows [B, 2S, 3], laid out [B, S, K] so the nearest-segment
    search reduces over a non-innermost dimension: about three times faster on CPU than the same arithmetic
    broadcast to [B, K, S]. (It is float32 arithmetic: leave TF32 matmuls off on a GPU, as torch does.)"""
    ux, uy = segment[..., 0] / seg_length, segment[..., 1] / seg_length  # [B, S] unit directions
    sx, sy = path[:, :-1, 0], path[:, :-1, 1]  # each segment's start
    num_segments = segment.shape[1]
    rows = torch.stack([torch.stack([ux, uy, -(ux * sx + uy * sy)], -1),  # metres along, from the start
                        torch.stack([-uy, ux, uy * sx - ux * sy], -1)], 1).flatten(1, 2)  # metres to the left
    homogeneous = torch.cat([points, torch.ones_like(points[..., :1])], -1)  # [B, K, 3]
    along_line, across = (rows @ homogeneous.mT).split(num_segments, 1)  # [B, S, K] each
    # The squared distance to each segment, in place on [B, S, K] (the passes over it are the cost): ``t`` clamps
    # the metres along to the segment (the first one extends backwards), and the clamp removed the rest.
    t = torch.minimum(along_line, seg_length[..., None])
    t[:, 1:].clamp_(min=0.0)
    t[:, :1].clamp_(min=-FAR)
    distance = along_line - t
    distance.mul_(distance).addcmul_(across, across)
    distance.add_(torch.where(seg_length > 0.01, 0.0, FAR)[..., None])  # repeated end points are not segments
    distance, nearest = distance.min(1, keepdim=True)
    along = cumulative[:, :-1].gather(1, nearest.squeeze(1)) + t.gather(1, nearest).squeeze(1)
    along = torch.where(distance.squeeze(1) < FAR, along, FAR)  # no real segment left
    lateral = across.gather(1, nearest).squeeze(1)
    nearest = nearest.squeeze(1)
    return along, lateral, torch.stack([ux.gather(1, nearest), uy.gather(1, nearest)], -1)
