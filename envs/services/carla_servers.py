"""``env=carla``: one service process per CARLA server, presented as one backend.

The carla client keeps its traffic managers in one process-wide registry, and every ``world.tick()`` steps
all of them, blocking on each without a timeout (``TrafficManager::Tick``). Two servers driven from one
process would therefore couple their traffic (a group's branches would not start from the same traffic
state), serialise their ticks, and let a dead server hang the other. So each server gets a
:class:`~envs.services.process.ProcessService` of its own, holding a one-world
:class:`~envs.carla.backend.CarlaBackend`; the trainer's process holds no carla client state at all.

* **Servers per service.** Service ``i`` launches its own server (from ``carla_root``) on ports searched from
  ``port + i * port_stride * PORT_BLOCKS`` and a traffic-manager port from
  ``traffic_manager_port + i * PORT_BLOCKS``, so services never race for a port; with ``env.hosts`` it
  connects to ``hosts[i]``; with ``env.gpus`` (CUDA device ids) it takes ``gpus[i % len(gpus)]``, launched on
  that GPU's graphics adapter. The parent maps the CUDA ids to adapters once, before any service starts
  (:func:`envs.carla.gpus.graphics_adapters`: by PCI bus id through nvidia-smi, or ``env.graphics_adapters``
  as given), so a GPU that does not exist, or a machine without nvidia-smi, is one error line at start.
* **Failures.** A server that dies is restarted inside its service (its world reports
  ``info["service_failed"]``). A service that dies or hangs past ``env.call_timeout_s`` is restarted by
  :class:`~envs.services.multi.MultiServiceBackend`; the process groups of the servers it had launched (it
  reports them when it starts) are stopped first, so a killed service never leaves a server behind.
* **Drift between servers.** Every ``env.drift_check_every`` snapshot calls, the snapshot's first world is
  restored onto every server, the same ego controls are replayed on all of them, and the spread of every
  actor's position across servers is measured (:func:`envs.carla.drift.measure_server_drift`): the part of
  a GRPO group's spread that is not the policy's doing. :meth:`CarlaServiceBackend.metrics` returns it as
  ``drift/*`` for the training log.
* **Evaluation in place.** The services' spec offers ``set_split`` and in-place evaluation, which
  :class:`~envs.services.multi.MultiServiceBackend` forwards: the trainer's periodic evaluation switches every
  service to evaluation routes and back instead of opening second clients on the servers.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from envs.api import BackendError, ServiceFailure, Snapshot, WorldIds, as_world_ids
from envs.carla.gpus import graphics_adapters
from envs.services.multi import MultiServiceBackend, _serialised
from envs.services.process import ProcessService

LOGGER = logging.getLogger("envs.carla")
PORT_BLOCKS = 16  # port blocks (of port_stride RPC ports, and traffic-manager ports) reserved per service


def service_env_config(flat: dict[str, Any], index: int, adapters: Sequence[int] = ()) -> dict[str, Any]:
    """The flat env config service ``index`` builds its one-world backend from (see the module docstring);
    ``adapters``: the graphics adapters of launched servers, one per service slot round-robin (the mapping of
    ``env.gpus``, :func:`launch_adapters`)."""
    out = dict(flat, num_worlds=1, num_services=1, launcher="local", worlds_per_service=1,
               drift_check_every=0)  # drift is measured across servers, here in the parent
    if flat.get("hosts"):
        out["hosts"] = [flat["hosts"][index]]
    out["port"] = int(flat["port"]) + index * int(flat["port_stride"]) * PORT_BLOCKS
    out["traffic_manager_port"] = int(flat["traffic_manager_port"]) + index * PORT_BLOCKS
    if flat.get("gpus"):
        out["gpus"] = [flat["gpus"][index % len(flat["gpus"])]]
    if adapters:  # mapped here: the service uses the adapter as given and never asks nvidia-smi itself
        out["graphics_adapters"] = [int(adapters[index % len(adapters)])]
    return out


def launch_adapters(flat: dict[str, Any]) -> list[int]:
    """The graphics adapters launched servers take round-robin: ``env.graphics_adapters``, else ``env.gpus`` (CUDA
    ids) mapped by PCI bus id; none for servers in ``env.hosts`` (they run where they run)."""
    if flat.get("hosts"):
        return []
    return graphics_adapters(list(flat.get("gpus") or []), list(flat.get("graphics_adapters") or []))


class CarlaServiceBackend(MultiServiceBackend):
    """CARLA servers, one per service process (see the module docstring)."""

    backend_name = "carla"

    def __init__(self, flat: dict[str, Any], num_worlds: int, services):
        from envs.carla.server import stop_process_group

        self._stop_group = stop_process_group
        self.flat = flat
        self.drift = None
        self._snapshots_taken = 0
        self._groups: dict[int, list[int]] = {}  # service index -> process groups of the servers it launched
        adapters = launch_adapters(flat)  # before any service starts: a GPU that is not there is one error line
        # A service starts its server and loads the map before it answers: allow for both.
        start_timeout_s = services.start_timeout_s + 2 * float(flat["client_timeout_s"]) + 30.0

        def factory(index: int, count: int) -> ProcessService:
            self._reap(index)  # a previous service of this index may have died with its server still running
            service = ProcessService(index, service_env_config(flat, index, adapters), count, threads=1,
                                     start_timeout_s=start_timeout_s, call_timeout_s=services.call_timeout_s).start()
            self._groups[index] = list(service.description.get("process_groups", []))
            return service

        super().__init__(factory, [1] * num_worlds)

    def _reap(self, index: int) -> None:
        for pgid in self._groups.pop(index, []):
            self._stop_group(pgid)

    def close(self) -> None:
        """Stop every service (each stops its server), then any server group a dead service left behind."""
        super().close()
        for index in list(self._groups):
            self._reap(index)

    # --- drift between servers ---

    def capture(self, world_ids: WorldIds = None) -> Snapshot:
        """The snapshot of ``world_ids`` without the automatic drift check (what the drift check reads with)."""
        return MultiServiceBackend.snapshot(self, as_world_ids(world_ids, self.num_worlds))

    def snapshot(self, world_ids: WorldIds = None) -> Snapshot:
        snapshot = super().snapshot(world_ids)
        self._snapshots_taken += 1
        every = int(self.flat.get("drift_check_every", 0))
        if every and self.num_worlds >= 2 and snapshot.num_worlds and self._snapshots_taken % every == 0:
            self.check_drift(snapshot.select([0]))
        return snapshot

    def check_drift(self, snapshot: Snapshot) -> None:
        """Measure drift between servers from ``snapshot`` (one world) now; every world is restored from its own
        snapshot afterwards (so it is left as a restore leaves it)."""
        from envs.carla.drift import measure_server_drift

        everything = as_world_ids(None, self.num_worlds)
        try:
            saved = self.capture(everything)
        except BackendError as error:  # a world holds no episode yet: nothing to put back, so no check now
            LOGGER.info("CARLA drift check skipped: %s", error)
            return
        steps = int(self.flat.get("drift_check_steps", 20))
        control = snapshot.tensors["vehicle_control"][0, 0].numpy()  # throttle, steer, brake, ...
        actions = np.repeat(np.array([[control[0], control[2], control[1]]]), steps, axis=0)
        try:
            self.drift = measure_server_drift(self, snapshot, actions)
            LOGGER.info("CARLA drift between %d servers over %d steps: %s", self.num_worlds, steps,
                        ", ".join(f"{k}={v:.3f}" for k, v in self.drift.summary().items()))
        except ServiceFailure:
            pass  # a service died while measuring: it has been restarted; the next check will tell
        MultiServiceBackend.restore(self, saved, everything)

    @_serialised
    def metrics(self) -> dict[str, float]:
        """Numbers for the training log (the trainer asks every iteration): the services restarted, server restarts
        inside services, the worst restore read-back error over services, and the last drift between servers
        (``drift/*``). Also refreshes the process groups each service's servers lead (the servers a service runs
        change when it restarts one: keep the list its parent would stop). A service found dead or hung here is
        replaced on the spot, as after a failed step (its servers are reaped by the factory)."""
        for index, groups in enumerate(self._call_every_service("process_groups")):
            self._groups[index] = list(groups)
        out: dict[str, float] = {}
        for service_metrics in self._call_every_service("metrics"):
            for key, value in service_metrics.items():
                if key.startswith("carla/restore_error/"):
                    out[key] = max(out.get(key, 0.0), value)
                elif key == "carla/restarts":
                    out["carla/server_restarts"] = out.get("carla/server_restarts", 0.0) + value
        if self.drift is not None:
            out.update(self.drift.summary())
        return {**super().metrics(), **out}


def start_carla_services(flat: dict[str, Any], num_worlds: int, services) -> CarlaServiceBackend:
    """``num_worlds`` CARLA servers, each driven by its own service process."""
    return CarlaServiceBackend(flat, num_worlds, services)


__all__ = ["PORT_BLOCKS", "CarlaServiceBackend", "launch_adapters", "service_env_config", "start_carla_services"]
