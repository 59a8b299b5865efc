"""Pedestrians crossing the ego's route, batched over worlds and pedestrian slots.

A pedestrian walks in a straight line at constant velocity from the pavement on one side of a road to
the pavement on the other, across every lane (both directions), and then leaves. It has right of way and
does not yield to moving traffic, but it does not walk into the side of a car either: it waits while the
point ``PAUSE_LOOKAHEAD_M`` ahead of it lies within ``PAUSE_CLEARANCE_M`` of the ego's box while it is
beside the ego or at its front corners, not well in front of it (traffic yields to pedestrians; a
pedestrian may pass through the side of a stopped traffic car, a picture glitch that scores nothing).
State per slot: position, walking velocity, the seconds of walking left (0: the slot is free) and whether
it walked this step (``moving``; observations show a waiting pedestrian's velocity as 0).

While a slot is free, a crossing starts at the rate ``spawn_per_minute`` (tried every few steps), on the
ego's route ahead (``spawn_ahead_m``, and at least 3 s of the ego's current speed ahead, so a driver that
watches has time to stop):

* at a *crosswalk* with chance ``crosswalk_prob``: ``CROSSWALK_OFFSET_M`` into the road that leaves the next
  junction on the route (where a vehicle stopping for the pedestrian has left the junction);
* *mid-block* otherwise: anywhere on the route (moved to the crosswalk past a junction if it falls inside
  one).

The crossing line is perpendicular to the route's lane there and runs 1 m past the drivable edge on both
sides (the town's per-lane edge distances). Which side it starts from and the walking speed are drawn
too. All randomness is ``rng.uniform(world key, step, rng.STREAM_PEDESTRIANS)``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from envs.sim import rng
from envs.sim.bank import TownBank
from envs.sim.collision import disc_box_overlap
from envs.sim.config import SimConfig
from envs.sim.ops import select

CROSSWALK_OFFSET_M = 8.0
"""Crosswalks lie this far into the road leaving a junction."""

KERB_OFFSET_M = 1.0
"""A crossing starts and ends this far beyond the drivable edge, on the pavement."""

PAUSE_LOOKAHEAD_M, PAUSE_CLEARANCE_M = 1.0, 0.3
"""A pedestrian waits while the point this far ahead of it is within this clearance of a vehicle's box."""

_EDGE_RIGHT, _EDGE_LEFT, _IN_JUNCTION = 3, 4, 5  # columns of TownBank.lane_float_table


class Pedestrians(NamedTuple):
    """Pedestrians of B worlds, every field [B, M]."""

    x: torch.Tensor
    y: torch.Tensor
    vx: torch.Tensor
    vy: torch.Tensor
    time_left: torch.Tensor  # s of walking left; <= 0: the slot is free
    moving: torch.Tensor  # 1.0 if it walked on this step, 0.0 if it waited (or the slot is free)

    @property
    def active(self) -> torch.Tensor:
        return self.time_left > 0


def walk(pedestrians: Pedestrians, dt: float, radius: float, box_x: torch.Tensor, box_y: torch.Tensor,
         box_yaw: torch.Tensor, box_valid: torch.Tensor, length: float, width: float) -> Pedestrians:
    """Move every walking pedestrian by one step unless a vehicle box ([B, K] poses, ``box_valid``) is right
    in its way; those that arrive free their slots."""
    speed = (pedestrians.vx ** 2 + pedestrians.vy ** 2).sqrt().clamp(min=1e-3)
    ahead_x = pedestrians.x + pedestrians.vx / speed * PAUSE_LOOKAHEAD_M
    ahead_y = pedestrians.y + pedestrians.vy / speed * PAUSE_LOOKAHEAD_M
    grow = 2 * PAUSE_CLEARANCE_M
    bx, by, byaw = box_x[:, None, :], box_y[:, None, :], box_yaw[:, None, :]
    # Only a vehicle beside the pedestrian, or whose front it is about to brush, makes it wait (not one it
    # walks in front of, which must yield to it): a waiting pedestrian stands outside the vehicle's path,
    # so nobody waits for the other forever.
    along = (pedestrians.x[..., None] - bx) * torch.cos(byaw) + (pedestrians.y[..., None] - by) * torch.sin(byaw)
    blocked = (disc_box_overlap(ahead_x[..., None], ahead_y[..., None], radius, bx, by, byaw, length + grow,
                                width + grow) & box_valid[:, None, :]
               & (along < length / 2 + PAUSE_LOOKAHEAD_M)).any(-1)
    moving = (pedestrians.active & ~blocked).float()
    return Pedestrians(pedestrians.x + pedestrians.vx * (dt * moving), pedestrians.y + pedestrians.vy * (dt * moving),
                       pedestrians.vx, pedestrians.vy, (pedestrians.time_left - dt * moving).clamp(min=0.0), moving)


def spawn_pedestrian(bank: TownBank, config: SimConfig, slot: torch.Tensor, pedestrians: Pedestrians,
                     route_lanes: torch.Tensor, route_cum: torch.Tensor, route_s: torch.Tensor,
                     route_end_s: torch.Tensor, ego_speed: torch.Tensor, key: torch.Tensor,
                     counter: torch.Tensor, every_steps: int = 1, force: bool = False) -> Pedestrians:
    """Maybe start one crossing per world in its first free slot (see the module docstring), called every
    ``every_steps`` steps (the chance per call scales with it); ``force`` starts one wherever a slot is free
    and a place is found (tests, scenario set-up)."""
    cfg = config.pedestrians
    u = rng.uniform(key, counter, rng.STREAM_PEDESTRIANS, 6)
    free = ~pedestrians.active
    want = free.any(1)
    if not force:
        want &= u[:, 0] < cfg.spawn_per_minute / 60.0 * config.dt * every_steps
    near_m, far_m = cfg.spawn_ahead_m
    near = route_s + torch.maximum(torch.full_like(route_s, near_m), 3.0 * ego_speed)
    far = near + (far_m - near_m)
    # Route lanes in junctions and where the road after each starts.
    num_lanes = bank.lane_length.shape[1]
    rows = bank.lane_rows(slot, route_lanes)
    in_junction = bank.lane_float_table.index_select(0, rows.reshape(-1))[:, _IN_JUNCTION].view_as(route_cum) > 0.5
    exit_start = torch.cat([route_cum[:, 1:], torch.full_like(route_cum[:, :1], 1e9)], 1)
    crosswalk = exit_start + CROSSWALK_OFFSET_M
    usable = in_junction & (crosswalk >= near[:, None]) & (crosswalk <= far[:, None])
    first = usable.int().argmax(1, keepdim=True)
    at_crosswalk = usable.any(1) & (u[:, 1] < cfg.crosswalk_prob)
    along = near + u[:, 2] * (far - near)
    along = select(at_crosswalk, crosswalk.gather(1, first).squeeze(1), along)
    # A mid-block point inside a junction moves to the crosswalk past it.
    index = (torch.searchsorted(route_cum, along[:, None].contiguous(), right=True) - 1).clamp(min=0)
    inside = in_junction.gather(1, index).squeeze(1)
    along = select(inside, crosswalk.gather(1, index).squeeze(1), along)
    index = (torch.searchsorted(route_cum, along[:, None].contiguous(), right=True) - 1).clamp(min=0)
    lane = route_lanes.gather(1, index).squeeze(1)
    local = along - route_cum.gather(1, index).squeeze(1)
    table = bank.lane_float_table.index_select(0, bank.lane_rows(slot, lane))
    point, heading = bank.lane_pose(slot * num_lanes + lane.clamp(min=0), local)
    want &= (lane >= 0) & (table[:, _IN_JUNCTION] < 0.5) & (local <= table[:, 0]) & (along <= route_end_s)

    right = torch.stack([torch.sin(heading), -torch.cos(heading)], -1)
    from_right = u[:, 3] < 0.5
    to_right = table[:, _EDGE_RIGHT] + KERB_OFFSET_M
    to_left = table[:, _EDGE_LEFT] + KERB_OFFSET_M
    start = point + right * select(from_right, to_right, -to_left)[:, None]
    end = point - right * select(from_right, to_left, -to_right)[:, None]
    low, high = cfg.walk_speed
    speed = low + u[:, 4] * (high - low)
    duration = (to_right + to_left) / speed
    velocity = (end - start) / duration[:, None]

    target = free.int().argmax(1)
    fill = (torch.arange(free.shape[1], device=free.device)[None, :] == target[:, None]) & want[:, None]
    return Pedestrians(select(fill, start[:, 0:1], pedestrians.x), select(fill, start[:, 1:2], pedestrians.y),
                       select(fill, velocity[:, 0:1], pedestrians.vx), select(fill, velocity[:, 1:2], pedestrians.vy),
                       select(fill, duration[:, None], pedestrians.time_left), select(fill, 1.0, pedestrians.moving))
