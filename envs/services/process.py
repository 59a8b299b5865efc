"""A service in a process of its own, started by multiprocessing's ``forkserver`` and tracked by its pid.

The fork server is one clean process (no threads, no CUDA context) that has imported torch and the
simulator once; every service is a fork of it, so starting or restarting a service costs a fraction of a
second instead of a fresh interpreter's torch import (~1.5 s). multiprocessing stops the fork server when
this process exits.

A thread in the service writes a pulse (the time) into shared memory twice a second; a service whose pulse
is older than ``silence_s`` is stopped or frozen, and fails the call it is in at once, even the first call
of a run, whose answer time nobody has measured yet.

The parent talks to it over a pipe. Every wait has a timeout, sends included (a large request to a hung
service would otherwise block on a full pipe); a dead or silent service raises :class:`ServiceFailure`, and
``stop()`` ends the process by its own id (close, then terminate, then kill; straight to kill once the
service has failed), never by name. Workers ignore Ctrl-C: the parent decides when they stop.
"""

from __future__ import annotations

import multiprocessing
import signal
import threading
import time
import traceback
from multiprocessing.reduction import ForkingPickler
from typing import Any

from envs.api import BackendError, ServiceFailure

PULSE_S = 0.5
"""Seconds between a service's pulses (see ``_beat``)."""

_PIPE_ROOM = 32 * 1024
"""Requests up to this many bytes fit an empty pipe buffer, so sending them never blocks."""


def _serve(connection, env_config: dict[str, Any], num_worlds: int, threads: int, pulse=None) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if pulse is not None:
        threading.Thread(target=_beat, args=(pulse,), name="pulse", daemon=True).start()
    try:
        _serve_until_closed(connection, env_config, num_worlds, threads)
    except (BrokenPipeError, EOFError, OSError):
        return  # the parent hung up (it gave up on us, or it is gone): nothing left to serve


def _beat(pulse) -> None:
    """Write the time into shared memory every PULSE_S while the process runs: a stopped or frozen process
    falls silent even in the middle of a long call, which the parent notices without waiting for the call."""
    while True:
        pulse.value = time.monotonic()  # CLOCK_MONOTONIC is one clock for every process of the machine
        time.sleep(PULSE_S)


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
    context.set_forkserver_preload(["torch", "envs.services.host", "envs.backends"])
    return context


class ProcessService:
    """Handle of one service process. ``send`` then ``receive`` lets a caller overlap several services."""

    def __init__(self, index: int, env_config: dict[str, Any], num_worlds: int, *, threads: int = 1,
                 start_timeout_s: float = 120.0, call_timeout_s: float = 300.0, silence_s: float = 10.0):
        self.index, self.env_config, self.num_worlds = index, env_config, num_worlds
        self.threads, self.start_timeout_s, self.call_timeout_s = threads, start_timeout_s, call_timeout_s
        self.silence_s = silence_s  # a process whose pulse is older than this is frozen (e.g. SIGSTOP): failed
        self.pulse = None
        self.process = None
        self.connection = None
        self.description: dict[str, Any] = {}
        self.broken = False  # a call failed: the process is dead or hung, so stop() kills it at once

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid

    def start(self) -> ProcessService:
        context = _context()
        parent, child = context.Pipe()
        # No lock: a process stopped while holding it would block the parent that reads the pulse.
        self.pulse = context.Value("d", time.monotonic(), lock=False)
        self.process = context.Process(target=_serve, args=(child, self.env_config, self.num_worlds, self.threads,
                                                            self.pulse),
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

    def send(self, method: str, *args, timeout_s: float | None = None) -> None:
        """Send one request. A request larger than an empty pipe's buffer is written by a helper thread, so
        a hung service that reads nothing costs ``timeout_s`` (default ``call_timeout_s``), not forever."""
        data = ForkingPickler.dumps((method, args))
        if len(data) <= _PIPE_ROOM:
            self._send_bytes(data)
            return
        errors: list[BaseException] = []
        writer = threading.Thread(target=self._send_bytes, args=(data, errors), daemon=True)
        writer.start()
        writer.join(self.call_timeout_s if timeout_s is None else timeout_s)
        if writer.is_alive():  # the pipe is full and nobody reads it; killing the process ends the thread
            self.broken = True
            raise ServiceFailure(self.index, f"did not read a {len(data):,}-byte request within "
                                             f"{self.call_timeout_s if timeout_s is None else timeout_s:.0f} s "
                                             f"(pid {self.pid}, hung)")
        if errors:
            raise errors[0]

    def _send_bytes(self, data: bytes, errors: list[BaseException] | None = None) -> None:
        try:
            try:
                self.connection.send_bytes(data)
            except (BrokenPipeError, EOFError, OSError, AttributeError) as error:
                self.broken = True
                code = None if self.process is None else self.process.exitcode
                raise ServiceFailure(self.index, f"died (pid {self.pid}, exit code {code}; noticed on send: "
                                                 f"{type(error).__name__})") from error
        except ServiceFailure as failure:
            if errors is None:
                raise
            errors.append(failure)

    def receive(self, timeout_s: float | None = None):
        """The answer to the last request, waiting at most ``timeout_s`` (default ``call_timeout_s``)."""
        status, payload = self._receive(self.call_timeout_s if timeout_s is None else timeout_s)
        if status == "call_error":
            raise BackendError(f"service {self.index}: {payload}")
        return payload

    def call(self, method: str, *args, timeout_s: float | None = None):
        self.send(method, *args, timeout_s=timeout_s)
        return self.receive(timeout_s)

    def ping(self, timeout_s: float) -> None:
        """Raise ServiceFailure unless the service answers a ping within ``timeout_s`` (the heartbeat)."""
        self.call("ping", timeout_s=timeout_s)

    def _receive(self, timeout: float, starting: bool = False):
        what = "start" if starting else "answer"
        until = time.monotonic() + timeout
        try:
            while not self.connection.poll(max(0.0, min(1.0, until - time.monotonic()))):
                now = time.monotonic()
                if self.pulse is not None and now - self.pulse.value > self.silence_s:
                    self.broken = True
                    raise ServiceFailure(self.index, f"fell silent: no pulse for {now - self.pulse.value:.0f} s "
                                                     f"(pid {self.pid}, stopped or frozen)")
                if now >= until:
                    self.broken = True
                    state = "" if starting else ", hung"
                    raise ServiceFailure(self.index, f"did not {what} within {timeout:.3g} s (pid {self.pid}{state})")
            return self.connection.recv()
        except (EOFError, BrokenPipeError, OSError, AttributeError) as error:
            self.broken = True
            if self.process is not None:
                self.process.join(0.5)  # reap it, so the exit code (the signal that killed it) is known
            code = None if self.process is None else self.process.exitcode
            raise ServiceFailure(self.index, f"died (pid {self.pid}, exit code {code})") from error

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop the process by its own id: ask it to close, then terminate, then kill. A service that failed
        a call (dead, or hung: a stopped process ignores SIGTERM) is killed at once."""
        if self.process is None:
            return
        polite = not self.broken
        if polite and self.process.is_alive() and self.connection is not None:
            try:
                self.connection.send(("close", ()))
                polite = self.connection.poll(timeout_s)
                if polite:
                    self.connection.recv()
            except (BrokenPipeError, EOFError, OSError):
                pass
        if polite:
            self.process.join(timeout_s)
        if polite and self.process.is_alive():
            self.process.terminate()
            self.process.join(timeout_s)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(timeout_s)
        if self.connection is not None:
            self.connection.close()
        self.process, self.connection = None, None
