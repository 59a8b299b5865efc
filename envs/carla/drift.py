"""Drift between CARLA servers: one snapshot restored onto several servers, the same controls replayed.

GRPO restores a trunk's snapshot into G worlds on *different* servers and compares the branches' returns, so
any spread between servers that is not the policy's doing (what a restore cannot carry over: the traffic
manager's internals, drivetrain state, physics contacts, walker paths; see :mod:`envs.carla.world`) is
noise in the advantage. :func:`measure_server_drift` measures it through the backend contract alone
(``restore``, ``step``, ``snapshot``), so it runs on the services backend the trainer uses.

Per step and actor, the spread is the largest distance between that actor's positions on any two servers.
Also reported: how far each server's read-back after the restore (the state it really holds after the
settling tick) landed from the snapshot.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch

from envs.api import ACTION_HIGH, ACTION_LOW, Snapshot
from envs.carla.backend import actor_positions
from envs.carla.state import unpack_snapshot, vehicle_keys, walker_keys


@dataclass
class ServerDriftReport:
    """``positions`` [W, k, A, 2]: CARLA x, y of A actors (ego first; NaN where absent) on W servers over k
    replayed steps; ``restored`` [W, A, 2]: positions read back right after the restore; ``wanted`` [A, 2]:
    the snapshot's; ``keys`` name the actors."""

    keys: list[str]
    positions: np.ndarray
    restored: np.ndarray
    wanted: np.ndarray

    @property
    def spread(self) -> np.ndarray:
        """[k, A] metres: the largest distance between one actor's positions on any two servers, per step."""
        p = self.positions
        pairwise = np.linalg.norm(p[:, None] - p[None, :], axis=-1)  # [W, W, k, A]
        with warnings.catch_warnings():  # an empty slot is NaN on every server: its spread stays NaN
            warnings.simplefilter("ignore", RuntimeWarning)
            return np.nanmax(pairwise, axis=(0, 1))

    @property
    def restore_error(self) -> np.ndarray:
        """[W, A] metres between each server's read-back after the restore and the snapshot."""
        return np.linalg.norm(self.restored - self.wanted[None], axis=-1)

    def summary(self) -> dict[str, float]:
        """``drift/*``: the ego's spread at the last step and its largest over the replay, the mean and max
        spread over the other actors at the last step, and the worst restore read-back errors."""
        spread = self.spread
        last = spread[-1]
        others = last[1:][np.isfinite(last[1:])]
        error = self.restore_error
        other_errors = error[:, 1:][np.isfinite(error[:, 1:])]

        def finite_max(values: np.ndarray) -> float:
            values = values[np.isfinite(values)]
            return float(values.max()) if len(values) else float("nan")

        return {"drift/ego_m": float(last[0]), "drift/ego_max_m": finite_max(spread[:, 0]),
                "drift/actors_mean_m": float(others.mean()) if len(others) else 0.0,
                "drift/actors_max_m": float(others.max()) if len(others) else 0.0,
                "drift/restore_error_ego_m": finite_max(error[:, 0]),
                "drift/restore_error_actors_max_m": float(other_errors.max()) if len(other_errors) else 0.0,
                "drift/servers": float(self.positions.shape[0]), "drift/steps": float(self.positions.shape[1])}


def measure_server_drift(backend, snapshot: Snapshot, actions, world_ids=None) -> ServerDriftReport:
    """Restore ``snapshot`` (one world) into ``world_ids`` (default: every world; on the services backend,
    each world is its own server), replay ``actions`` [k, 3] (the ego's controls; every world gets the same)
    and record every actor's position after the restore and after each step. All worlds of the backend are
    stepped (a backend steps all of them); worlds outside ``world_ids`` are left as the steps leave them."""
    if snapshot.num_worlds != 1:
        raise ValueError(f"measure_server_drift takes a snapshot of one world, got {snapshot.num_worlds}")
    ids = list(range(backend.num_worlds)) if world_ids is None else [int(w) for w in world_ids]
    if len(ids) < 2:
        raise ValueError("drift between servers needs at least two worlds (two servers)")
    actions = np.clip(np.asarray(actions, dtype=np.float64).reshape(-1, 3), ACTION_LOW, ACTION_HIGH)
    ((wanted_actors, _),) = unpack_snapshot(snapshot)
    backend.restore(Snapshot.concat([snapshot] * len(ids)), ids)

    def positions() -> np.ndarray:
        read = getattr(backend, "capture", backend.snapshot)  # capture: no automatic drift check inside
        states = unpack_snapshot(read(ids))
        return np.stack([actor_positions(actors) for actors, _ in states])

    restored = positions()
    trajectory = []
    for action in actions:
        backend.step(torch.tensor(np.tile(action, (backend.num_worlds, 1)), dtype=torch.float32))
        trajectory.append(positions())
    keys = vehicle_keys(len(wanted_actors.vehicle_valid) - 1) + walker_keys(len(wanted_actors.walker_valid))
    return ServerDriftReport(keys, np.stack(trajectory, axis=1), restored, actor_positions(wanted_actors))


__all__ = ["ServerDriftReport", "measure_server_drift"]
