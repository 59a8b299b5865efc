"""Gymnasium adapters: API conformance (check_env), registration, seeding, vector stepping and autoreset."""

import dataclasses
import warnings

import gymnasium
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env
from gymnasium.vector import AutoresetMode

from envs.api import OBSERVATION_LAYOUT, BackendError, derive_episode_seeds
from envs.gym import ENV_ID, DrivingEnv, DrivingVectorEnv, register_envs

STRAIGHT = {"map": "straight", "num_towns": 2}


def derive_seed(seed: int, index: int) -> int:
    return derive_episode_seeds(seed, [index])[0]


class ForeignBackend:
    """A backend that is not the built-in simulator (delegates to one, but declares no pictures) and counts
    close() calls."""

    def __init__(self, sim):
        self._sim = sim
        self.spec = dataclasses.replace(sim.spec, kind="foreign", pictures=False)
        self.closed = 0

    def __getattr__(self, name):
        return getattr(self._sim, name)

    def close(self):
        self.closed += 1


def test_check_env_passes_including_render():
    env = gymnasium.make(ENV_ID, render_mode="rgb_array", **STRAIGHT).unwrapped
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(env, skip_render_check=False)
    # The only complaints allowed are about the unbounded observation box (see envs.gym.observation_space).
    assert all("infinity" in str(w.message) for w in caught), [str(w.message) for w in caught]
    env.close()


def test_make_registered_env_and_step():
    register_envs()  # idempotent: already registered at import
    env = gymnasium.make(ENV_ID, **STRAIGHT)
    obs, info = env.reset(seed=3)
    assert obs.shape == (OBSERVATION_LAYOUT.size,) and obs.dtype == np.float32
    assert isinstance(info["episode_seed"], int)
    obs, reward, terminated, truncated, info = env.step(np.array([1.0, 0.0, 0.0], np.float32))
    assert isinstance(reward, float) and reward > 0  # progress along the route
    assert terminated is False and truncated is False
    assert isinstance(info["route_progress_m"], float) and isinstance(info["off_road"], bool)
    env.close()
    with pytest.raises(ValueError, match="one world"):
        gymnasium.make(ENV_ID, num_worlds=2, **STRAIGHT)


def test_kwargs_reach_the_simulator_config():
    env = gymnasium.make(ENV_ID, town={"num_routes": 2, "route_length_m": 100.0}, dt=0.05, **STRAIGHT)
    sim = env.unwrapped.backend
    assert sim.config.town.num_routes == 2 and sim.config.dt == 0.05
    assert env.unwrapped.metadata["render_fps"] == 20


def test_same_seed_same_episode(straight_sim):
    env = DrivingEnv(straight_sim(1))
    first, info = env.reset(seed=7)
    state = env.backend.state.floats.clone()
    again, info_again = env.reset(seed=7)
    assert np.array_equal(first, again) and info == info_again
    assert torch.equal(env.backend.state.floats, state)
    env.reset(seed=8)
    assert not torch.equal(env.backend.state.floats, state)  # another route: another start position
    replay, _ = env.reset(options={"episode_seed": info["episode_seed"]})
    assert np.array_equal(first, replay) and torch.equal(env.backend.state.floats, state)


def test_single_env_rejects_bad_backends_and_actions(straight_sim):
    with pytest.raises(ValueError, match="num_worlds=1"):
        DrivingEnv(straight_sim(2))
    env = DrivingEnv(straight_sim(1))
    env.reset(seed=0)
    with pytest.raises(BackendError, match=r"shape \(3,\)"):
        env.step(np.zeros(4, np.float32))
    with pytest.raises(BackendError, match="NaN"):  # the backend's own check propagates
        env.step(np.array([np.nan, 0.0, 0.0], np.float32))


def test_render(straight_sim):
    env = DrivingEnv(straight_sim(1), render_mode="rgb_array")
    env.reset(seed=0)
    frame = env.render()
    assert frame.shape == (256, 256, 3) and frame.dtype == np.uint8
    foreign = DrivingEnv(ForeignBackend(straight_sim(1)), render_mode="rgb_array")
    foreign.reset(seed=0)
    with pytest.raises(NotImplementedError, match="DrivingSim"):
        foreign.render()
    foreign.close()
    foreign.close()
    assert foreign.backend.closed == 1


def test_vector_env_steps_all_worlds(straight_sim):
    envs = DrivingVectorEnv(straight_sim(3))
    assert envs.num_envs == 3 and envs.metadata["autoreset_mode"] == AutoresetMode.NEXT_STEP
    assert envs.observation_space.shape == (3, OBSERVATION_LAYOUT.size)
    assert envs.action_space.shape == (3, 3) and envs.single_action_space.shape == (3,)
    obs, info = envs.reset(seed=1)
    assert obs.shape == (3, OBSERVATION_LAYOUT.size) and obs.dtype == np.float32
    assert info["episode_seed"].shape == (3,) and len(set(info["episode_seed"].tolist())) == 3
    obs, reward, terminated, truncated, info = envs.step(np.tile([1.0, 0.0, 0.0], (3, 1)))
    assert obs.shape == (3, OBSERVATION_LAYOUT.size) and obs in envs.observation_space
    assert reward.shape == (3,) and (reward > 0).all()
    assert terminated.dtype == np.bool_ and not terminated.any() and not truncated.any()
    assert info["route_progress_m"].shape == (3,) and info["off_road"].dtype == np.bool_
    with pytest.raises(BackendError, match="shape"):
        envs.step(np.zeros((2, 3), np.float32))


def test_vector_env_autoresets_on_the_next_step(straight_sim):
    envs = DrivingVectorEnv(straight_sim(2))
    _, info = envs.reset(seed=5)
    first_seeds = info["episode_seed"].copy()
    sim = envs.backend
    action = np.tile([1.0, 0.0, 0.0], (2, 1))
    envs.step(action)
    sim.state.step[0] = sim.config.max_episode_steps - 1  # world 0 times out on the next step
    obs, reward, terminated, truncated, info = envs.step(action)
    assert truncated.tolist() == [True, False] and info["timeout"].tolist() == [True, False]

    obs, reward, terminated, truncated, info = envs.step(action)  # the reset step of world 0
    assert reward[0] == 0 and not terminated[0] and not truncated[0]
    assert info["route_progress_m"][0] == 0 and not info["timeout"][0]
    assert reward[1] > 0  # world 1 drives on
    assert envs.episode_counts.tolist() == [1, 0]
    expected_seed = derive_seed(derive_seed(5, 0), 1)
    assert envs.episode_seeds[0] == expected_seed != first_seeds[0]
    assert np.array_equal(obs[0], sim.observe([0])[0].numpy())
    assert int(sim.state.step[0]) == 0  # a fresh episode, not a stepped one

    obs, reward, terminated, truncated, _ = envs.step(action)  # and it drives again
    assert reward[0] > 0 and not truncated[0]


def test_vector_env_is_reproducible_and_resets_masked_worlds(straight_sim):
    a, b = DrivingVectorEnv(straight_sim(2)), DrivingVectorEnv(straight_sim(2))
    obs_a, info_a = a.reset(seed=9)
    obs_b, info_b = b.reset(seed=9)
    assert np.array_equal(obs_a, obs_b) and np.array_equal(info_a["episode_seed"], info_b["episode_seed"])
    a.step(np.tile([1.0, 0.0, 0.0], (2, 1)))
    before = a.backend.state.floats.clone()
    _, info = a.reset(options={"reset_mask": np.array([False, True])})
    assert torch.equal(a.backend.state.floats[0], before[0])  # world 0 untouched
    assert a.episode_counts.tolist() == [0, 1]
    assert info["episode_seed"][1] == derive_seed(derive_seed(9, 1), 1)
    with pytest.raises(ValueError, match="reset_mask"):
        a.reset(options={"reset_mask": np.array([1, 0])})


def test_registered_vector_env_and_close(straight_sim):
    envs = gymnasium.make_vec(ENV_ID, num_envs=3, **STRAIGHT)
    assert isinstance(envs, DrivingVectorEnv) and envs.num_envs == 3
    envs.close()
    foreign = ForeignBackend(straight_sim(2))
    envs = DrivingVectorEnv(foreign, render_mode="rgb_array")
    envs.close()
    envs.close()
    assert foreign.closed == 1


def test_vector_render(straight_sim):
    envs = DrivingVectorEnv(straight_sim(2), render_mode="rgb_array")
    envs.reset(seed=0)
    frames = envs.render()
    assert len(frames) == 2 and frames[0].shape == (256, 256, 3)
