"""The backend config of ``env=http`` (conf/env/http.yaml), apart from the client so that the env configs
(envs/backends.py) can name it without importing the services."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlsplit


@dataclass(frozen=True)
class HttpConfig:
    """The backend config of ``env=http`` (conf/env/http.yaml)."""

    urls: tuple[str, ...] = ()  # service URLs (http://127.0.0.1:8080); empty = launch env.num_services local ones
    token: str | None = None  # bearer token the services require (serve.token); null = $GRPO_SERVE_TOKEN if set
    # (keeping it out of the config keeps it out of checkpoints and run logs)
    serve_env: dict[str, Any] = field(default_factory=dict)  # flat env config launched servers build (e.g.
    # {map: straight}); empty = the built-in simulator's defaults; unused with urls (each server has its own)
    server_threads: int = 1  # torch threads of each launched server (2 threads thrashed on a busy 2-core machine:
    # 800 against 5,000 env-steps/s in bench/services.py)
    num_worlds: int = 1  # worlds over all services; the trainer sets it to grpo.num_trunks * grpo.group_size
    device: str = "cpu"  # device of the returned tensors; answers arrive on the CPU
    split: Literal["train", "eval"] = "train"  # train | eval: evaluation sessions draw held-out routes

    def __post_init__(self) -> None:
        for url in self.urls:
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.hostname or parts.path not in ("", "/"):
                raise ValueError(f"env.urls: {url!r} is not a service URL; write http://host:port (no path)")
        if self.num_worlds < 1:
            raise ValueError(f"env.num_worlds must be >= 1, got {self.num_worlds}")
        if self.device != "cpu":
            raise ValueError(f"env.device must be cpu for env=http (answers arrive as CPU arrays), got {self.device}; "
                             "the servers' own device is env.serve_env.device or theirs")
        if self.server_threads < 1:
            raise ValueError(f"env.server_threads must be >= 1, got {self.server_threads}")
        if self.serve_env.get("backend") == "http":
            raise ValueError("env.serve_env.backend cannot be http: launched servers serve sim, gym or carla")
