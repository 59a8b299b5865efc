"""The one contract every driving backend meets.

A backend holds a batch of ``num_worlds`` independent worlds. It resets them from seeds, steps them with
CARLA-style controls, and can snapshot and restore any subset of them exactly (built-in simulator) or as
closely as the engine allows (CARLA, where the drift is measured). The GRPO rollout, the services layer,
evaluation and the gymnasium adapters are written against this module only.

Conventions shared by every backend:

* Action: ``[throttle in [0, 1], brake in [0, 1], steer in [-1, 1]]`` per world, as ``carla.VehicleControl``;
  positive steer turns right.
* Observation: a fixed-size float32 vector per world whose layout is :data:`OBSERVATION_LAYOUT`.
* Worlds that have terminated or been truncated stay frozen: stepping them again gives reward 0 and the
  same done flags until they are reset or restored. A branch that ends therefore stops earning reward.

Beyond the core calls a backend says what it is and what more it offers in its ``spec``, a :class:`BackendSpec`
(time step, episode limit, action box, and which optional capabilities it has: bird's-eye rasters, pictures for
people, a switch to evaluation routes, in-place evaluation). The optional calls and their defaults live in
:class:`BackendBase`; callers read ``backend.spec`` before using one, never the backend's attributes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from numbers import Integral
from typing import Protocol, runtime_checkable

import numpy as np
import torch

from envs.seeding import mix

ACTION_SIZE = 3
"""throttle, brake, steer."""

ACTION_LOW = (0.0, 0.0, -1.0)
ACTION_HIGH = (1.0, 1.0, 1.0)

INFRACTIONS = (
    "collision_pedestrian",
    "collision_vehicle",
    "collision_static",
    "red_light",
    "off_road",
    "route_deviation",
    "blocked",
    "timeout",
)
"""Infraction events a backend reports per step in ``info`` (each a bool tensor of shape [B])."""


class BackendError(RuntimeError):
    """A backend was used in a way its contract forbids; the message says how to fix the call."""


class ServiceFailure(BackendError):
    """A simulator service (a worker process, a Ray actor, a CARLA server) died, timed out or failed a call.
    ``index`` says which. The multi-service backend has restarted it by the time a caller sees this."""

    def __init__(self, index: int, message: str):
        super().__init__(f"service {index}: {message}")
        self.index = index


@dataclass(frozen=True)
class ObservationLayout:
    """Names the slices of the flat observation vector, so policies and tests never use magic indices.

    All positions are in the ego frame: x forward, y to the left, metres divided by ``distance_scale``.
    Speeds are in m/s divided by ``speed_scale``.

    * ``vehicles``: the ``num_vehicles`` nearest other vehicles within 2 x ``distance_scale``, nearest first:
      position; cos and sin of their heading relative to the ego's; their own velocity (not relative to the
      ego) expressed in the ego frame; length and width in metres / 5; valid (1, or 0 and all zeros for an
      empty slot).
    * ``pedestrians``: likewise, nearest first: position, velocity (0 while one waits), valid.
    * ``light``: the next traffic light on the route whose stop line is at most 100 m ahead: one-hot
      (red, yellow, green), the distance along the route from the ego's front bumper to the stop line
      (/ ``distance_scale``), valid.
    """

    num_route_points: int = 10
    route_point_spacing_m: float = 5.0
    num_vehicles: int = 8
    num_pedestrians: int = 4
    distance_scale: float = 50.0
    speed_scale: float = 10.0

    # Features per slot, in order. Kept here so the vector layout is defined in one place.
    EGO_FEATURES = ("speed", "throttle", "brake", "steer", "lateral_offset", "sin_heading_error",
                    "cos_heading_error", "route_remaining")
    VEHICLE_FEATURES = ("x", "y", "cos_yaw", "sin_yaw", "vx", "vy", "length", "width", "valid")
    PEDESTRIAN_FEATURES = ("x", "y", "vx", "vy", "valid")
    LIGHT_FEATURES = ("red", "yellow", "green", "stop_distance", "valid")

    @property
    def slices(self) -> dict[str, slice]:
        """Name -> slice of the flat vector: ``ego``, ``route``, ``vehicles``, ``pedestrians``, ``light``."""
        sizes = {
            "ego": len(self.EGO_FEATURES),
            "route": 2 * self.num_route_points,
            "vehicles": len(self.VEHICLE_FEATURES) * self.num_vehicles,
            "pedestrians": len(self.PEDESTRIAN_FEATURES) * self.num_pedestrians,
            "light": len(self.LIGHT_FEATURES),
        }
        out, start = {}, 0
        for name, size in sizes.items():
            out[name] = slice(start, start + size)
            start += size
        return out

    @property
    def size(self) -> int:
        return self.slices["light"].stop


OBSERVATION_LAYOUT = ObservationLayout()


@dataclass
class StepResult:
    """What ``Backend.step`` returns; every tensor has leading dimension B (number of worlds)."""

    observation: torch.Tensor  # [B, obs_size] float32
    reward: torch.Tensor  # [B] float32
    terminated: torch.Tensor  # [B] bool: the episode ended (goal, crash, off-road, blocked)
    truncated: torch.Tensor  # [B] bool: the time limit ran out
    info: dict[str, torch.Tensor] = field(default_factory=dict)
    """Float tensors ``route_progress_m``, ``route_completion`` (percent), ``distance_m`` (driven this
    episode) and ``speed`` (m/s); bool tensors ``route_completed`` (the goal was reached on this step) and
    one per entry of :data:`INFRACTIONS` that happened on this step. An ended world reports no events.

    Events mark the step a thing *starts*: a collision once per contact (a vehicle, a pedestrian or the
    static surroundings touched on this step and not on the previous one), ``red_light`` once per stop
    line the ego's front bumper crosses on red, ``timeout`` and ``blocked`` on the step they are reached.
    ``off_road`` and ``route_deviation`` are reported on every step they hold. envs.metrics folds these
    into per-route driving scores."""


@dataclass
class Snapshot:
    """An opaque, serialisable copy of the complete state of some worlds.

    ``backend`` names the backend kind and ``signature`` fingerprints everything static that the state
    refers to (map generator settings, state schema), so a snapshot is refused by an incompatible backend
    instead of being silently misread. ``tensors`` holds per-world arrays with leading dimension
    ``num_worlds``; ``meta`` holds plain values.
    """

    backend: str
    signature: str
    num_worlds: int
    tensors: dict[str, torch.Tensor]
    meta: dict[str, int | float | str | list] = field(default_factory=dict)

    def to_bytes(self) -> bytes:
        """Serialise: a header (magic, format version), a BLAKE2b checksum of header and payload, then the
        ``torch.save`` payload. :meth:`from_bytes` checks all three before reading it, without unpickling code."""
        buffer = io.BytesIO()
        torch.save(
            {
                "backend": self.backend,
                "signature": self.signature,
                "num_worlds": self.num_worlds,
                "tensors": {k: v.detach().cpu() for k, v in self.tensors.items()},
                "meta": self.meta,
            },
            buffer,
        )
        return frame_snapshot_payload(buffer.getvalue())

    @classmethod
    def from_bytes(cls, data: bytes) -> Snapshot:
        """Read bytes from :meth:`to_bytes`. Anything else (another format version, a changed byte, a payload
        that is not a snapshot's) is a BackendError that says what is wrong; no world is touched here."""
        payload = _unframe(data)
        try:
            raw = torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
            snapshot = cls(raw["backend"], raw["signature"], raw["num_worlds"], raw["tensors"], raw["meta"])
        except Exception as error:  # torch raises several types for corrupt input
            raise BackendError(f"not a valid snapshot ({type(error).__name__}: "
                               f"{str(error).splitlines()[0][:200] if str(error) else ''})") from error
        snapshot.validate()
        return snapshot

    def validate(self) -> None:
        """Check the structure every snapshot has (types, one row per world in every tensor); BackendError
        names the first field that is wrong. Backends check their own fields with :meth:`check_fields`."""
        if not isinstance(self.backend, str) or not isinstance(self.signature, str):
            raise BackendError(f"not a valid snapshot: backend and signature must be strings, got "
                               f"{type(self.backend).__name__} and {type(self.signature).__name__}")
        if not isinstance(self.num_worlds, int) or isinstance(self.num_worlds, bool) or self.num_worlds < 0:
            raise BackendError(f"not a valid snapshot: num_worlds must be an int >= 0, got {self.num_worlds!r}")
        if not isinstance(self.tensors, dict) or not isinstance(self.meta, dict):
            raise BackendError("not a valid snapshot: tensors and meta must be dicts")
        for name, value in self.tensors.items():
            if not isinstance(name, str) or not isinstance(value, torch.Tensor):
                raise BackendError(f"not a valid snapshot: tensor entry {name!r} is a {type(value).__name__}")
            if value.dim() == 0 or value.shape[0] != self.num_worlds:
                raise BackendError(f"not a valid snapshot: tensor {name!r} has shape {list(value.shape)}, but the "
                                   f"snapshot holds {self.num_worlds} worlds (one row each)")

    def check_fields(self, backend: str, signature: str, fields: dict[str, tuple[torch.dtype, tuple[int, ...]]],
                     finite: bool = True) -> None:
        """Refuse, before any world is touched, a snapshot that a backend of kind ``backend`` with
        ``signature`` cannot restore: another kind or map (signature), missing or unexpected tensors, or a
        tensor whose dtype or per-world shape differs from ``fields`` (name -> (dtype, shape after the world
        dimension)); with ``finite``, also NaN or inf in a floating-point tensor."""
        self.validate()
        if self.backend != backend or self.signature != signature:
            raise BackendError(f"snapshot from backend {self.backend!r} with signature {self.signature} does not "
                               f"fit this {backend!r} backend (signature {signature}): restore it into a backend "
                               "built with the same env config")
        missing, extra = sorted(fields.keys() - self.tensors.keys()), sorted(self.tensors.keys() - fields.keys())
        if missing or extra:
            raise BackendError(f"snapshot tensors do not fit this {backend!r} backend: missing {missing}, "
                               f"unexpected {extra}")
        for name, (dtype, shape) in fields.items():
            value = self.tensors[name]
            if value.dtype != dtype or tuple(value.shape[1:]) != tuple(shape):
                raise BackendError(f"snapshot tensor {name!r} is {value.dtype} of per-world shape "
                                   f"{list(value.shape[1:])}; this {backend!r} backend needs {dtype} of shape "
                                   f"{list(shape)}")
            if finite and value.is_floating_point() and not torch.isfinite(value).all():
                worlds = (~torch.isfinite(value)).flatten(1).any(1).nonzero().flatten()[:5].tolist()
                raise BackendError(f"snapshot tensor {name!r} holds NaN or inf (snapshot worlds {worlds}); a "
                                   "world's state must be finite, so this snapshot is corrupt")

    @classmethod
    def concat(cls, snapshots: Sequence[Snapshot]) -> Snapshot:
        """One snapshot holding the worlds of ``snapshots`` in order (all from one kind of backend)."""
        if not snapshots:
            raise BackendError("cannot concatenate an empty list of snapshots")
        first = snapshots[0]
        for other in snapshots[1:]:
            if (other.backend, other.signature) != (first.backend, first.signature) or \
                    other.tensors.keys() != first.tensors.keys():
                raise BackendError(f"cannot concatenate snapshots of {first.backend!r}/{first.signature} and "
                                   f"{other.backend!r}/{other.signature}")
        tensors = {k: torch.cat([s.tensors[k].cpu() for s in snapshots]) for k in first.tensors}
        return cls(first.backend, first.signature, sum(s.num_worlds for s in snapshots), tensors, dict(first.meta))

    def select(self, indices: Sequence[int]) -> Snapshot:
        """The snapshot of a subset of its worlds, e.g. one trunk out of a batch snapshot."""
        index = torch.as_tensor(indices, dtype=torch.long).reshape(-1).cpu()
        if len(index) and (index.min() < 0 or index.max() >= self.num_worlds):
            raise BackendError(f"snapshot holds {self.num_worlds} worlds; cannot select {list(indices)}")
        return Snapshot(self.backend, self.signature, len(index),
                        {k: v.index_select(0, index.to(v.device)) for k, v in self.tensors.items()}, dict(self.meta))


SNAPSHOT_MAGIC = b"GRPOSNAP"
SNAPSHOT_FORMAT = 1
"""Version of :meth:`Snapshot.to_bytes`'s framing and payload; raise it when either changes."""
_HEADER = len(SNAPSHOT_MAGIC) + 2
_DIGEST = 16


def frame_snapshot_payload(payload: bytes) -> bytes:
    """Header (magic + format version) + BLAKE2b-128 of header and payload + payload."""
    header = SNAPSHOT_MAGIC + SNAPSHOT_FORMAT.to_bytes(2, "little")
    return header + hashlib.blake2b(header + payload, digest_size=_DIGEST).digest() + payload


def _unframe(data: bytes) -> bytes:
    """The payload of framed snapshot bytes, or a BackendError naming what does not check out."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise BackendError(f"not a valid snapshot: expected bytes, got {type(data).__name__}")
    data = bytes(data)
    if len(data) < _HEADER + _DIGEST or not data.startswith(SNAPSHOT_MAGIC):
        raise BackendError("not a valid snapshot: the bytes do not start with the snapshot header (they were "
                           "not written by Snapshot.to_bytes, or their first bytes are damaged)")
    version = int.from_bytes(data[len(SNAPSHOT_MAGIC):_HEADER], "little")
    if version != SNAPSHOT_FORMAT:
        raise BackendError(f"snapshot format {version}: this version reads format {SNAPSHOT_FORMAT} (the "
                           "snapshot was written by another version of grpo-drive, or its header is damaged)")
    digest, payload = data[_HEADER:_HEADER + _DIGEST], data[_HEADER + _DIGEST:]
    if hashlib.blake2b(data[:_HEADER] + payload, digest_size=_DIGEST).digest() != digest:
        raise BackendError(f"snapshot is corrupt: its checksum does not match its {len(data):,} bytes (damaged "
                           "in transit or storage); take the snapshot again")
    return payload


WorldIds = Sequence[int] | torch.Tensor | None

RESTARTS_METRIC = "services/restarts"
"""The metric every backend's ``metrics()`` reports: simulator instances (service processes, Ray actors, HTTP
servers, CARLA servers) restarted after a failure so far; 0 for a backend where nothing restarts."""


class NotOffered(BackendError):
    """An optional capability was called on a backend whose ``spec`` does not offer it; the message names it."""


@dataclass(frozen=True)
class BackendSpec:
    """What a backend is and which optional capabilities it offers; every backend exposes one as ``spec``.

    The capabilities are calls of :class:`BackendBase` (which raises :class:`NotOffered` for those a backend does
    not override): a caller checks the flag first, so no one probes a backend's attributes. Plain values only, so
    a spec travels to a service's parent as :meth:`to_dict`."""

    kind: str  # the backend kind, as in env.backend and the snapshots it takes: "sim", "carla", "gym"
    dt: float | None = None  # simulated seconds per step; None: the backend does not say (env=gym)
    max_episode_steps: int | None = None  # the step at which an episode is truncated (timeout); None: no limit
    action_low: tuple[float, ...] = ACTION_LOW  # the box actions lie in (values outside are clipped); for a
    action_high: tuple[float, ...] = ACTION_HIGH  # driving backend, CARLA's control (throttle, brake, steer)
    driving: bool = True  # observations follow OBSERVATION_LAYOUT, actions are CARLA's control, steps report the
    # route infos of StepResult (the expert can drive it); False: any Box environment (env=gym)
    rasters: bool = False  # observe_raster(world_ids): the bird's-eye raster observation, for CNN policies
    pictures: bool = False  # positions, render_birdseye and route_map: ego positions and images for people
    splits: bool = False  # set_split(split): later resets draw training or evaluation routes
    evaluates_in_place: bool = False  # the trainer's periodic evaluation runs on this backend itself (switched to
    # evaluation routes with set_split and back), not on one of its own: CARLA, whose servers take no second client

    def __post_init__(self) -> None:
        object.__setattr__(self, "action_low", tuple(float(v) for v in self.action_low))
        object.__setattr__(self, "action_high", tuple(float(v) for v in self.action_high))
        if len(self.action_low) != len(self.action_high) or not self.action_low:
            raise ValueError(f"action_low and action_high must have one bound per action value, got "
                             f"{self.action_low} and {self.action_high}")
        if self.evaluates_in_place and not self.splits:
            raise ValueError("a backend that evaluates in place must offer set_split (splits=True)")

    @property
    def action_size(self) -> int:
        """Action values per world: 3 for CARLA's control, k for a k-dimensional Box."""
        return len(self.action_low)

    def to_dict(self) -> dict[str, object]:
        """Plain JSON-able values (tuples as lists), for a service's description."""
        return {name: list(value) if isinstance(value, tuple) else value
                for name, value in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> BackendSpec:
        """The spec :meth:`to_dict` wrote; keys this version does not know are ignored (a newer service)."""
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{name: value for name, value in data.items() if name in known})


@dataclass
class MapView:
    """The town around one route, for trajectory pictures (``route_map``): ``image`` uint8 [H, W, 3] north up
    (row 0 is the largest y), covering ``extent`` = (x_min, x_max, y_min, y_max) in world metres (matplotlib's
    imshow extent), the route's centre line ``route`` [N, 2] from start to goal, and the seed of the town."""

    image: np.ndarray
    extent: tuple[float, float, float, float]
    route: np.ndarray
    town_seed: int


class BackendBase:
    """The optional capabilities of the contract, with their defaults: every backend inherits this class, declares
    in its ``spec`` what it offers, and overrides those calls. A call its spec does not offer raises NotOffered.
    ``metrics`` is offered by every backend."""

    spec: BackendSpec

    def metrics(self) -> dict[str, float]:
        """Numbers for the training log (the trainer asks every iteration): always :data:`RESTARTS_METRIC`, plus
        whatever the backend measures (CARLA: restore errors and ``drift/*``)."""
        return {RESTARTS_METRIC: 0.0}

    def observe_raster(self, world_ids: WorldIds = None) -> torch.Tensor:
        """``spec.rasters``: the bird's-eye raster observation of the given worlds, uint8 [N, C, S, S], ego-centred
        and facing up (channels in envs.sim.raster)."""
        raise self._not_offered("rasters", "observe_raster")

    def set_split(self, split: str) -> str:
        """``spec.splits``: later resets draw ``split``'s routes ("train" or "eval"); returns the previous split."""
        raise self._not_offered("splits", "set_split")

    def positions(self, world_ids: WorldIds = None) -> torch.Tensor:
        """``spec.pictures``: the egos' positions [N, 2] (x, y in world metres, float32, on the CPU)."""
        raise self._not_offered("pictures", "positions")

    def render_birdseye(self, world_id: int, *, size: int = 256, metres: float = 60.0,
                        trajectories: Sequence[tuple[np.ndarray, tuple[int, ...]]] = ()) -> np.ndarray:
        """``spec.pictures``: a bird's-eye RGB image uint8 [size, size, 3] of world ``world_id``, ``metres`` on a
        side, centred on the ego, north up: the map, the route ahead, the road users, the lights and the ego, with
        ``trajectories`` (world points [T, 2] and an RGB or RGBA colour each) drawn over the map."""
        raise self._not_offered("pictures", "render_birdseye")

    def route_map(self, world_id: int, margin_m: float = 25.0) -> MapView:
        """``spec.pictures``: the map around world ``world_id``'s whole route (its bounding box plus
        ``margin_m``), with the route's centre line."""
        raise self._not_offered("pictures", "route_map")

    def _not_offered(self, flag: str, call: str) -> NotOffered:
        return NotOffered(f"{type(self).__name__} ({self.spec.kind}) does not offer {call} (its spec has "
                          f"{flag}=False)")



@runtime_checkable
class Backend(Protocol):
    """What every backend offers. ``world_ids`` of ``None`` means all worlds. The optional capabilities
    (``metrics``, and the calls ``spec`` declares) are those of :class:`BackendBase`, which every backend inherits."""

    num_worlds: int
    observation_size: int
    device: torch.device
    spec: BackendSpec

    def reset(self, seed: int | Sequence[int], world_ids: WorldIds = None) -> torch.Tensor:
        """Start new episodes and return their observations [len(world_ids), obs_size].

        An int ``seed`` derives one episode seed per world from (seed, world id); a sequence gives each
        world its episode seed explicitly (fixed evaluation suites). The same episode seed always gives
        the same town, route and initial state.
        """
        ...

    def step(self, actions: torch.Tensor) -> StepResult:
        """Advance every world by one time step with ``actions`` [B, 3]."""
        ...

    def observe(self, world_ids: WorldIds = None) -> torch.Tensor:
        """Current observations of the given worlds, without stepping."""
        ...

    def snapshot(self, world_ids: WorldIds = None) -> Snapshot:
        """Complete state of the given worlds."""
        ...

    def restore(self, snapshot: Snapshot, world_ids: WorldIds = None) -> torch.Tensor:
        """Write ``snapshot`` into ``world_ids`` (one per snapshot world) and return their observations."""
        ...

    def clone(self, src_ids: WorldIds, dst_ids: WorldIds) -> None:
        """Make each world of ``dst_ids`` an exact copy of the matching world of ``src_ids``."""
        ...

    def close(self) -> None:
        ...

    def metrics(self) -> dict[str, float]:
        ...


def derive_episode_seeds(seed: int | Sequence[int], world_ids: Sequence[int] | torch.Tensor) -> list[int]:
    """One episode seed per world of ``world_ids``, from the ``seed`` argument of :meth:`Backend.reset`: an int
    derives them from (seed, world id) with :func:`envs.seeding.mix` (both 32-bit words of a wider int count), the
    same whichever backend, service or server hosts a world; a sequence gives one episode seed per world and must
    match ``world_ids`` in length (BackendError otherwise). Every backend and service normalises ``seed`` here."""
    ids = torch.as_tensor(world_ids, dtype=torch.long).reshape(-1).cpu()
    if isinstance(seed, Integral):
        seed = int(seed)
        return mix(seed & 0xFFFFFFFF, seed >> 32, ids).tolist()
    seeds = [int(s) for s in seed]
    if len(seeds) != len(ids):
        raise BackendError(f"reset got {len(seeds)} episode seeds for {len(ids)} worlds; give one per world or a "
                           "single int")
    return seeds


def as_world_ids(world_ids: WorldIds, num_worlds: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Validated long tensor of world ids; ``None`` means all worlds."""
    if world_ids is None:
        return torch.arange(num_worlds, device=device)
    ids = torch.as_tensor(world_ids, dtype=torch.long).reshape(-1)
    if len(ids) and (int(ids.min()) < 0 or int(ids.max()) >= num_worlds):
        raise BackendError(f"world ids must lie in [0, {num_worlds}); got min {int(ids.min())}, "
                           f"max {int(ids.max())}")
    return ids.to(device)


def restore_world_ids(snapshot: Snapshot, world_ids: WorldIds, num_worlds: int,
                      device: torch.device | str = "cpu") -> torch.Tensor:
    """The worlds a ``restore`` writes, validated: ``world_ids`` (None: 0 .. snapshot.num_worlds - 1), one per
    snapshot world (BackendError otherwise)."""
    ids = as_world_ids(range(snapshot.num_worlds) if world_ids is None else world_ids, num_worlds, device)
    if len(ids) != snapshot.num_worlds:
        raise BackendError(f"snapshot holds {snapshot.num_worlds} worlds but {len(ids)} world ids were given; pass "
                           "one target world per snapshot world")
    return ids


def clone_world_ids(src_ids: WorldIds, dst_ids: WorldIds, num_worlds: int,
                    device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """The source and destination worlds of a ``clone``, validated: as many of each (BackendError otherwise)."""
    src, dst = as_world_ids(src_ids, num_worlds, device), as_world_ids(dst_ids, num_worlds, device)
    if src.shape != dst.shape:
        raise BackendError(f"clone needs as many sources as destinations, got {len(src)} and {len(dst)}")
    return src, dst


def check_actions(actions: torch.Tensor, num_worlds: int, action_size: int = ACTION_SIZE) -> None:
    """Reject actions a backend cannot apply: wrong shape or non-finite values. Out-of-range values are
    clipped by the backend, as CARLA does. ``action_size`` is the number of action values per world: CARLA's
    control by default, k for a backend acting in another Box (envs.gym_backend)."""
    if action_size == ACTION_SIZE:
        shape, meaning = f"[{num_worlds}, {ACTION_SIZE}]", "(throttle, brake, steer per world)"
    else:
        shape, meaning = f"[{num_worlds}, {action_size}]", f"({action_size} action values per world)"
    if not isinstance(actions, torch.Tensor):
        raise BackendError(f"actions must be a torch.Tensor of shape {shape}, got {type(actions).__name__}")
    if actions.shape != (num_worlds, action_size):
        raise BackendError(f"actions must have shape {shape} {meaning}, got {list(actions.shape)}")
    if not torch.isfinite(actions).all():
        bad = (~torch.isfinite(actions)).any(dim=1).nonzero().flatten()[:5].tolist()
        raise BackendError(f"actions contain NaN or inf (worlds {bad}...); check the policy's outputs")
