"""One backend served over HTTP (FastAPI + uvicorn): the seed project's endpoints, batched and branching verbs,
and the calls our own client (``envs/services/http_client.py``) makes.

Three families of endpoints, all on one :class:`WorldServer`:

* The seed's microservice, on a *default session* of ``serve.num_worlds`` worlds whose world 0 is the car the
  verbs drive: ``GET / /health /info /status /spec /world/vehicles`` and ``POST /seed /reset /step /snapshot
  /restore /close`` with the seed's JSON shapes (``observation.vehicle_state.position.{x,y,z}``, ``speed``,
  ``stats`` on /snapshot). Snapshots are opaque ids held in a bounded store.
* Batched and branching verbs on the same worlds: ``POST /worlds/reset``, ``/worlds/step`` (one action per
  world), ``/worlds/{id}/step``, ``/worlds/{id}/snapshot``, ``/worlds/{id}/restore``, ``/worlds/{id}/clone``
  (into G worlds), ``GET /render.png``, ``/worlds/{id}/render.png``, ``/metrics`` (Prometheus text), a live
  page at ``/view`` and OpenAPI docs at ``/docs``.
* ``/v1/sessions``: our client opens a session of N worlds (its own :class:`ServiceHost`) and runs the
  service calls of ``envs.services.host`` on it with bodies in the non-pickle format of ``envs.services.wire``.
  Sessions are bounded too; the least recently used one is closed when a new one would exceed the bound.

Safe by default: it binds 127.0.0.1; any other address needs a bearer token; JSON bodies are validated by
pydantic models (4xx answers name the field and the rule); request bodies are capped; nothing received is
unpickled. Backend calls are serialised by one lock: a backend is not thread-safe, and one world batch steps
with all the threads it is given anyway.

    python serve.py                          # Hydra entry point (conf/serve.yaml)
    python -m envs.services.http_server --json '{"serve": {"port": 0}, "env": {"map": "straight"}}'
"""


import argparse
import hmac
import io
import ipaddress
import json
import math
import os
import signal
import socket
import sys
import threading
import time
import uuid
from collections import Counter, OrderedDict
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import torch

from envs.api import OBSERVATION_LAYOUT, BackendError, Snapshot, derive_episode_seeds
from envs.services.host import ServiceHost, result_to_wire
from envs.services.http_client import LISTENING_LINE  # the first line printed; launchers read the URL from it
from envs.services.wire import CONTENT_TYPE, WireError, decode, encode, snapshot_from_wire, snapshot_to_wire
from envs.typed_config import ConfigError, from_dict

SNAPSHOT_ID_PATTERN = r"^[A-Za-z0-9_.:-]{1,128}$"
SERVER_PACKAGES = ("fastapi", "uvicorn", "starlette", "pydantic")
"""What serving needs beyond the training install (the ``serve`` extra); imported only when a server starts."""


@dataclass(frozen=True)
class ServeConfig:
    """The ``serve`` section of conf/serve.yaml: where the service listens and what it holds at most."""

    host: str = "127.0.0.1"  # address to bind; anything but a loopback address needs a token
    port: int = 8080  # TCP port; 0 = any free port (the URL is printed at start)
    token: str | None = None  # bearer token every request but /health must carry; null = no authentication
    num_worlds: int = 4  # worlds of the default session (the seed verbs drive world 0; /worlds/* all of them);
    # a CARLA backend starts one server per world
    threads: int = 1  # torch threads of each backend the server builds
    max_snapshots: int = 256  # snapshots the store holds; the least recently used is evicted beyond this
    max_snapshot_bytes: int = 256 * 2**20  # bytes of tensors the store holds (LRU eviction beyond this)
    max_request_bytes: int = 64 * 2**20  # larger request bodies are refused with 413
    max_sessions: int = 8  # open client sessions; the least recently used is closed beyond this
    max_steps_per_call: int = 1000  # n_steps cap of one /step call

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"serve.port must be in [0, 65535], got {self.port}")
        if not _is_loopback(self.host) and not self.token:
            raise ValueError(f"serve.host={self.host} would expose the worlds beyond this machine without "
                             "authentication: set serve.token=<secret> as well (or keep serve.host=127.0.0.1)")
        for name in ("num_worlds", "threads", "max_snapshots", "max_snapshot_bytes", "max_request_bytes",
                     "max_sessions", "max_steps_per_call"):
            if getattr(self, name) < 1:
                raise ValueError(f"serve.{name} must be >= 1, got {getattr(self, name)}")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# --- errors -----------------------------------------------------------------------------------------------


class UnknownSnapshot(BackendError):
    """A snapshot id the store does not hold (never taken, or evicted)."""


class UnknownSession(BackendError):
    """A session id the server does not hold (closed, evicted, or the server restarted)."""


class NotOffered(BackendError):
    """The served backend lacks a capability (rendering and vehicle lists need env=sim)."""


class BodyLimit:
    """ASGI middleware for bodies sent without a Content-Length (chunked): reads them up to ``limit`` bytes and
    answers 413 past it, so such a body cannot grow without bound. Bodies with a length are checked by it in
    the app's guard before anything is read (and h11 holds a sender to the length it announced)."""

    def __init__(self, app, limit: int, counters: Counter):
        self.app, self.limit, self.counters = app, limit, counters

    async def __call__(self, scope, receive, send):
        from fastapi.responses import JSONResponse

        if scope["type"] != "http" or any(name == b"content-length" for name, _ in scope["headers"]):
            return await self.app(scope, receive, send)
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more = message.get("more_body", False)
            if size > self.limit:
                self.counters["http_413"] += 1
                answer = JSONResponse({"error": f"request body exceeds serve.max_request_bytes={self.limit}"}, 413)
                return await answer(scope, receive, send)
        pending = [{"type": "http.request", "body": b"".join(chunks), "more_body": False}]

        async def replay():
            return pending.pop() if pending else await receive()

        await self.app(scope, replay, send)


# --- the snapshot store -----------------------------------------------------------------------------------


class SnapshotStore:
    """Snapshots by opaque id, bounded by count and tensor bytes; the least recently used go first."""

    def __init__(self, max_count: int, max_bytes: int):
        self.max_count, self.max_bytes = max_count, max_bytes
        self._entries: OrderedDict[str, tuple[Snapshot, dict[str, Any], int]] = OrderedDict()
        self.bytes = 0
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._entries)

    def put(self, snapshot_id: str | None, snapshot: Snapshot, meta: dict[str, Any]) -> tuple[str, list[str]]:
        """Store ``snapshot`` (with ``meta``, e.g. the episode's step) and return (id, ids evicted for it)."""
        size = sum(t.numel() * t.element_size() for t in snapshot.tensors.values())
        if size > self.max_bytes:
            raise BackendError(f"a snapshot of {size} bytes exceeds serve.max_snapshot_bytes={self.max_bytes}; "
                               "raise it")
        snapshot_id = snapshot_id or uuid.uuid4().hex
        self.drop(snapshot_id)
        self._entries[snapshot_id] = (snapshot, meta, size)
        self.bytes += size
        evicted = []
        while len(self._entries) > self.max_count or self.bytes > self.max_bytes:
            old, (_, _, old_size) = self._entries.popitem(last=False)
            self.bytes -= old_size
            self.evictions += 1
            evicted.append(old)
        return snapshot_id, evicted

    def get(self, snapshot_id: str) -> tuple[Snapshot, dict[str, Any]]:
        if snapshot_id not in self._entries:
            raise UnknownSnapshot(f"unknown snapshot id {snapshot_id!r}: never taken here, or evicted (the store "
                                  f"keeps the {self.max_count} most recently used); POST /snapshot returns a new id")
        self._entries.move_to_end(snapshot_id)
        snapshot, meta, _ = self._entries[snapshot_id]
        return snapshot, meta

    def drop(self, snapshot_id: str) -> None:
        entry = self._entries.pop(snapshot_id, None)
        if entry is not None:
            self.bytes -= entry[2]

    def clear(self) -> None:
        self._entries.clear()
        self.bytes = 0


# --- the server's state ----------------------------------------------------------------------------------


class WorldServer:
    """What the HTTP endpoints act on: the default session, the snapshot store, client sessions, counters.

    Framework-free: every method takes and returns plain values, so the endpoints stay one-liners."""

    def __init__(self, config: ServeConfig, env_config: dict[str, Any]):
        from envs.backends import env_config_from_dict

        self.config = config
        parsed = env_config_from_dict(env_config)  # a bad env config fails at start, not at the first call
        if parsed.backend == "http":
            raise ConfigError("serve cannot serve env=http (a client of other services): serve env=sim, gym or carla")
        self.env_config = parsed.to_flat_dict()
        self.backend_kind = parsed.backend
        self.lock = threading.RLock()
        self.store = SnapshotStore(config.max_snapshots, config.max_snapshot_bytes)
        self.sessions: OrderedDict[str, ServiceHost] = OrderedDict()
        self._main: ServiceHost | None = None
        self.seed = 0
        self._episodes = 0
        self.status: dict[str, Any] = {"episode_seed": None, "steps": 0, "return": 0.0, "terminated": False,
                                       "truncated": False}
        self.counters: Counter[str] = Counter()
        self.started = time.time()

    # --- the default session ----------------------------------------------------------------------------

    @property
    def main(self) -> ServiceHost:
        """The default session's host, built on first use (so a server only used by clients never builds it)."""
        with self.lock:
            if self._main is None:
                self._main = ServiceHost(self.env_config, self.config.num_worlds, self.config.threads)
            return self._main

    @property
    def backend(self):
        return self.main.backend

    def _need_episode(self) -> None:
        if self.status["episode_seed"] is None:
            raise BackendError("no episode yet: POST /reset first")

    def info(self) -> dict[str, Any]:
        backend = self.backend
        description = self.main.describe()
        config = getattr(backend, "config", None)
        return {"backend": self.backend_kind, **description,
                "action_size": len(description["action_bounds"][0]) if description["action_bounds"] else 3,
                "dt": getattr(config, "dt", getattr(config, "fixed_delta_seconds", None)),
                "max_episode_steps": getattr(config, "max_episode_steps", None),
                "renders": self._renders(), "seed": self.seed,
                "snapshot_store": {"max_snapshots": self.store.max_count, "max_bytes": self.store.max_bytes},
                "sessions": {"open": len(self.sessions), "max": self.config.max_sessions}}

    def spec(self) -> dict[str, Any]:
        description = self.main.describe()
        bounds = description["action_bounds"]
        if bounds is None:
            action = {"names": ["throttle", "brake", "steer"], "low": [0.0, 0.0, -1.0], "high": [1.0, 1.0, 1.0]}
        else:
            action = {"names": [f"a{i}" for i in range(len(bounds[0]))], "low": bounds[0], "high": bounds[1]}
        observation: dict[str, Any] = {"size": description["observation_size"]}
        if description["observation_size"] == OBSERVATION_LAYOUT.size:
            observation["slices"] = {k: [s.start, s.stop] for k, s in OBSERVATION_LAYOUT.slices.items()}
            observation["speed_scale"] = OBSERVATION_LAYOUT.speed_scale
            observation["distance_scale"] = OBSERVATION_LAYOUT.distance_scale
        return {"action": action, "observation": observation}

    def set_seed(self, seed: int) -> dict[str, Any]:
        with self.lock:
            self.seed, self._episodes = seed, 0
            return {"seed": seed}

    def reset(self, route_id: int | None, seed: int | None) -> dict[str, Any]:
        """Start an episode in every world of the default session (world 0 is the one the verbs drive): episode
        seed ``route_id`` (a fixed route), else ``seed``, else the next one derived from POST /seed's seed."""
        with self.lock:
            if route_id is not None:
                episode_seed = route_id
            elif seed is not None:
                episode_seed = seed
            else:
                episode_seed = derive_episode_seeds(self.seed, [self._episodes])[0]
                self._episodes += 1
            observations = self.backend.reset([episode_seed] * self.backend.num_worlds)
            self.status = {"episode_seed": episode_seed, "steps": 0, "return": 0.0, "terminated": False,
                           "truncated": False}
            self.counters["resets"] += 1
            return {"observation": self._observation(0, observations[0]), "episode_seed": episode_seed,
                    "route_id": route_id}

    def step_world(self, world: int, action: list[float], n_steps: int) -> dict[str, Any]:
        """Drive ``world`` with ``action`` for up to ``n_steps`` steps (fewer if its episode ends); the other
        worlds get zero actions. Returns the last observation, the summed reward and the done flags."""
        with self.lock:
            self._need_episode()
            backend = self.backend
            self._check_world(world)
            actions = torch.zeros(backend.num_worlds, len(action), device=backend.device)
            actions[world] = torch.tensor(action, dtype=torch.float32, device=backend.device)
            reward, steps = 0.0, 0
            for _ in range(n_steps):
                result = backend.step(actions)
                reward += float(result.reward[world])
                steps += 1
                if bool(result.terminated[world] | result.truncated[world]):
                    break
            self.counters["env_steps"] += steps * backend.num_worlds
            terminated, truncated = bool(result.terminated[world]), bool(result.truncated[world])
            if world == 0:
                self.status.update(steps=self.status["steps"] + steps, terminated=terminated, truncated=truncated)
                self.status["return"] += reward
            return {"observation": self._observation(world, result.observation[world]), "reward": reward,
                    "terminated": terminated, "truncated": truncated, "done": terminated or truncated,
                    "steps": steps, "info": {k: v[world].item() for k, v in result.info.items()}}

    def step_all(self, actions: list[list[float]]) -> dict[str, Any]:
        with self.lock:
            self._need_episode()
            backend = self.backend
            if len({len(row) for row in actions}) > 1:
                raise BackendError("actions rows differ in length: give every world the same number of values")
            result = backend.step(torch.tensor(actions, dtype=torch.float32, device=backend.device))
            self.counters["env_steps"] += backend.num_worlds
            self.status.update(steps=self.status["steps"] + 1, terminated=bool(result.terminated[0]),
                               truncated=bool(result.truncated[0]))
            self.status["return"] += float(result.reward[0])
            return {"observations": result.observation.tolist(), "rewards": result.reward.tolist(),
                    "terminated": result.terminated.tolist(), "truncated": result.truncated.tolist(),
                    "info": {k: v.tolist() for k, v in result.info.items()}}

    def reset_worlds(self, seed: int | list[int], world_ids: list[int] | None) -> dict[str, Any]:
        with self.lock:
            ids = list(range(self.backend.num_worlds)) if world_ids is None else world_ids
            seeds = derive_episode_seeds(seed, ids) if isinstance(seed, int) else seed
            if len(seeds) != len(ids):
                raise BackendError(f"{len(seeds)} seeds for {len(ids)} worlds: give one per world, or one int")
            observations = self.backend.reset(seeds, ids)
            if 0 in ids:
                self.status = {"episode_seed": seeds[ids.index(0)], "steps": 0, "return": 0.0, "terminated": False,
                               "truncated": False}
            self.counters["resets"] += 1
            return {"observations": observations.tolist()}

    def snapshot_world(self, world: int, snapshot_id: str | None) -> dict[str, Any]:
        with self.lock:
            self._need_episode()
            self._check_world(world)
            began = time.perf_counter()
            snapshot = self.backend.snapshot([world])
            meta = dict(self.status) if world == 0 else {}
            snapshot_id, evicted = self.store.put(snapshot_id, snapshot, meta)
            self.counters["snapshots"] += 1
            size = sum(t.numel() * t.element_size() for t in snapshot.tensors.values())
            observation = self._observation(world, self.backend.observe([world])[0])
            return {"snapshot_id": snapshot_id, "observation": observation,
                    "stats": {"world": world, "step": meta.get("steps"), "return": meta.get("return"),
                              "snapshot_bytes": size, "elapsed_ms": 1e3 * (time.perf_counter() - began),
                              "stored": len(self.store), "stored_bytes": self.store.bytes, "evicted": evicted}}

    def restore_world(self, world: int, snapshot_id: str) -> dict[str, Any]:
        with self.lock:
            self._check_world(world)
            snapshot, meta = self.store.get(snapshot_id)
            began = time.perf_counter()
            observation = self.backend.restore(snapshot, [world])[0]
            if world == 0:
                self.status = {"episode_seed": meta.get("episode_seed", self.status["episode_seed"]),
                               "steps": meta.get("steps", 0), "return": meta.get("return", 0.0),
                               "terminated": meta.get("terminated", False), "truncated": meta.get("truncated", False)}
            self.counters["restores"] += 1
            return {"snapshot_id": snapshot_id, "observation": self._observation(world, observation),
                    "stats": {"world": world, "elapsed_ms": 1e3 * (time.perf_counter() - began)}}

    def clone_world(self, world: int, to: list[int]) -> dict[str, Any]:
        """Make every world of ``to`` a copy of ``world`` (a group of G branches: ``to`` = the other G - 1)."""
        with self.lock:
            self._need_episode()
            self._check_world(world)
            for target in to:
                self._check_world(target)
            self.backend.clone([world] * len(to), to)
            self.counters["clones"] += len(to)
            return {"source": world, "worlds": to, "observations": self.backend.observe(to).tolist()}

    def close_main(self) -> dict[str, Any]:
        """The seed's /close: free the default session's worlds and snapshots (rebuilt by the next call)."""
        with self.lock:
            if self._main is not None:
                self._main.backend.close()
            self._main = None
            self.store.clear()
            self.status.update(episode_seed=None, steps=0, **{"return": 0.0})
            return {"status": "closed"}

    def vehicles(self, world: int) -> list[dict[str, Any]]:
        with self.lock:
            self._need_episode()
            self._check_world(world)
            sim = self._sim()
            s = sim.state
            out = [{"id": "ego", "role": "ego", **_pose(s.x[world], s.y[world], s.yaw[world]),
                    "speed": float(s.speed[world])}]
            for slot in (s.traffic_lane[world] >= 0).nonzero().flatten().tolist():
                out.append({"id": f"vehicle_{slot}", "role": "traffic",
                            **_pose(s.traffic_x[world, slot], s.traffic_y[world, slot], s.traffic_yaw[world, slot]),
                            "speed": float(s.traffic_speed[world, slot])})
            for slot in (s.ped_time_left[world] > 0).nonzero().flatten().tolist():
                out.append({"id": f"pedestrian_{slot}", "role": "pedestrian",
                            **_pose(s.ped_x[world, slot], s.ped_y[world, slot], torch.atan2(s.ped_vy[world, slot],
                                                                                      s.ped_vx[world, slot])),
                            "speed": float(torch.hypot(s.ped_vx[world, slot], s.ped_vy[world, slot]))})
            return out

    def render_png(self, world: int, size: int, metres: float) -> bytes:
        from PIL import Image

        from envs.sim.render import render_birdseye

        with self.lock:
            self._need_episode()
            self._check_world(world)
            image = render_birdseye(self._sim(), world, size=size, metres=metres)
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="PNG")
        return buffer.getvalue()

    def _renders(self) -> bool:
        return hasattr(self.backend, "bank") and hasattr(self.backend, "state")

    def _sim(self):
        if not self._renders():
            raise NotOffered(f"the served backend ({self.backend_kind}) offers no vehicle list or bird's-eye view; "
                             "serve env=sim for those")
        return self.backend

    def _check_world(self, world: int) -> None:
        if not 0 <= world < self.backend.num_worlds:
            raise BackendError(f"world {world} does not exist: the default session has worlds 0 to "
                               f"{self.backend.num_worlds - 1} (serve.num_worlds={self.config.num_worlds})")

    def _observation(self, world: int, vector: torch.Tensor) -> dict[str, Any]:
        """The seed's observation: ``vehicle_state`` (position, rotation, velocity, speed, control) where the
        backend exposes it, and the policy's observation ``vector``."""
        vector = vector.detach().cpu()
        vehicle_state: dict[str, Any] = {"position": None, "rotation": None, "velocity": None, "speed": None}
        if self._renders():
            s = self.backend.state
            speed, yaw = float(s.speed[world]), float(s.yaw[world])
            control = s.last_control[world].tolist()
            vehicle_state = {"position": {"x": float(s.x[world]), "y": float(s.y[world]), "z": 0.0},
                             "rotation": {"pitch": 0.0, "yaw": math.degrees(yaw), "roll": 0.0},
                             "velocity": {"x": speed * math.cos(yaw), "y": speed * math.sin(yaw), "z": 0.0},
                             "speed": speed,
                             "control": dict(zip(("throttle", "brake", "steer"), control, strict=True))}
        elif len(vector) == OBSERVATION_LAYOUT.size:  # a driving backend: ego speed is the first feature
            vehicle_state["speed"] = float(vector[0]) * OBSERVATION_LAYOUT.speed_scale
        return {"vehicle_state": vehicle_state, "speed": vehicle_state["speed"], "vector": vector.tolist()}

    # --- client sessions (/v1) --------------------------------------------------------------------------

    def open_session(self, num_worlds: int, split: str) -> dict[str, Any]:
        host = ServiceHost({**self.env_config, "split": split}, num_worlds, self.config.threads)
        with self.lock:
            session = uuid.uuid4().hex
            self.sessions[session] = host
            while len(self.sessions) > self.config.max_sessions:
                _, old = self.sessions.popitem(last=False)
                old.backend.close()
                self.counters["sessions_evicted"] += 1
            self.counters["sessions_opened"] += 1
            return {"session": session, "description": host.describe(), "backend": self.backend_kind}

    def close_session(self, session: str) -> None:
        with self.lock:
            host = self.sessions.pop(session, None)
        if host is not None:
            host.backend.close()

    def call(self, session: str, method: str, body: bytes) -> bytes:
        """Run one service call (``envs.services.host``) on a client session; body and answer are wire
        messages. Snapshots arrive and leave as wire dicts, never as pickles."""
        args = decode(body)
        if not isinstance(args, list):
            raise WireError("a call's body must encode the list of its arguments")
        with self.lock:
            host = self.sessions.get(session)
            if host is None:
                raise UnknownSession(f"unknown session {session!r}: it was closed, evicted (serve.max_sessions="
                                     f"{self.config.max_sessions}) or the server restarted; open a new one")
            self.sessions.move_to_end(session)
            self.counters[f"calls_{method}"] += 1
            try:
                if method == "snapshot":
                    (ids,) = args
                    result: Any = snapshot_to_wire(host.backend.snapshot(ids))
                elif method == "restore":
                    message, ids = args
                    result = host.backend.restore(snapshot_from_wire(message), ids).cpu().numpy()
                elif method == "step":
                    (actions,) = args
                    result = result_to_wire(host.backend.step(torch.as_tensor(actions, device=host.backend.device)))
                    self.counters["env_steps"] += host.backend.num_worlds
                elif method in ("ping", "reset", "observe", "observe_raster", "clone"):
                    result = host.handle(method, *args)
                else:
                    raise BackendError(f"unknown call {method!r}: one of ping, reset, step, observe, observe_raster, "
                                       "snapshot, restore, clone")
            except BackendError:
                raise
            except (TypeError, ValueError, IndexError, RuntimeError) as error:  # arguments the backend cannot take
                # (wrong count, shapes or snapshot tensors): the caller's fault, answered as a 400, not a 500
                raise BackendError(f"bad arguments for {method}: {type(error).__name__}: {error}") from error
        return encode(result)

    def metrics_text(self) -> str:
        lines = [f"grpo_serve_uptime_seconds {time.time() - self.started:.1f}",
                 f"grpo_serve_snapshots_stored {len(self.store)}",
                 f"grpo_serve_snapshot_bytes {self.store.bytes}",
                 f"grpo_serve_snapshot_evictions_total {self.store.evictions}",
                 f"grpo_serve_sessions_open {len(self.sessions)}"]
        for name, value in sorted(self.counters.items()):
            if name.startswith("http_"):
                status = name.removeprefix("http_")
                lines.append(f'grpo_serve_http_responses_total{{status="{status}"}} {value}')
            else:
                lines.append(f"grpo_serve_{name}_total {value}")
        return "\n".join(lines) + "\n"


def _pose(x, y, yaw) -> dict[str, Any]:
    return {"position": {"x": float(x), "y": float(y), "z": 0.0},
            "rotation": {"pitch": 0.0, "yaw": math.degrees(float(yaw)), "roll": 0.0}}


# --- the FastAPI app ----------------------------------------------------------------------------------------


def create_app(server: WorldServer):
    """The FastAPI application around ``server`` (request models, auth, size cap, error mapping)."""
    from fastapi import FastAPI, Query, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
    from pydantic import BaseModel, ConfigDict, Field, model_validator
    from starlette.concurrency import run_in_threadpool

    Finite = Annotated[float, Field(allow_inf_nan=False)]
    SnapshotId = Annotated[str, Field(pattern=SNAPSHOT_ID_PATTERN, description="opaque id (letters, digits, _.:-)")]
    WorldId = Annotated[int, Field(ge=0, description="world index in the default session")]

    class Strict(BaseModel):
        model_config = ConfigDict(extra="forbid")

    class Control(Strict):
        """CARLA's vehicle control."""
        throttle: float = Field(0.0, ge=0.0, le=1.0, allow_inf_nan=False)
        brake: float = Field(0.0, ge=0.0, le=1.0, allow_inf_nan=False)
        steer: float = Field(0.0, ge=-1.0, le=1.0, allow_inf_nan=False)

    class StepRequest(Strict):
        action: Control | list[Finite] = Field(default_factory=Control,
                                               description="a control, or the action values of a non-driving backend")
        n_steps: int = Field(1, ge=1, le=server.config.max_steps_per_call)

    class ResetRequest(Strict):
        route_id: int | None = Field(None, ge=0, lt=2**32, description="episode seed: the same id, the same route")
        seed: int | None = Field(None, ge=0, lt=2**32)

    class SeedRequest(Strict):
        seed: int = Field(ge=0, lt=2**63)

    class SnapshotRequest(Strict):
        snapshot_id: SnapshotId | None = None

    class RestoreRequest(Strict):
        snapshot_id: SnapshotId

    class WorldsResetRequest(Strict):
        seed: int | list[Annotated[int, Field(ge=0, lt=2**32)]] = Field(0, description="one seed, or one per world")
        world_ids: list[WorldId] | None = None

    class WorldsStepRequest(Strict):
        actions: list[list[Finite]] = Field(description="one action per world of the default session")

    class CloneRequest(Strict):
        to: list[WorldId] | None = Field(None, description="worlds that become copies")
        num_branches: int | None = Field(None, ge=1, description="copies into worlds 0 .. num_branches - 1")

        @model_validator(mode="after")
        def one_target(self):
            if (self.to is None) == (self.num_branches is None):
                raise ValueError("give exactly one of 'to' (a list of world ids) or 'num_branches'")
            return self

    class SessionRequest(Strict):
        num_worlds: int = Field(ge=1, le=65536)
        split: Literal["train", "eval"] = "train"

    app = FastAPI(title="grpo-drive world service",
                  description="Serve, branch and step the worlds of one backend. The seed project's endpoints "
                              "(/health /reset /step /snapshot /restore ...), batched and branching verbs "
                              "(/worlds/...), a live view at /view.", version="1")
    token = server.config.token

    def error(status: int, message: str, **extra) -> JSONResponse:
        return JSONResponse({"error": message, **extra}, status_code=status)

    @app.middleware("http")
    async def guard(request: Request, call_next):
        if token and request.url.path != "/health":
            given = request.headers.get("authorization", "")
            given = given.removeprefix("Bearer ") if given.startswith("Bearer ") else request.query_params.get(
                "token", "")
            if not hmac.compare_digest(given.encode(), token.encode()):
                server.counters["http_401"] += 1
                return JSONResponse({"error": "missing or wrong bearer token: send 'Authorization: Bearer <token>' "
                                              "(or ?token=<token> from a browser)"}, status_code=401,
                                    headers={"WWW-Authenticate": "Bearer"})
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > server.config.max_request_bytes):
            server.counters["http_413"] += 1
            return error(413, f"request body of {length} bytes exceeds serve.max_request_bytes="
                              f"{server.config.max_request_bytes}")
        response = await call_next(request)
        server.counters[f"http_{response.status_code}"] += 1
        return response

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        problems = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()]
        return JSONResponse({"error": "; ".join(problems), "detail": jsonable(exc.errors())}, status_code=422)

    @app.exception_handler(BackendError)
    async def backend_error(request: Request, exc: BackendError):
        if isinstance(exc, UnknownSession):
            return error(404, str(exc), code="unknown_session")
        status = 404 if isinstance(exc, UnknownSnapshot) else 501 if isinstance(exc, NotOffered) else 400
        return error(status, str(exc))

    app.add_middleware(BodyLimit, limit=server.config.max_request_bytes, counters=server.counters)

    @app.exception_handler(ConfigError)
    async def config_error(request: Request, exc: ConfigError):
        return error(400, str(exc))

    async def run(fn, *args):
        return await run_in_threadpool(fn, *args)

    # --- the seed's endpoints ---

    @app.get("/", summary="What this service is and where to look")
    async def index():
        return {"service": "grpo-drive", "backend": server.backend_kind, "docs": "/docs", "view": "/view",
                "endpoints": sorted({route.path for route in app.routes if hasattr(route, "methods")})}

    @app.get("/health", summary="Liveness: answers while the process serves")
    async def health():
        return {"status": "ok", "backend": server.backend_kind, "uptime_s": time.time() - server.started}

    @app.get("/info", summary="Backend kind, world count, observation and action sizes, limits")
    async def info():
        return await run(server.info)

    @app.get("/status", summary="The default session's main world: episode seed, steps, return, done")
    async def status():
        return {**server.status, "snapshots": len(server.store), "snapshot_bytes": server.store.bytes,
                "sessions": len(server.sessions)}

    @app.get("/spec", summary="Action names and bounds, observation layout")
    async def spec():
        return await run(server.spec)

    @app.get("/world/vehicles", summary="Ego, traffic and pedestrians of world 0 (env=sim)")
    async def world_vehicles(world: Annotated[int, Query(ge=0)] = 0):
        return {"vehicles": await run(server.vehicles, world)}

    @app.post("/seed", summary="Seed from which /reset without route_id derives its episodes")
    async def seed(request: SeedRequest):
        return await run(server.set_seed, request.seed)

    @app.post("/reset", summary="Start an episode (route_id = a fixed episode seed)")
    async def reset(request: ResetRequest | None = None):
        request = request or ResetRequest()
        return await run(server.reset, request.route_id, request.seed)

    def action_values(action) -> list[float]:
        return [action.throttle, action.brake, action.steer] if isinstance(action, Control) else list(action)

    @app.post("/step", summary="Drive world 0 for n_steps with one action")
    async def step(request: StepRequest):
        return await run(server.step_world, 0, action_values(request.action), request.n_steps)

    @app.post("/snapshot", summary="Snapshot world 0 under an opaque id (held in a bounded LRU store)")
    async def snapshot(request: SnapshotRequest | None = None):
        return await run(server.snapshot_world, 0, (request or SnapshotRequest()).snapshot_id)

    @app.post("/restore", summary="Put a stored snapshot back into world 0")
    async def restore(request: RestoreRequest):
        return await run(server.restore_world, 0, request.snapshot_id)

    @app.post("/close", summary="Free the default session's worlds and snapshots")
    async def close():
        return await run(server.close_main)

    # --- batched and branching verbs ---

    @app.post("/worlds/reset", summary="Reset worlds of the default session (one seed, or one per world)")
    async def worlds_reset(request: WorldsResetRequest):
        return await run(server.reset_worlds, request.seed, request.world_ids)

    @app.post("/worlds/step", summary="Step every world of the default session, one action each")
    async def worlds_step(request: WorldsStepRequest):
        return await run(server.step_all, request.actions)

    @app.post("/worlds/{world}/step", summary="Drive one world (the others get zero actions)")
    async def world_step(world: int, request: StepRequest):
        return await run(server.step_world, world, action_values(request.action), request.n_steps)

    @app.post("/worlds/{world}/snapshot", summary="Snapshot one world under an opaque id")
    async def world_snapshot(world: int, request: SnapshotRequest | None = None):
        return await run(server.snapshot_world, world, (request or SnapshotRequest()).snapshot_id)

    @app.post("/worlds/{world}/restore", summary="Put a stored snapshot into one world")
    async def world_restore(world: int, request: RestoreRequest):
        return await run(server.restore_world, world, request.snapshot_id)

    @app.post("/worlds/{world}/clone", summary="Copy one world into G worlds (a group of branches)")
    async def world_clone(world: int, request: CloneRequest):
        to = request.to if request.to is not None else [w for w in range(request.num_branches) if w != world]
        return await run(server.clone_world, world, to)

    @app.get("/render.png", summary="Bird's-eye PNG of a world (env=sim)", response_class=Response)
    async def render(world: Annotated[int, Query(ge=0)] = 0, size: Annotated[int, Query(ge=16, le=1024)] = 256,
                     metres: Annotated[float, Query(gt=1.0, le=1000.0)] = 60.0):
        return Response(await run(server.render_png, world, size, metres), media_type="image/png")

    @app.get("/worlds/{world}/render.png", summary="Bird's-eye PNG of one world (env=sim)", response_class=Response)
    async def world_render(world: int, size: Annotated[int, Query(ge=16, le=1024)] = 256,
                           metres: Annotated[float, Query(gt=1.0, le=1000.0)] = 60.0):
        return Response(await run(server.render_png, world, size, metres), media_type="image/png")

    @app.get("/metrics", summary="Counters in Prometheus text format", response_class=PlainTextResponse)
    async def metrics():
        return PlainTextResponse(server.metrics_text())

    @app.get("/view", summary="A live bird's-eye view of world 0 in the browser", response_class=HTMLResponse)
    async def view():
        return HTMLResponse(VIEW_PAGE)

    # --- our client's calls (binary bodies, envs.services.wire) ---

    @app.post("/v1/sessions", summary="Open a session of N worlds for a client (its own backend)")
    async def open_session(request: SessionRequest):
        return await run(server.open_session, request.num_worlds, request.split)

    @app.delete("/v1/sessions/{session}", summary="Close a client session")
    async def close_session(session: str):
        await run(server.close_session, session)
        return {"closed": session}

    @app.post("/v1/sessions/{session}/{method}", summary="One service call; body and answer are wire messages",
              response_class=Response)
    async def session_call(session: str, method: str, request: Request):
        body = await request.body()
        return Response(await run(server.call, session, method, body), media_type=CONTENT_TYPE)

    return app


def jsonable(value: Any) -> Any:
    """Validation details as JSON (pydantic puts exceptions and raw inputs in them)."""
    return json.loads(json.dumps(value, default=str))


VIEW_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>grpo-drive: live view</title>
<style>body{font-family:sans-serif;background:#181818;color:#ddd;margin:20px}img{border:1px solid #444}
button{margin:2px}pre{font-size:12px}</style></head>
<body><h3>grpo-drive: world 0</h3>
<img id="view" width="512" height="512" alt="bird's-eye view (POST /reset first)"><br>
<button onclick="post('/reset', {})">reset</button>
<button onclick="post('/step', {action: {throttle: 0.6, brake: 0, steer: 0}, n_steps: 5})">forward x5</button>
<button onclick="post('/step', {action: {throttle: 0.4, brake: 0, steer: -0.3}, n_steps: 5})">left x5</button>
<button onclick="post('/step', {action: {throttle: 0.4, brake: 0, steer: 0.3}, n_steps: 5})">right x5</button>
<button onclick="post('/step', {action: {throttle: 0, brake: 1, steer: 0}, n_steps: 5})">brake x5</button>
<button onclick="post('/snapshot', {}).then(r => {last = r.snapshot_id})">snapshot</button>
<button onclick="last && post('/restore', {snapshot_id: last})">restore</button>
<pre id="status"></pre>
<script>
const token = new URLSearchParams(location.search).get('token');
const auth = token ? {'Authorization': 'Bearer ' + token} : {};
const q = token ? '&token=' + encodeURIComponent(token) : '';
let last = null;
function post(path, body) {
  return fetch(path, {method: 'POST', headers: {'Content-Type': 'application/json', ...auth},
                      body: JSON.stringify(body)}).then(r => r.json()).then(r => {refresh(); return r});
}
function refresh() {
  fetch('/status', {headers: auth}).then(r => r.json()).then(s => {
    document.getElementById('status').textContent = JSON.stringify(s, null, 1);
    if (s.episode_seed !== null) document.getElementById('view').src = '/render.png?size=512&t=' + Date.now() + q;
  });
}
refresh(); setInterval(refresh, 500);
</script></body></html>
"""


# --- running it ---------------------------------------------------------------------------------------------


def serve(config: ServeConfig, env_config: dict[str, Any], *, warm: bool = True) -> None:
    """Build the server, bind ``config.host:config.port`` (0 = a free port), print the URL and serve until
    interrupted. ``warm`` builds the default session first, so the first request does not wait for it."""
    import uvicorn

    server = WorldServer(config, env_config)
    if warm:
        server.main.describe()
    family = socket.AF_INET6 if ":" in config.host else socket.AF_INET
    # proto=IPPROTO_TCP: asyncio turns Nagle off only on sockets that say they are TCP; with it on, every answer
    # written in two segments waits ~40 ms for the client's delayed ACK
    listener = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((config.host, config.port))
    listener.listen(2048)  # connections made as soon as the URL is printed wait in the backlog for uvicorn
    host, port = listener.getsockname()[:2]
    app = create_app(server)
    uvicorn_config = uvicorn.Config(app, log_level="warning", access_log=False, timeout_keep_alive=300)
    shown = f"[{host}]" if family == socket.AF_INET6 else host
    print(f"{LISTENING_LINE}http://{shown}:{port}", flush=True)
    try:
        uvicorn.Server(uvicorn_config).run(sockets=[listener])
    finally:
        for host_ in [*server.sessions.values(), *([server._main] if server._main is not None else [])]:
            host_.backend.close()


def watch_parent(parent_pid: int, every_s: float = 1.0) -> None:
    """Stop this server (SIGTERM to itself, so uvicorn shuts down cleanly) once ``parent_pid`` is gone: a
    launched server lives in a process group of its own, so nothing else ends it when its launcher is killed
    without a chance to clean up (SIGKILL, a crash)."""

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(every_s)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="watch-parent", daemon=True).start()


def main(argv: list[str] | None = None) -> None:
    """``python -m envs.services.http_server --json '{"serve": {...}, "env": {...}}'``: what a launcher (the
    HTTP client's ``env.urls=[]`` mode, tests) runs; users run serve.py."""
    parser = argparse.ArgumentParser(description="Serve one backend over HTTP (see serve.py for the Hydra entry)")
    parser.add_argument("--json", default="{}", help='{"serve": {ServeConfig keys}, "env": {flat env config}}')
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    try:
        data = json.loads(args.json)
        config = from_dict(ServeConfig, data.get("serve", {}), "serve")
        env = data.get("env", {})
        if data.get("parent_pid"):
            watch_parent(int(data["parent_pid"]))
        serve(config, env, warm=bool(data.get("warm", False)))
    except (ConfigError, json.JSONDecodeError) as error:
        sys.exit(f"config error: {error}")
    except ModuleNotFoundError as error:
        if error.name not in SERVER_PACKAGES:
            raise
        sys.exit(f"serving needs {error.name}: pip install -e '.[serve]' (FastAPI and uvicorn)")


if __name__ == "__main__":
    main()

