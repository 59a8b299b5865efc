"""A CARLA world's state as plain arrays, and everything computed from it without a server.

:class:`ActorStates` is what a snapshot captures from the server, per actor slot: every vehicle's transform,
velocity, angular velocity, control and size (slot 0 is the ego, role name ``hero``; slot 1 + i is
``traffic_i``), every walker's transform, velocity, destination and speed (``walker_i``), and every traffic
light's state, elapsed time and green / yellow / red times (lights in the town's fixed order). Values stay
in CARLA's frame and units (metres, degrees, m/s, deg/s) because restoring writes them back.
:class:`EpisodeState` is the backend's own bookkeeping: route and progress, counters, recent contacts.

From these the module computes, with no server:

* snapshots: :func:`pack_snapshot` / :func:`unpack_snapshot` (plain tensors, so they travel as bytes);
* observations: :func:`observation_view` + :func:`build_observations`, with the built-in simulator's layout
  and normalisation (``envs.driving.observation``). CARLA's frame is left-handed (y to the right, yaw clockwise
  seen from above); the observation's ego frame is right-handed (x forward, y left), so y and yaw change sign;
* one step of the episode rules: :func:`advance_episode` (route progress, infractions, reward, done), the
  same rules and reward weights as the built-in simulator.
"""

from __future__ import annotations

import dataclasses
import math
import zlib
from dataclasses import dataclass, field

import numpy as np
import torch

from envs.api import INFRACTIONS, OBSERVATION_LAYOUT, ObservationLayout, Snapshot
from envs.carla.config import CarlaConfig
from envs.carla.lights import RED, StopLines, red_light_crossed, to_sim_state
from envs.driving.config import VehicleConfig
from envs.driving.expert import ExpertDriver
from envs.driving.lights import RED as SIM_RED

STATE_VERSION = 1  # bump when the snapshot layout changes (it is part of the backend's signature)
EGO_KEY = "hero"  # CARLA's conventional role name for the ego (large maps stream tiles around it)
NUM_CONTACTS = 8  # recent contacts remembered, so a contact that lasts is one collision
LIGHT_OBSERVATION_M = 100.0  # a stop line farther along the route than this is not observed
PROJECTION_WINDOW_M = (-4.0, 12.0)  # metres around the last route position searched each step
PAST_END_M = 5.0  # the projection may run this far past the route's end (so completion is seen)

COLLISION_KINDS = ("collision_vehicle", "collision_pedestrian", "collision_static")


def vehicle_keys(num_vehicles: int) -> list[str]:
    """Role names of the vehicle slots: the ego, then the traffic."""
    return [EGO_KEY, *(f"traffic_{i}" for i in range(num_vehicles))]


def walker_keys(num_walkers: int) -> list[str]:
    return [f"walker_{i}" for i in range(num_walkers)]


def collision_kind(type_id: str) -> str:
    """The infraction a collision with an actor of blueprint ``type_id`` counts as: vehicles and walkers by
    their blueprint family, anything else (buildings, poles, props, unknown) as static."""
    if type_id.startswith("vehicle."):
        return "collision_vehicle"
    if type_id.startswith("walker."):
        return "collision_pedestrian"
    return "collision_static"


def contact_key(role_name: str, type_id: str) -> int:
    """A stable integer naming the other party of a contact: our actors by slot, anything else by blueprint."""
    if role_name.startswith("traffic_") and role_name[8:].isdigit():
        return 1 + int(role_name[8:])
    if role_name.startswith("walker_") and role_name[7:].isdigit():
        return 100_000 + int(role_name[7:])
    return 1_000_000 + zlib.crc32(type_id.encode()) % 1_000_000


# --- actor states -------------------------------------------------------------------------------------------

@dataclass
class ActorStates:
    """The actors of one world (see the module docstring); V = 1 + traffic slots, M walker slots, L lights."""

    vehicle_valid: np.ndarray  # [V] bool: the slot holds an actor
    vehicle_blueprint: np.ndarray  # [V] int: index into the town's sorted vehicle blueprint ids
    vehicle_pose: np.ndarray  # [V, 6] x, y, z (m), roll, pitch, yaw (deg)
    vehicle_velocity: np.ndarray  # [V, 3] m/s, world frame
    vehicle_angular_velocity: np.ndarray  # [V, 3] deg/s, world frame
    vehicle_control: np.ndarray  # [V, 5] throttle, steer, brake, hand_brake, reverse
    vehicle_gear: np.ndarray  # [V] int
    vehicle_extent: np.ndarray  # [V, 3] half length, half width, half height (m) of the bounding box
    walker_valid: np.ndarray  # [M] bool
    walker_blueprint: np.ndarray  # [M] int: index into the town's sorted walker blueprint ids
    walker_pose: np.ndarray  # [M, 6]
    walker_velocity: np.ndarray  # [M, 3]
    walker_target: np.ndarray  # [M, 3] where its AI controller walks it
    walker_speed: np.ndarray  # [M] m/s, its controller's max speed
    light_state: np.ndarray  # [L] int, carla.TrafficLightState
    light_elapsed: np.ndarray  # [L] s in the current state (read only: CARLA cannot set it)
    light_times: np.ndarray  # [L, 3] green, yellow, red seconds
    light_frozen: np.ndarray  # [L] bool

    @classmethod
    def empty(cls, num_vehicles: int, num_walkers: int, num_lights: int) -> ActorStates:
        v, m, n = 1 + num_vehicles, num_walkers, num_lights
        return cls(np.zeros(v, bool), np.zeros(v, np.int64), np.zeros((v, 6)), np.zeros((v, 3)), np.zeros((v, 3)),
                   np.zeros((v, 5)), np.zeros(v, np.int64), np.zeros((v, 3)), np.zeros(m, bool), np.zeros(m, np.int64),
                   np.zeros((m, 6)), np.zeros((m, 3)), np.zeros((m, 3)), np.zeros(m), np.full(n, RED, np.int64),
                   np.zeros(n), np.zeros((n, 3)), np.zeros(n, bool))

    def copy(self) -> ActorStates:
        return ActorStates(**{f.name: getattr(self, f.name).copy() for f in dataclasses.fields(self)})

    @property
    def num_traffic(self) -> int:
        return len(self.vehicle_valid) - 1


@dataclass
class EpisodeState:
    """The backend's bookkeeping of one world's episode."""

    episode_seed: int = 0
    route_kind: int = 0  # ROUTE_PLANNED, ROUTE_FILE or ROUTE_EVAL_FILE (envs.carla.world)
    route_id: int = 0  # planning seed, or index into the route file
    step: int = 0
    terminated: bool = False
    truncated: bool = False
    route_s: float = 0.0  # m along the route where the ego is
    distance_m: float = 0.0  # odometer of the episode
    blocked_s: float = 0.0  # time spent below blocked_speed
    lateral_offset: float = 0.0  # m, positive when the ego is left of the route
    heading_error: float = 0.0  # rad, ego heading minus route heading (counter-clockwise positive)
    speed: float = 0.0  # m/s
    last_control: tuple[float, float, float] = (0.0, 0.0, 0.0)  # throttle, brake, steer applied last
    front_x: float = 0.0  # CARLA position of the ego's red-light point (red_light_point) at the last step
    front_y: float = 0.0
    light_offset: float = 0.0  # in [0, 1): where the junctions are in their light cycles (backend lights)
    contact_keys: tuple[int, ...] = (-1,) * NUM_CONTACTS  # other parties of recent contacts (-1: empty)
    contact_steps: tuple[int, ...] = (-(1 << 40),) * NUM_CONTACTS  # the step each was last touching

    @property
    def done(self) -> bool:
        return self.terminated or self.truncated


EPISODE_FLOATS = ("route_s", "distance_m", "blocked_s", "lateral_offset", "heading_error", "speed", "front_x",
                  "front_y", "light_offset")
EPISODE_INTS = ("episode_seed", "route_kind", "route_id", "step", "terminated", "truncated")


def episode_to_arrays(episode: EpisodeState) -> tuple[np.ndarray, np.ndarray]:
    floats = [getattr(episode, name) for name in EPISODE_FLOATS] + list(episode.last_control)
    ints = [int(getattr(episode, name)) for name in EPISODE_INTS] + list(episode.contact_keys) + \
        list(episode.contact_steps)
    return np.asarray(floats, dtype=np.float64), np.asarray(ints, dtype=np.int64)


def episode_from_arrays(floats: np.ndarray, ints: np.ndarray) -> EpisodeState:
    values = {name: float(floats[i]) for i, name in enumerate(EPISODE_FLOATS)}
    values["last_control"] = tuple(float(v) for v in floats[len(EPISODE_FLOATS):len(EPISODE_FLOATS) + 3])
    for i, name in enumerate(EPISODE_INTS):
        values[name] = bool(ints[i]) if name in ("terminated", "truncated") else int(ints[i])
    rest = ints[len(EPISODE_INTS):]
    values["contact_keys"] = tuple(int(v) for v in rest[:NUM_CONTACTS])
    values["contact_steps"] = tuple(int(v) for v in rest[NUM_CONTACTS:2 * NUM_CONTACTS])
    return EpisodeState(**values)


# --- snapshots ------------------------------------------------------------------------------------------------

ACTOR_FIELDS = tuple(f.name for f in dataclasses.fields(ActorStates))


def pack_snapshot(backend: str, signature: str, worlds: list[tuple[ActorStates, EpisodeState]],
                  meta: dict | None = None) -> Snapshot:
    """A Snapshot of several worlds: every ActorStates field stacked to [B, ...], and the episode as
    ``episode_floats`` [B, F] / ``episode_ints`` [B, I]. float64 throughout: positions in large towns keep
    millimetres."""
    tensors: dict[str, torch.Tensor] = {}
    for name in ACTOR_FIELDS:
        tensors[name] = torch.from_numpy(np.stack([getattr(actors, name) for actors, _ in worlds]))
    arrays = [episode_to_arrays(episode) for _, episode in worlds]
    tensors["episode_floats"] = torch.from_numpy(np.stack([a for a, _ in arrays]))
    tensors["episode_ints"] = torch.from_numpy(np.stack([b for _, b in arrays]))
    return Snapshot(backend, signature, len(worlds), tensors, dict(meta or {}))


def unpack_snapshot(snapshot: Snapshot) -> list[tuple[ActorStates, EpisodeState]]:
    """The inverse of :func:`pack_snapshot`."""
    out = []
    tensors = {k: v.cpu().numpy() for k, v in snapshot.tensors.items()}
    missing = [name for name in (*ACTOR_FIELDS, "episode_floats", "episode_ints") if name not in tensors]
    if missing:
        from envs.api import BackendError

        raise BackendError(f"CARLA snapshot lacks {missing}; it was not taken by this backend version")
    for row in range(snapshot.num_worlds):
        actors = ActorStates(**{name: tensors[name][row].copy() for name in ACTOR_FIELDS})
        episode = episode_from_arrays(tensors["episode_floats"][row], tensors["episode_ints"][row])
        out.append((actors, episode))
    return out


# --- frames and routes ----------------------------------------------------------------------------------------

def to_right_handed(x, y, yaw_deg):
    """CARLA (x, y, yaw in degrees, left-handed) -> right-handed (x, -y, -yaw in radians)."""
    return np.asarray(x, dtype=np.float64), -np.asarray(y, dtype=np.float64), -np.radians(yaw_deg)


def wrap_angle(angle):
    return (np.asarray(angle) + np.pi) % (2 * np.pi) - np.pi


@dataclass
class RouteData:
    """A route ready for the episode rules: right-handed points ``points`` [P, 2] (x, -y of CARLA's), arc
    lengths ``s`` [P], and where it crosses stop lines (``stop_s`` [C], ``stop_light`` [C])."""

    points: np.ndarray
    s: np.ndarray
    stop_s: np.ndarray = field(default_factory=lambda: np.zeros(0))
    stop_light: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    @property
    def length(self) -> float:
        return float(self.s[-1])

    def point_at(self, s: np.ndarray) -> np.ndarray:
        """Right-handed points [N, 2] at arc lengths ``s`` [N] (clamped to the route)."""
        s = np.clip(np.asarray(s, dtype=np.float64), 0.0, self.length)
        return np.stack([np.interp(s, self.s, self.points[:, 0]), np.interp(s, self.s, self.points[:, 1])], axis=-1)

    def heading_at(self, s: np.ndarray) -> np.ndarray:
        """Right-handed headings (rad) [N] of the route's segments at arc lengths ``s`` [N] (clamped)."""
        segment = np.clip(np.searchsorted(self.s, np.asarray(s, dtype=np.float64), side="right") - 1, 0,
                          len(self.s) - 2)
        delta = self.points[segment + 1] - self.points[segment]
        return np.arctan2(delta[..., 1], delta[..., 0])


def project_onto_route(route: RouteData, x: float, y: float, yaw: float, s_previous: float | None
                       ) -> tuple[float, float, float]:
    """(arc length, lateral offset (+ left), heading error (rad)) of a right-handed pose on ``route``,
    searching the segments within PROJECTION_WINDOW_M of ``s_previous`` (the whole route if None). The arc
    length may run up to PAST_END_M past the end (so a driver who passes the goal completes the route)."""
    points, s = route.points, route.s
    if s_previous is None:
        low, high = 0, len(s) - 1
    else:
        low = max(0, int(np.searchsorted(s, s_previous + PROJECTION_WINDOW_M[0])) - 1)
        high = min(len(s) - 1, int(np.searchsorted(s, s_previous + PROJECTION_WINDOW_M[1])) + 1)
    if high <= low:
        low, high = max(0, high - 1), high if high > 0 else 1
    starts, ends = points[low:high], points[low + 1:high + 1]
    delta = ends - starts
    length = np.maximum(np.linalg.norm(delta, axis=1), 1e-9)
    tangent = delta / length[:, None]
    offset = np.array([x, y]) - starts
    along = (offset * tangent).sum(axis=1)
    fraction = along / length
    lower = np.zeros_like(fraction)
    upper = np.ones_like(fraction)
    if low == 0:
        lower[0] = -np.inf  # before the start: the arc length is clamped to 0 below
    if high == len(s) - 1:
        upper[-1] = 1.0 + PAST_END_M / length[-1]
    fraction = np.clip(fraction, lower, upper)
    nearest = starts + fraction[:, None] * delta
    distance = np.linalg.norm(np.array([x, y]) - nearest, axis=1)
    best = int(np.argmin(distance))
    t = tangent[best]
    d = np.array([x, y]) - nearest[best]
    arc = max(0.0, float(s[low + best] + fraction[best] * length[best]))
    lateral = float(t[0] * d[1] - t[1] * d[0])
    heading = float(wrap_angle(yaw - math.atan2(t[1], t[0])))
    return arc, lateral, heading


# --- observations ------------------------------------------------------------------------------------------------

@dataclass
class ObservationView:
    """What one world's observation is made of, right-handed world frame (see envs.driving.observation)."""

    x: float
    y: float
    yaw: float
    speed: float
    last_control: np.ndarray  # [3]
    lateral_offset: float
    heading_error: float
    route_remaining: float
    route_points: np.ndarray  # [num_route_points, 2]
    vehicles: np.ndarray  # [N, 8]: x, y, yaw, vx, vy, length, width, valid
    walkers: np.ndarray  # [M, 5]: x, y, vx, vy, valid
    light: np.ndarray  # [3]: state (envs.driving.lights), distance to the stop line (m), valid


def ego_front(actors: ActorStates) -> np.ndarray:
    """CARLA (x, y) of the ego's front bumper."""
    return ego_point(actors, 1.0)


def ego_point(actors: ActorStates, fraction: float) -> np.ndarray:
    """CARLA (x, y) of the point ``fraction`` half-lengths ahead of the ego's centre (negative: behind)."""
    x, y, yaw = actors.vehicle_pose[0, 0], actors.vehicle_pose[0, 1], math.radians(actors.vehicle_pose[0, 5])
    ahead = fraction * actors.vehicle_extent[0, 0]
    return np.array([x + ahead * math.cos(yaw), y + ahead * math.sin(yaw)])


TAIL_FRACTION = -0.8
"""Leaderboard 2.0's RunningRedLightTest checks the segment from 0.8 half-lengths behind the ego's centre to
1 m behind its rear: the first of its points to reach a stop line is this one."""


def red_light_point(actors: ActorStates, rule: str) -> np.ndarray:
    """CARLA (x, y) of the ego point whose crossing of a stop line under a red light is an infraction: the
    front bumper (``rule="front"``, the built-in simulator's rule) or the tail (``"tail"``, leaderboard 2.0:
    a car whose front is over the line when the light turns red may still clear the junction)."""
    if rule == "front":
        return ego_point(actors, 1.0)
    if rule == "tail":
        return ego_point(actors, TAIL_FRACTION)
    raise ValueError(f"red-light rule must be 'tail' or 'front', got {rule!r}")


def observation_view(layout: ObservationLayout, actors: ActorStates, episode: EpisodeState,
                     route: RouteData) -> ObservationView:
    """The ingredients of one world's observation from its state alone."""
    pose = actors.vehicle_pose
    x, y, yaw = to_right_handed(pose[:, 0], pose[:, 1], pose[:, 5])
    vx, vy = actors.vehicle_velocity[:, 0], -actors.vehicle_velocity[:, 1]
    vehicles = np.stack([x[1:], y[1:], yaw[1:], vx[1:], vy[1:], 2 * actors.vehicle_extent[1:, 0],
                         2 * actors.vehicle_extent[1:, 1], actors.vehicle_valid[1:].astype(np.float64)], axis=1)
    walkers = np.stack([actors.walker_pose[:, 0], -actors.walker_pose[:, 1], actors.walker_velocity[:, 0],
                        -actors.walker_velocity[:, 1], actors.walker_valid.astype(np.float64)], axis=1)
    ahead = episode.route_s + layout.route_point_spacing_m * np.arange(1, layout.num_route_points + 1)
    remaining = (route.length - episode.route_s) / route.length
    light = np.zeros(3)
    next_stop = next_light(route, actors, episode.route_s)
    if next_stop is not None:
        light[:] = (*next_stop, 1.0)
    return ObservationView(float(x[0]), float(y[0]), float(yaw[0]), episode.speed, np.asarray(episode.last_control),
                           episode.lateral_offset, episode.heading_error, remaining, route.point_at(ahead),
                           vehicles, walkers, light)


def build_observations(layout: ObservationLayout, views: list[ObservationView]) -> torch.Tensor:
    """Observations [B, layout.size] of several worlds, with envs.driving.observation's functions."""
    from envs.driving.observation import actor_features, build_observation, light_features

    def column(name: str) -> torch.Tensor:
        return torch.tensor([getattr(v, name) for v in views], dtype=torch.float64)

    x, y, yaw = column("x"), column("y"), column("yaw")
    obs = build_observation(
        layout, x=x, y=y, yaw=yaw, speed=column("speed"),
        last_control=torch.from_numpy(np.stack([v.last_control for v in views])),
        lateral_offset=column("lateral_offset"), heading_error=column("heading_error"),
        route_remaining=column("route_remaining"),
        route_points=torch.from_numpy(np.stack([v.route_points for v in views])))
    num_worlds = len(views)
    vehicles = np.stack([sort_by_distance(v.vehicles, v.x, v.y, layout.num_vehicles) for v in views])
    if len(views[0].vehicles):
        slots = torch.zeros(num_worlds, layout.num_vehicles, len(layout.VEHICLE_FEATURES), dtype=torch.float64)
        t = torch.from_numpy(vehicles)
        # length and width differ per vehicle: give the helper unit sizes, then scale each slot by its own
        # (the actors are already nearest first, so the helper keeps their order).
        actor_features(layout, x, y, yaw, t[..., 0], t[..., 1], t[..., 3], t[..., 4], t[..., 7] > 0, slots,
                       actor_yaw=t[..., 2], length=1.0, width=1.0)
        count = t.shape[1]
        slots[:, :count, 6] *= t[..., 5]
        slots[:, :count, 7] *= t[..., 6]
        obs[:, layout.slices["vehicles"]] = slots.reshape(num_worlds, -1).to(obs.dtype)
    walkers = np.stack([sort_by_distance(v.walkers, v.x, v.y, layout.num_pedestrians) for v in views])
    if len(views[0].walkers):
        slots = torch.zeros(num_worlds, layout.num_pedestrians, len(layout.PEDESTRIAN_FEATURES), dtype=torch.float64)
        t = torch.from_numpy(walkers)
        actor_features(layout, x, y, yaw, t[..., 0], t[..., 1], t[..., 2], t[..., 3], t[..., 4] > 0, slots)
        obs[:, layout.slices["pedestrians"]] = slots.reshape(num_worlds, -1).to(obs.dtype)
    light = torch.from_numpy(np.stack([v.light for v in views]))
    light_slot = torch.zeros(num_worlds, len(layout.LIGHT_FEATURES), dtype=torch.float64)
    light_features(layout, light[:, 0].long(), light[:, 1], light[:, 2] > 0, light_slot)
    obs[:, layout.slices["light"]] = light_slot.to(obs.dtype)
    return obs.float()


def sort_by_distance(actors: np.ndarray, x: float, y: float, keep: int) -> np.ndarray:
    """Rows of ``actors`` [N, F] (x, y first, valid last) nearest to (x, y) first, invalid last; the first
    ``keep`` of them (zero rows added when fewer)."""
    distance = np.hypot(actors[:, 0] - x, actors[:, 1] - y) + np.where(actors[:, -1] > 0, 0.0, 1e12)
    order = np.argsort(distance, kind="stable")[:keep]
    out = np.zeros((keep, actors.shape[1]))
    out[:len(order)] = actors[order]
    return out


# --- the episode rules ---------------------------------------------------------------------------------------------

@dataclass
class StepEvents:
    """What the server reported during one tick, besides the actors' new states."""

    collisions: list[tuple[int, str]] = field(default_factory=list)  # (contact key, collision kind) per event
    lane_invasions: int = 0  # solid lane markings the ego crossed
    on_road: bool = True  # the ego's centre is on a driving lane
    lane_yaw: float | None = None  # CARLA yaw (deg) of the driving lane under the ego's centre; None: unknown


def next_light(route: RouteData, actors: ActorStates, route_s: float) -> tuple[int, float] | None:
    """The next light on the route whose stop line the ego's front bumper has not passed and which is at
    most LIGHT_OBSERVATION_M ahead: (its state as envs.driving.lights numbers, metres to its line), or None."""
    front_s = route_s + actors.vehicle_extent[0, 0]
    upcoming = np.flatnonzero(route.stop_s > front_s)
    if not len(upcoming):
        return None
    first = upcoming[0]
    distance = float(route.stop_s[first] - front_s)
    state = int(to_sim_state(actors.light_state[route.stop_light[first]]))
    return (state, distance) if distance <= LIGHT_OBSERVATION_M and state >= 0 else None


def advance_episode(config: CarlaConfig, episode: EpisodeState, route: RouteData, stop_lines: StopLines,
                    actors: ActorStates, control: np.ndarray, events: StepEvents
                    ) -> tuple[EpisodeState, float, dict[str, float | bool]]:
    """One step of the episode rules after a tick: the new EpisodeState, the reward, and the step's info
    (``route_progress_m``, ``route_completion``, ``distance_m``, ``speed``, ``route_completed``,
    ``lane_invasion`` and one bool per envs.api.INFRACTIONS). ``actors`` are the states after the tick and
    ``control`` [3] the (throttle, brake, steer) applied."""
    dt = config.fixed_delta_seconds
    pose = actors.vehicle_pose[0]
    x, y, yaw = (float(v) for v in to_right_handed(pose[0], pose[1], pose[5]))
    speed = float(np.hypot(actors.vehicle_velocity[0, 0], actors.vehicle_velocity[0, 1]))
    step = episode.step + 1
    route_s, lateral, heading = project_onto_route(route, x, y, yaw, episode.route_s)

    happened = dict.fromkeys(INFRACTIONS, False)
    keys, steps = list(episode.contact_keys), list(episode.contact_steps)
    for key, kind in events.collisions:
        recent = key in keys and step - steps[keys.index(key)] <= config.collision_repeat_steps
        if not recent:
            happened[kind] = True
        slot = keys.index(key) if key in keys else int(np.argmin(steps))
        keys[slot], steps[slot] = key, step
    happened["off_road"] = not events.on_road
    front = red_light_point(actors, config.red_light_rule)
    previous_front = np.array([episode.front_x, episode.front_y])
    happened["red_light"] = bool(red_light_crossed(previous_front, front, stop_lines, actors.light_state).any())
    happened["route_deviation"] = abs(lateral) > config.route_deviation_m
    blocked_s = episode.blocked_s + dt if speed < config.blocked_speed else 0.0
    happened["blocked"] = blocked_s >= config.blocked_time_s
    happened["timeout"] = step >= config.max_episode_steps

    completed = route_s >= route.length
    terminated = completed or any(happened[name] for name in config.terminate_on)
    truncated = happened["timeout"] and not terminated
    new = dataclasses.replace(
        episode, step=step, terminated=terminated, truncated=truncated, route_s=route_s,
        distance_m=episode.distance_m + speed * dt, blocked_s=blocked_s, lateral_offset=lateral,
        heading_error=heading, speed=speed, last_control=tuple(float(c) for c in control),
        front_x=float(front[0]), front_y=float(front[1]), contact_keys=tuple(keys), contact_steps=tuple(steps))

    progress = min(route_s, route.length) - min(episode.route_s, route.length)
    next_stop = next_light(route, actors, route_s)
    red_stop = next_stop[1] if next_stop is not None and next_stop[0] == SIM_RED else math.inf
    obstacle = None
    if config.reward.obstacle_decel > 0:  # the obstacle the new observation shows, as the simulator does
        observation = build_observations(OBSERVATION_LAYOUT, [observation_view(OBSERVATION_LAYOUT, actors, new, route)])
        obstacle = ego_expert(actors).obstacle_in_way(observation)[:2]
    reward = float(config.reward.dense(torch.tensor([progress]), torch.tensor([speed]), torch.tensor([lateral]), dt,
                                       torch.tensor([red_stop]), obstacle))
    for name, value in happened.items():
        if value:
            reward -= config.reward.penalty(name)
    reward -= float(config.reward.forfeit(torch.tensor([route.length - route_s]),
                                          torch.tensor([terminated and not completed]))[0])

    info: dict[str, float | bool] = dict(happened)
    info.update(progress_info(new, route))
    info["route_completed"] = completed
    info["lane_invasion"] = events.lane_invasions > 0
    outside = outside_route_lanes(events, route, route_s)
    info["outside_route_lanes"] = outside
    info["outside_route_lanes_m"] = max(progress, 0.0) if outside else 0.0
    info["traffic_speed"] = traffic_speed(actors)
    return new, float(reward), info


def outside_route_lanes(events: StepEvents, route: RouteData, route_s: float) -> bool:
    """Leaderboard 2.0's OutsideRouteLanes condition: the ego's centre is off every driving lane, or on a lane
    that runs against the route (the opposite lane). Lanes the route does not use but that run its way (a
    parallel lane) do not count."""
    if not events.on_road:
        return True
    if events.lane_yaw is None:
        return False
    ahead, behind = route.point_at(np.array([route_s + 1.0])), route.point_at(np.array([route_s - 1.0]))
    tangent = (ahead - behind)[0]  # right-handed frame
    lane = math.radians(events.lane_yaw)
    lane_direction = np.array([math.cos(lane), -math.sin(lane)])  # CARLA yaw -> right-handed direction
    return bool(float(tangent @ lane_direction) < 0.0)


def traffic_speed(actors: ActorStates) -> float:
    """Mean speed (m/s) of the traffic vehicles present: leaderboard 2.0's MinSpeed test compares the ego's
    mean speed with this (0 when there is no traffic)."""
    valid = actors.vehicle_valid[1:]
    if not valid.any():
        return 0.0
    speeds = np.hypot(actors.vehicle_velocity[1:, 0], actors.vehicle_velocity[1:, 1])[valid]
    return float(speeds.mean())


def ego_expert(actors: ActorStates) -> ExpertDriver:
    """The built-in expert's rules sized to this ego (its hazard reading shapes the reward)."""
    length, width = 2.0 * actors.vehicle_extent[0, :2]
    return ExpertDriver(vehicle=dataclasses.replace(VehicleConfig(), length=float(length), width=float(width)))


def progress_info(episode: EpisodeState, route: RouteData) -> dict[str, float]:
    progress = min(max(episode.route_s, 0.0), route.length)
    return {"route_progress_m": progress, "route_completion": 100.0 * progress / route.length,
            "distance_m": episode.distance_m, "speed": episode.speed}


def start_episode(episode_seed: int, route_kind: int, route_id: int, route: RouteData, actors: ActorStates,
                  light_offset: float, red_light_rule: str = "tail") -> EpisodeState:
    """A fresh EpisodeState with the ego where ``actors`` put it (after the spawn settled)."""
    pose = actors.vehicle_pose[0]
    x, y, yaw = (float(v) for v in to_right_handed(pose[0], pose[1], pose[5]))
    route_s, lateral, heading = project_onto_route(route, x, y, yaw, None)
    front = red_light_point(actors, red_light_rule)
    speed = float(np.hypot(actors.vehicle_velocity[0, 0], actors.vehicle_velocity[0, 1]))
    return EpisodeState(episode_seed=episode_seed, route_kind=route_kind, route_id=route_id, route_s=route_s,
                        lateral_offset=lateral, heading_error=heading, speed=speed, front_x=float(front[0]),
                        front_y=float(front[1]), light_offset=light_offset)


def remeasure_episode(episode: EpisodeState, route: RouteData, actors: ActorStates,
                      red_light_rule: str = "tail") -> EpisodeState:
    """``episode`` (a snapshot's) with what depends on the ego's pose measured again on ``actors`` (the state a
    restore read back from the server): route position, lateral offset, heading error, speed, red-light
    point. Counters, odometer, contacts and the done flags stay the snapshot's."""
    pose = actors.vehicle_pose[0]
    x, y, yaw = (float(v) for v in to_right_handed(pose[0], pose[1], pose[5]))
    route_s, lateral, heading = project_onto_route(route, x, y, yaw, episode.route_s)
    front = red_light_point(actors, red_light_rule)
    speed = float(np.hypot(actors.vehicle_velocity[0, 0], actors.vehicle_velocity[0, 1]))
    return dataclasses.replace(episode, route_s=route_s, lateral_offset=lateral, heading_error=heading, speed=speed,
                               front_x=float(front[0]), front_y=float(front[1]))


def restore_error(wanted: ActorStates, landed: ActorStates) -> dict[str, float]:
    """How far a restore's read-back (``landed``) is from the snapshot (``wanted``): the ego's position error
    (m), the mean and max over the other actors present in both, and the ego's speed error (m/s)."""
    def positions(actors: ActorStates) -> np.ndarray:
        vehicles = np.where(actors.vehicle_valid[:, None], actors.vehicle_pose[:, :2], np.nan)
        walkers = np.where(actors.walker_valid[:, None], actors.walker_pose[:, :2], np.nan)
        return np.concatenate([vehicles, walkers])

    error = np.linalg.norm(positions(landed) - positions(wanted), axis=1)
    others = error[1:][np.isfinite(error[1:])]
    speed = np.hypot(*landed.vehicle_velocity[0, :2]) - np.hypot(*wanted.vehicle_velocity[0, :2])
    return {"ego_m": float(error[0]) if np.isfinite(error[0]) else float("nan"),
            "actors_mean_m": float(others.mean()) if len(others) else 0.0,
            "actors_max_m": float(others.max()) if len(others) else 0.0,
            "ego_speed_ms": float(abs(speed))}
