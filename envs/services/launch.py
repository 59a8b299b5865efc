"""Start ``num_services`` services (processes or Ray actors) and present them as one backend."""

from __future__ import annotations

import os
from typing import Any

from envs.api import BackendError
from envs.services.multi import MultiServiceBackend


def split_worlds(num_worlds: int, num_services: int) -> list[int]:
    """Worlds per service, as even as possible: 10 over 4 -> [3, 3, 2, 2]."""
    if num_worlds < num_services:
        raise BackendError(f"{num_worlds} worlds cannot be spread over env.num_services={num_services} services; "
                           "use fewer services or more worlds")
    base, extra = divmod(num_worlds, num_services)
    return [base + (i < extra) for i in range(num_services)]


def start_services(env_config: dict[str, Any], num_worlds: int, services) -> MultiServiceBackend:
    """``services`` is the env's ServiceConfig; ``env_config`` the flat env config each service builds."""
    shares = split_worlds(num_worlds, services.num_services)
    if services.launcher == "local":
        from envs.services.process import ProcessService

        threads = max(1, (os.cpu_count() or 1) // services.num_services)

        def factory(index: int, count: int):
            return ProcessService(index, env_config, count, threads=threads, start_timeout_s=services.start_timeout_s,
                                  call_timeout_s=services.call_timeout_s, silence_s=services.hang_timeout_min_s).start()
    elif services.launcher == "ray":
        from envs.services.ray_service import RayService, connect

        connect(services.ray_address)  # null: a Ray of our own, never a stale cluster left on the machine

        def factory(index: int, count: int):
            return RayService(index, env_config, count, num_cpus=services.ray_cpus_per_service,
                              start_timeout_s=services.start_timeout_s, call_timeout_s=services.call_timeout_s).start()
    else:
        raise BackendError(f"env.launcher must be 'local' or 'ray', got {services.launcher!r}")
    return MultiServiceBackend(factory, shares, call_timeout_s=services.call_timeout_s,
                               hang_timeout_factor=services.hang_timeout_factor,
                               hang_timeout_min_s=services.hang_timeout_min_s, heartbeat_s=services.heartbeat_s)
