"""A service as a Ray actor (``env.launcher=ray``): the same calls as a process service, on a Ray cluster.

``connect`` joins ``env.ray_address`` or, when it is null, starts a local Ray bound to the loopback address
(and shuts it down at exit). Each actor reserves ``env.ray_cpus_per_service`` CPUs (1 by default). A dead
actor or an unanswered call raises ServiceFailure; an exception inside a call is a BackendError, as for
process services."""

from __future__ import annotations

import atexit
from typing import Any

from envs.api import BackendError, ServiceFailure


def connect(address: str | None, num_cpus: int | None = None) -> None:
    """Join the Ray cluster at ``address``, or start a local one on 127.0.0.1 when it is None."""
    import ray

    if ray.is_initialized():
        return
    if address:
        ray.init(address=address, log_to_driver=False)
    else:
        ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1")
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

    def start(self) -> RayService:
        self.actor = _actor_class(self.num_cpus).remote(self.env_config, self.num_worlds)
        self.description = self._get(self.actor.describe.remote(), self.start_timeout_s, "start")
        return self

    @property
    def pid(self) -> int:
        return self._get(self.actor.pid.remote(), self.call_timeout_s, "answer")

    def _get(self, reference, timeout: float, what: str):
        import ray
        from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError

        try:
            return ray.get(reference, timeout=timeout)
        except GetTimeoutError as error:
            raise ServiceFailure(self.index, f"did not {what} within {timeout:.0f} s") from error
        except RayActorError as error:
            raise ServiceFailure(self.index, f"actor died ({type(error).__name__})") from error
        except RayTaskError as error:
            if what == "start":
                raise ServiceFailure(self.index, f"failed to start: {error.cause!r}") from error
            raise BackendError(f"service {self.index}: {error.cause!r}") from error

    def send(self, method: str, *args) -> None:
        self._pending = self.actor.handle.remote(method, *args)

    def receive(self):
        reference, self._pending = self._pending, None
        return self._get(reference, self.call_timeout_s, "answer")

    def call(self, method: str, *args):
        self.send(method, *args)
        return self.receive()

    def stop(self) -> None:
        if self.actor is not None:
            import ray

            ray.kill(self.actor)
            self.actor = None
