"""``DrivingSim``: B independent driving worlds as tensors, meeting the backend contract of envs.api.

One step, for all worlds at once: clip the controls, move the ego with the kinematic bicycle, project it
onto its route (progress, lateral offset, heading error), move the pedestrians and the traffic (IDM lane
followers that obey the lights, envs.sim.traffic), respawn what has left, detect infractions (collisions
between oriented boxes, red lights, the town raster, the route), score the step, and freeze the worlds that
ended. Worlds that had already ended stay exactly as they were (reward 0), which is what a GRPO branch
that terminates needs.

State lives in a :class:`~envs.sim.state.PackedState`: ``clone`` is two row copies, ``snapshot`` two row
slices plus the town seeds, ``restore`` the reverse. Static data (towns, routes) lives in a
:class:`~envs.sim.bank.TownBank` and is referenced, never copied.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np
import torch

from envs.api import (
    ACTION_HIGH,
    ACTION_LOW,
    INFRACTIONS,
    OBSERVATION_LAYOUT,
    BackendBase,
    BackendError,
    BackendSpec,
    MapView,
    Snapshot,
    StepResult,
    WorldIds,
    as_world_ids,
    check_actions,
    clone_world_ids,
    derive_episode_seeds,
    restore_world_ids,
)
from envs.driving.expert import ExpertDriver
from envs.driving.lights import RED
from envs.driving.observation import actor_features, build_observation, light_features, red_stop_distance
from envs.sim import rng
from envs.sim.bank import TownBank
from envs.sim.collision import boxes_overlap, disc_box_overlap
from envs.sim.config import SimConfig
from envs.sim.dynamics import bicycle_step, wrap_angle
from envs.sim.lights import light_states
from envs.sim.memory import retain_freed_memory
from envs.sim.ops import select, select_int
from envs.sim.pedestrians import Pedestrians, spawn_pedestrian, walk
from envs.sim.raster import RasterObserver
from envs.sim.state import PackedState
from envs.sim.town import RASTER_CLEARANCE, RASTER_DRIVABLE, Town
from envs.sim.towngen import cross_junction_town, generate_town, straight_town
from envs.sim.traffic import EgoActor, Vehicles, Walkers, spawn_vehicle, step_traffic

EVAL_TOWN_SEED_BASE = 1_000_000
"""Evaluation towns are generated from seeds at and above this; training towns from seeds below."""

PROJECTION_WINDOW = torch.arange(-4.0, 13.0)  # metres around the last route position searched each step

FLOAT_FIELDS = {
    "x": 1, "y": 1, "yaw": 1, "speed": 1, "accel": 1,
    "last_control": 3,
    "route_s": 1,  # arc length along the route's lane sequence (from its first lane's start)
    "route_end_s": 1,  # where the route's goal is on that arc length
    "route_start_s": 1,
    "lateral_offset": 1,  # m, positive when the ego is left of the route
    "heading_error": 1,  # rad, ego yaw minus route heading
    "distance_m": 1,  # odometer of the episode
    "blocked_s": 1,  # time spent below blocked_speed
    "light_offset": 1,  # in [0, 1): where the world's junctions are in their light cycles (envs.sim.lights)
}
INT_FIELDS = {
    "town_slot": 1, "route_id": 1, "route_index": 1,  # route_index: which lane of the route the ego is on
    "step": 1, "rng_key": 1, "episode_seed": 1,
    "terminated": 1, "truncated": 1,
    "lights_passed": 1,  # route lane index of the last lit stop line the ego's front has crossed (-1: none)
    # Collisions are reported when a contact starts: bit k of vehicle_contacts is traffic slot k touching
    # the ego, likewise pedestrian_contacts; static_contact is 1 while a body corner is beyond the kerb.
    "vehicle_contacts": 1, "pedestrian_contacts": 1, "static_contact": 1,
}
"""The ego's fields; :func:`state_fields` adds the per-actor ones."""

SPAWN_INTERVAL_STEPS = 5
"""A world tries to spawn a vehicle and a pedestrian on every 5th of its steps (0.5 s), not on every step:
slots refill a little later, and spawning costs a fifth."""

LIGHT_OBSERVATION_M = 100.0
"""The light ahead is observed when its stop line is at most this far along the route."""

ON_LANE_OFFSET_M, ON_LANE_HEADING = 1.2, 0.5
"""Traffic treats the ego as driving in its route lane within this lateral offset (m) and heading error
(rad); otherwise only its geometric corridor sees the ego."""


def state_fields(config: SimConfig) -> tuple[dict, dict]:
    """Float and int fields of the world state: the ego's, plus [B, N] traffic and [B, M] pedestrian slots."""
    n, m = (config.traffic.num_vehicles,), (config.pedestrians.num_pedestrians,)
    floats = {**FLOAT_FIELDS,
              "traffic_s": n, "traffic_speed": n, "traffic_v0": n,  # m along lane, m/s, m/s (IDM v0)
              "traffic_x": n, "traffic_y": n, "traffic_yaw": n,  # pose, derived from (lane, s)
              "traffic_curvature": n,  # 1/m of the lane just ahead, derived from (lane, s)
              "ped_x": m, "ped_y": m, "ped_vx": m, "ped_vy": m,  # m, m/s (walking velocity)
              "ped_time_left": m,  # s of walking left (0: free slot)
              "ped_moving": m}  # 1 if it walked on the last step, 0 if it waited for a vehicle
    ints = {**INT_FIELDS, "traffic_lane": n, "traffic_next": n}  # lane -1: empty slot
    return floats, ints


def town_factory(config: SimConfig):
    """The function that makes a town from its seed for this configuration (one place, used by all)."""
    kind = config.map
    if kind == "procedural":
        return lambda seed: generate_town(seed, config.town)
    if kind == "straight":
        return lambda seed: straight_town(num_routes=config.town.num_routes,
                                          route_length_m=config.town.route_length_m, seed=seed)
    if kind == "junction":
        # Arms as long as the route: a route starts in the first half of an arm and always fits.
        return lambda seed: cross_junction_town(arm_length_m=max(120.0, config.town.route_length_m),
                                                num_routes=config.town.num_routes,
                                                route_length_m=config.town.route_length_m, seed=seed)
    raise ValueError(f"env.map must be 'procedural', 'straight' or 'junction', got {kind!r}")


class DrivingSim(BackendBase):
    """The built-in batched driving simulator. See the module docstring and envs.api for the contract; its spec
    offers the bird's-eye raster observation (``observe_raster``) and pictures (``positions``, ``render_birdseye``,
    ``route_map``, drawn by envs.sim.render)."""

    backend_name = "sim"

    def __init__(self, config: SimConfig):
        self.config = config
        self.spec = BackendSpec(self.backend_name, dt=config.dt, max_episode_steps=config.max_episode_steps,
                                rasters=True, pictures=True)
        self.num_worlds = config.num_worlds
        self.device = torch.device(config.device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise BackendError("env.device is 'cuda' but torch sees no CUDA device; use env.device=cpu")
        if self.device.type == "cpu":
            retain_freed_memory()  # the step's temporaries stay in the heap instead of page-faulting back in
        self.layout = OBSERVATION_LAYOUT
        self._hazards = ExpertDriver(vehicle=config.vehicle, layout=self.layout)  # obstacle shaping of the reward
        # a world without traffic or pedestrians has no obstacles: the shaping is skipped, to the same reward
        self._shape_obstacles = config.reward.obstacle_decel > 0 and (
            config.traffic.num_vehicles > 0 or config.pedestrians.num_pedestrians > 0)
        self.observation_size = self.layout.size
        self.bank = TownBank(town_factory(config), self.device)
        self.state = PackedState(*state_fields(config), self.num_worlds, self.device)
        self._action_low = torch.tensor(ACTION_LOW, device=self.device)
        self._action_high = torch.tensor(ACTION_HIGH, device=self.device)
        self._window = PROJECTION_WINDOW.to(self.device)
        self._has_reset = torch.zeros(self.num_worlds, dtype=torch.bool, device=self.device)
        self._raster = RasterObserver(config.raster_size, config.raster_metres, self.device, dt=config.dt,
                                      vehicle_length=config.vehicle.length, vehicle_width=config.vehicle.width,
                                      pedestrian_radius=config.pedestrians.radius)
        # The world's rules (traffic, pedestrians, lights) are in it too: the same state replays differently
        # under other rules.
        town_text = repr((config.map, config.town, config.split, config.dt, config.traffic, config.pedestrians,
                          config.lights))
        self.signature = hashlib.sha256(f"{town_text}|{self.state.signature}".encode()).hexdigest()[:16]

    # --- episodes -------------------------------------------------------------------------------------

    def town_seed(self, town_index: int | torch.Tensor) -> int | torch.Tensor:
        """Generator seed(s) of the split's ``town_index``-th town(s)."""
        base = EVAL_TOWN_SEED_BASE if self.config.split == "eval" else 0
        return base + town_index

    def town(self, world_id: int) -> Town:
        """The compiled town world ``world_id`` drives in (for rendering and tools)."""
        return self.bank.towns[int(self.state.town_slot[world_id])]

    def episode_seeds(self, seed: int | Sequence[int], ids: torch.Tensor) -> torch.Tensor:
        """Per-world episode seeds (long, on the CPU): derived from (seed, world id), or given one per world
        (:func:`envs.api.derive_episode_seeds`)."""
        return torch.tensor(derive_episode_seeds(seed, ids), dtype=torch.long)

    def reset(self, seed: int | Sequence[int], world_ids: WorldIds = None) -> torch.Tensor:
        ids = as_world_ids(world_ids, self.num_worlds, self.device)
        episode_seeds = self.episode_seeds(seed, ids)
        town_index = rng.mix(episode_seeds, 1) % self.config.num_towns
        slots = self.bank.slots_for(self.town_seed(0) + town_index)
        episode_seeds = episode_seeds.to(self.device)
        route = rng.mix(episode_seeds, 2) % self.bank.num_routes[slots]
        start_s = self.bank.route_start_s[slots, route]
        lanes, cum = self.bank.route_lanes(slots, route)
        point, heading, _ = self.bank.route_geometry(slots, lanes, cum, start_s[:, None])

        fresh = torch.zeros(len(ids), self.state.floats.shape[1], device=self.device)
        fresh_ints = torch.zeros(len(ids), self.state.ints.shape[1], dtype=torch.long, device=self.device)
        self.state.write_rows(ids, fresh, fresh_ints)
        s = self.state
        s.x[ids], s.y[ids], s.yaw[ids] = point[:, 0, 0], point[:, 0, 1], heading[:, 0]
        s.route_s[ids] = start_s
        s.route_start_s[ids] = start_s
        s.route_end_s[ids] = start_s + self.bank.route_length[slots, route]
        s.town_slot[ids], s.route_id[ids] = slots, route
        s.episode_seed[ids] = episode_seeds
        key = rng.seed_to_key(episode_seeds)
        s.rng_key[ids] = key
        s.light_offset[ids] = rng.uniform(key, torch.zeros_like(key), rng.STREAM_LIGHTS)[:, 0]
        s.lights_passed[ids] = -1
        s.traffic_lane[ids] = -1
        s.traffic_next[ids] = -1
        self._populate(ids)
        self._has_reset[ids] = True
        return self.observe(ids)

    def _populate(self, ids: torch.Tensor) -> None:
        """Fill the traffic slots of fresh worlds ``ids``, nearer than in steady state (from 15 m) so the
        ego meets traffic at once. Counters -1, -2, ... keep these draws apart from the steps' ones."""
        cfg, s = self.config, self.state
        if cfg.traffic.num_vehicles == 0:
            return
        slot = s.town_slot[ids]
        lanes, cum = self.bank.route_lanes(slot, s.route_id[ids])
        vehicles = self._vehicles(ids)
        near = min(15.0, cfg.traffic.spawn_distance_m[0])
        for round_ in range(cfg.traffic.num_vehicles):
            counter = torch.full_like(ids, -1 - round_)
            vehicles = spawn_vehicle(self.bank, cfg, slot, vehicles, s.x[ids], s.y[ids], lanes, cum, s.route_s[ids],
                                     s.rng_key[ids], counter, near, num_candidates=16)
        self._write_vehicles(vehicles, ids)

    # --- stepping -------------------------------------------------------------------------------------

    def step(self, actions: torch.Tensor) -> StepResult:
        check_actions(actions, self.num_worlds)
        if not bool(self._has_reset.all()):
            raise BackendError("step() before reset(): call reset(seed) first")
        cfg, s = self.config, self.state
        control = actions.to(self.device, torch.float32).clamp(self._action_low, self._action_high)
        was_done = (s.terminated | s.truncated).bool()
        # Worlds that had already ended must stay exactly as they are. On the CPU only their rows are kept
        # (usually few); on a GPU the whole state is, to keep the step free of host syncs.
        if self.device.type == "cpu":
            frozen = was_done.nonzero().flatten()
            kept = s.rows(frozen)
        else:
            kept = s.floats.clone(), s.ints.clone()
        old_route_s = s.route_s.clone()

        x, y, yaw, speed, accel = bicycle_step(s.x, s.y, s.yaw, s.speed, control, cfg.vehicle, cfg.dt)
        s.x.copy_(x), s.y.copy_(y), s.yaw.copy_(yaw), s.speed.copy_(speed), s.accel.copy_(accel)
        s.last_control.copy_(control)
        s.distance_m.add_(speed * cfg.dt)
        s.step.add_(1)
        lanes, cum = self._project_onto_route()
        self._step_actors(lanes, cum)

        events = self._infractions(lanes, cum)
        completed = s.route_s >= s.route_end_s
        terminated = completed.clone()
        for name in cfg.terminate_on:
            terminated |= events[name]
        truncated = events["timeout"] & ~terminated

        progress_m = s.route_s.minimum(s.route_end_s) - old_route_s.minimum(s.route_end_s)
        s.terminated.copy_(terminated.long())
        s.truncated.copy_(truncated.long())

        if self.device.type == "cpu":
            s.write_rows(frozen, *kept)
        else:
            keep = was_done[:, None]
            s.floats.copy_(select(keep, kept[0], s.floats))
            s.ints.copy_(select_int(keep, kept[1], s.ints))
        live = ~was_done
        observation = self.observe()
        # Ended worlds were restored above; their reward is zeroed below, so the state is read as it now is.
        red_stop = red_stop_distance(observation, self.layout) if cfg.reward.stop_decel > 0 else None
        obstacle = self._hazards.obstacle_in_way(observation)[:2] if self._shape_obstacles else None
        reward = cfg.reward.dense(progress_m, s.speed, s.lateral_offset, cfg.dt, red_stop, obstacle)
        for name, happened in events.items():
            weight = cfg.reward.penalty(name)
            if weight:
                reward = reward - weight * happened.float()
        if cfg.reward.forfeit_route > 0:
            reward = reward - cfg.reward.forfeit(s.route_end_s - s.route_s, terminated & ~completed)
        info = {name: happened & live for name, happened in events.items()}
        info.update(self._progress_info())
        info["route_completed"] = completed & live
        return StepResult(observation, reward * live, s.terminated.bool(), s.truncated.bool(), info)

    def _project_onto_route(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Move each world's route position to the route point nearest the ego (searching a window
        around the last one), and record the lateral offset and heading error there. Returns the route
        lanes and their cumulative start distances [B, R] (:meth:`TownBank.route_lanes`)."""
        s = self.state
        lanes, cum = self.bank.route_lanes(s.town_slot, s.route_id)
        candidates = (s.route_s[:, None] + self._window[None, :]).clamp(min=0.0)
        points, headings, index = self.bank.route_geometry(s.town_slot, lanes, cum, candidates)
        ego = torch.stack([s.x, s.y], dim=-1)
        nearest = ((points - ego[:, None, :]) ** 2).sum(-1).argmin(dim=1, keepdim=True)
        point = points.gather(1, nearest[..., None].expand(-1, -1, 2)).squeeze(1)
        heading = headings.gather(1, nearest).squeeze(1)
        tangent = torch.stack([torch.cos(heading), torch.sin(heading)], dim=-1)
        delta = ego - point
        along = (delta * tangent).sum(-1).clamp(-0.5, 0.5)  # refine between neighbouring points
        s.route_s.copy_((candidates.gather(1, nearest).squeeze(1) + along).clamp(min=0.0))
        s.route_index.copy_(index.gather(1, nearest).squeeze(1))
        s.lateral_offset.copy_(tangent[:, 0] * delta[:, 1] - tangent[:, 1] * delta[:, 0])
        s.heading_error.copy_(wrap_angle(s.yaw - heading))
        return lanes, cum

    # --- other road users ---------------------------------------------------------------------------------

    def _vehicles(self, ids: torch.Tensor | None = None) -> Vehicles:
        s = self.state
        fields = (s.traffic_lane, s.traffic_next, s.traffic_s, s.traffic_speed, s.traffic_v0, s.traffic_x,
                  s.traffic_y, s.traffic_yaw, s.traffic_curvature)
        # Contiguous copies (element-wise work on strided column views is several times slower); lane ids as
        # int32 (the traffic step's integer work is several times faster than in int64).
        rows = [f.contiguous() if ids is None else f[ids] for f in fields]
        return Vehicles(rows[0].int(), rows[1].int(), *rows[2:])

    def _write_vehicles(self, vehicles: Vehicles, ids: torch.Tensor | None = None) -> None:
        s = self.state
        fields = (s.traffic_lane, s.traffic_next, s.traffic_s, s.traffic_speed, s.traffic_v0, s.traffic_x,
                  s.traffic_y, s.traffic_yaw, s.traffic_curvature)
        for field, value in zip(fields, vehicles, strict=True):
            if ids is None:
                field.copy_(value)
            else:
                field[ids] = value.to(field.dtype)

    def _pedestrians(self) -> Pedestrians:
        s = self.state
        return Pedestrians(*(f.contiguous() for f in (s.ped_x, s.ped_y, s.ped_vx, s.ped_vy, s.ped_time_left,
                                                      s.ped_moving)))

    def _ego_actor(self, lanes: torch.Tensor, cum: torch.Tensor) -> EgoActor:
        s = self.state
        index = s.route_index[:, None]
        last = lanes.shape[1] - 1
        lane = lanes.gather(1, index).squeeze(1)
        following = lanes.gather(1, (index + 1).clamp(max=last)).squeeze(1)
        following = select_int(s.route_index < last, following, -1)
        on_lane = (s.lateral_offset.abs() < ON_LANE_OFFSET_M) & (s.heading_error.abs() < ON_LANE_HEADING)
        return EgoActor(s.x, s.y, s.yaw, s.speed, lane.int(), s.route_s - cum.gather(1, index).squeeze(1),
                        following.int(), on_lane)

    def _step_actors(self, lanes: torch.Tensor, cum: torch.Tensor) -> None:
        """Pedestrians walk, traffic drives, and empty slots respawn (one per world and kind per step)."""
        cfg, s = self.config, self.state
        pedestrians = None
        if cfg.pedestrians.num_pedestrians:
            # Pedestrians do not walk into the ego's side. (Traffic yields to them; a pedestrian that passes
            # through the side of a traffic car is a picture glitch that scores nothing, and waiting for
            # traffic could close a cycle of road users each waiting for the next.)
            boxes = [t[:, None] for t in (s.x, s.y, s.yaw)]
            valid = torch.ones_like(s.x, dtype=torch.bool)[:, None]
            pedestrians = walk(self._pedestrians(), cfg.dt, cfg.pedestrians.radius, *boxes, valid,
                               cfg.vehicle.length, cfg.vehicle.width)
        if cfg.traffic.num_vehicles:
            walkers = None if pedestrians is None else Walkers(
                pedestrians.x, pedestrians.y, pedestrians.vx * pedestrians.moving, pedestrians.vy * pedestrians.moving,
                pedestrians.active)
            time_s = s.step.float() * cfg.dt
            vehicles = step_traffic(self.bank, cfg, s.town_slot, self._vehicles(), self._ego_actor(lanes, cum),
                                    walkers, time_s, s.light_offset, s.rng_key, s.step)
            near = cfg.traffic.spawn_distance_m[0]
            vehicles = self._on_spawn_turn(vehicles, lambda ids, v: spawn_vehicle(
                self.bank, cfg, s.town_slot[ids], v, s.x[ids], s.y[ids], lanes[ids], cum[ids], s.route_s[ids],
                s.rng_key[ids], s.step[ids], near))
            self._write_vehicles(vehicles)
        if pedestrians is not None:
            pedestrians = self._on_spawn_turn(pedestrians, lambda ids, p: spawn_pedestrian(
                self.bank, cfg, s.town_slot[ids], p, lanes[ids], cum[ids], s.route_s[ids], s.route_end_s[ids],
                s.speed[ids], s.rng_key[ids], s.step[ids], every_steps=SPAWN_INTERVAL_STEPS))
            for field, value in zip((s.ped_x, s.ped_y, s.ped_vx, s.ped_vy, s.ped_time_left, s.ped_moving),
                                    pedestrians, strict=True):
                field.copy_(value)

    def _on_spawn_turn(self, actors, spawn):
        """Apply ``spawn(ids, actors_of_ids)`` to the worlds whose step counter is a multiple of
        SPAWN_INTERVAL_STEPS (a function of each world's own state, so clones spawn alike). On the CPU only
        those worlds are computed; on a GPU all are, masked, to keep the step free of host syncs."""
        due = self.state.step % SPAWN_INTERVAL_STEPS == 0
        if self.device.type != "cpu":
            every = torch.arange(self.num_worlds, device=self.device)
            spawned = spawn(every, actors)
            pick = [select(due[:, None], new, old) if new.is_floating_point() else select_int(due[:, None], new, old)
                    for new, old in zip(spawned, actors, strict=True)]
            return type(actors)(*pick)
        ids = due.nonzero().flatten()
        if len(ids) == 0:
            return actors
        spawned = spawn(ids, type(actors)(*(field[ids] for field in actors)))
        out = []
        for old, new in zip(actors, spawned, strict=True):
            old = old.clone()
            old[ids] = new.to(old.dtype)
            out.append(old)
        return type(actors)(*out)

    def light_state_of(self, light: torch.Tensor, world_ids: torch.Tensor | None = None) -> torch.Tensor:
        """States (envs.sim.lights GREEN / YELLOW / RED) of lights ``light`` [len(world_ids), ...] now."""
        state = self.state if world_ids is None else self.state.subset(world_ids)
        return self._light_states(state, light)

    def _light_states(self, s: PackedState, light: torch.Tensor) -> torch.Tensor:
        return light_states(self.bank, self.config.lights, s.town_slot, light, s.step * self.config.dt,
                            s.light_offset)

    def _stop_lines(self, s: PackedState, lanes: torch.Tensor):
        """The lit stop lines on the routes of the worlds in ``s``: light id [B, R] of each route lane (-1
        where it is not entered through a light), the ego's front bumper's arc length [B], lane index
        [B, R]."""
        rows = self.bank.lane_rows(s.town_slot, lanes)
        light = self.bank.lane_int_table.index_select(0, rows.reshape(-1))[:, 0].view_as(lanes)
        front = s.route_s + self.config.vehicle.length / 2
        return light, front, torch.arange(lanes.shape[1], device=lanes.device).expand_as(lanes)

    def _infractions(self, lanes: torch.Tensor, cum: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-world bool events of this step, one per name in envs.api.INFRACTIONS. Collisions count when
        a contact starts; a red light when the ego's front bumper crosses a stop line on red."""
        cfg, s = self.config, self.state
        centre = torch.stack([s.x, s.y], dim=-1)
        corners = box_corners(s.x, s.y, s.yaw, cfg.vehicle.length, cfg.vehicle.width)
        bits = self.bank.raster_bits(s.town_slot, torch.cat([centre[:, None], corners], 1))  # one lookup
        centre_bits, corner_bits = bits[:, 0], bits[:, 1:]
        slow = s.speed < cfg.blocked_speed
        s.blocked_s.copy_((s.blocked_s + cfg.dt) * slow)
        none = torch.zeros(self.num_worlds, dtype=torch.bool, device=self.device)
        events = dict.fromkeys(INFRACTIONS, none)
        events["off_road"] = (centre_bits & RASTER_DRIVABLE) == 0
        static = ((corner_bits & RASTER_CLEARANCE) == 0).any(dim=1)
        events["collision_static"] = static & (s.static_contact == 0)
        s.static_contact.copy_(static.long())
        length, width = cfg.vehicle.length, cfg.vehicle.width
        if cfg.traffic.num_vehicles:
            touching = boxes_overlap(s.x[:, None], s.y[:, None], s.yaw[:, None], length, width, s.traffic_x,
                                     s.traffic_y, s.traffic_yaw, length, width) & (s.traffic_lane >= 0)
            bits = (touching.long() << torch.arange(touching.shape[1], device=self.device)).sum(1)
            events["collision_vehicle"] = (bits & ~s.vehicle_contacts) != 0
            s.vehicle_contacts.copy_(bits)
        if cfg.pedestrians.num_pedestrians:
            touching = disc_box_overlap(s.ped_x, s.ped_y, cfg.pedestrians.radius, s.x[:, None], s.y[:, None],
                                        s.yaw[:, None], length, width) & (s.ped_time_left > 0)
            bits = (touching.long() << torch.arange(touching.shape[1], device=self.device)).sum(1)
            events["collision_pedestrian"] = (bits & ~s.pedestrian_contacts) != 0
            s.pedestrian_contacts.copy_(bits)
        light, front, index = self._stop_lines(s, lanes)
        crossed = (light >= 0) & (index > s.lights_passed[:, None]) & (cum <= front[:, None])
        last = select_int(crossed, index, -1).max(1).values
        state = self._light_states(s, light.gather(1, last.clamp(min=0)[:, None]).squeeze(1))
        events["red_light"] = (last >= 0) & (state == RED)
        s.lights_passed.copy_(s.lights_passed.maximum(last))
        events["route_deviation"] = s.lateral_offset.abs() > cfg.route_deviation_m
        events["blocked"] = s.blocked_s >= cfg.blocked_time_s
        events["timeout"] = s.step >= cfg.max_episode_steps
        return events

    def _progress_info(self, ids: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        s = self.state
        progress = (s.route_s - s.route_start_s).clamp(min=0.0)
        length = s.route_end_s - s.route_start_s
        out = {"route_progress_m": progress, "route_completion": 100.0 * (progress / length).clamp(max=1.0),
               "distance_m": s.distance_m.clone(), "speed": s.speed.clone()}
        return out if ids is None else {k: v[ids] for k, v in out.items()}

    # --- observation ----------------------------------------------------------------------------------

    def observe(self, world_ids: WorldIds = None) -> torch.Tensor:
        if world_ids is None:
            return self._observe(self.state)
        return self._observe(self.state.subset(as_world_ids(world_ids, self.num_worlds, self.device)))

    def _observe(self, s: PackedState) -> torch.Tensor:
        """Observations of the worlds held in ``s`` (the whole state, or a subset of its rows)."""
        layout, config = self.layout, self.config
        lanes, cum = self.bank.route_lanes(s.town_slot, s.route_id)
        spacing = layout.route_point_spacing_m
        ahead = s.route_s[:, None] + spacing * torch.arange(1, layout.num_route_points + 1, device=self.device)
        route_points, _, _ = self.bank.route_geometry(s.town_slot, lanes, cum, ahead.minimum(s.route_end_s[:, None]))
        remaining = (s.route_end_s - s.route_s) / (s.route_end_s - s.route_start_s)
        obs = build_observation(layout, x=s.x, y=s.y, yaw=s.yaw, speed=s.speed, last_control=s.last_control,
                                lateral_offset=s.lateral_offset, heading_error=s.heading_error,
                                route_remaining=remaining, route_points=route_points)
        num_worlds = obs.shape[0]
        if config.traffic.num_vehicles:
            yaw, speed = s.traffic_yaw, s.traffic_speed
            actor_features(layout, s.x, s.y, s.yaw, s.traffic_x, s.traffic_y, speed * torch.cos(yaw),
                           speed * torch.sin(yaw), s.traffic_lane >= 0,
                           obs[:, layout.slices["vehicles"]].view(num_worlds, layout.num_vehicles, -1),
                           actor_yaw=yaw, length=config.vehicle.length, width=config.vehicle.width)
        if config.pedestrians.num_pedestrians:
            moving = s.ped_moving
            actor_features(layout, s.x, s.y, s.yaw, s.ped_x, s.ped_y, s.ped_vx * moving, s.ped_vy * moving,
                           s.ped_time_left > 0,
                           obs[:, layout.slices["pedestrians"]].view(num_worlds, layout.num_pedestrians, -1))
        if config.lights.enabled:
            light, front, index = self._stop_lines(s, lanes)
            ahead = (light >= 0) & (index > s.lights_passed[:, None])
            first = select_int(ahead, index, lanes.shape[1]).min(1, keepdim=True).values
            found = first.squeeze(1) < lanes.shape[1]
            first = first.clamp(max=lanes.shape[1] - 1)
            distance = cum.gather(1, first).squeeze(1) - front
            state = self._light_states(s, light.gather(1, first).squeeze(1))
            light_features(layout, state, distance, found & (distance <= LIGHT_OBSERVATION_M),
                           obs[:, layout.slices["light"]])
        return obs

    def observe_raster(self, world_ids: WorldIds = None) -> torch.Tensor:
        """The bird's-eye raster observation [len(world_ids), 6, S, S] uint8 (S = ``raster_size``), ego-centred
        and facing up; channels and values in envs.sim.raster. Computed on request (it costs far more than
        the vector observation), batched over the worlds."""
        s = self.state if world_ids is None else self.state.subset(as_world_ids(world_ids, self.num_worlds,
                                                                                  self.device))
        raster = self._raster
        lanes, cum = self.bank.route_lanes(s.town_slot, s.route_id)
        arc = raster.route_arc_lengths(s.route_s, s.route_end_s)
        points, headings, _ = self.bank.route_geometry(s.town_slot, lanes, cum, arc)
        return raster.draw(self.bank, self.config.lights, s, raster.widen(points, headings))

    # --- pictures for people (envs.sim.render) ----------------------------------------------------------

    def positions(self, world_ids: WorldIds = None) -> torch.Tensor:
        ids = as_world_ids(world_ids, self.num_worlds, self.device)
        return torch.stack([self.state.x[ids], self.state.y[ids]], dim=-1).float().cpu()

    def render_birdseye(self, world_id: int, *, size: int = 256, metres: float = 60.0,
                        trajectories: Sequence[tuple[np.ndarray, tuple[int, ...]]] = ()) -> np.ndarray:
        from envs.sim.render import render_birdseye  # PIL only where pictures are drawn

        return render_birdseye(self, world_id, size=size, metres=metres, extra_trajectories=list(trajectories))

    def route_map(self, world_id: int, margin_m: float = 25.0) -> MapView:
        from envs.sim.render import route_map

        return route_map(self, world_id, margin_m)

    # --- snapshots --------------------------------------------------------------------------------------

    def snapshot(self, world_ids: WorldIds = None) -> Snapshot:
        ids = as_world_ids(world_ids, self.num_worlds, self.device)
        floats, ints = self.state.rows(ids)
        town_seed = self.bank.seed_of_slot[self.state.town_slot[ids]]
        return Snapshot(self.backend_name, self.signature, len(ids),
                        {"floats": floats, "ints": ints, "town_seed": town_seed})

    def restore(self, snapshot: Snapshot, world_ids: WorldIds = None) -> torch.Tensor:
        if snapshot.backend != self.backend_name or snapshot.signature != self.signature:
            raise BackendError(
                f"snapshot from backend {snapshot.backend!r} with signature {snapshot.signature} does not fit "
                f"this {self.backend_name!r} simulator (signature {self.signature}): it was taken with another "
                "map or town configuration (or other dt, traffic, pedestrian or light settings); restore it into "
                "a simulator built with the same env config")
        ids = restore_world_ids(snapshot, world_ids, self.num_worlds, self.device)
        # Every check before the first write: a refused snapshot leaves the worlds as they were.
        snapshot.check_fields(self.backend_name, self.signature, {
            "floats": (self.state.floats.dtype, tuple(self.state.floats.shape[1:])),
            "ints": (self.state.ints.dtype, tuple(self.state.ints.shape[1:])),
            "town_seed": (self.bank.seed_of_slot.dtype, ())})
        slots = self.bank.slots_for(snapshot.tensors["town_seed"])
        before, had_reset = self.state.rows(ids), self._has_reset[ids].clone()
        self.state.write_rows(ids, snapshot.tensors["floats"], snapshot.tensors["ints"])
        self.state.town_slot[ids] = slots
        self._has_reset[ids] = True
        try:
            return self.observe(ids)
        except (IndexError, RuntimeError) as error:  # well-formed but impossible (e.g. a route id out of range)
            self.state.write_rows(ids, *before)
            self._has_reset[ids] = had_reset
            raise BackendError(f"snapshot does not describe a world of this simulator ({type(error).__name__} while "
                               "observing it); the worlds were left as they were") from error

    def clone(self, src_ids: WorldIds, dst_ids: WorldIds) -> None:
        src, dst = clone_world_ids(src_ids, dst_ids, self.num_worlds, self.device)
        self.state.copy_rows(src, dst)
        self._has_reset[dst] = self._has_reset[src]

    def close(self) -> None:
        """Nothing to release: the simulator is tensors in this process."""

    # --- scenario set-up (tests, tools) ---------------------------------------------------------------

    def place_vehicle(self, world_id: int, slot: int, lane: int, s: float, speed: float = 0.0,
                      desired_speed: float | None = None, next_lane: int | None = None) -> None:
        """Put traffic vehicle ``slot`` of world ``world_id`` on ``lane`` at arc length ``s`` (m) with
        ``speed``; it continues into ``next_lane`` (default: the lane's first successor, -1 if none)."""
        state, town = self.state, self.town(world_id)
        if next_lane is None:
            successors = [int(n) for n in town.lane_successors[lane] if n >= 0]
            next_lane = successors[0] if successors else -1
        row = torch.tensor([world_id], device=self.device)
        vehicles = self._vehicles(row)
        cut = torch.arange(vehicles.lane.shape[1], device=self.device) == slot
        num_lanes = self.bank.lane_length.shape[1]
        flat = (state.town_slot[row] * num_lanes + lane)[:, None]
        point, heading, curvature = self.bank.lane_pose(flat, torch.tensor([[float(s)]], device=self.device),
                                                        curvature=True)
        values = dict(lane=lane, next=next_lane, s=float(s), speed=float(speed),
                      v0=float(self.config.traffic.desired_speed[1] if desired_speed is None else desired_speed),
                      x=point[0, 0, 0], y=point[0, 0, 1], yaw=heading[0, 0], curvature=curvature[0, 0])
        updated = Vehicles(*(torch.where(cut, torch.as_tensor(values[name], dtype=field.dtype, device=self.device),
                                         field) for name, field in zip(Vehicles._fields, vehicles, strict=True)))
        self._write_vehicles(updated, row)

    def remove_vehicles(self, world_id: int) -> None:
        """Empty every traffic slot of world ``world_id``."""
        self.state.traffic_lane[world_id] = -1
        self.state.traffic_next[world_id] = -1
        self.state.traffic_speed[world_id] = 0.0

    def place_pedestrian(self, world_id: int, slot: int, x: float, y: float, vx: float, vy: float,
                         walk_s: float) -> None:
        """Start pedestrian ``slot`` of world ``world_id`` at (x, y) walking at (vx, vy) m/s for ``walk_s``
        seconds."""
        state = self.state
        for field, value in ((state.ped_x, x), (state.ped_y, y), (state.ped_vx, vx), (state.ped_vy, vy),
                             (state.ped_time_left, walk_s), (state.ped_moving, 1.0)):
            field[world_id, slot] = value

    # --- inspection -----------------------------------------------------------------------------------

    def has_reset(self, world_ids: WorldIds = None) -> torch.Tensor:
        """[len(world_ids)] bool: worlds that hold an episode (reset, restored or cloned into)."""
        return self._has_reset[as_world_ids(world_ids, self.num_worlds, self.device)]

    def done(self) -> torch.Tensor:
        """[B] bool: worlds whose episode has ended (terminated or truncated)."""
        return (self.state.terminated | self.state.truncated).bool()


def box_corners(x: torch.Tensor, y: torch.Tensor, yaw: torch.Tensor, length: float, width: float
                ) -> torch.Tensor:
    """Corners [B, 4, 2] of boxes centred at (x, y) with heading ``yaw``."""
    cos, sin = torch.cos(yaw)[:, None], torch.sin(yaw)[:, None]
    forward = torch.tensor([1.0, 1.0, -1.0, -1.0], device=x.device)[None, :] * (length / 2)
    left = torch.tensor([1.0, -1.0, -1.0, 1.0], device=x.device)[None, :] * (width / 2)
    return torch.stack([x[:, None] + forward * cos - left * sin, y[:, None] + forward * sin + left * cos], -1)
