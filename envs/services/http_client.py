"""``env=http``: world services reached by URL, as one more service handle that ``MultiServiceBackend`` drives.

:class:`HttpService` has the interface of ``ProcessService`` and ``RayService`` (``send`` / ``receive`` /
``call`` / ``stop`` / ``description`` / ``pid``), so branching, cross-service restore and failure handling
(restart, the failed step's worlds reported as ``service_failed``, ``restarts`` counted) are the ones of
``envs/services/multi.py``. Each handle opens a *session* of its share of the worlds on its server
(``POST /v1/sessions``) and runs every call on it with bodies in the non-pickle format of ``envs.services.wire``.

Two ways to get servers:

* ``env.urls=[http://host:port, ...]``: services someone started (``python serve.py``). A service that stops
  answering is reopened on the same URL, waiting up to ``env.start_timeout_s`` for it to come back.
* ``env.urls=[]`` (the default): ``env.num_services`` servers launched here on free loopback ports
  (:class:`LocalServer`), tracked by pid and stopped by their process group; a dead one is launched again.

The client uses only the standard library (``http.client``), so ``env=http`` needs nothing beyond what
``python train.py`` installs; the servers need the ``serve`` extra (FastAPI, uvicorn).
"""

from __future__ import annotations

import http.client
import json
import os
import selectors
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from envs.api import BackendError, ServiceFailure, Snapshot
from envs.services.http_config import HttpConfig
from envs.services.wire import CONTENT_TYPE, decode, encode, snapshot_from_wire, snapshot_to_wire

TOKEN_VARIABLE = "GRPO_SERVE_TOKEN"
"""Environment variable holding the services' bearer token when ``env.token`` is null."""

LISTENING_LINE = "grpo-drive serve: listening on "
"""The first line a server prints, followed by its URL: :class:`LocalServer` reads the port from it."""


class LocalServer:
    """A world server launched from here (``python -m envs.services.http_server``) on a free loopback port.

    It runs in a process group of its own (``start_new_session``), so :meth:`stop` ends it and anything it
    started by that group, never by name. Its stderr goes to a log file named in error messages."""

    def __init__(self, index: int, env_config: dict[str, Any], *, threads: int, token: str | None,
                 start_timeout_s: float, serve: dict[str, Any] | None = None):
        self.index, self.env_config, self.threads, self.token = index, env_config, threads, token
        self.start_timeout_s = start_timeout_s
        self.process: subprocess.Popen | None = None
        self.url = ""
        self.log_path = Path(tempfile.gettempdir()) / f"grpo-drive-serve-{os.getpid()}-{index}.log"
        self.serve_overrides = dict(serve or {})  # further ServeConfig keys (e.g. the snapshot store's bounds)

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid

    def start(self) -> LocalServer:
        message = {"serve": {"host": "127.0.0.1", "port": 0, "threads": self.threads, "token": self.token,
                             **self.serve_overrides}, "env": self.env_config,
                   "parent_pid": os.getpid()}  # the server stops itself when this process is gone
        root = str(Path(__file__).resolve().parents[2])  # this checkout's code, whatever the working directory
        environ = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen([sys.executable, "-m", "envs.services.http_server", "--json",
                                             json.dumps(message)], stdout=subprocess.PIPE, stderr=log,
                                            stdin=subprocess.DEVNULL, env=environ, start_new_session=True)
        line = self._first_line()
        if not line.startswith(LISTENING_LINE):
            self.stop()
            raise ServiceFailure(self.index, f"server did not start within {self.start_timeout_s:.0f} s "
                                             f"(log: {self.log_path}):\n{self._log_tail()}")
        self.url = line[len(LISTENING_LINE):].strip()
        threading.Thread(target=self._drain, daemon=True).start()  # a full stdout pipe would block the server
        return self

    def _first_line(self) -> str:
        deadline = time.monotonic() + self.start_timeout_s
        selector = selectors.DefaultSelector()
        selector.register(self.process.stdout, selectors.EVENT_READ)
        try:
            while time.monotonic() < deadline:
                if selector.select(timeout=min(0.2, max(0.0, deadline - time.monotonic()))):
                    return self.process.stdout.readline().decode(errors="replace")
                if self.process.poll() is not None:
                    return ""
            return ""
        finally:
            selector.close()

    def _drain(self) -> None:
        process = self.process
        try:
            while process is not None and process.stdout.read(65536):
                pass
        except (OSError, ValueError):
            pass

    def _log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, timeout_s: float = 5.0) -> None:
        """End the server's process group: SIGTERM (uvicorn shuts down cleanly), then SIGKILL."""
        process, self.process = self.process, None
        if process is None:
            return
        for sig in (signal.SIGTERM, signal.SIGKILL):
            if process.poll() is not None:
                break
            try:
                os.killpg(process.pid, sig)
            except ProcessLookupError:
                break
            try:
                process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                continue
        if process.poll() is None:
            process.wait(timeout_s)
        if process.stdout is not None:
            process.stdout.close()


class _NoDelay:
    """Send small requests at once: with Nagle's algorithm on, a request written in two segments waits for the
    server's delayed ACK (~40 ms per call on Linux)."""

    def connect(self) -> None:
        super().connect()
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class _HTTPConnection(_NoDelay, http.client.HTTPConnection):
    pass


class _HTTPSConnection(_NoDelay, http.client.HTTPSConnection):
    pass


class HttpService:
    """Handle of one session on one world server, with the interface of ``ProcessService``.

    ``send`` posts the call on a thread of its own and ``receive`` waits for the answer, so the multi-service
    backend overlaps services as it does with processes. A refused or broken connection, a timeout, a 502-504
    or a lost session is a :class:`ServiceFailure` (the service is restarted); any other 4xx/5xx is a
    :class:`BackendError` carrying the server's message (the call was wrong, the service is fine)."""

    def __init__(self, index: int, url: str, num_worlds: int, *, split: str = "train", token: str | None = None,
                 start_timeout_s: float = 120.0, call_timeout_s: float = 300.0, server: LocalServer | None = None):
        self.index, self.url, self.num_worlds, self.split, self.token = index, url.rstrip("/"), num_worlds, split, token
        self.start_timeout_s, self.call_timeout_s, self.server = start_timeout_s, call_timeout_s, server
        self.session: str | None = None
        self.description: dict[str, Any] = {}
        self._connection: http.client.HTTPConnection | None = None
        self._pending: tuple[str, threading.Thread, dict[str, Any]] | None = None

    @property
    def pid(self) -> int | None:
        """The server's pid when this process launched it (None for a server reached by URL)."""
        return None if self.server is None else self.server.pid

    def start(self) -> HttpService:
        """Open a session of ``num_worlds`` worlds, waiting up to ``start_timeout_s`` for the server to answer."""
        deadline = time.monotonic() + self.start_timeout_s
        body = json.dumps({"num_worlds": self.num_worlds, "split": self.split}).encode()
        while True:
            try:
                answer = json.loads(self._request("POST", "/v1/sessions", body, "application/json",
                                                  max(1.0, deadline - time.monotonic())))
                break
            except ServiceFailure as failure:
                if time.monotonic() >= deadline:
                    raise ServiceFailure(self.index, f"{self.url} did not start a session within "
                                                     f"{self.start_timeout_s:.0f} s ({failure})") from failure
                time.sleep(0.2)
        self.session, self.description = answer["session"], answer["description"]
        return self

    # --- calls --------------------------------------------------------------------------------------------

    def send(self, method: str, *args) -> None:
        if method == "restore":  # the multi-service backend hands snapshots around as bytes; the wire gets arrays
            data, ids = args
            args = (snapshot_to_wire(Snapshot.from_bytes(data)), ids)
        body = encode(list(args))
        holder: dict[str, Any] = {}

        def post() -> None:
            try:
                holder["answer"] = self._request("POST", f"/v1/sessions/{self.session}/{method}", body, CONTENT_TYPE,
                                                 self.call_timeout_s)
            except BaseException as error:  # handed to receive(), which raises it in the caller's thread
                holder["error"] = error

        thread = threading.Thread(target=post, name=f"http-service-{self.index}", daemon=True)
        thread.start()
        self._pending = (method, thread, holder)

    def receive(self):
        if self._pending is None:
            raise BackendError(f"service {self.index}: receive() without a send()")
        method, thread, holder = self._pending
        self._pending = None
        thread.join(self.call_timeout_s + 1.0)
        if thread.is_alive():
            self._drop_connection()
            raise ServiceFailure(self.index, f"{self.url} did not answer {method} within {self.call_timeout_s:.0f} s")
        if "error" in holder:
            raise holder["error"]
        answer = decode(holder["answer"])
        if method == "snapshot":
            return snapshot_from_wire(answer).to_bytes()
        return answer

    def call(self, method: str, *args):
        self.send(method, *args)
        return self.receive()

    def alive(self) -> bool:
        try:
            self._request("GET", "/health", None, None, 5.0)
            return True
        except BackendError:
            return False

    def stop(self) -> None:
        """Close the session (best effort) and, if this process launched the server, stop it."""
        if self.session is not None and (self.server is None or self.server.process is not None):
            try:
                self._request("DELETE", f"/v1/sessions/{self.session}", None, None, 5.0)
            except BackendError:
                pass  # the server is gone or its session with it
        self.session = None
        self._drop_connection()
        if self.server is not None:
            self.server.stop()

    # --- transport ------------------------------------------------------------------------------------------

    def _request(self, verb: str, path: str, body: bytes | None, content_type: str | None, timeout: float) -> bytes:
        headers = {}
        if content_type:
            headers["Content-Type"] = content_type
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        try:
            connection = self._connect(timeout)
            connection.request(verb, path, body=body, headers=headers)
            response = connection.getresponse()
            data = response.read()
        except (OSError, http.client.HTTPException) as error:
            self._drop_connection()
            reason = f"{type(error).__name__}: {error}"
            raise ServiceFailure(self.index, f"{self.url} is not reachable ({reason})") from error
        if response.status == 200:
            return data
        try:
            detail = json.loads(data)
        except ValueError:
            detail = {"error": data[:200].decode(errors="replace")}
        message = detail.get("error", detail) if isinstance(detail, dict) else detail
        if response.status in (502, 503, 504) or (isinstance(detail, dict) and detail.get("code") == "unknown_session"):
            raise ServiceFailure(self.index, f"{self.url} answered {response.status}: {message}")
        raise BackendError(f"service {self.index} ({self.url}) answered {response.status}: {message}")

    def _connect(self, timeout: float) -> http.client.HTTPConnection:
        if self._connection is None:
            parts = urlsplit(self.url)
            kind = _HTTPSConnection if parts.scheme == "https" else _HTTPConnection
            self._connection = kind(parts.hostname, parts.port, timeout=timeout)
        self._connection.timeout = timeout
        if self._connection.sock is not None:
            self._connection.sock.settimeout(timeout)
        return self._connection

    def _drop_connection(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.close()


def start_http_services(config: HttpConfig, services) -> Any:
    """The multi-service backend over ``config.urls``, or over ``services.num_services`` launched servers."""
    from envs.services.launch import split_worlds
    from envs.services.multi import MultiServiceBackend

    if services.launcher != "local":
        raise BackendError(f"env.launcher must be local for env=http (the services are reached by URL), got "
                           f"{services.launcher!r}")
    urls = list(config.urls)
    if urls and services.num_services not in (1, len(urls)):
        raise BackendError(f"env.num_services={services.num_services} but env.urls lists {len(urls)} services; "
                           f"leave env.num_services out (the URLs count) or set it to {len(urls)}")
    count = len(urls) if urls else services.num_services
    if not urls:  # a typo in the launched servers' config is named here, not found in a server's log
        from envs.backends import env_config_from_dict

        env_config_from_dict(dict(config.serve_env), "env.serve_env")
    threads = config.server_threads
    token = config.token or os.environ.get(TOKEN_VARIABLE) or None

    def factory(index: int, num_worlds: int) -> HttpService:
        server = None
        if urls:
            url = urls[index]
        else:
            server = LocalServer(index, dict(config.serve_env), threads=threads, token=token,
                                 start_timeout_s=services.start_timeout_s).start()
            url = server.url
        service = HttpService(index, url, num_worlds, split=config.split, token=token,
                              start_timeout_s=services.start_timeout_s, call_timeout_s=services.call_timeout_s,
                              server=server)
        try:
            return service.start()
        except BaseException:
            service.stop()
            raise

    return MultiServiceBackend(factory, split_worlds(config.num_worlds, count))
