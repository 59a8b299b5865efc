"""Env configs and the backend in this process.

The ``env`` section of the config is flat for users (``env.num_services=4``, ``env.device=cuda``,
``env.town.grid_size=4``): :func:`env_config_from_dict` splits the service keys (how many simulator
instances, launched how) from the backend's own keys and types both. :func:`build_local_backend` builds the
backend one process hosts (what a service runs); envs/factory.py adds the services on top. This module never
imports the services, so they can import it (no import loop).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from envs.api import Backend
from envs.carla.config import CarlaConfig
from envs.gym_backend import GymConfig
from envs.services.http_config import HttpConfig
from envs.sim.config import SimConfig
from envs.typed_config import ConfigError, from_dict, to_dict

BACKEND_CONFIGS = {"sim": SimConfig, "gym": GymConfig, "carla": CarlaConfig, "http": HttpConfig}
"""Backend name -> its config dataclass. ``env=<name>`` in Hydra picks one."""


@dataclass(frozen=True)
class ServiceConfig:
    """How many simulator instances serve the worlds, and how they are started."""

    num_services: int = 1  # simulator instances; branches of a group are spread over them
    launcher: Literal["local", "ray"] = "local"  # local processes, or Ray actors on a cluster
    ray_address: str | None = None  # Ray cluster to join (e.g. "ray://head:10001"); null = start a local Ray
    ray_cpus_per_service: float = 1.0  # CPUs each Ray actor reserves (a service steps with one thread)
    start_timeout_s: float = 120.0  # a service that is not ready this long after starting is an error
    call_timeout_s: float = 300.0  # a call unanswered this long counts as a dead service (restarted); the
    # upper bound of the hang deadline below, and the deadline of a kind of call not yet measured
    hang_timeout_factor: float = 10.0  # a call hangs when unanswered for this many times the slowest answer
    # measured for its kind (step, restore, ...): the service is killed and restarted
    hang_timeout_min_s: float = 10.0  # ...but never sooner than this (seconds); also the heartbeat's deadline
    heartbeat_s: float = 2.0  # seconds between pings of idle services (0 = off): a death between calls is
    # repaired before the next call instead of failing it
    worlds_per_service: int | None = None  # worlds each service hosts; null = enough for every branch of an
    # iteration at once; fewer makes branches run in waves (a CARLA server hosts 1)

    def __post_init__(self) -> None:
        if self.num_services < 1:
            raise ValueError(f"env.num_services must be >= 1, got {self.num_services}")
        if self.ray_cpus_per_service <= 0:
            raise ValueError(f"env.ray_cpus_per_service must be > 0, got {self.ray_cpus_per_service}")
        if self.start_timeout_s <= 0 or self.call_timeout_s <= 0:
            raise ValueError("env.start_timeout_s and env.call_timeout_s must be positive")
        if self.hang_timeout_factor < 1 or self.hang_timeout_min_s <= 0:
            raise ValueError(f"env.hang_timeout_factor must be >= 1 and env.hang_timeout_min_s > 0, got "
                             f"{self.hang_timeout_factor} and {self.hang_timeout_min_s}")
        if self.heartbeat_s < 0:
            raise ValueError(f"env.heartbeat_s must be >= 0 (0 turns the heartbeat off), got {self.heartbeat_s}")
        if self.worlds_per_service is not None and self.worlds_per_service < 1:
            raise ValueError(f"env.worlds_per_service must be >= 1 or null, got {self.worlds_per_service}")


@dataclass(frozen=True)
class EnvConfig:
    """A backend kind, its typed config, and the services that host it."""

    backend: str = "sim"
    services: ServiceConfig = field(default_factory=ServiceConfig)
    backend_config: Any = field(default_factory=SimConfig)

    def capacity(self, wanted: int) -> int:
        """Worlds to build for ``wanted`` concurrent worlds: all of them unless ``worlds_per_service`` caps it
        (then the rollout runs in waves)."""
        per_service = self.services.worlds_per_service
        return wanted if per_service is None else min(wanted, per_service * self.services.num_services)

    def to_flat_dict(self) -> dict[str, Any]:
        """The flat form users write and checkpoints store; :func:`env_config_from_dict` reads it back."""
        return {"backend": self.backend, **to_dict(self.services), **to_dict(self.backend_config)}


def env_config_from_dict(data: dict[str, Any], path: str = "env") -> EnvConfig:
    data = dict(data)
    backend = data.pop("backend", "sim")
    if backend not in BACKEND_CONFIGS:
        raise ConfigError(f"{path}.backend must be one of {sorted(BACKEND_CONFIGS)}, got {backend!r}")
    service_keys = {f.name for f in dataclasses.fields(ServiceConfig)}
    services = from_dict(ServiceConfig, {k: data.pop(k) for k in list(data) if k in service_keys}, path)
    return EnvConfig(backend, services, from_dict(BACKEND_CONFIGS[backend], data, path))


def build_local_backend(config: EnvConfig, num_worlds: int | None = None) -> Backend:
    """The backend in this process, whatever the service keys say: what one service hosts."""
    config = _with_worlds(config, num_worlds, None)
    backend_config = config.backend_config
    if config.backend == "carla":  # one CARLA server (one world) driven from this process
        from envs.carla.backend import CarlaBackend

        return CarlaBackend(backend_config, start_timeout_s=config.services.start_timeout_s)
    if config.backend == "sim":
        from envs.sim.world import DrivingSim

        return DrivingSim(backend_config)
    if config.backend == "gym":
        from envs.gym_backend import GymBackend

        return GymBackend(backend_config)
    raise ConfigError(f"backend {config.backend!r} cannot be built")


def _with_worlds(config: EnvConfig, num_worlds: int | None, split: str | None) -> EnvConfig:
    overrides = {}
    if num_worlds is not None:
        overrides["num_worlds"] = num_worlds
    if split is not None:
        overrides["split"] = split
    if not overrides:
        return config
    return dataclasses.replace(config, backend_config=dataclasses.replace(config.backend_config, **overrides))
