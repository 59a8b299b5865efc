"""Many services presented as one backend: world ids are split into contiguous shards, one per service.

``step`` sends every service its actions before waiting for any answer, so services step in parallel. A
snapshot of worlds on several services is the concatenation of each service's part; ``restore`` and
``clone`` move snapshots between services as bytes, so a world snapshotted on one service can be restored
on any other (cross-service branching).

Faults. A service that dies or hangs is noticed on any call, on send as on receive, and by a heartbeat that
pings idle services every ``heartbeat_s``. A hung call is abandoned after a deadline derived from the
slowest answer measured for that kind of call (``hang_timeout_factor`` x slowest, at least
``hang_timeout_min_s``, at most ``call_timeout_s``). The service is then killed by its pid and restarted on
the spot with its worlds reset, and one warning on the ``envs.services`` logger says what happened (on the
console and in the run's log; stderr where logging is not configured). What the caller sees:

* ``reset`` and ``restore`` write the worlds afresh, so they are retried on the new service: nothing is lost.
* ``step``: the worlds of a service that failed, or that was restarted while idle, report
  ``info["service_failed"] = True``, reward 0 and ``terminated`` True for that step, so the rollout drops the
  groups they belonged to (it counts them) and training goes on.
* ``snapshot``, ``observe``, ``observe_raster`` and ``clone`` need the lost state: they raise
  :class:`ServiceFailure` (the service has been restarted by then), and so does ``snapshot`` of a world whose
  service was restarted since it was last reset, restored or stepped.

``restarts`` counts the service processes started to replace failed ones; ``metrics()`` reports it.

Capabilities. The backend's ``spec`` is its services' (each service's description carries its backend's spec),
with the calls this layer forwards: ``observe_raster`` (rows gathered from every service, as ``observe``) and
``set_split`` (sent to every service); pictures stay in the services' processes (``pictures=False`` here).
"""

from __future__ import annotations

import atexit
import dataclasses
import functools
import inspect
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence

import numpy as np
import torch

from envs.api import (
    RESTARTS_METRIC,
    BackendBase,
    BackendError,
    BackendSpec,
    ServiceFailure,
    Snapshot,
    StepResult,
    WorldIds,
    as_world_ids,
    check_actions,
    clone_world_ids,
    derive_episode_seeds,
    restore_world_ids,
)
from envs.services.host import to_tensor

ServiceFactory = Callable[[int, int], "object"]
"""(service index, number of worlds) -> a started service handle. A handle offers ``send(method, *args)``,
``receive()``, ``call(method, *args)``, ``stop()``, ``description`` and ``pid``; optionally ``receive(timeout_s=)``
(else it waits its own call timeout) and ``ping(timeout_s)`` (else the heartbeat sends the host's "ping")."""

RECENT_CALLS = 32
"""The hang deadline follows the slowest of this many recent answers of a kind, so one slow first call
(building towns) does not set it for the whole run."""

LOGGER = logging.getLogger("envs.services")

START_ATTEMPTS = 3
"""Tries to start a replacement service before the failure ends the run (a start can itself be killed)."""


def _serialised(method):
    """Run a public method under the backend's lock, so the heartbeat thread never talks to a service
    in the middle of a call; re-raise a failure the heartbeat could not repair."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        with self._lock:
            if self._heartbeat_error is not None:
                error, self._heartbeat_error = self._heartbeat_error, None
                raise error
            try:
                return method(self, *args, **kwargs)
            finally:
                self._last_call = time.monotonic()

    return wrapper


def _takes_timeout(bound_method) -> bool:
    try:
        return "timeout_s" in inspect.signature(bound_method).parameters
    except (TypeError, ValueError):
        return False


STARTUP_REPORT_S = 5.0
"""Starting the services prints a progress line per service once it has taken this long (CARLA servers, Ray
actors on a busy cluster); a quick start stays silent."""


def service_spec(description: dict) -> BackendSpec:
    """The spec in a service's description; for a service that predates specs (an older HTTP server), the one its
    action bounds imply, with no optional capability."""
    if "spec" in description:
        return BackendSpec.from_dict(description["spec"])
    bounds = description.get("action_bounds")
    if bounds is None:
        return BackendSpec("unknown")
    return BackendSpec("unknown", action_low=bounds[0], action_high=bounds[1], driving=False)


class MultiServiceBackend(BackendBase):
    """The backend contract over several services (processes, Ray actors or HTTP sessions)."""

    def __init__(self, factory: ServiceFactory, worlds_per_service: list[int], *, call_timeout_s: float = 300.0,
                 hang_timeout_factor: float = 10.0, hang_timeout_min_s: float = 10.0, heartbeat_s: float = 2.0,
                 report: Callable[[str], None] | None = None):
        if not worlds_per_service or min(worlds_per_service) < 1:
            raise BackendError(f"every service needs at least one world, got {worlds_per_service}")
        self._factory = factory
        self.worlds_per_service = list(worlds_per_service)
        self.num_worlds = sum(worlds_per_service)
        self.device = torch.device("cpu")
        self.restarts = 0
        self.call_timeout_s, self.heartbeat_s = call_timeout_s, heartbeat_s
        self.hang_timeout_factor, self.hang_timeout_min_s = hang_timeout_factor, hang_timeout_min_s
        self.report = report or LOGGER.warning  # a line per restart: on the console and in Hydra's train.log
        self._starts = np.cumsum([0, *worlds_per_service])
        self._service_of = torch.repeat_interleave(torch.arange(len(worlds_per_service)),
                                                   torch.tensor(worlds_per_service))
        self._local_of = torch.arange(self.num_worlds) - torch.tensor(self._starts[:-1])[self._service_of]
        self._recent: dict[str, deque[float]] = {}  # seconds of the last RECENT_CALLS answers, per method
        self._lost = torch.zeros(self.num_worlds, dtype=torch.bool)  # restarted while idle: state gone
        self._lock = threading.RLock()
        self._closing = threading.Event()
        self._heartbeat_error: BaseException | None = None
        self._last_call = time.monotonic()
        self._heartbeat: threading.Thread | None = None
        self.services: list = []
        atexit.register(self.close)
        try:
            started = time.monotonic()
            for index, count in enumerate(worlds_per_service):
                self.services.append(factory(index, count))
                elapsed = time.monotonic() - started
                if elapsed > STARTUP_REPORT_S and index + 1 < len(worlds_per_service):  # a slow start says so
                    left = elapsed / (index + 1) * (len(worlds_per_service) - index - 1)
                    print(f"services: {index + 1}/{len(worlds_per_service)} started, {elapsed:.0f}s, ETA {left:.0f}s",
                          flush=True)
        except BaseException:
            self.close()
            raise
        self.observation_size = self.services[0].description["observation_size"]
        self.spec = dataclasses.replace(service_spec(self.services[0].description), pictures=False)
        if heartbeat_s > 0:
            self._heartbeat = threading.Thread(target=self._beat, name="service-heartbeat", daemon=True)
            self._heartbeat.start()

    @property
    def pids(self) -> list[int | None]:
        return [getattr(service, "pid", None) for service in self.services]

    # --- talking to services, with deadlines and restarts -----------------------------------------------

    def deadline(self, method: str) -> float:
        """Seconds an answer to ``method`` may take before the service counts as hung: ``hang_timeout_factor``
        x the slowest of the recent answers of that kind (of any kind while this one has none: the first
        restore of a run must not wait ``call_timeout_s`` on a hung service), at least ``hang_timeout_min_s``;
        ``call_timeout_s`` before any answer has been measured (the first reset builds towns)."""
        recent = self._recent.get(method) or [took for answers in self._recent.values() for took in answers]
        if not recent:
            return self.call_timeout_s
        return min(self.call_timeout_s, max(self.hang_timeout_min_s, self.hang_timeout_factor * max(recent)))

    def _exchange(self, method: str, requests: dict[int, tuple]) -> tuple[dict, dict[int, ServiceFailure]]:
        """Send ``requests`` (service -> args) to every service first, then collect the answers. A service
        that fails (on send or on receive) is restarted; its failure is returned, not raised. A call error
        inside a live service is raised once every other answer has been read (the pipes stay in step)."""
        deadline = self.deadline(method)
        sent, failures, answers, call_error = {}, {}, {}, None
        for index, args in requests.items():
            try:
                self._send(index, method, args, deadline)
                sent[index] = time.monotonic()
            except ServiceFailure as failure:
                failures[index] = failure
        for index, started in sent.items():
            service = self.services[index]
            remaining = max(0.0, deadline - (time.monotonic() - started))
            try:
                answers[index] = service.receive(timeout_s=remaining) if _takes_timeout(service.receive) \
                    else service.receive()
            except ServiceFailure as failure:
                failures[index] = failure
            except BackendError as error:
                call_error = call_error or error
            else:
                took = time.monotonic() - started
                self._recent.setdefault(method, deque(maxlen=RECENT_CALLS)).append(took)
        for index, failure in failures.items():
            self._restart(index, failure, method)
        if call_error is not None:
            raise call_error
        return answers, failures

    def _send(self, index: int, method: str, args: tuple, deadline: float) -> None:
        send = self.services[index].send
        if _takes_timeout(send):
            send(method, *args, timeout_s=deadline)
        else:
            send(method, *args)

    def _restart(self, index: int, failure: ServiceFailure, during: str) -> None:
        """Replace a failed service with a fresh one holding the same number of worlds (reset), killing the
        old one by its pid; one warning in the log says what happened."""
        began = time.monotonic()
        old = self.services[index]
        try:
            old.stop()
        except Exception:  # it is dead already; nothing more to release
            pass
        local = list(range(self.worlds_per_service[index]))
        last_error: BaseException = failure
        for attempt in range(1, START_ATTEMPTS + 1):
            self.restarts += 1
            try:
                service = self._factory(index, self.worlds_per_service[index])
                self.services[index] = service
                service.call("reset", derive_episode_seeds(self.restarts, local), local)
            except ServiceFailure as error:
                last_error = error
                self.report(f"{failure} during {during}; its replacement failed too ({error}; attempt {attempt} "
                            f"of {START_ATTEMPTS}, restarts so far: {self.restarts})")
                try:
                    self.services[index].stop()
                except Exception:
                    pass
                continue
            self._lost[self._starts[index]:self._starts[index + 1]] = True
            self.report(f"{failure} during {during}; restarted as pid {getattr(service, 'pid', '?')} in "
                        f"{time.monotonic() - began:.1f} s (restarts so far: {self.restarts})")
            return
        raise ServiceFailure(index, f"could not be restarted after {failure} ({START_ATTEMPTS} attempts; "
                                    f"last error: {last_error})") from last_error

    def _beat(self) -> None:
        """The heartbeat: every ``heartbeat_s``, ping each service that has been idle that long."""
        while not self._closing.wait(self.heartbeat_s):
            if not self._lock.acquire(blocking=False):
                continue  # a call is under way: it notices failures itself
            try:
                if self._closing.is_set() or self._heartbeat_error is not None:
                    continue
                if time.monotonic() - self._last_call < self.heartbeat_s:
                    continue
                for index, service in enumerate(list(self.services)):
                    try:
                        ping = getattr(service, "ping", None)
                        if ping is not None:
                            ping(self.hang_timeout_min_s)
                        else:
                            self._exchange("ping", {index: ()})
                    except ServiceFailure as failure:
                        self._restart(index, failure, "idle time (heartbeat)")
            except BaseException as error:  # e.g. a replacement that cannot start: the next call raises it
                self._heartbeat_error = error
            finally:
                self._last_call = time.monotonic()
                self._lock.release()

    # --- routing -----------------------------------------------------------------------------------------

    def _split(self, ids: torch.Tensor) -> list[tuple[int, torch.Tensor, torch.Tensor]]:
        """(service, positions in ``ids``, local world ids) for every service that ``ids`` touch."""
        out = []
        for service in torch.unique(self._service_of[ids]).tolist():
            positions = (self._service_of[ids] == service).nonzero().flatten()
            out.append((service, positions, self._local_of[ids[positions]]))
        return out

    def _gather(self, method: str, ids: torch.Tensor, make_args, *, retry: bool) -> torch.Tensor:
        """Call ``method`` on every service that holds some of ``ids`` (in parallel), and put the per-world
        rows of their answers back in the order of ``ids``. ``retry``: the call writes the worlds afresh, so
        a service that failed is asked again once it has been restarted; otherwise its failure is raised."""
        parts = self._split(ids)
        requests = {service: make_args(positions, local) for service, positions, local in parts}
        answers, failures = self._exchange(method, requests)
        if failures and not retry:
            raise next(iter(failures.values()))
        for _ in range(START_ATTEMPTS):  # a replacement may itself be killed before it answers
            if not failures:
                break
            again, failures = self._exchange(method, {index: requests[index] for index in failures})
            answers.update(again)
        if failures:
            raise next(iter(failures.values()))
        out = None
        for service, positions, _ in parts:
            rows = to_tensor(answers[service])
            if out is None:
                out = torch.zeros(len(ids), *rows.shape[1:], dtype=rows.dtype)
            out[positions] = rows
        return out

    def _call_every_service(self, method: str, *args) -> list:
        """``method(*args)`` on every service (in parallel), in service order. A service that fails is restarted
        (worlds reset, as after a failed step) and asked again."""
        requests = {index: args for index in range(len(self.services))}
        answers, failures = self._exchange(method, requests)
        for _ in range(START_ATTEMPTS):  # a replacement may itself be killed before it answers
            if not failures:
                break
            again, failures = self._exchange(method, {index: args for index in failures})
            answers.update(again)
        if failures:
            raise next(iter(failures.values()))
        return [answers[index] for index in range(len(self.services))]

    # --- the contract ------------------------------------------------------------------------------------------

    @_serialised
    def reset(self, seed: int | Sequence[int], world_ids: WorldIds = None) -> torch.Tensor:
        ids = as_world_ids(world_ids, self.num_worlds)
        seed_tensor = torch.tensor(derive_episode_seeds(seed, ids), dtype=torch.long)
        out = self._gather("reset", ids, lambda pos, local: (seed_tensor[pos].tolist(), local.tolist()), retry=True)
        self._lost[ids] = False
        return out

    @_serialised
    def step(self, actions: torch.Tensor) -> StepResult:
        check_actions(actions, self.num_worlds, self.spec.action_size)
        actions = actions.detach().cpu().numpy()
        starts = self._starts
        answers, failures = self._exchange(
            "step", {index: (actions[starts[index]:starts[index + 1]],) for index in range(len(self.services))})
        failed = self._lost.clone()  # restarted while idle: this step is the first to report it
        for index in failures:
            failed[starts[index]:starts[index + 1]] = True
        self._lost[:] = False
        healthy = next(iter(answers.values()), None)
        parts = [answers[index] if index in answers else self._failed_part(index, healthy)
                 for index in range(len(self.services))]
        for index, part in enumerate(parts):
            if index not in failures and failed[starts[index]:starts[index + 1]].any():
                lost = failed[starts[index]:starts[index + 1]].numpy()
                part["reward"] = np.where(lost, 0.0, part["reward"]).astype(part["reward"].dtype)
                part["terminated"] = part["terminated"] | lost
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

    def _failed_part(self, index: int, healthy: dict | None) -> dict:
        """What the worlds of a service that just failed report: fresh observations, no reward, ended, and
        zeros for every info entry the healthy services report (none when every service failed)."""
        count = self.worlds_per_service[index]
        for _ in range(START_ATTEMPTS):  # the replacement may itself be killed before it answers
            answers, failures = self._exchange("observe", {index: (list(range(count)),)})
            if not failures:
                break
        if failures:
            raise next(iter(failures.values()))
        info = {} if healthy is None else {key: np.zeros(count, dtype=value.dtype)
                                           for key, value in healthy["info"].items()}
        return {"observation": answers[index], "reward": np.zeros(count, dtype=np.float32),
                "terminated": np.ones(count, dtype=np.bool_), "truncated": np.zeros(count, dtype=np.bool_),
                "info": info}

    @_serialised
    def observe(self, world_ids: WorldIds = None) -> torch.Tensor:
        ids = as_world_ids(world_ids, self.num_worlds)
        return self._gather("observe", ids, lambda pos, local: (local.tolist(),), retry=False)

    @_serialised
    def snapshot(self, world_ids: WorldIds = None) -> Snapshot:
        ids = as_world_ids(world_ids, self.num_worlds)
        lost = ids[self._lost[ids]]
        if len(lost):
            service = int(self._service_of[lost[0]])
            raise ServiceFailure(service, f"was restarted since world {int(lost[0])} was last reset, restored or "
                                          "stepped; its state is lost (reset or restore it)")
        parts = self._split(ids)
        answers, failures = self._exchange("snapshot", {service: (local.tolist(),) for service, _, local in parts})
        if failures:
            raise next(iter(failures.values()))
        merged = Snapshot.concat([Snapshot.from_bytes(answers[service]) for service, _, _ in parts])
        # Put the worlds back in the order they were asked for.
        inverse = torch.empty(len(ids), dtype=torch.long)
        inverse[torch.cat([positions for _, positions, _ in parts])] = torch.arange(len(ids))
        return merged.select(inverse)

    @_serialised
    def restore(self, snapshot: Snapshot, world_ids: WorldIds = None) -> torch.Tensor:
        ids = restore_world_ids(snapshot, world_ids, self.num_worlds)
        snapshot.validate()  # a malformed snapshot is refused here, before any service's worlds change
        out = self._gather("restore", ids, lambda pos, local: (snapshot.select(pos).to_bytes(), local.tolist()),
                           retry=True)
        self._lost[ids] = False
        return out

    @_serialised
    def clone(self, src_ids: WorldIds, dst_ids: WorldIds) -> None:
        src, dst = clone_world_ids(src_ids, dst_ids, self.num_worlds)
        same = self._service_of[src] == self._service_of[dst]
        requests = {}
        for service in torch.unique(self._service_of[src[same]]).tolist():
            pick = same & (self._service_of[src] == service)
            requests[service] = (self._local_of[src[pick]].tolist(), self._local_of[dst[pick]].tolist())
        if requests:
            _, failures = self._exchange("clone", requests)
            if failures:
                raise next(iter(failures.values()))
        if (~same).any():  # across services: a snapshot travels as bytes
            self.restore(self.snapshot(src[~same]), dst[~same])

    # --- optional capabilities, forwarded (see the module docstring) ----------------------------------------

    def metrics(self) -> dict[str, float]:
        """:data:`~envs.api.RESTARTS_METRIC`: the services restarted after a failure so far."""
        return {RESTARTS_METRIC: float(self.restarts)}

    @_serialised
    def observe_raster(self, world_ids: WorldIds = None) -> torch.Tensor:
        if not self.spec.rasters:
            raise self._not_offered("rasters", "observe_raster")
        ids = as_world_ids(world_ids, self.num_worlds)
        return self._gather("observe_raster", ids, lambda pos, local: (local.tolist(),), retry=False)

    @_serialised
    def set_split(self, split: str) -> str:
        """Every service's later resets draw ``split``'s routes; returns the previous split."""
        if not self.spec.splits:
            raise self._not_offered("splits", "set_split")
        return self._call_every_service("set_split", split)[0]

    def close(self) -> None:
        """Stop the heartbeat, then every service by its own process id (or actor handle)."""
        self._closing.set()
        if self._heartbeat is not None and self._heartbeat is not threading.current_thread():
            self._heartbeat.join(self.hang_timeout_min_s + 5.0)
        with self._lock:
            for service in self.services:
                try:
                    service.stop()
                except Exception:  # already gone
                    pass
            self.services = []
