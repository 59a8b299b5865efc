"""Any gymnasium environment with a Box action space as a backend: ``env=gym env.id=<registered id>``.

    python train.py experiment=gym_control                                   # Pendulum-v1
    python train.py experiment=gym_control env.id=MountainCarContinuous-v0

:class:`GymBackend` holds ``num_worlds`` copies of the environment, each made by ``gymnasium.make``, and
meets the :mod:`envs.api` contract, so the GRPO rollout branches them like the built-in simulator:

* **Observations** are the env's Box observation flattened to float32 (other observation spaces are refused).
* **Actions** are ``[B, k]`` with k the size of the env's Box action space; the spec's bounds (``driving=False``,
  ``action_low`` / ``action_high``) tell :func:`grpo.distributions.action_mapping_for` to map the policy's Beta
  samples onto that box.
  Values outside the box are clipped; NaN, inf or a wrong shape raise :class:`~envs.api.BackendError`.
* **Episode seeds**: ``reset([s, ...])`` calls ``env.reset(seed=s)``, so episode ``s`` here is the episode
  ``gymnasium.make(id).reset(seed=s)`` gives (``split="eval"`` mixes a constant into every seed, so
  evaluation episodes differ from training ones). An int seed derives one episode seed per world id.
* **Ended worlds stay frozen** (reward 0, the same done flags, not stepped) until they are reset or
  restored. Truncation comes from ``max_episode_steps`` (gymnasium's TimeLimit wrapper).
* **Info** per step: ``return_so_far`` (float32, the episode's return up to this step) and ``episode_steps``
  (long). The env's own info dict is not forwarded (its keys may change from step to step).

Snapshots, by the first method that applies (``env.snapshot`` forces one):

1. **State API** (``"state"``): bit-exact, plain tensors, so snapshots travel between processes, services
   and checkpoints like the simulator's. It covers the env's own state, its ``np_random`` bit generator
   (PCG64, stored as 32-bit words) and the TimeLimit step count. Supported envs:

   - Pendulum-v1 (``state``, ``last_u``) and MountainCarContinuous-v0 (``state``): classic-control envs
     whose attributes hold their whole state (:data:`KNOWN_STATE_FIELDS`; exact classes only).
   - Any env whose unwrapped env defines ``get_state() -> dict`` and ``set_state(state: dict)``. Values may be
     numpy arrays, numpy scalars, python float/int/bool or None (dtypes are kept; integers up to 2**53 are
     exact when mixed with floats in one field).

   Only when every wrapper ``gymnasium.make`` added is one that holds no dynamics state (TimeLimit,
   OrderEnforcing, PassiveEnvChecker); otherwise the backend deep-copies.
2. **Deep copy** (``"deepcopy"``): ``copy.deepcopy`` of the whole wrapped env, kept in a table in this
   process's memory; the snapshot holds only the copy's id. **Such snapshots do not travel between
   processes**: restoring one in another process (another service, a resumed run) raises BackendError. The
   table keeps the ``snapshot_cache_size`` most recently used copies; restoring a dropped one raises too.

An env that has no state API and cannot be deep-copied is refused when the backend is built, with a
BackendError naming the env and the reason. Run :func:`envs.contract.check_snapshot_contract` on a new env
to see that its snapshots are complete (a deep copy that shares a C handle with its original is not).
"""

from __future__ import annotations

import copy
import hashlib
import importlib
import itertools
import json
import os
import uuid
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch

from envs.api import (
    BackendBase,
    BackendError,
    BackendSpec,
    Snapshot,
    StepResult,
    WorldIds,
    as_world_ids,
    check_actions,
    clone_world_ids,
    derive_episode_seeds,
    restore_world_ids,
)

BACKEND_NAME = "gym"

EVAL_SEED_SALT = 0xE7A1
"""Mixed into every episode seed on ``split="eval"``: evaluation episodes are not training episodes."""

MAX_SEED = 2**63 - 1  # episode seeds are reduced modulo 2**63 (gymnasium needs non-negative ints)


def held_out_seed(episode_seed: int) -> int:
    """The gymnasium seed of evaluation episode ``episode_seed`` (``split="eval"``): the episode seed salted with
    EVAL_SEED_SALT through numpy's SeedSequence. The one seed derivation not made by :func:`envs.seeding.mix`, on
    purpose: it picks env=gym's held-out episodes, on which its evaluation results (bench/results) and the Pendulum
    tests' thresholds were measured, so it keeps the numbers it has always given."""
    words = np.random.SeedSequence([int(episode_seed), EVAL_SEED_SALT]).generate_state(2, np.uint32)
    return int(((int(words[0]) << 32) | int(words[1])) & MAX_SEED)

KNOWN_STATE_FIELDS: dict[str, tuple[str, ...]] = {
    "gymnasium.envs.classic_control.pendulum.PendulumEnv": ("state", "last_u"),
    "gymnasium.envs.classic_control.continuous_mountain_car.Continuous_MountainCarEnv": ("state",),
}
"""Env classes (exact, by module and name) whose listed attributes plus ``np_random`` are their whole state.
(Pendulum's ``last_u`` is only drawn by its renderer, kept so a restored frame looks the same.)"""

STATELESS_WRAPPERS = ("TimeLimit", "OrderEnforcing", "PassiveEnvChecker")
"""gymnasium wrappers that hold no dynamics state beyond TimeLimit's step count, which the backend restores."""


@dataclass(frozen=True)
class GymConfig:
    """A gymnasium environment as a backend (``conf/env/gym.yaml``).

    ``id`` defaults to Pendulum-v1 rather than ``???`` so that ``env=gym`` alone runs a known-good example
    (as ``env=sim`` does), and the YAML stays equal to these defaults. ``max_episode_steps=None`` is replaced
    by the registered limit when the config is built, so ``dataclasses.replace(config, id=...)`` keeps the old
    env's limit: build a new GymConfig to change the env.
    """

    id: str = "Pendulum-v1"  # registered gymnasium id; "package.module:Env-v0" imports the module first
    kwargs: dict[str, Any] = field(default_factory=dict)  # keyword arguments for gymnasium.make
    num_worlds: int = 1  # copies of the env (worlds); the trainer sets it to num_trunks * group_size
    device: str = "cpu"  # device of the observation / reward tensors (the envs themselves run on the CPU)
    max_episode_steps: int | None = None  # steps before truncation; None = the limit registered with ``id``,
    # filled in when the config is built (so the trainer checks branch_horizon against it, and checkpoints
    # store the number); stays None only for an env registered without a limit
    split: Literal["train", "eval"] = "train"  # eval mixes EVAL_SEED_SALT into episode seeds (set by evaluation)
    snapshot: Literal["auto", "state", "deepcopy"] = "auto"  # auto: the env's state API when it has one, else
    # deep copies; state: require the state API; deepcopy: always deep-copy
    snapshot_cache_size: int = 4096  # deep-copy snapshots only: world copies kept in this process (least
    # recently used dropped first)

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or not self.id:
            raise ValueError(f"env.id must name a registered gymnasium environment, got {self.id!r}")
        if self.num_worlds < 1:
            raise ValueError(f"env.num_worlds must be >= 1, got {self.num_worlds}")
        if self.split not in ("train", "eval"):
            raise ValueError(f"env.split must be 'train' or 'eval', got {self.split!r}")
        if self.snapshot not in ("auto", "state", "deepcopy"):
            raise ValueError(f"env.snapshot must be 'auto', 'state' or 'deepcopy', got {self.snapshot!r}")
        if self.snapshot_cache_size < 1:
            raise ValueError(f"env.snapshot_cache_size must be >= 1, got {self.snapshot_cache_size}")
        if "max_episode_steps" in self.kwargs:
            raise ValueError("set the episode limit with env.max_episode_steps, not env.kwargs.max_episode_steps")
        if self.max_episode_steps is not None and self.max_episode_steps < 1:
            raise ValueError(f"env.max_episode_steps must be >= 1 or null, got {self.max_episode_steps}")
        if self.max_episode_steps is None:
            object.__setattr__(self, "max_episode_steps", registered_spec(self.id).max_episode_steps)


def registered_spec(env_id: str):
    """gymnasium's EnvSpec of ``env_id`` (importing ``module`` of "module:Env-v0" first); ValueError if unknown."""
    import gymnasium

    module, _, name = env_id.rpartition(":")
    if module:
        try:
            importlib.import_module(module)
        except ImportError as error:
            raise ValueError(f"env.id={env_id!r}: cannot import {module!r} to register the env ({error})") from error
    try:
        return gymnasium.spec(name)
    except gymnasium.error.Error as error:
        raise ValueError(f"env.id={env_id!r} is not a registered gymnasium environment: {error}") from error


# --- state API snapshots: env fields and the bit generator as plain tensors --------------------------------

_DTYPES = ("float64", "float32", "float16", "int64", "int32", "int16", "int8", "uint32", "uint16", "uint8", "bool")
_KINDS = ("none", "float", "int", "bool", *(f"scalar:{d}" for d in _DTYPES), *(f"array:{d}" for d in _DTYPES))
"""How a state value is rebuilt; a snapshot stores each world's kind as an index into this tuple (append only)."""

RNG_WORDS = 10  # PCG64: state (4 x 32 bits), increment (4 x 32 bits), has_uint32, uinteger


class _NotEncodable(ValueError):
    """A state value the snapshot tensors cannot hold exactly."""


def _kind(name: str, value: Any) -> tuple[str, np.ndarray | None]:
    if value is None:
        return "none", None
    if isinstance(value, np.ndarray | np.generic):  # before float: np.float64 is a python float too
        if value.dtype.name not in _DTYPES:
            raise _NotEncodable(f"state field {name!r} has dtype {value.dtype}")
        return f"{'array' if isinstance(value, np.ndarray) else 'scalar'}:{value.dtype.name}", np.asarray(value)
    if isinstance(value, bool):
        return "bool", np.asarray(value)
    if isinstance(value, int):
        if not -(2**63) <= value < 2**63:
            raise _NotEncodable(f"state field {name!r} holds an integer beyond int64")
        return "int", np.asarray(value, dtype=np.int64)
    if isinstance(value, float):
        return "float", np.asarray(value, dtype=np.float64)
    raise _NotEncodable(f"state field {name!r} holds a {type(value).__name__} (numpy arrays and scalars, python "
                        "float/int/bool and None are supported)")


def encode_state(states: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """Per-world state dicts (same keys) -> tensors ``value/<name>`` [n, *shape] (int64 when every value of the
    field is integral, else float64: exact for every float dtype) and ``kind/<name>`` [n] (index into _KINDS)."""
    names = list(states[0]) if states else []
    for state in states:
        if list(state) != names:
            raise _NotEncodable(f"worlds report different state fields: {names} and {list(state)}")
    out = {}
    for name in names:
        kinds, arrays = zip(*(_kind(name, state[name]) for state in states), strict=True)
        present = [a for a in arrays if a is not None]
        shapes = {a.shape for a in present}
        if len(shapes) > 1:
            raise _NotEncodable(f"state field {name!r} changes shape between worlds: {sorted(shapes)}")
        integral = bool(present) and all(a.dtype == np.bool_ or np.issubdtype(a.dtype, np.integer) for a in present)
        values = np.zeros((len(states), *(shapes.pop() if shapes else ())), np.int64 if integral else np.float64)
        for row, array in enumerate(arrays):
            if array is not None:
                values[row] = array
        out[f"value/{name}"] = torch.from_numpy(values)
        out[f"kind/{name}"] = torch.tensor([_KINDS.index(kind) for kind in kinds], dtype=torch.long)
    return out


def decode_state(tensors: dict[str, torch.Tensor], row: int) -> dict[str, Any]:
    """World ``row``'s state dict from :func:`encode_state`'s tensors (fresh arrays, never views)."""
    out = {}
    for key, kinds in tensors.items():
        if not key.startswith("kind/"):
            continue
        name = key[len("kind/"):]
        kind, value = _KINDS[int(kinds[row])], tensors[f"value/{name}"][row]
        if kind == "none":
            out[name] = None
        elif kind in ("float", "int", "bool"):
            out[name] = {"float": float, "int": int, "bool": bool}[kind](value.item())
        else:
            form, dtype = kind.split(":")
            array = value.cpu().numpy().astype(dtype)  # astype copies: the env may mutate its arrays in place
            out[name] = array[()] if form == "scalar" else array
    return out


def encode_rng(generator: np.random.Generator) -> list[int]:
    state = generator.bit_generator.state
    words = []
    for value in (state["state"]["state"], state["state"]["inc"]):
        words += [(value >> shift) & 0xFFFFFFFF for shift in (96, 64, 32, 0)]
    return [*words, int(state["has_uint32"]), int(state["uinteger"])]


def decode_rng(words: Sequence[int]) -> dict[str, Any]:
    words = [int(w) for w in words]

    def join(part: Sequence[int]) -> int:
        return (part[0] << 96) | (part[1] << 64) | (part[2] << 32) | part[3]

    return {"bit_generator": "PCG64", "state": {"state": join(words[0:4]), "inc": join(words[4:8])},
            "has_uint32": words[8], "uinteger": words[9]}


def _class_name(obj: Any) -> str:
    return f"{type(obj).__module__}.{type(obj).__qualname__}"


def _wrappers(env) -> list:
    import gymnasium

    chain = []
    while isinstance(env, gymnasium.Wrapper):
        chain.append(env)
        env = env.env
    return chain


def read_state(env) -> dict[str, Any]:
    """The env's own state (attributes of a known class, or its ``get_state()``), without the bit generator."""
    unwrapped = env.unwrapped
    names = KNOWN_STATE_FIELDS.get(_class_name(unwrapped))
    if names is not None:
        return {name: getattr(unwrapped, name) for name in names}
    state = unwrapped.get_state()
    if not isinstance(state, dict):
        raise _NotEncodable(f"get_state() returned a {type(state).__name__}, not a dict of named values")
    return state


def write_state(env, state: dict[str, Any]) -> None:
    unwrapped = env.unwrapped
    if _class_name(unwrapped) in KNOWN_STATE_FIELDS:
        for name, value in state.items():
            setattr(unwrapped, name, value)
    else:
        unwrapped.set_state(state)


def state_api_problem(env) -> str | None:
    """Why ``env`` (reset) cannot be snapshotted exactly through its state, or None when it can."""
    unwrapped = env.unwrapped
    has_protocol = callable(getattr(unwrapped, "get_state", None)) and callable(getattr(unwrapped, "set_state", None))
    if _class_name(unwrapped) not in KNOWN_STATE_FIELDS and not has_protocol:
        return (f"{type(unwrapped).__name__} has no get_state() / set_state(state) and is not one of the envs whose "
                "attributes are known to hold their whole state")
    stateful = [type(w).__name__ for w in _wrappers(env) if type(w).__name__ not in STATELESS_WRAPPERS]
    if stateful:
        return f"its wrappers {stateful} may hold state of their own"
    if type(unwrapped.np_random.bit_generator) is not np.random.PCG64:
        return f"its np_random uses {type(unwrapped.np_random.bit_generator).__name__}, not PCG64"
    try:
        encode_state([read_state(env)])
    except _NotEncodable as error:
        return str(error)
    return None


# --- deep-copy snapshots: copies kept in this process --------------------------------------------------------


class _CopyTable:
    """World copies of deep-copy snapshots, by id, in this process; the least recently used beyond
    ``capacity`` are dropped. ``token`` names this process, so a snapshot that travelled is recognised."""

    def __init__(self) -> None:
        self._copies: OrderedDict[int, Any] = OrderedDict()
        self._ids = itertools.count()
        self.capacity = 1
        self._pid: int | None = None
        self._token = ""

    @property
    def token(self) -> str:
        self._own_process()
        return self._token

    def put(self, env) -> int:
        self._own_process()
        copy_id = next(self._ids)
        self._copies[copy_id] = env
        while len(self._copies) > self.capacity:
            _, dropped = self._copies.popitem(last=False)
            _close_quietly(dropped)
        return copy_id

    def get(self, copy_id: int):
        self._own_process()
        env = self._copies.get(copy_id)
        if env is not None:
            self._copies.move_to_end(copy_id)
        return env

    def _own_process(self) -> None:
        """A forked child inherits the parent's table: it starts one of its own, under a new token."""
        if self._pid != os.getpid():
            self._pid, self._token = os.getpid(), f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
            self._copies.clear()


_COPIES = _CopyTable()


def _close_quietly(env) -> None:
    try:
        env.close()
    except Exception:  # closing a copy must never break a rollout
        pass


# --- the backend ----------------------------------------------------------------------------------------------


class GymBackend(BackendBase):
    """``config.num_worlds`` copies of a gymnasium environment behind the :mod:`envs.api` contract.

    Its ``spec`` holds the Box action space's bounds (``driving=False``) and the episode limit; no time step
    (gymnasium envs have no common attribute for it) and no optional capability. Attributes beyond the contract:
    ``action_bounds`` (low, high) of the Box action space (flattened), ``action_size`` k, ``snapshot_mode``
    ("state" or "deepcopy"), ``envs`` (the gymnasium envs), ``config``.
    """

    def __init__(self, config: GymConfig):
        self.config = config
        self.num_worlds = config.num_worlds
        self.device = torch.device(config.device)
        self.envs: list = []
        try:
            for _ in range(config.num_worlds):
                self.envs.append(self._make_env())
            self.observation_size = _observation_size(self.envs[0].observation_space, config.id)
            self.action_bounds = _action_bounds(self.envs[0].action_space, config.id)
            self.action_size = len(self.action_bounds[0])
            self.spec = BackendSpec(BACKEND_NAME, max_episode_steps=config.max_episode_steps,
                                    action_low=self.action_bounds[0], action_high=self.action_bounds[1], driving=False)
            self._action_space = self.envs[0].action_space
            self._low, self._high = (np.array(bound, dtype=np.float64) for bound in self.action_bounds)
            # Per-world bookkeeping; part of every snapshot.
            self._observation = np.zeros((self.num_worlds, self.observation_size), np.float32)
            self._terminated = np.zeros(self.num_worlds, np.bool_)
            self._truncated = np.zeros(self.num_worlds, np.bool_)
            self._return = np.zeros(self.num_worlds, np.float64)
            self._steps = np.zeros(self.num_worlds, np.int64)
            self.reset(0)  # every world holds a valid episode from the start
            self.snapshot_mode = self._choose_snapshot_mode()
        except BaseException:
            self.close()
            raise
        if self.snapshot_mode == "deepcopy":
            _COPIES.capacity = max(_COPIES.capacity, config.snapshot_cache_size)
        description = json.dumps({"id": config.id, "kwargs": config.kwargs, "snapshot": self.snapshot_mode,
                                  "max_episode_steps": config.max_episode_steps, "obs": self.observation_size,
                                  "actions": self.action_bounds}, sort_keys=True, default=repr)
        self.signature = f"{config.id}/{self.snapshot_mode}/{hashlib.sha1(description.encode()).hexdigest()[:12]}"

    # --- the contract -------------------------------------------------------------------------------------

    def reset(self, seed: int | Sequence[int], world_ids: WorldIds = None) -> torch.Tensor:
        ids = self._ids(world_ids)
        for world, episode_seed in zip(ids, self.episode_seeds(seed, ids), strict=True):
            observation, _ = self.envs[world].reset(seed=self._gym_seed(episode_seed))
            self._observation[world] = self._flat(observation)
            self._terminated[world] = self._truncated[world] = False
            self._return[world], self._steps[world] = 0.0, 0
        return self.observe(ids)

    def step(self, actions: torch.Tensor) -> StepResult:
        self._check_open()
        check_actions(actions, self.num_worlds, action_size=self.action_size)
        actions = np.clip(actions.detach().cpu().numpy().astype(np.float64), self._low, self._high)
        actions = actions.astype(self._action_space.dtype).reshape(self.num_worlds, *self._action_space.shape)
        rewards = np.zeros(self.num_worlds, np.float32)
        for world in np.flatnonzero(~(self._terminated | self._truncated)):
            observation, reward, terminated, truncated, _ = self.envs[world].step(actions[world])
            self._observation[world] = self._flat(observation)
            rewards[world] = reward
            self._return[world] += float(reward)
            self._steps[world] += 1
            self._terminated[world], self._truncated[world] = bool(terminated), bool(truncated)
        return StepResult(
            observation=self.observe(),
            reward=self._tensor(rewards),
            terminated=self._tensor(self._terminated.copy()),
            truncated=self._tensor(self._truncated.copy()),
            info={"return_so_far": self._tensor(self._return.astype(np.float32)),
                  "episode_steps": self._tensor(self._steps.copy())})

    def observe(self, world_ids: WorldIds = None) -> torch.Tensor:
        return self._tensor(self._observation[self._ids(world_ids)])

    def snapshot(self, world_ids: WorldIds = None) -> Snapshot:
        ids = self._ids(world_ids)
        tensors = {"observation": torch.from_numpy(self._observation[ids].copy()),
                   "terminated": torch.from_numpy(self._terminated[ids].copy()),
                   "truncated": torch.from_numpy(self._truncated[ids].copy()),
                   "return_so_far": torch.from_numpy(self._return[ids].copy()),
                   "episode_steps": torch.from_numpy(self._steps[ids].copy())}
        if self.snapshot_mode == "state":
            # An empty snapshot still carries the field names, so it concatenates with others.
            states = encode_state([read_state(self.envs[w]) for w in (ids or [0])])
            tensors.update({key: value[:len(ids)] for key, value in states.items()})
            words = [encode_rng(self.envs[w].unwrapped.np_random) for w in ids]
            tensors["rng"] = torch.tensor(words, dtype=torch.long).reshape(len(ids), RNG_WORDS)
            meta = {}
        else:
            copies = [_COPIES.put(self._deepcopy(self.envs[w])) for w in ids]
            tensors["copy_id"] = torch.tensor(copies, dtype=torch.long)
            meta = {"process": _COPIES.token}
        return Snapshot(BACKEND_NAME, self.signature, len(ids), tensors, meta)

    def restore(self, snapshot: Snapshot, world_ids: WorldIds = None) -> torch.Tensor:
        self._check_open()
        self._check_snapshot(snapshot)
        ids = restore_world_ids(snapshot, world_ids, self.num_worlds).tolist()
        tensors = snapshot.tensors
        if self.snapshot_mode == "state":  # decode everything first, so a bad snapshot changes nothing
            states = [decode_state(tensors, row) for row in range(len(ids))]
            for row, world in enumerate(ids):
                env = self.envs[world]
                write_state(env, states[row])
                env.unwrapped.np_random.bit_generator.state = decode_rng(tensors["rng"][row].tolist())
                for wrapper in _wrappers(env):
                    if type(wrapper).__name__ == "TimeLimit":
                        wrapper._elapsed_steps = int(tensors["episode_steps"][row])
        else:
            sources = [self._copy_of(snapshot, int(copy_id)) for copy_id in tensors["copy_id"]]
            for world, source in zip(ids, sources, strict=True):
                self._replace_env(world, self._deepcopy(source))
        self._observation[ids] = tensors["observation"].numpy()
        self._terminated[ids] = tensors["terminated"].numpy()
        self._truncated[ids] = tensors["truncated"].numpy()
        self._return[ids] = tensors["return_so_far"].numpy()
        self._steps[ids] = tensors["episode_steps"].numpy()
        return self.observe(ids)

    def clone(self, src_ids: WorldIds, dst_ids: WorldIds) -> None:
        self._check_open()
        src, dst = (ids.tolist() for ids in clone_world_ids(src_ids, dst_ids, self.num_worlds))
        if self.snapshot_mode == "state":
            self.restore(self.snapshot(src), dst)
            return
        copies = [self._deepcopy(self.envs[w]) for w in src]  # all copies first: src and dst may overlap
        for array in (self._observation, self._terminated, self._truncated, self._return, self._steps):
            array[dst] = array[src]
        for world, env in zip(dst, copies, strict=True):
            self._replace_env(world, env)

    def close(self) -> None:
        for env in self.envs:
            _close_quietly(env)
        self.envs = []

    # --- seeds ---------------------------------------------------------------------------------------------

    def episode_seeds(self, seed: int | Sequence[int], ids: list[int]) -> list[int]:
        """Per-world episode seeds: derived from (seed, world id), or given one per world
        (:func:`envs.api.derive_episode_seeds`), as gymnasium seeds (non-negative, below 2**63)."""
        return [s % 2**63 for s in derive_episode_seeds(seed, ids)]

    def _gym_seed(self, episode_seed: int) -> int:
        if self.config.split == "eval":
            return held_out_seed(episode_seed)
        return episode_seed

    # --- helpers ---------------------------------------------------------------------------------------------

    def _make_env(self):
        import gymnasium

        config = self.config
        try:
            return gymnasium.make(config.id, max_episode_steps=config.max_episode_steps, **config.kwargs)
        except Exception as error:
            raise BackendError(f"gymnasium.make({config.id!r}, **{config.kwargs}) failed: "
                               f"{type(error).__name__}: {error}") from error

    def _choose_snapshot_mode(self) -> str:
        config, env = self.config, self.envs[0]
        problem = state_api_problem(env) if config.snapshot != "deepcopy" else "env.snapshot=deepcopy"
        if problem is None:
            return "state"
        if config.snapshot == "state":
            raise BackendError(f"env.snapshot=state, but gymnasium env {config.id!r} cannot be snapshotted through "
                               f"its state: {problem}. Use env.snapshot=auto to deep-copy it instead")
        try:  # probe now, so an env that cannot be copied fails here and not in the middle of training
            _close_quietly(copy.deepcopy(env))
        except Exception as error:
            raise BackendError(
                f"gymnasium env {config.id!r} cannot be snapshotted: it has no usable state API ({problem}) and "
                f"copy.deepcopy failed ({type(error).__name__}: {error}). Give its unwrapped env get_state() -> "
                "dict and set_state(state), or make it deep-copyable (see envs/gym_backend.py)") from error
        return "deepcopy"

    def _deepcopy(self, env):
        try:
            return copy.deepcopy(env)
        except Exception as error:
            raise BackendError(f"gymnasium env {self.config.id!r} could not be deep-copied for a snapshot "
                               f"({type(error).__name__}: {error})") from error

    def _replace_env(self, world: int, env) -> None:
        old, self.envs[world] = self.envs[world], env
        _close_quietly(old)

    def _copy_of(self, snapshot: Snapshot, copy_id: int):
        process = snapshot.meta.get("process")
        if process != _COPIES.token:
            raise BackendError(
                f"this deep-copy snapshot of {self.config.id!r} was taken in another process ({process}); deep-copy "
                "snapshots live in the memory of the process that took them and cannot be restored elsewhere. "
                "Use an env with a state API (see envs/gym_backend.py) to move snapshots between processes")
        env = _COPIES.get(copy_id)
        if env is None:
            raise BackendError(
                f"deep-copy snapshot {copy_id} of {self.config.id!r} was dropped: this process keeps the "
                f"{_COPIES.capacity} most recently used world copies; raise env.snapshot_cache_size")
        return env

    def _check_snapshot(self, snapshot: Snapshot) -> None:
        if (snapshot.backend, snapshot.signature) != (BACKEND_NAME, self.signature):
            raise BackendError(f"snapshot of {snapshot.backend}/{snapshot.signature} cannot be restored into "
                               f"{BACKEND_NAME}/{self.signature}: it comes from another env id, env kwargs, episode "
                               "limit or snapshot mode")

    def _check_open(self) -> None:
        if not self.envs:
            raise BackendError(f"the gym backend of {self.config.id!r} is closed")

    def _ids(self, world_ids: WorldIds) -> list[int]:
        self._check_open()
        return as_world_ids(world_ids, self.num_worlds).tolist()

    def _flat(self, observation) -> np.ndarray:
        return np.asarray(observation, dtype=np.float32).reshape(-1)

    def _tensor(self, array: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(array)).to(self.device)


def _observation_size(space, env_id: str) -> int:
    from gymnasium import spaces

    if not isinstance(space, spaces.Box):
        raise BackendError(f"gymnasium env {env_id!r} has observation space {space}; the gym backend needs a Box "
                           "(it is flattened to a float32 vector). Register the env wrapped in "
                           "gymnasium.wrappers.FlattenObservation")
    return int(np.prod(space.shape))


def _action_bounds(space, env_id: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    from gymnasium import spaces

    if not isinstance(space, spaces.Box):
        raise BackendError(f"gymnasium env {env_id!r} has action space {space}; the GRPO policy samples a Beta "
                           "distribution in a bounded Box, so the gym backend needs a Box action space")
    low, high = space.low.astype(np.float64).reshape(-1), space.high.astype(np.float64).reshape(-1)
    if not (np.isfinite(low).all() and np.isfinite(high).all() and (high > low).all()):
        raise BackendError(f"gymnasium env {env_id!r} has action space {space} with infinite or empty bounds; the "
                           "Beta policy needs finite low < high in every dimension: register the env with a "
                           "bounded action Box")
    return tuple(low.tolist()), tuple(high.tolist())

