"""Traffic vehicles, batched over worlds and vehicle slots: lane following with the intelligent driver model.

A vehicle is (lane, arc length ``s`` on it, speed, desired speed ``v0``, the next lane it will take); its
pose is derived from (lane, s) with flat gathers on the bank's packed lane tables. A slot whose lane is -1
is empty. Each step, for every vehicle at once:

1. **Leader.** The nearest actor ahead on the vehicle's path (its lane, the next lane, and the lane after
   that when the next is a junction connector with one way out):

   * other vehicles and the ego by lane position: on the same lane ahead, on the next lanes, leaving the
     same lane on a sibling connector, or heading for the same next lane from another lane and nearer to
     the merge point (so at a merge exactly one of the two yields);
   * the ego and pedestrians by geometry: inside a corridor ahead (the vehicle's width plus a margin, bent
     with the lane's curvature), pedestrians also where they will be in 1.5 s; so traffic yields to an ego
     that cuts across and to people crossing;
   * the stop line at the end of the lane, as a stopped leader, when the next lane is a junction connector
     whose light is red, or yellow and the vehicle can stop at ``yellow_stop_decel``, or when the junction
     exit is blocked by a stopped vehicle (never stop inside the junction).

2. **IDM** acceleration towards the desired speed ``min(v0, curve speed)`` and behind the leader,
   clipped to ``[-max_decel, max_accel]``; semi-implicit Euler as for the ego.

3. **Lanes.** Past the lane's end a vehicle moves onto its next lane and draws the one after it from the
   world's randomness; at a dead end it leaves the world.

4. **Respawn.** Vehicles farther than ``despawn_distance_m`` from the ego leave; then one empty slot per
   world is filled, when a free spot is found, ``spawn_distance_m`` from the ego: on the ego's route ahead
   (chance ``route_spawn_prob``) or on any lane outside a junction, at least ``SPAWN_CLEARANCE_M`` from
   every other vehicle.

Junction safety comes from the lights (one approach green at a time, all-red clearance) and from the
yellow rule; no two green movements cross, so traffic needs no gap acceptance. All randomness is
``rng.uniform(world key, step, stream)``.

Performance: everything is [B, N] (or [B, N, small]) tensor work with flat gathers; leaders by lane are
found by sorting each world's actors by (lane, s) rather than by comparing all pairs, and selections use
envs.sim.ops (torch.where is slow on CPU).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from envs.driving.lights import GREEN
from envs.sim import ops, rng
from envs.sim.bank import TownBank
from envs.sim.config import SimConfig, TrafficConfig
from envs.sim.lights import light_states
from envs.sim.ops import select, select_int

SPAWN_CLEARANCE_M = 12.0
"""A vehicle spawns at least this far (centre to centre) from every other vehicle."""

SPAWN_END_MARGIN_M = 15.0
"""A vehicle spawns at least this far before the end of its lane (so never right before a stop line)."""

SIBLING_REACH_M = 10.0
"""A vehicle on another connector leaving the same lane counts as ahead for its first metres."""

CORRIDOR_MARGIN_M = 0.4
"""Extra half-width of the geometric corridor beyond the two actors' half-widths."""

PEDESTRIAN_LOOKAHEAD_S = 1.5
"""Pedestrians are also checked where they will be this many seconds ahead."""

EXIT_CLEAR_M, EXIT_CLEAR_SPEED = 3.0, 3.0
"""A vehicle does not enter a junction while the vehicle it would follow out of it, already past the
junction exit, is within this many metres (beyond a car length and the minimum gap) of the exit and slower
than this (m/s): it would have to stop inside the junction."""

STOP_LINE_SETBACK_M = 1.0
"""A vehicle stopping for a light stops with its front about this far before the stop line."""

FAR = 1e6
"""Gap (m) that means "no leader"; finite, so selections stay exact."""

_LANE_KEY = 4096.0  # sort keys are lane * _LANE_KEY + metres (lanes are shorter than 4 km)
_MAX_REMAINING = 4000.0

# Columns of TownBank.lane_float_table and lane_int_table.
_LENGTH, _CURVATURE, _IN_JUNCTION, _PREDECESSOR_LENGTH = 0, 2, 5, 6
_LIGHT, _PREDECESSOR, _NUM_SUCCESSORS, _ONLY_SUCCESSOR, _SUCCESSORS = 0, 1, 2, 3, 4


class Vehicles(NamedTuple):
    """Traffic of B worlds, every field [B, N]; ``lane`` is -1 for an empty slot."""

    lane: torch.Tensor  # int32, lane id in the world's town
    next: torch.Tensor  # int32, the lane taken after this one, -1 at a dead end
    s: torch.Tensor  # m along the lane
    speed: torch.Tensor  # m/s
    v0: torch.Tensor  # m/s desired speed
    x: torch.Tensor  # pose, derived from (lane, s)
    y: torch.Tensor
    yaw: torch.Tensor
    curvature: torch.Tensor  # 1/m, + left: of the lane over the next few metres (bends the corridor ahead)


class EgoActor(NamedTuple):
    """The ego as traffic sees it, every field [B]. ``lane``/``s``/``next`` are its route's lane, arc
    length on it and the route's next lane; ``on_lane`` says whether the ego is close enough to that lane's
    centre line and heading to count as driving in it (else only the geometric corridor sees it)."""

    x: torch.Tensor
    y: torch.Tensor
    yaw: torch.Tensor
    speed: torch.Tensor
    lane: torch.Tensor  # int32
    s: torch.Tensor
    next: torch.Tensor  # int32
    on_lane: torch.Tensor


class Walkers(NamedTuple):
    """Pedestrians as traffic sees them, every field [B, M]."""

    x: torch.Tensor
    y: torch.Tensor
    vx: torch.Tensor
    vy: torch.Tensor
    active: torch.Tensor  # bool


def idm_acceleration(speed: torch.Tensor, desired_speed: torch.Tensor, gap: torch.Tensor,
                     leader_speed: torch.Tensor, config: TrafficConfig) -> torch.Tensor:
    """The intelligent driver model (Treiber et al. 2000), clipped to [-max_decel, max_accel].

    ``gap`` is bumper to bumper in metres (:data:`FAR` or more: no leader), ``leader_speed`` the leader's
    speed along the follower's path. All tensors broadcast.
    """
    a, b = config.max_accel, config.comfortable_decel
    free = 1.0 - (speed / desired_speed.clamp(min=0.1)) ** config.accel_exponent
    desired_gap = config.min_gap + (speed * config.time_headway
                                    + speed * (speed - leader_speed) / (2.0 * math.sqrt(a * b))).clamp(min=0.0)
    interaction = (desired_gap / gap.clamp(min=0.1)) ** 2 * ops.lt(gap, FAR)
    return (a * (free - interaction)).clamp(-config.max_decel, a)


class LaneInfo(NamedTuple):
    """Static facts about lanes [B, ...] (gathered from the bank's packed tables; lane -1 reads as an empty
    lane: length 0, no light, no predecessor, no successors)."""

    length: torch.Tensor
    curvature: torch.Tensor  # largest |curvature| of the lane, 1/m
    in_junction: torch.Tensor  # bool
    light: torch.Tensor
    predecessor: torch.Tensor
    predecessor_length: torch.Tensor
    num_successors: torch.Tensor
    only_successor: torch.Tensor  # the successor if there is exactly one, else -1
    successors: torch.Tensor  # [B, ..., S]


def lane_info(bank: TownBank, slot: torch.Tensor, lane: torch.Tensor) -> LaneInfo:
    """Facts about lanes ``lane`` [B, ...] (-1: no lane) of worlds in towns ``slot`` [B]."""
    rows = bank.lane_rows(slot, lane).reshape(-1)
    floats = bank.lane_float_table.index_select(0, rows).view(*lane.shape, -1)
    ints = bank.lane_int_table.index_select(0, rows).view(*lane.shape, -1)
    return LaneInfo(floats[..., _LENGTH], floats[..., _CURVATURE], floats[..., _IN_JUNCTION] > 0.5,
                    ints[..., _LIGHT], ints[..., _PREDECESSOR], floats[..., _PREDECESSOR_LENGTH],
                    ints[..., _NUM_SUCCESSORS], ints[..., _ONLY_SUCCESSOR], ints[..., _SUCCESSORS:])


def choose_successor(info: LaneInfo, u: torch.Tensor) -> torch.Tensor:
    """One successor of each lane, uniformly by ``u`` in [0, 1); -1 where the lane has none."""
    pick = (u * info.num_successors).long().minimum((info.num_successors - 1).clamp(min=0))
    return info.successors.gather(-1, pick.unsqueeze(-1)).squeeze(-1)  # -1 padding where there is none


def step_traffic(bank: TownBank, config: SimConfig, slot: torch.Tensor, vehicles: Vehicles, ego: EgoActor,
                 walkers: Walkers | None, time_s: torch.Tensor, light_offset: torch.Tensor, key: torch.Tensor,
                 counter: torch.Tensor) -> Vehicles:
    """Advance all traffic by one step (leaders, IDM, moving onto the next lane, despawn); see the module
    docstring. Spawning is separate (:func:`spawn_vehicle`). Empty slots have lane and next -1.

    Masks are mostly 0/1 floats (envs.sim.ops): on CPU they are several times cheaper than bool tensors.
    """
    cfg, dt = config.traffic, config.dt
    length, width = config.vehicle.length, config.vehicle.width
    num_slots = vehicles.lane.shape[1]
    lane, s, speed = vehicles.lane, vehicles.s, vehicles.speed
    active = ops.as_float(ops.ge(lane, 0))
    here = lane_info(bank, slot, lane)
    ahead_lane = lane_info(bank, slot, vehicles.next)
    after = ahead_lane.only_successor
    remaining = here.length - s

    # --- leaders by lane position: other vehicles, and the ego as actor N -------------------------------
    ego_here = lane_info(bank, slot, ego.lane[:, None])
    ego_on = ego.on_lane[:, None]
    position, leader_speed = lane_leaders(
        torch.cat([lane, select_int(ego_on, ego.lane[:, None], -1)], 1), torch.cat([s, ego.s[:, None]], 1),
        torch.cat([vehicles.next, select_int(ego_on, ego.next[:, None], -1)], 1),
        torch.cat([remaining, ego_here.length - ego.s[:, None]], 1),
        torch.cat([here.predecessor, select_int(ego_on, ego_here.predecessor, -1)], 1),
        torch.cat([here.predecessor_length, ego_here.predecessor_length], 1),
        torch.cat([speed, ego.speed[:, None]], 1),
        vehicles.next, after, here.length, ahead_lane.length, bank.lane_length.shape[1])
    ahead = ops.gt(position, s)
    lane_gap = select(ahead, position - s - length, FAR)

    # --- leaders by geometry: the ego's box and pedestrians in a corridor ahead ------------------------
    cos, sin = torch.cos(vehicles.yaw), torch.sin(vehicles.yaw)
    bend = 0.5 * vehicles.curvature  # the corridor's centre line: left = bend * forward^2
    reach = (cfg.min_gap + length + speed * (cfg.time_headway + speed / (2 * cfg.comfortable_decel))).clamp(max=40.0)
    dx, dy = ego.x[:, None] - vehicles.x, ego.y[:, None] - vehicles.y
    forward = dx * cos + dy * sin
    left = dy * cos - dx * sin - bend * forward * forward
    relative = ego.yaw[:, None] - vehicles.yaw
    rel_cos, rel_sin = torch.cos(relative), torch.sin(relative)
    abs_cos, abs_sin = rel_cos.abs(), rel_sin.abs()
    # The ego box's half-extents along and across the vehicle's heading.
    depth = 0.5 * (length * abs_cos + width * abs_sin)
    spread = 0.5 * (length * abs_sin + width * abs_cos)
    inside = ops.gt(forward, 0.0) * ops.lt(forward, reach + depth) * ops.lt(left.abs(), spread + (width / 2
                                                                                                 + CORRIDOR_MARGIN_M))
    geometric_gap = select(inside, forward - depth - length / 2, FAR)
    geometric_speed = (ego.speed[:, None] * rel_cos).clamp(min=0.0)
    if walkers is not None and walkers.x.shape[1] > 0:
        # A pedestrian's lateral offset over the next PEDESTRIAN_LOOKAHEAD_S (in the vehicle's frame, a
        # straight corridor): in the way if that interval meets the corridor.
        radius = config.pedestrians.radius
        c, si = cos[..., None], sin[..., None]
        dx = walkers.x[:, None, :] - vehicles.x[..., None]
        dy = walkers.y[:, None, :] - vehicles.y[..., None]
        forward = dx * c + dy * si
        drift = (walkers.vy[:, None, :] * c - walkers.vx[:, None, :] * si) * (0.5 * PEDESTRIAN_LOOKAHEAD_S)
        middle = dy * c - dx * si + drift  # the middle of the interval, and its half-length |drift|
        meets = ops.lt(middle.abs() - drift.abs(), width / 2 + radius + CORRIDOR_MARGIN_M)
        inside = meets * ops.gt(forward, 0.0) * ops.lt(forward, reach[..., None]) * walkers.active[:, None, :]
        walker_gap = select(inside, forward - (length / 2 + radius), FAR).min(-1).values
        closer = ops.lt(walker_gap, geometric_gap)
        geometric_gap = geometric_gap.minimum(walker_gap)
        geometric_speed = geometric_speed * (1.0 - closer)

    # --- stop line: red, yellow when it can stop, or the junction exit blocked --------------------------
    to_line = remaining - length / 2  # front bumper to the end of the lane
    light = ahead_lane.light  # -1 when the next lane is not entered through a light (or there is none)
    state = light_states(bank, config.lights, slot, light, time_s, light_offset)
    can_stop = ops.ge(to_line, 0.0) * ops.le(speed * speed, to_line * (2 * cfg.yellow_stop_decel) + 1e-6)
    entering = ops.as_float(ahead_lane.in_junction)
    beyond_exit = position - here.length - ahead_lane.length  # where the leader is past the junction exit
    exit_blocked = (entering * ahead * ops.lt(leader_speed, EXIT_CLEAR_SPEED) * ops.gt(beyond_exit, 0.0)
                    * ops.lt(beyond_exit, length + cfg.min_gap + EXIT_CLEAR_M))
    box_taken = entering * junction_taken_by_others(bank, slot, light, here.light, ego_here.light)
    lit = ops.as_float((light >= 0) & (state != GREEN))
    hold = can_stop * lit.maximum(exit_blocked).maximum(box_taken)
    line_gap = select(hold, to_line + (cfg.min_gap - STOP_LINE_SETBACK_M), FAR)

    # --- IDM on the nearest leader -----------------------------------------------------------------------
    geometric_first = ops.lt(geometric_gap, lane_gap)
    gap = lane_gap.minimum(geometric_gap)
    lead_speed = select(geometric_first, geometric_speed, leader_speed)
    line_first = ops.lt(line_gap, gap)
    gap = gap.minimum(line_gap)
    lead_speed = lead_speed * (1.0 - line_first)
    curve_speed = (cfg.lateral_accel / here.curvature.clamp(min=1e-4)).sqrt()
    next_curve_speed_sq = cfg.lateral_accel / ahead_lane.curvature.clamp(min=1e-4)
    approach_speed = (next_curve_speed_sq + 2 * cfg.comfortable_decel * remaining.clamp(min=0)).sqrt()
    desired = vehicles.v0.minimum(curve_speed).minimum(approach_speed)  # no next lane: curvature 0, no limit
    accel = idm_acceleration(speed, desired, gap, lead_speed, cfg)
    new_speed = (speed + accel * dt).clamp(min=0.0) * active
    new_s = s + new_speed * dt

    # --- lane ends: move on and draw the next turn; dead ends and far vehicles leave ---------------------
    over = ops.ge(new_s, here.length)
    # One uniform per world, spread over the slots by the golden ratio: distinct turns for every vehicle.
    u = torch.frac(rng.uniform(key, counter, rng.STREAM_TRAFFIC_TURN) + _SLOT_SPREAD[:num_slots].to(s.device))
    turn_lane = choose_successor(ahead_lane, u)
    new_s = new_s - here.length * over
    over_int = over.int()
    new_lane = select_int(over_int, vehicles.next, lane)
    new_next = select_int(over_int, turn_lane, vehicles.next)
    point, heading, curvature = bank.lane_pose(slot[:, None] * bank.lane_length.shape[1] + new_lane.clamp(min=0),
                                               new_s, curvature=True)
    x, y = point[..., 0], point[..., 1]
    near = ops.le((x - ego.x[:, None]) ** 2 + (y - ego.y[:, None]) ** 2, cfg.despawn_distance_m ** 2)
    stays = near * ops.as_float(ops.ge(new_lane, 0)) * active
    stays_int = stays.int()
    return Vehicles(select_int(stays_int, new_lane, -1), select_int(stays_int, new_next, -1), new_s,
                    new_speed * stays, vehicles.v0, x, y, heading, curvature)


_SLOT_SPREAD = torch.frac(torch.arange(64, dtype=torch.float32) * 0.6180339887498949)


def junction_taken_by_others(bank: TownBank, slot: torch.Tensor, light: torch.Tensor, lane_light: torch.Tensor,
                             ego_lane_light: torch.Tensor) -> torch.Tensor:
    """[B, N] whether the junction a vehicle is about to enter through ``light`` [B, N] (-1: none) holds a
    vehicle (``lane_light`` [B, N]: the light of each vehicle's lane, -1 outside junctions) or the ego
    (``ego_lane_light`` [B, 1]) that came in through another light: a straggler of the previous phase.
    Only junction connectors have lights, so a lane's light says both "inside" and "through which light"."""
    num_worlds = light.shape[0]
    num_lights = bank.num_lights_max
    inside_light = torch.cat([lane_light, ego_lane_light], 1).long()
    inside = (inside_light >= 0).float()
    junction = bank.light_table[:, 0]
    inside_junction = junction.index_select(0, (slot[:, None] * num_lights + inside_light.clamp(min=0)).reshape(-1))
    per_light = torch.zeros(num_worlds, num_lights + 1, device=light.device)
    per_light.scatter_add_(1, inside_light + 1, inside)  # column 0 collects the lanes outside junctions
    light = light.long()
    per_junction = torch.zeros(num_worlds, bank.num_junctions_max, device=light.device)
    per_junction.scatter_add_(1, inside_junction.view_as(inside_light), inside)
    own = junction.index_select(0, (slot[:, None] * num_lights + light.clamp(min=0)).reshape(-1)).view_as(light)
    others = per_junction.gather(1, own) - per_light.gather(1, light + 1)
    return (light >= 0) & (others > 0.5)


def lane_leaders(lane_j, s_j, next_j, remaining_j, pred_j, pred_length_j, speed_j, next_lane, after, length,
                 next_length, max_lanes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The nearest actor ahead of each vehicle by lane position, by sorting rather than comparing all pairs.

    Actors [B, A] (the N vehicles first; lane -1: not on a lane): lane, s, next lane, metres to the lane
    end, predecessor lane (-1: none or several) and its length, speed. Vehicles [B, N]: next lane, the lane
    after it (-1: not known), lane length, next lane length. Candidates:

    * the next actor ahead on the same lane; an actor within SIBLING_REACH_M of the start of a lane with a
      single predecessor is filed on that predecessor, past its end, so the vehicles behind it there still
      see it when it turns off onto a sibling connector;
    * the first actor filed on the vehicle's own lane (ahead of a vehicle that is itself filed on its
      predecessor), on the next lane and on the lane after it;
    * the nearest actor ahead heading for the same next lane from another lane, ordered by distance to the
      merge point (so of two merging vehicles exactly one yields).

    Returns the leader's position projected onto the vehicle's own lane [B, N] (past the lane end for
    leaders beyond it; -FAR when there is none) and the leader's speed [B, N].
    """
    num_worlds, num_actors = lane_j.shape
    num_vehicles = next_lane.shape[1]
    device = lane_j.device
    count = torch.arange(num_actors, device=device).expand(num_worlds, -1)
    s = s_j[:, :num_vehicles]

    # Actors sorted by (filed lane, s) with float keys lane * _LANE_KEY + s (exact enough to order actors
    # metres apart while towns have fewer than ~2,000 lanes), and where each lane's first actor sits in
    # that order (one dense row per world; column max_lanes collects the others).
    refile = ops.as_float(ops.ge(pred_j, 0)) * ops.lt(s_j, SIBLING_REACH_M)
    filed_lane = select_int(refile.int(), pred_j, lane_j).float()
    filed_s = s_j + pred_length_j * refile
    sorted_keys, order = (filed_lane * _LANE_KEY + filed_s).sort(1)
    sorted_lane = torch.floor(sorted_keys * (1.0 / _LANE_KEY))
    sorted_s = filed_s.gather(1, order)
    sorted_speed = speed_j.gather(1, order)
    rank = torch.empty_like(order).scatter_(1, order, count)
    starts = torch.ones_like(sorted_lane)
    starts[:, 1:] = 1.0 - ops.eq(sorted_lane[:, 1:], sorted_lane[:, :-1])
    column = select(starts * ops.ge(sorted_lane, 0.0), sorted_lane, float(max_lanes)).long()
    # int8: actor indices are small, and the table is wide (every lane of the town) but read sparsely. Column
    # max_lanes + 1 is never written: queries for "no lane" read -1 there.
    first_entry = torch.full((num_worlds, max_lanes + 2), -1, dtype=torch.int8, device=device)
    first_entry.scatter_(1, column, count.to(torch.int8))

    positions, found, speeds = [], [], []
    # The actor after the vehicle in the sorted order, if it is filed on the vehicle's lane (a vehicle filed
    # on its predecessor sees the actors after it there: past the end, one has turned off onto a sibling).
    own_lane = filed_lane[:, :num_vehicles]
    behind = rank[:, :num_vehicles] + 1
    after_last = ops.as_float(ops.ge(behind, num_actors))  # nothing after it (clamping finds the vehicle itself)
    behind = behind.clamp(max=num_actors - 1)
    found.append(ops.eq(sorted_lane.gather(1, behind), own_lane) * (1.0 - after_last) * ops.ge(own_lane, 0.0))
    positions.append(sorted_s.gather(1, behind) - pred_length_j[:, :num_vehicles] * refile[:, :num_vehicles])
    speeds.append(sorted_speed.gather(1, behind))
    # The first actors filed on the vehicle's own lane (ahead of one filed on its predecessor), on the next
    # lane and on the lane after it.
    queries = torch.cat([lane_j[:, :num_vehicles], next_lane, after], 1)  # [B, 3N]
    where = first_entry.gather(1, select_int(ops.ge(queries, 0), queries, max_lanes + 1).long()).long()
    found += list(ops.as_float(ops.ge(where, 0)).view(num_worlds, 3, num_vehicles).unbind(1))
    where = where.clamp(min=0)
    along = sorted_s.gather(1, where).view(num_worlds, 3, num_vehicles)
    positions += [along[:, 0], length + along[:, 1], length + next_length + along[:, 2]]
    speeds += list(sorted_speed.gather(1, where).view(num_worlds, 3, num_vehicles).unbind(1))
    # Merges: actors ordered by (next lane, progress towards its start); the one after the vehicle.
    merge_keys, merge_order = ((next_j + 1).float() * _LANE_KEY + (_MAX_REMAINING - remaining_j).clamp(0, _LANE_KEY - 1)
                               ).sort(1)
    merge_rank = torch.empty_like(merge_order).scatter_(1, merge_order, count)
    behind = merge_rank[:, :num_vehicles] + 1
    after_last = ops.as_float(ops.ge(behind, num_actors))
    behind = behind.clamp(max=num_actors - 1)
    actor = merge_order.gather(1, behind)
    merge_lane = torch.floor(merge_keys.gather(1, behind) * (1.0 / _LANE_KEY)) - 1.0
    next_float = next_lane.float()
    found.append(ops.eq(merge_lane, next_float) * ops.ge(next_float, 0.0) * (1.0 - after_last))
    positions.append(length - remaining_j.gather(1, actor))
    speeds.append(speed_j.gather(1, actor))

    position = torch.stack(positions, 0)  # [K, B, N]
    usable = torch.stack(found, 0) * ops.gt(position, s)
    best, which = select(usable, position, FAR).min(0)
    best_speed = torch.stack(speeds, 0).gather(0, which[None]).squeeze(0)
    return select(ops.lt(best, FAR), best, -FAR), best_speed


def spawn_vehicle(bank: TownBank, config: SimConfig, slot: torch.Tensor, vehicles: Vehicles,
                  ego_x: torch.Tensor, ego_y: torch.Tensor, route_lanes: torch.Tensor, route_cum: torch.Tensor,
                  route_s: torch.Tensor, key: torch.Tensor, counter: torch.Tensor, near_m: float,
                  num_candidates: int = 3) -> Vehicles:
    """Fill the first empty slot of each world (where one is empty and a free spot is found).

    Candidates: one on the ego's route ``near_m``..far ahead (used with chance ``route_spawn_prob``) and
    ``num_candidates`` on random lanes outside junctions; a candidate is valid ``near_m``..far from the ego
    (the route candidate: at least half of ``near_m``), ``SPAWN_END_MARGIN_M`` before its lane's end and
    ``SPAWN_CLEARANCE_M`` from every vehicle. The first valid one is taken. Its desired speed, speed
    (half the desired) and first turn come from the world's randomness too.
    """
    cfg = config.traffic
    far_m = cfg.spawn_distance_m[1]
    u = rng.uniform(key, counter, rng.STREAM_TRAFFIC_SPAWN, 2 * num_candidates + 4)
    # The route candidate: an arc length ahead on the ego's route.
    along = route_s + near_m + u[:, 0] * (far_m - near_m)
    index = (torch.searchsorted(route_cum, along[:, None].contiguous(), right=True) - 1).clamp(min=0)
    route_lane = route_lanes.gather(1, index).int()
    route_local = along[:, None] - route_cum.gather(1, index)
    use_route = (u[:, 1:2] < cfg.route_spawn_prob) & (route_lane >= 0)
    # Random lanes outside junctions.
    num_spawn_lanes = bank.num_spawn_lanes.index_select(0, slot)
    pick = (u[:, 4:4 + num_candidates] * num_spawn_lanes[:, None]).long()
    width = bank.spawn_lanes.shape[1]
    rows = (slot[:, None] * width + pick).reshape(-1)
    town_lane = bank.spawn_lanes.view(-1).index_select(0, rows).view_as(pick).int()
    lane = torch.cat([route_lane.clamp(min=0), town_lane], 1)  # [B, C]
    info = lane_info(bank, slot, lane)
    room = (info.length - SPAWN_END_MARGIN_M).clamp(min=0.0)
    local = torch.cat([route_local, u[:, 4 + num_candidates:] * room[:, 1:]], 1)
    point, heading, curvature = bank.lane_pose(slot[:, None] * bank.lane_length.shape[1] + lane, local,
                                               curvature=True)
    distance = (point[..., 0] - ego_x[:, None]) ** 2 + (point[..., 1] - ego_y[:, None]) ** 2
    taken = vehicles.lane >= 0
    gaps = ((point[..., None, 0] - vehicles.x[:, None, :]) ** 2 + (point[..., None, 1] - vehicles.y[:, None, :]) ** 2)
    crowded = ((gaps < SPAWN_CLEARANCE_M ** 2) & taken[:, None, :]).any(-1)
    low = torch.full_like(distance[:1], near_m ** 2)
    low[:, 0] = (near_m / 2) ** 2
    valid = (distance >= low) & (distance <= far_m ** 2) & ~crowded & ~info.in_junction & (local <= room)
    valid[:, :1] &= use_route
    first = valid.int().argmax(1, keepdim=True)
    empty = ~taken
    target = empty.int().argmax(1, keepdim=True)
    slots = torch.arange(empty.shape[1], device=empty.device)[None, :]
    fill = (slots == target) & (valid.any(1) & empty.any(1))[:, None]

    def chosen(values):
        return values.gather(1, first)

    low_v, high_v = cfg.desired_speed
    v0 = low_v + u[:, 2:3] * (high_v - low_v)
    first_turn = choose_successor(lane_info(bank, slot, chosen(lane)), u[:, 3:4])
    return Vehicles(
        select_int(fill, chosen(lane), vehicles.lane), select_int(fill, first_turn, vehicles.next),
        select(fill, chosen(local), vehicles.s), select(fill, 0.5 * v0, vehicles.speed),
        select(fill, v0, vehicles.v0), select(fill, chosen(point[..., 0]), vehicles.x),
        select(fill, chosen(point[..., 1]), vehicles.y), select(fill, chosen(heading), vehicles.yaw),
        select(fill, chosen(curvature), vehicles.curvature))


def traffic_overlaps(vehicles: Vehicles, length: float, width: float) -> torch.Tensor:
    """[B] number of overlapping pairs of traffic vehicles (a diagnostic: traffic should never collide)."""
    from envs.sim.collision import boxes_overlap

    overlap = boxes_overlap(vehicles.x[:, :, None], vehicles.y[:, :, None], vehicles.yaw[:, :, None], length, width,
                            vehicles.x[:, None, :], vehicles.y[:, None, :], vehicles.yaw[:, None, :], length, width)
    active = vehicles.lane >= 0
    pair = active[:, :, None] & active[:, None, :]
    upper = torch.ones(overlap.shape[1:], dtype=torch.bool, device=overlap.device).triu(1)
    return (overlap & pair & upper).sum((1, 2))
