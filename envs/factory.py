"""The one place that turns an environment config into a running backend: in this process, or spread over
services (worker processes, Ray actors, HTTP servers, one process per CARLA server). The config types live in
envs/backends.py, which the services import; they are re-exported here for callers.
"""

from __future__ import annotations

from envs.api import Backend
from envs.backends import (  # noqa: F401  (re-exported: the config types callers build backends from)
    BACKEND_CONFIGS,
    EnvConfig,
    ServiceConfig,
    _with_worlds,
    build_local_backend,
    env_config_from_dict,
)
from envs.typed_config import ConfigError


def build_backend(config: EnvConfig, num_worlds: int | None = None, *, split: str | None = None) -> Backend:
    """A backend with ``num_worlds`` worlds (default: the config's), on the ``split``'s towns if given.

    ``env=carla`` always runs each CARLA server from a service process of its own (one world each, see
    :mod:`envs.services.carla_servers`): the carla client's traffic managers are process-wide, so two
    servers must never share a process, the trainer's included."""
    config = _with_worlds(config, num_worlds, split)
    backend_config, services = config.backend_config, config.services
    if config.backend == "carla":
        from envs.services.carla_servers import start_carla_services

        _check_carla_services(services, backend_config.num_worlds)
        return start_carla_services(config.to_flat_dict(), backend_config.num_worlds, services)
    if config.backend == "http":  # world services reached by URL (python serve.py), or launched here
        from envs.services.http_client import start_http_services

        return start_http_services(backend_config, services)
    if services.num_services > 1 or services.launcher != "local":
        from envs.services.launch import start_services

        return start_services(config.to_flat_dict(), backend_config.num_worlds, services)
    return build_local_backend(config)


def _check_carla_services(services: ServiceConfig, num_worlds: int) -> None:
    """env=carla: each service is a process driving one CARLA server that hosts one world."""
    if services.launcher != "local":
        raise ConfigError("env.launcher must be local for env=carla: each CARLA server is driven from a local "
                          "service process (list servers on other machines in env.hosts)")
    if services.worlds_per_service != 1:
        raise ConfigError(f"env.worlds_per_service must be 1 for env=carla (a CARLA server hosts one ego), got "
                          f"{services.worlds_per_service}")
    if num_worlds > services.num_services:
        raise ConfigError(f"{num_worlds} CARLA worlds need {num_worlds} servers but env.num_services="
                          f"{services.num_services}; raise env.num_services")
