"""A service as a Ray actor (``env.launcher=ray``): the same calls as a process service, on a Ray cluster.

``connect`` joins ``env.ray_address`` or, when it is null, starts a Ray of its own bound to the loopback
address (and shuts it down at exit): never the cluster that ``RAY_ADDRESS`` or a stale
``/tmp/ray/ray_current_cluster`` file points at, which an earlier Ray may have left behind. Each actor
reserves ``env.ray_cpus_per_service`` CPUs (1 by default). A dead
actor or an unanswered call raises ServiceFailure; an exception inside a call is a BackendError, as for
process services."""

from __future__ import annotations

import atexit
from pathlib import Path
from typing import Any

from envs.api import BackendError, ServiceFailure


def runtime_env() -> dict[str, Any]:
    """What every actor's worker needs from this checkout: the ``envs`` package (the simulator, the backends,
    the service host), shipped by Ray to each node, so a cluster node needs only the project's dependencies
    (torch, numpy, gymnasium; docs/services.md), never the project itself installed by hand."""
    import envs

    return {"py_modules": [str(Path(envs.__file__).parent)]}


def connect(address: str | None, num_cpus: int | None = None) -> None:
    """Join the Ray cluster at ``address``, or start a local one on 127.0.0.1 when it is None. Actors' output
    (a service's prints and tracebacks) is forwarded to this process's console, tagged with the actor."""
    import ray

    if ray.is_initialized():
        return
    if address:
        ray.init(address=address, runtime_env=runtime_env(), log_to_driver=True)
    else:
        # address="local" starts a new Ray; None would look for RAY_ADDRESS or the last cluster started here.
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=True,
                 _node_ip_address="127.0.0.1")
        atexit.register(ray.shutdown)


def _actor_class(num_cpus: float):
    import ray

    from envs.services.host import ServiceHost

    @ray.remote(num_cpus=num_cpus)
    class ServiceActor:
        def __init__(self, env_config: dict[str, Any], num_worlds: int):
            self.host = ServiceHost(env_config, num_worlds, threads=1)

        def describe(self) -> dict[str, Any]:
            return self.host.describe()

        def pid(self) -> int:
            import os

            return os.getpid()

        def handle(self, method: str, *args):
            return self.host.handle(method, *args)

    return ServiceActor


class RayService:
    """Handle of one service actor, with the interface of ProcessService (send / receive / call / stop)."""

    def __init__(self, index: int, env_config: dict[str, Any], num_worlds: int, *, num_cpus: float = 1.0,
                 start_timeout_s: float = 120.0, call_timeout_s: float = 300.0):
        self.index, self.env_config, self.num_worlds, self.num_cpus = index, env_config, num_worlds, num_cpus
        self.start_timeout_s, self.call_timeout_s = start_timeout_s, call_timeout_s
        self.actor = None
        self._pending = None
        self.description: dict[str, Any] = {}
        self.pid: int | None = None  # the actor's worker process, asked once at start

    def start(self) -> RayService:
        self.actor = _actor_class(self.num_cpus).remote(self.env_config, self.num_worlds)
        self.description = self._get(self.actor.describe.remote(), self.start_timeout_s, "start")
        self.pid = self._get(self.actor.pid.remote(), self.start_timeout_s, "start")
        return self

    def _get(self, reference, timeout: float, what: str):
        import ray
        from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError

        try:
            return ray.get(reference, timeout=timeout)
        except GetTimeoutError as error:
            state = "" if what == "start" else ", hung"
            raise ServiceFailure(self.index, f"did not {what} within {timeout:.3g} s (pid {self.pid}{state})") \
                from error
        except RayActorError as error:
            raise ServiceFailure(self.index, f"actor died (pid {self.pid}, {type(error).__name__})") from error
        except RayTaskError as error:
            if what == "start":
                raise ServiceFailure(self.index, f"failed to start: {error.cause!r}") from error
            raise BackendError(f"service {self.index}: {error.cause!r}") from error

    def send(self, method: str, *args) -> None:
        try:
            self._pending = self.actor.handle.remote(method, *args)
        except Exception as error:  # a killed actor may refuse the submission itself
            raise ServiceFailure(self.index, f"is not reachable (pid {self.pid}, {type(error).__name__})") \
                from error

    def receive(self, timeout_s: float | None = None):
        reference, self._pending = self._pending, None
        return self._get(reference, self.call_timeout_s if timeout_s is None else timeout_s, "answer")

    def call(self, method: str, *args):
        self.send(method, *args)
        return self.receive()

    def ping(self, timeout_s: float) -> None:
        """Raise ServiceFailure unless the actor answers within ``timeout_s`` (the heartbeat)."""
        self.send("ping")
        self.receive(timeout_s)

    def stop(self) -> None:
        if self.actor is not None:
            import ray

            ray.kill(self.actor)
            self.actor = None
