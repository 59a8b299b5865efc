"""Gymnasium adapters over any envs.api backend: one world as a ``gymnasium.Env``, B worlds as a
``gymnasium.vector.VectorEnv``.

Both classes use only the backend contract (reset / step / observe / close), so they work for every
backend; only :meth:`render` needs a backend with pictures (``spec.pictures``: the built-in simulator).
Importing this module registers ``"GRPODrive-v0"`` (the built-in simulator; keyword arguments go to
:class:`~envs.sim.config.SimConfig`)::

    env = gymnasium.make("GRPODrive-v0", map="straight", num_towns=2)
    envs = gymnasium.make_vec("GRPODrive-v0", num_envs=8, map="straight")  # one batched simulator

Seeding follows gymnasium: ``reset(seed=s)`` seeds the adapter's ``np_random`` and every episode seed the
backend sees is drawn from it (single env) or derived from it (vector env), so the same seed always gives
the same episodes. Episode seeds are reported in the reset ``info["episode_seed"]``; pass one back as
``options={"episode_seed": ...}`` to replay a single episode exactly.

Errors: a wrong action shape raises :class:`envs.api.BackendError` (the single env checks the shape
itself, to word the message for one world; the vector env lets the backend's own check propagate).
"""

from __future__ import annotations

from typing import Any

import gymnasium
import numpy as np
import torch
from gymnasium import spaces
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from envs.api import ACTION_HIGH, ACTION_LOW, ACTION_SIZE, Backend, BackendError, StepResult, derive_episode_seeds

ENV_ID = "GRPODrive-v0"
MAX_EPISODE_SEED = int(np.iinfo(np.int64).max)  # episode seeds are non-negative int64 (torch.long)


def observation_space(backend: Backend) -> spaces.Box:
    """One world's observation: the flat float32 vector of envs.api.OBSERVATION_LAYOUT.

    Unbounded on purpose: most entries are scaled to about [-1, 1] (speeds / speed_scale, positions /
    distance_scale, sines, controls), but positions relative to the route grow without bound when the ego
    leaves it, and a finite box that an observation can leave would break gymnasium's checks.
    """
    return spaces.Box(-np.inf, np.inf, (backend.observation_size,), np.float32)


def action_space() -> spaces.Box:
    """One world's action: CARLA's vehicle control [throttle in [0, 1], brake in [0, 1], steer in [-1, 1]]."""
    return spaces.Box(np.array(ACTION_LOW, np.float32), np.array(ACTION_HIGH, np.float32), dtype=np.float32)


def _render_fps(backend: Backend) -> int:
    dt = backend.spec.dt
    return max(1, round(1.0 / dt)) if dt else 10


def _birdseye(backend: Backend, world_id: int, size: int, metres: float) -> np.ndarray:
    if not backend.spec.pictures:
        raise NotImplementedError(
            f"rgb_array rendering needs a backend that draws itself (spec.pictures: the built-in simulator, "
            f"envs.sim.world.DrivingSim); backend {type(backend).__name__} ({backend.spec.kind}) has no bird's-eye "
            "renderer. Create the env with render_mode=None")
    return backend.render_birdseye(world_id, size=size, metres=metres)


class DrivingEnv(gymnasium.Env):
    """One world of a backend (``backend.num_worlds`` must be 1) as a gymnasium environment.

    Observations are float32 numpy vectors; ``info`` holds python scalars (route progress and completion,
    distance, and one bool per infraction of envs.api.INFRACTIONS). The backend freezes an ended world,
    so stepping past the end gives reward 0 until :meth:`reset`. ``close`` closes the backend.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}

    def __init__(self, backend: Backend, *, render_mode: str | None = None, render_size: int = 256,
                 render_metres: float = 60.0):
        if backend.num_worlds != 1:
            raise ValueError(f"DrivingEnv drives one world but the backend holds {backend.num_worlds}; build "
                             "the backend with num_worlds=1, or use DrivingVectorEnv for a batch")
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be None or one of {self.metadata['render_modes']}, "
                             f"got {render_mode!r}")
        self.backend = backend
        self.observation_space = observation_space(backend)
        self.action_space = action_space()
        self.render_mode = render_mode
        self.render_size, self.render_metres = render_size, render_metres
        self.metadata = {**self.metadata, "render_fps": _render_fps(backend)}
        self._closed = False

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None
              ) -> tuple[np.ndarray, dict[str, Any]]:
        """Start a new episode. The backend's episode seed is ``options["episode_seed"]`` when given,
        otherwise drawn from ``np_random`` (seeded by ``seed``)."""
        super().reset(seed=seed)
        options = options or {}
        if "episode_seed" in options:
            episode_seed = int(options["episode_seed"])
        else:
            episode_seed = int(self.np_random.integers(0, MAX_EPISODE_SEED))
        observation = self.backend.reset([episode_seed], world_ids=[0])
        return _numpy_observation(observation)[0], {"episode_seed": episode_seed}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        action = np.asarray(action, dtype=np.float32)
        if action.shape != (ACTION_SIZE,):
            raise BackendError(f"action must have shape ({ACTION_SIZE},) (throttle, brake, steer), "
                               f"got {action.shape}")
        result = self.backend.step(torch.from_numpy(action.copy())[None].to(self.backend.device))
        info = {name: value[0].item() for name, value in result.info.items()}
        return (_numpy_observation(result.observation)[0], float(result.reward[0]), bool(result.terminated[0]),
                bool(result.truncated[0]), info)

    def render(self) -> np.ndarray | None:
        """A bird's-eye RGB image of the world (``render_mode="rgb_array"``; built-in simulator only)."""
        if self.render_mode is None:
            gymnasium.logger.warn("render() called with render_mode=None; create the env with "
                                  "render_mode='rgb_array' to get images")
            return None
        return _birdseye(self.backend, 0, self.render_size, self.render_metres)

    def close(self) -> None:
        if not self._closed:
            self.backend.close()
            self._closed = True


class DrivingVectorEnv(VectorEnv):
    """All ``backend.num_worlds`` worlds of one backend as a gymnasium vector environment, stepped in one
    backend call.

    Autoreset is gymnasium's next-step mode: a world that terminates or truncates on step t is reset on
    step t + 1, which returns its reset observation with reward 0 and both done flags False (its action is
    ignored, its info entries are 0/False). Episode ``k`` of world ``w`` after ``reset(seed=s)`` has the
    episode seed ``derive(derive(s, w), k)``, where ``derive(seed, i)`` is
    ``envs.api.derive_episode_seeds(seed, [i])[0]``, so autoresets are as reproducible as the first reset
    (``episode_seeds`` holds each world's current one).
    ``reset(options={"reset_mask": mask})`` resets only the worlds where the bool mask [num_envs] is True.
    Numpy in and out (float32 observations, actions and rewards; bool flags); ``info`` maps each name to a
    numpy array over worlds. ``close`` closes the backend.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 10, "autoreset_mode": AutoresetMode.NEXT_STEP}

    def __init__(self, backend: Backend, *, render_mode: str | None = None, render_size: int = 256,
                 render_metres: float = 60.0):
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be None or one of {self.metadata['render_modes']}, "
                             f"got {render_mode!r}")
        self.backend = backend
        self.num_envs = backend.num_worlds
        self.single_observation_space = observation_space(backend)
        self.single_action_space = action_space()
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        self.render_mode = render_mode
        self.render_size, self.render_metres = render_size, render_metres
        self.metadata = {**self.metadata, "render_fps": _render_fps(backend)}
        self.base_seeds = np.zeros(self.num_envs, dtype=np.int64)  # per world, set by reset(seed)
        self.episode_counts = np.zeros(self.num_envs, dtype=np.int64)  # episodes started since then
        self.episode_seeds = np.zeros(self.num_envs, dtype=np.int64)  # of the episode each world is in
        self._autoreset = np.zeros(self.num_envs, dtype=np.bool_)
        self._has_reset = False

    def reset(self, *, seed: int | list[int | None] | None = None, options: dict[str, Any] | None = None
              ) -> tuple[np.ndarray, dict[str, Any]]:
        """Reset all worlds, or those of ``options["reset_mask"]``.

        ``seed``: an int gives world ``w`` the base seed ``derive(seed, w)``; a list gives one base seed per
        world (``None`` entries are drawn from ``np_random``); ``None`` draws the base from ``np_random``,
        except for a masked reset, where the reset worlds simply start their next episode.
        """
        super().reset(seed=seed if isinstance(seed, int) else None)
        mask = self._reset_mask(options)
        if isinstance(seed, int):
            self.base_seeds[mask] = derive_episode_seeds(seed, np.flatnonzero(mask))
            self.episode_counts[mask] = 0
        elif seed is not None:
            if len(seed) != self.num_envs:
                raise ValueError(f"reset got {len(seed)} seeds for {self.num_envs} worlds; give one per world")
            for w in np.flatnonzero(mask):
                self.base_seeds[w] = seed[w] if seed[w] is not None else self._draw_seed()
            self.episode_counts[mask] = 0
        elif options is None or "reset_mask" not in options or not self._has_reset:
            self.base_seeds[mask] = derive_episode_seeds(self._draw_seed(), np.flatnonzero(mask))
            self.episode_counts[mask] = 0
        else:
            self.episode_counts[mask] += 1
        ids = np.flatnonzero(mask)
        self._start_episodes(ids)
        self._autoreset[ids] = False
        self._has_reset = True
        return _numpy_observation(self.backend.observe()), {"episode_seed": self.episode_seeds.copy()}

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        if not self._has_reset:
            raise BackendError("step() before reset(): call reset(seed=...) first")
        actions = torch.from_numpy(np.array(actions, dtype=np.float32)).to(self.backend.device)
        result: StepResult = self.backend.step(actions)  # worlds that ended last step are frozen there
        observation = _numpy_observation(result.observation)
        reward = result.reward.cpu().numpy().astype(np.float32)
        terminated = result.terminated.cpu().numpy().astype(np.bool_)
        truncated = result.truncated.cpu().numpy().astype(np.bool_)
        info = {name: value.cpu().numpy().copy() for name, value in result.info.items()}
        restart = np.flatnonzero(self._autoreset)
        if len(restart):
            self.episode_counts[restart] += 1
            observation[restart] = _numpy_observation(self._start_episodes(restart))
            reward[restart] = 0.0
            terminated[restart] = truncated[restart] = False
            for value in info.values():
                value[restart] = 0
        self._autoreset = terminated | truncated
        return observation, reward, terminated, truncated, info

    def render(self) -> tuple[np.ndarray, ...] | None:
        """One bird's-eye RGB image per world (``render_mode="rgb_array"``; built-in simulator only)."""
        if self.render_mode is None:
            gymnasium.logger.warn("render() called with render_mode=None; create the env with "
                                  "render_mode='rgb_array' to get images")
            return None
        return tuple(_birdseye(self.backend, w, self.render_size, self.render_metres)
                     for w in range(self.num_envs))

    def close_extras(self, **kwargs: Any) -> None:
        self.backend.close()

    # --- helpers ----------------------------------------------------------------------------------------

    def _reset_mask(self, options: dict[str, Any] | None) -> np.ndarray:
        if options is None or "reset_mask" not in options:
            return np.ones(self.num_envs, dtype=np.bool_)
        mask = options["reset_mask"]
        if not isinstance(mask, np.ndarray) or mask.dtype != np.bool_ or mask.shape != (self.num_envs,):
            raise ValueError(f"options['reset_mask'] must be a numpy bool array of shape ({self.num_envs},), "
                             f"got {mask!r}")
        if not mask.any():
            raise ValueError("options['reset_mask'] resets no world; set at least one entry True")
        return mask

    def _draw_seed(self) -> int:
        return int(self.np_random.integers(0, MAX_EPISODE_SEED))

    def _start_episodes(self, ids: np.ndarray) -> torch.Tensor:
        """Reset worlds ``ids`` into their current episode (from base seed and episode count)."""
        seeds = [derive_episode_seeds(int(self.base_seeds[w]), [int(self.episode_counts[w])])[0] for w in ids]
        self.episode_seeds[ids] = seeds
        return self.backend.reset(seeds, world_ids=ids.tolist())


def _numpy_observation(observation: torch.Tensor) -> np.ndarray:
    """A float32 numpy copy (never a view of backend memory: callers keep what they are given)."""
    return observation.detach().cpu().numpy().astype(np.float32, copy=True)


# --- the built-in simulator through gymnasium's registry ------------------------------------------------


def make_sim_env(config, *, render_mode: str | None = None) -> DrivingEnv:
    """A :class:`DrivingEnv` over a new built-in simulator built from ``config`` (a SimConfig with
    ``num_worlds=1``)."""
    from envs.sim.world import DrivingSim

    return DrivingEnv(DrivingSim(config), render_mode=render_mode)


def make_sim_vector_env(config, *, render_mode: str | None = None) -> DrivingVectorEnv:
    """A :class:`DrivingVectorEnv` over a new built-in simulator of ``config.num_worlds`` worlds."""
    from envs.sim.world import DrivingSim

    return DrivingVectorEnv(DrivingSim(config), render_mode=render_mode)


def _sim_config(num_worlds: int, kwargs: dict[str, Any]):
    """SimConfig from gymnasium keyword arguments; ``town``, ``vehicle`` and ``reward`` may be dicts."""
    from envs.driving.config import RewardConfig, VehicleConfig
    from envs.sim.config import SimConfig
    from envs.sim.towngen import TownConfig

    kwargs = dict(kwargs)
    for name, cls in (("town", TownConfig), ("vehicle", VehicleConfig), ("reward", RewardConfig)):
        if isinstance(kwargs.get(name), dict):
            kwargs[name] = cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in kwargs[name].items()})
    if isinstance(kwargs.get("terminate_on"), list):
        kwargs["terminate_on"] = tuple(kwargs["terminate_on"])
    return SimConfig(num_worlds=num_worlds, **kwargs)


def _registered_env(render_mode: str | None = None, **sim_kwargs: Any) -> DrivingEnv:
    """Entry point of ``gymnasium.make(ENV_ID, **sim_kwargs)``."""
    if sim_kwargs.get("num_worlds", 1) != 1:
        raise ValueError(f"{ENV_ID} drives one world; drop num_worlds={sim_kwargs['num_worlds']}, or use "
                         f"gymnasium.make_vec({ENV_ID!r}, num_envs=...) for a batch")
    sim_kwargs.pop("num_worlds", None)
    return make_sim_env(_sim_config(1, sim_kwargs), render_mode=render_mode)


def _registered_vector_env(num_envs: int, render_mode: str | None = None, **sim_kwargs: Any) -> DrivingVectorEnv:
    """Vector entry point of ``gymnasium.make_vec(ENV_ID, num_envs=B, **sim_kwargs)``: one simulator of B
    worlds."""
    if "num_worlds" in sim_kwargs:
        raise ValueError(f"give the number of worlds as num_envs, not num_worlds={sim_kwargs['num_worlds']}")
    return make_sim_vector_env(_sim_config(num_envs, sim_kwargs), render_mode=render_mode)


_registered_env.metadata = DrivingEnv.metadata  # lets gymnasium.make check render modes before building


def register_envs() -> None:
    """Register :data:`ENV_ID` with gymnasium (idempotent: importing this module calls it)."""
    if ENV_ID in gymnasium.registry:
        return
    gymnasium.register(id=ENV_ID, entry_point=f"{__name__}:_registered_env",
                       vector_entry_point=f"{__name__}:_registered_vector_env")


register_envs()
