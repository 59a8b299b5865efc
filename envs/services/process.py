"""A service in a process of its own, started by multiprocessing's ``forkserver`` and tracked by its pid.

The fork server is one clean process (no threads, no CUDA context) that has imported torch and the
simulator once; every service is a fork of it, so starting or restarting a service costs a fraction of a
second instead of a fresh interpreter's torch import (~1.5 s). multiprocessing stops the fork server when
this process exits.

The parent talks to it over a pipe. Every wait has a timeout; a dead or silent service raises
:class:`ServiceFailure`, and ``stop()`` ends the process by its own id (close, then terminate, then kill),
never by name. Workers ignore Ctrl-C: the parent decides when they stop.
"""

from __future__ import annotations

import multiprocessing
import signal
import traceback
from typing import Any

from envs.api import BackendError, ServiceFailure


def _serve(connection, env_config: dict[str, Any], num_worlds: int, threads: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        _serve_until_closed(connection, env_config, num_worlds, threads)
    except (BrokenPipeError, EOFError, OSError):
        return  # the parent hung up (it gave up on us, or it is gone): nothing left to serve


def _serve_until_closed(connection, env_config: dict[str, Any], num_worlds: int, threads: int) -> None:
    try:
        from envs.services.host import ServiceHost

        host = ServiceHost(env_config, num_worlds, threads)
    except Exception:
        connection.send(("error", traceback.format_exc()))
        return
    connection.send(("ready", host.describe()))
    while True:
        method, args = connection.recv()
        if method == "close":
            try:
                host.close()  # a CARLA service stops its server here (a forked process runs no atexit hooks)
            except Exception:
                traceback.print_exc()
            connection.send(("ok", None))
            return
        try:
            result = host.handle(method, *args)
        except Exception as error:  # a call error: the service is fine, the caller gets the message
            connection.send(("call_error", f"{type(error).__name__}: {error}"))
        else:
            connection.send(("ok", result))


def _context():
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["torch", "envs.services.host", "envs.factory"])
    return context


class ProcessService:
    """Handle of one service process. ``send`` then ``receive`` lets a caller overlap several services."""

    def __init__(self, index: int, env_config: dict[str, Any], num_worlds: int, *, threads: int = 1,
                 start_timeout_s: float = 120.0, call_timeout_s: float = 300.0):
        self.index, self.env_config, self.num_worlds = index, env_config, num_worlds
        self.threads, self.start_timeout_s, self.call_timeout_s = threads, start_timeout_s, call_timeout_s
        self.process = None
        self.connection = None
        self.description: dict[str, Any] = {}

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid

    def start(self) -> ProcessService:
        context = _context()
        parent, child = context.Pipe()
        self.process = context.Process(target=_serve, args=(child, self.env_config, self.num_worlds, self.threads),
                                       name=f"grpo-drive-service-{self.index}", daemon=True)
        self.process.start()
        child.close()
        self.connection = parent
        status, payload = self._receive(self.start_timeout_s, starting=True)
        if status != "ready":
            self.stop()
            raise ServiceFailure(self.index, f"failed to start:\n{payload}")
        self.description = payload
        return self

    def alive(self) -> bool:
        return self.process is not None and self.process.is_alive()

    def send(self, method: str, *args) -> None:
        try:
            self.connection.send((method, args))
        except (BrokenPipeError, EOFError, OSError, AttributeError) as error:
            raise ServiceFailure(self.index, f"is not reachable ({type(error).__name__})") from error

    def receive(self):
        status, payload = self._receive(self.call_timeout_s)
        if status == "call_error":
            raise BackendError(f"service {self.index}: {payload}")
        return payload

    def call(self, method: str, *args):
        self.send(method, *args)
        return self.receive()

    def _receive(self, timeout: float, starting: bool = False):
        what = "start" if starting else "answer"
        try:
            if not self.connection.poll(timeout):
                raise ServiceFailure(self.index, f"did not {what} within {timeout:.0f} s (pid {self.pid})")
            return self.connection.recv()
        except (EOFError, BrokenPipeError, OSError) as error:
            code = None if self.process is None else self.process.exitcode
            raise ServiceFailure(self.index, f"died (pid {self.pid}, exit code {code})") from error

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop the process by its own id: ask it to close, then terminate, then kill."""
        if self.process is None:
            return
        if self.process.is_alive() and self.connection is not None:
            try:
                self.connection.send(("close", ()))
                if self.connection.poll(timeout_s):
                    self.connection.recv()
            except (BrokenPipeError, EOFError, OSError):
                pass
        self.process.join(timeout_s)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(timeout_s)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(timeout_s)
        if self.connection is not None:
            self.connection.close()
        self.process, self.connection = None, None
