"""The CARLA seed project's branching verbs over any backend, for interactive and notebook use.

    session = BranchingSession.from_config({"map": "straight", "num_towns": 2}, num_worlds=4)
    obs = session.reset(seed=7)                       # the main world starts episode 7
    obs, reward, terminated, truncated, info = session.single_step([0.6, 0.0, 0.0])
    snap = session.save_snapshot()                    # -> 0, an id kept by the session
    obs = session.enable_branching(snap, num_branches=3)
    result = session.branch_step(torch.tensor([[1.0, 0, 0], [0.3, 0, 0], [0.0, 1.0, 0]]))
    session.select_branch(int(result.reward.argmax()))    # the best branch becomes the main world
    session.close()

The *main world* is world 0 of the backend. In single mode, :meth:`single_step` drives it. Branching
restores a saved snapshot into worlds ``0 .. num_branches - 1`` and :meth:`branch_step` drives them all at
once. :meth:`select_branch` makes one branch the main world and returns to single mode, while
:meth:`disable_branching` puts back the main world as it was before branching. The backend steps every
world on each call: worlds the session does not use get zero actions and are ignored.

Misuse raises :class:`envs.api.BackendError` with a message that says what to call instead: single_step while
branching, branch_step in single mode, an unknown snapshot id (the known ids are listed), more branches than
the backend has worlds, the wrong number of branch actions, a branch index out of range, or any call after
:meth:`close`. It works over every backend (the built-in simulator, several services, a gymnasium env via
envs.gym_backend); actions have the backend's size (3 for driving, k for a gymnasium Box).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from envs.api import Backend, BackendError, Snapshot, StepResult


class BranchingSession:
    """Single mode and branching mode over one backend (which the session owns: :meth:`close` closes it)."""

    MAIN_WORLD = 0

    def __init__(self, backend: Backend):
        self.backend = backend
        self.action_size = backend.spec.action_size
        self._snapshots: dict[int, Snapshot] = {}
        self._next_id = 0
        self._num_branches: int | None = None  # None: single mode
        self._main_before: Snapshot | None = None  # the main world when branching began
        self._has_reset = False
        self._closed = False

    @classmethod
    def from_config(cls, env: dict[str, Any], num_worlds: int) -> BranchingSession:
        """A session over the backend that ``env`` (the flat env config, as in conf/env/*.yaml) describes, with
        ``num_worlds`` worlds: the most branches it can hold."""
        from envs.factory import build_backend, env_config_from_dict

        return cls(build_backend(env_config_from_dict(env), num_worlds=num_worlds))

    # --- state -----------------------------------------------------------------------------------------------

    @property
    def branching(self) -> bool:
        return self._num_branches is not None

    @property
    def num_branches(self) -> int | None:
        """Branches of the current branching mode; None in single mode."""
        return self._num_branches

    @property
    def snapshot_ids(self) -> list[int]:
        return sorted(self._snapshots)

    # --- single mode -------------------------------------------------------------------------------------

    def reset(self, seed: int) -> torch.Tensor:
        """Start episode ``seed`` in the main world (every world of the backend starts it) and return its
        observation [obs_size]. Ends branching mode, if on; saved snapshots are kept."""
        self._check_open()
        observations = self.backend.reset([int(seed)] * self.backend.num_worlds)
        self._num_branches, self._main_before = None, None
        self._has_reset = True
        return observations[self.MAIN_WORLD]

    def single_step(self, action: torch.Tensor | Sequence[float]) -> tuple[torch.Tensor, float, bool, bool, dict]:
        """Step the main world with ``action`` [action_size]; returns its (observation [obs_size], reward,
        terminated, truncated, info) with python scalars for reward, flags and info values."""
        self._check_ready("single_step")
        if self.branching:
            raise BackendError("single_step while branching: call select_branch(i) or disable_branching() first")
        action = torch.as_tensor(action, dtype=torch.float32).reshape(-1)
        if action.shape != (self.action_size,):
            raise BackendError(f"single_step needs one action of {self.action_size} values, got shape "
                               f"{list(action.shape)}")
        result = self._step(action[None])
        world = self.MAIN_WORLD
        info = {name: value[world].item() for name, value in result.info.items()}
        return (result.observation[world], float(result.reward[world]), bool(result.terminated[world]),
                bool(result.truncated[world]), info)

    def observe(self) -> torch.Tensor:
        """The main world's observation [obs_size] (single mode) or the branches' [num_branches, obs_size]."""
        self._check_ready("observe")
        if self.branching:
            return self.backend.observe(list(range(self._num_branches)))
        return self.backend.observe([self.MAIN_WORLD])[0]

    def save_snapshot(self, branch: int | None = None) -> int:
        """Snapshot the main world (single mode), or branch ``branch`` while branching; returns its id."""
        self._check_ready("save_snapshot")
        if self.branching and branch is None:
            raise BackendError("save_snapshot while branching saves a branch: pass save_snapshot(branch=i), or "
                               "call select_branch(i) / disable_branching() first")
        if not self.branching and branch is not None:
            raise BackendError("save_snapshot(branch=...) needs branching mode; in single mode call "
                               "save_snapshot() to save the main world")
        world = self.MAIN_WORLD if branch is None else self._branch_index(branch)
        snapshot_id = self._next_id
        self._snapshots[snapshot_id] = self.backend.snapshot([world])
        self._next_id += 1
        return snapshot_id

    def drop_snapshot(self, snapshot_id: int) -> None:
        """Forget a saved snapshot (frees its memory)."""
        self._snapshot(snapshot_id)
        del self._snapshots[snapshot_id]

    # --- branching mode ----------------------------------------------------------------------------------

    def enable_branching(self, snapshot_id: int, num_branches: int) -> torch.Tensor:
        """Restore snapshot ``snapshot_id`` into ``num_branches`` branches (worlds 0 .. num_branches - 1) and
        return their observations [num_branches, obs_size]. The main world as it is now is kept, for
        :meth:`disable_branching`."""
        self._check_ready("enable_branching")
        if self.branching:
            raise BackendError(f"already branching ({self._num_branches} branches): call select_branch(i) or "
                               "disable_branching() first")
        snapshot = self._snapshot(snapshot_id)
        if not 1 <= num_branches <= self.backend.num_worlds:
            raise BackendError(f"num_branches={num_branches} does not fit the backend's {self.backend.num_worlds} "
                               f"worlds: ask for 1 to {self.backend.num_worlds} branches, or build the backend "
                               f"with num_worlds >= {num_branches}")
        self._main_before = self.backend.snapshot([self.MAIN_WORLD])
        observations = self.backend.restore(snapshot.select([0] * num_branches), list(range(num_branches)))
        self._num_branches = num_branches
        return observations

    def branch_step(self, actions: torch.Tensor | Sequence[Sequence[float]]) -> StepResult:
        """Step every branch with its row of ``actions`` [num_branches, action_size]; returns the branches'
        observations, rewards, done flags and info, each with leading dimension num_branches."""
        self._check_ready("branch_step")
        if not self.branching:
            raise BackendError("branch_step needs branching mode: call enable_branching(snapshot_id, num_branches) "
                               "first, or single_step(action) to drive the main world")
        actions = torch.as_tensor(actions, dtype=torch.float32)
        expected = (self._num_branches, self.action_size)
        if actions.shape != expected:
            raise BackendError(f"branch_step needs one action per branch, shape {list(expected)} ({expected[0]} "
                               f"branches x {expected[1]} values), got {list(actions.shape)}")
        result = self._step(actions)
        n = self._num_branches
        return StepResult(result.observation[:n], result.reward[:n], result.terminated[:n], result.truncated[:n],
                          {name: value[:n] for name, value in result.info.items()})

    def select_branch(self, branch: int) -> torch.Tensor:
        """Make branch ``branch`` the main world and return to single mode; returns its observation."""
        self._check_ready("select_branch")
        if not self.branching:
            raise BackendError("select_branch needs branching mode: call enable_branching(snapshot_id, "
                               "num_branches) first")
        world = self._branch_index(branch)
        if world != self.MAIN_WORLD:
            self.backend.clone([world], [self.MAIN_WORLD])
        self._num_branches, self._main_before = None, None
        return self.backend.observe([self.MAIN_WORLD])[0]

    def disable_branching(self) -> torch.Tensor:
        """Leave branching mode, putting back the main world as it was before :meth:`enable_branching`;
        returns its observation."""
        self._check_ready("disable_branching")
        if not self.branching:
            raise BackendError("disable_branching needs branching mode: call enable_branching(snapshot_id, "
                               "num_branches) first")
        observation = self.backend.restore(self._main_before, [self.MAIN_WORLD])[0]
        self._num_branches, self._main_before = None, None
        return observation

    # --- lifetime -------------------------------------------------------------------------------------------

    def close(self) -> None:
        """Close the backend (idempotent); any later call raises BackendError."""
        if not self._closed:
            self._closed = True
            self._snapshots.clear()
            self.backend.close()

    def __enter__(self) -> BranchingSession:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    # --- helpers ---------------------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise BackendError("the branching session is closed: start a new BranchingSession")

    def _check_ready(self, verb: str) -> None:
        self._check_open()
        if not self._has_reset:
            raise BackendError(f"{verb} before reset: call reset(seed) first")

    def _snapshot(self, snapshot_id: int) -> Snapshot:
        self._check_open()
        if snapshot_id not in self._snapshots:
            raise BackendError(f"unknown snapshot id {snapshot_id!r}; this session has saved {self.snapshot_ids} "
                               "(save_snapshot() returns a new one)")
        return self._snapshots[snapshot_id]

    def _branch_index(self, branch: int) -> int:
        if not 0 <= branch < self._num_branches:
            raise BackendError(f"branch {branch} is out of range: there are {self._num_branches} branches "
                               f"(0 to {self._num_branches - 1})")
        return int(branch)

    def _step(self, rows: torch.Tensor) -> StepResult:
        """Step the backend with ``rows`` in its first worlds and zero actions in the others."""
        actions = torch.zeros(self.backend.num_worlds, self.action_size, device=self.backend.device)
        actions[: len(rows)] = rows.to(self.backend.device)
        return self.backend.step(actions)
