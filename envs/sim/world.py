"""``DrivingSim``: B independent driving worlds as tensors, meeting the backend contract of envs.api.

One step, for all worlds at once: clip the controls, move the ego with the kinematic bicycle, project it
onto its route (progress, lateral offset, heading error), detect infractions against the town raster and
the route, score the step, and freeze the worlds that ended. Worlds that had already ended stay exactly as
they were (reward 0), which is what a GRPO branch that terminates needs.

State lives in a :class:`~envs.sim.state.PackedState`: ``clone`` is two row copies, ``snapshot`` two row
slices plus the town seeds, ``restore`` the reverse. Static data (towns, routes) lives in a
:class:`~envs.sim.bank.TownBank` and is referenced, never copied.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import torch

from envs.api import (
    ACTION_HIGH,
    ACTION_LOW,
    INFRACTIONS,
    OBSERVATION_LAYOUT,
    BackendError,
    Snapshot,
    StepResult,
    WorldIds,
    as_world_ids,
    check_actions,
)
from envs.sim import rng
from envs.sim.bank import TownBank
from envs.sim.config import SimConfig
from envs.sim.dynamics import bicycle_step, wrap_angle
from envs.sim.observation import build_observation
from envs.sim.state import PackedState
from envs.sim.town import RASTER_CLEARANCE, RASTER_DRIVABLE, Town
from envs.sim.towngen import cross_junction_town, generate_town, straight_town

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
}
INT_FIELDS = {
    "town_slot": 1, "route_id": 1, "route_index": 1,  # route_index: which lane of the route the ego is on
    "step": 1, "rng_key": 1, "episode_seed": 1,
    "terminated": 1, "truncated": 1,
}


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


class DrivingSim:
    """The built-in batched driving simulator. See the module docstring and envs.api for the contract."""

    backend_name = "sim"

    def __init__(self, config: SimConfig):
        self.config = config
        self.num_worlds = config.num_worlds
        self.device = torch.device(config.device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise BackendError("env.device is 'cuda' but torch sees no CUDA device; use env.device=cpu")
        self.layout = OBSERVATION_LAYOUT
        self.observation_size = self.layout.size
        self.bank = TownBank(town_factory(config), self.device)
        self.state = PackedState(FLOAT_FIELDS, INT_FIELDS, self.num_worlds, self.device)
        self._action_low = torch.tensor(ACTION_LOW, device=self.device)
        self._action_high = torch.tensor(ACTION_HIGH, device=self.device)
        self._window = PROJECTION_WINDOW.to(self.device)
        self._has_reset = torch.zeros(self.num_worlds, dtype=torch.bool, device=self.device)
        town_text = repr((config.map, config.town, config.split))
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
        """Per-world episode seeds: derived from (seed, world id), or given one per world."""
        if isinstance(seed, int):
            return rng.mix(seed & 0xFFFFFFFF, seed >> 32, ids.cpu())
        seeds = torch.as_tensor(list(seed), dtype=torch.long)
        if len(seeds) != len(ids):
            raise BackendError(f"reset got {len(seeds)} episode seeds for {len(ids)} worlds; give one per "
                               "world or a single int")
        return seeds

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
        s.rng_key[ids] = rng.seed_to_key(episode_seeds)
        self._has_reset[ids] = True
        return self.observe(ids)

    # --- stepping -------------------------------------------------------------------------------------

    def step(self, actions: torch.Tensor) -> StepResult:
        check_actions(actions, self.num_worlds)
        if not bool(self._has_reset.all()):
            raise BackendError("step() before reset(): call reset(seed) first")
        cfg, s = self.config, self.state
        control = actions.to(self.device, torch.float32).clamp(self._action_low, self._action_high)
        was_done = (s.terminated | s.truncated).bool()
        old_floats, old_ints = s.floats.clone(), s.ints.clone()
        old_route_s = s.route_s.clone()

        x, y, yaw, speed, accel = bicycle_step(s.x, s.y, s.yaw, s.speed, control, cfg.vehicle, cfg.dt)
        s.x.copy_(x), s.y.copy_(y), s.yaw.copy_(yaw), s.speed.copy_(speed), s.accel.copy_(accel)
        s.last_control.copy_(control)
        s.distance_m.add_(speed * cfg.dt)
        s.step.add_(1)
        self._project_onto_route()

        events = self._infractions()
        completed = s.route_s >= s.route_end_s
        terminated = completed.clone()
        for name in cfg.terminate_on:
            terminated |= events[name]
        truncated = events["timeout"] & ~terminated

        progress_m = s.route_s.minimum(s.route_end_s) - old_route_s.minimum(s.route_end_s)
        reward = cfg.reward.progress_per_m * progress_m - cfg.reward.lateral_offset_per_m * s.lateral_offset.abs()
        for name, happened in events.items():
            weight = cfg.reward.penalty(name)
            if weight:
                reward = reward - weight * happened.float()
        s.terminated.copy_(terminated.long())
        s.truncated.copy_(truncated.long())

        # Worlds that had already ended stay exactly as they were.
        keep = was_done[:, None]
        torch.where(keep, old_floats, s.floats, out=s.floats)
        torch.where(keep, old_ints, s.ints, out=s.ints)
        live = ~was_done
        info = {name: happened & live for name, happened in events.items()}
        info.update(self._progress_info())
        info["route_completed"] = completed & live
        return StepResult(self.observe(), torch.where(live, reward, 0.0),
                          s.terminated.bool(), s.truncated.bool(), info)

    def _project_onto_route(self) -> None:
        """Move each world's route position to the route point nearest the ego (searching a window
        around the last one), and record the lateral offset and heading error there."""
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

    def _infractions(self) -> dict[str, torch.Tensor]:
        """Per-world bool events of this step, one per name in envs.api.INFRACTIONS."""
        cfg, s = self.config, self.state
        centre = torch.stack([s.x, s.y], dim=-1)
        corners = box_corners(s.x, s.y, s.yaw, cfg.vehicle.length, cfg.vehicle.width)
        centre_bits = self.bank.raster_bits(s.town_slot, centre)
        corner_bits = self.bank.raster_bits(s.town_slot, corners)
        slow = s.speed < cfg.blocked_speed
        s.blocked_s.copy_(torch.where(slow, s.blocked_s + cfg.dt, torch.zeros_like(s.blocked_s)))
        none = torch.zeros(self.num_worlds, dtype=torch.bool, device=self.device)
        events = dict.fromkeys(INFRACTIONS, none)
        events["off_road"] = (centre_bits & RASTER_DRIVABLE) == 0
        events["collision_static"] = ((corner_bits & RASTER_CLEARANCE) == 0).any(dim=1)
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
        ids = as_world_ids(world_ids, self.num_worlds, self.device)
        s = self.state
        slot, route = s.town_slot[ids], s.route_id[ids]
        lanes, cum = self.bank.route_lanes(slot, route)
        spacing = self.layout.route_point_spacing_m
        ahead = s.route_s[ids, None] + spacing * torch.arange(
            1, self.layout.num_route_points + 1, device=self.device)[None, :]
        route_points, _, _ = self.bank.route_geometry(slot, lanes, cum, ahead.minimum(s.route_end_s[ids, None]))
        remaining = (s.route_end_s[ids] - s.route_s[ids]) / (s.route_end_s[ids] - s.route_start_s[ids])
        return build_observation(
            self.layout, x=s.x[ids], y=s.y[ids], yaw=s.yaw[ids], speed=s.speed[ids],
            last_control=s.last_control[ids], lateral_offset=s.lateral_offset[ids],
            heading_error=s.heading_error[ids], route_remaining=remaining, route_points=route_points)

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
                "map or town configuration; restore it into a simulator built with the same env config")
        if world_ids is None:
            world_ids = range(snapshot.num_worlds)
        ids = as_world_ids(world_ids, self.num_worlds, self.device)
        if len(ids) != snapshot.num_worlds:
            raise BackendError(f"snapshot holds {snapshot.num_worlds} worlds but {len(ids)} world ids were "
                               "given; pass one target world per snapshot world")
        slots = self.bank.slots_for(snapshot.tensors["town_seed"])
        self.state.write_rows(ids, snapshot.tensors["floats"], snapshot.tensors["ints"])
        self.state.town_slot[ids] = slots
        self._has_reset[ids] = True
        return self.observe(ids)

    def clone(self, src_ids: WorldIds, dst_ids: WorldIds) -> None:
        src = as_world_ids(src_ids, self.num_worlds, self.device)
        dst = as_world_ids(dst_ids, self.num_worlds, self.device)
        if src.shape != dst.shape:
            raise BackendError(f"clone needs as many sources as destinations, got {len(src)} and {len(dst)}")
        self.state.copy_rows(src, dst)
        self._has_reset[dst] = self._has_reset[src]

    def close(self) -> None:
        """Nothing to release: the simulator is tensors in this process."""

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
