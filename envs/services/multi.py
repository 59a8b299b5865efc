"""Many services presented as one backend: world ids are split into contiguous shards, one per service.

``step`` sends every service its actions before waiting for any answer, so services step in parallel. A
snapshot of worlds on several services is the concatenation of each service's part; ``restore`` and
``clone`` move snapshots between services as bytes, so a world snapshotted on one service can be restored
on any other (cross-service branching).

A service that dies is restarted on the spot: its worlds are reset, and for the step in which it failed
they report ``info["service_failed"] = True``, reward 0 and ``terminated`` True, so the rollout drops the
groups they belonged to. ``restarts`` counts the restarts.
"""

from __future__ import annotations

import atexit
from collections.abc import Callable, Sequence

import numpy as np
import torch

from envs.api import (
    ACTION_SIZE,
    BackendError,
    ServiceFailure,
    Snapshot,
    StepResult,
    WorldIds,
    as_world_ids,
    check_actions,
    derive_episode_seeds,
)
from envs.services.host import to_tensor

ServiceFactory = Callable[[int, int], "object"]
"""(service index, number of worlds) -> a started service handle with send/receive/call/stop/alive."""


class MultiServiceBackend:
    """The backend contract over several services (processes or Ray actors)."""

    def __init__(self, factory: ServiceFactory, worlds_per_service: list[int]):
        if not worlds_per_service or min(worlds_per_service) < 1:
            raise BackendError(f"every service needs at least one world, got {worlds_per_service}")
        self._factory = factory
        self.worlds_per_service = list(worlds_per_service)
        self.num_worlds = sum(worlds_per_service)
        self.device = torch.device("cpu")
        self.restarts = 0
        starts = np.cumsum([0, *worlds_per_service])
        self._service_of = torch.repeat_interleave(torch.arange(len(worlds_per_service)),
                                                   torch.tensor(worlds_per_service))
        self._local_of = torch.arange(self.num_worlds) - torch.tensor(starts[:-1])[self._service_of]
        self.services: list = []
        atexit.register(self.close)
        try:
            for index, count in enumerate(worlds_per_service):
                self.services.append(factory(index, count))
        except BaseException:
            self.close()
            raise
        self.observation_size = self.services[0].description["observation_size"]
        bounds = self.services[0].description.get("action_bounds")
        if bounds is not None:  # a backend acting in a Box (e.g. a gymnasium env): the policy must know it
            self.action_bounds = tuple(bounds)
        self.action_size = ACTION_SIZE if bounds is None else len(bounds[0])
        self._last_reset: list[tuple[list[int], list[int]] | None] = [None] * len(self.services)

    @property
    def pids(self) -> list[int | None]:
        return [getattr(service, "pid", None) for service in self.services]

    # --- routing -----------------------------------------------------------------------------------------

    def _split(self, ids: torch.Tensor) -> list[tuple[int, torch.Tensor, torch.Tensor]]:
        """(service, positions in ``ids``, local world ids) for every service that ``ids`` touch."""
        out = []
        for service in torch.unique(self._service_of[ids]).tolist():
            positions = (self._service_of[ids] == service).nonzero().flatten()
            out.append((service, positions, self._local_of[ids[positions]]))
        return out

    def _gather(self, method: str, ids: torch.Tensor, make_args, width: int | None = None) -> torch.Tensor:
        """Call ``method`` on every service that holds some of ``ids`` (in parallel), and put the per-world
        rows of their answers back in the order of ``ids``."""
        parts = self._split(ids)
        for service, positions, local in parts:
            self.services[service].send(method, *make_args(positions, local))
        out = None
        for service, positions, _ in parts:
            rows = to_tensor(self._receive(service))
            if out is None:
                out = torch.zeros(len(ids), *rows.shape[1:], dtype=rows.dtype)
            out[positions] = rows
        return out

    def _receive(self, service: int):
        try:
            return self.services[service].receive()
        except ServiceFailure:
            self._restart(service)
            raise

    def _restart(self, service: int) -> None:
        """Replace a dead service with a fresh one holding the same number of worlds (reset)."""
        try:
            self.services[service].stop()
        except Exception:  # it is dead already; nothing more to release
            pass
        self.services[service] = self._factory(service, self.worlds_per_service[service])
        self.restarts += 1
        local = list(range(self.worlds_per_service[service]))
        self.services[service].call("reset", derive_episode_seeds(self.restarts, local), local)

    # --- the contract ------------------------------------------------------------------------------------------

    def reset(self, seed: int | Sequence[int], world_ids: WorldIds = None) -> torch.Tensor:
        ids = as_world_ids(world_ids, self.num_worlds)
        seeds = derive_episode_seeds(seed, ids.tolist()) if isinstance(seed, int) else [int(s) for s in seed]
        if len(seeds) != len(ids):
            raise BackendError(f"reset got {len(seeds)} episode seeds for {len(ids)} worlds; give one per world "
                               "or a single int")
        seed_tensor = torch.tensor(seeds, dtype=torch.long)
        return self._gather("reset", ids, lambda pos, local: (seed_tensor[pos].tolist(), local.tolist()))

    def step(self, actions: torch.Tensor) -> StepResult:
        check_actions(actions, self.num_worlds, self.action_size)
        actions = actions.detach().cpu().numpy()
        starts = np.cumsum([0, *self.worlds_per_service])
        for index, service in enumerate(self.services):
            try:
                service.send("step", actions[starts[index]:starts[index + 1]])
            except ServiceFailure:
                pass  # noticed when its answer is awaited below
        parts, failed = [], torch.zeros(self.num_worlds, dtype=torch.bool)
        for index in range(len(self.services)):
            try:
                parts.append(self.services[index].receive())
            except ServiceFailure:
                self._restart(index)
                failed[starts[index]:starts[index + 1]] = True
                parts.append(None)
        healthy = next((p for p in parts if p is not None), None)
        parts = [self._failed_part(index, self.worlds_per_service[index], healthy) if part is None else part
                 for index, part in enumerate(parts)]
        info_keys = parts[0]["info"].keys()
        result = StepResult(
            observation=torch.cat([to_tensor(p["observation"]) for p in parts]),
            reward=torch.cat([to_tensor(p["reward"]) for p in parts]),
            terminated=torch.cat([to_tensor(p["terminated"]) for p in parts]),
            truncated=torch.cat([to_tensor(p["truncated"]) for p in parts]),
            info={key: torch.cat([to_tensor(p["info"][key]) for p in parts]) for key in info_keys})
        if "service_failed" in result.info:  # a service may report its own failures (a restarted CARLA server)
            failed = failed | result.info["service_failed"].bool()
        result.info["service_failed"] = failed
        return result

    def _failed_part(self, index: int, count: int, healthy: dict | None) -> dict:
        """What the worlds of a service that just failed report: fresh observations, no reward, ended, and
        zeros for every info entry the healthy services report (none when every service failed)."""
        observation = self.services[index].call("observe", list(range(count)))
        info = {} if healthy is None else {key: np.zeros(count, dtype=value.dtype)
                                           for key, value in healthy["info"].items()}
        return {"observation": observation, "reward": np.zeros(count, dtype=np.float32),
                "terminated": np.ones(count, dtype=np.bool_), "truncated": np.zeros(count, dtype=np.bool_),
                "info": info}

    def observe(self, world_ids: WorldIds = None) -> torch.Tensor:
        ids = as_world_ids(world_ids, self.num_worlds)
        return self._gather("observe", ids, lambda pos, local: (local.tolist(),))

    def snapshot(self, world_ids: WorldIds = None) -> Snapshot:
        ids = as_world_ids(world_ids, self.num_worlds)
        parts = self._split(ids)
        for service, _, local in parts:
            self.services[service].send("snapshot", local.tolist())
        snapshots, order = [], []
        for service, positions, _ in parts:
            snapshots.append(Snapshot.from_bytes(self._receive(service)))
            order.append(positions)
        merged = Snapshot.concat(snapshots)
        # Put the worlds back in the order they were asked for.
        inverse = torch.empty(len(ids), dtype=torch.long)
        inverse[torch.cat(order)] = torch.arange(len(ids))
        return merged.select(inverse)

    def restore(self, snapshot: Snapshot, world_ids: WorldIds = None) -> torch.Tensor:
        if world_ids is None:
            world_ids = range(snapshot.num_worlds)
        ids = as_world_ids(world_ids, self.num_worlds)
        if len(ids) != snapshot.num_worlds:
            raise BackendError(f"snapshot holds {snapshot.num_worlds} worlds but {len(ids)} world ids were given; "
                               "pass one target world per snapshot world")
        return self._gather("restore", ids, lambda pos, local: (snapshot.select(pos).to_bytes(), local.tolist()))

    def clone(self, src_ids: WorldIds, dst_ids: WorldIds) -> None:
        src = as_world_ids(src_ids, self.num_worlds)
        dst = as_world_ids(dst_ids, self.num_worlds)
        if src.shape != dst.shape:
            raise BackendError(f"clone needs as many sources as destinations, got {len(src)} and {len(dst)}")
        same = self._service_of[src] == self._service_of[dst]
        for service in torch.unique(self._service_of[src[same]]).tolist():
            pick = same & (self._service_of[src] == service)
            self.services[service].call("clone", self._local_of[src[pick]].tolist(), self._local_of[dst[pick]].tolist())
        if (~same).any():  # across services: a snapshot travels as bytes
            self.restore(self.snapshot(src[~same]), dst[~same])

    def close(self) -> None:
        """Stop every service by its own process id (or actor handle)."""
        for service in self.services:
            try:
                service.stop()
            except Exception:  # already gone
                pass
        self.services = []
