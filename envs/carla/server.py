"""CARLA servers: launched from a CARLA root (tracked by process group) or given as running ``host:port``.

A launched server is ``CarlaUE4.sh -RenderOffScreen -nosound -carla-rpc-port=P -carla-streaming-port=P+1
-carla-secondary-port=P+2 [-graphicsadapter=G] <server_args>``, started with ``start_new_session=True`` so it
leads its own process group: ``CarlaUE4.sh`` runs the real ``CarlaUE4-Linux-Shipping`` binary as a child,
and stopping the group (SIGTERM, wait, SIGKILL) ends both. Nothing is ever killed by name. ``G`` is the graphics
adapter of a CUDA device id of ``env.gpus`` (:mod:`envs.carla.gpus`), or one of ``env.graphics_adapters``.

Ports: each server needs its RPC port P and P+1 (streaming), P+2 (secondary server), and this process needs
one traffic-manager port per server (the traffic manager runs in the client). :func:`allocate_ports` picks
ports that a socket bind shows free and that no other server of this process holds, so several backends
(training and evaluation, tests) never clash.

Health: a server is ready when ``carla.Client(host, port).get_server_version()`` answers; :meth:`CarlaServer.
wait_ready` retries until a deadline and fails early, with the server's log tail, if the process exits.
:class:`ServerManager` starts N servers, notices dead ones (:meth:`ServerManager.dead`), restarts them, and
stops them all. ``health_check`` is injectable, so the lifecycle is tested with a stand-in executable.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from envs.api import BackendError
from envs.carla.config import CarlaConfig, parse_host
from envs.carla.gpus import graphics_adapters

EXECUTABLE = "CarlaUE4.sh"
BASE_ARGS = ("-RenderOffScreen", "-nosound")
DEFAULT_CLIENT = "0.9.16"  # the client release this backend is written and tested (without a server) against


def client_version() -> str:
    """The installed ``carla`` client's release (its package metadata), or DEFAULT_CLIENT if the package is not
    installed (then nothing talks to a server anyway)."""
    from importlib import metadata

    try:
        return metadata.version("carla")
    except metadata.PackageNotFoundError:
        return DEFAULT_CLIENT


def check_versions(server_version: str, client: str, address: str) -> None:
    """A server must run the client's release (the RPC protocol and blueprint set change between releases):
    ServerStartError with the fix otherwise. "tcp" (a bare port check, no version known) passes."""
    if server_version == "tcp" or server_version.split("-")[0] == client.split("-")[0]:
        return
    raise ServerStartError(
        f"CARLA server {address} runs {server_version} but this process has the carla {client} client; they must "
        f"match: install the client of the server's release (pip install carla=={server_version.split('-')[0]}, "
        f"where the package registry offers it for this Python) or run a {client} server")

HealthCheck = Callable[[str, int, float], str]
"""(host, rpc port, timeout s) -> the server's version; raises when the server does not answer."""


class ServerStartError(BackendError):
    """A CARLA server did not start or cannot be reached; the message says why and what to do."""


@dataclass(frozen=True)
class ServerPorts:
    """The ports one server uses: RPC (clients connect), streaming (sensor data), secondary (multi-GPU
    rendering servers connect), and the traffic manager's, which this process opens."""

    rpc: int
    streaming: int
    secondary: int
    traffic_manager: int

    @property
    def server_ports(self) -> tuple[int, int, int]:
        return self.rpc, self.streaming, self.secondary


# --- ports --------------------------------------------------------------------------------------------------

_held_ports: set[int] = set()  # ports handed to servers of this process and not yet released
_held_lock = threading.Lock()


def port_is_free(port: int) -> bool:
    """True when a TCP socket can bind ``port`` on every interface (so no server listens on it anywhere)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("", port))
        except OSError:
            return False
    return True


def allocate_ports(count: int, *, rpc_base: int = 2000, stride: int = 4, tm_base: int = 8000,
                   rpc_ports: Sequence[int] | None = None, is_free: Callable[[int], bool] = port_is_free,
                   limit: int = 4096) -> list[ServerPorts]:
    """Ports for ``count`` servers, none in use and none held by another server of this process.

    Launched servers take RPC ports ``rpc_base + k * stride`` (the first k whose rpc, rpc+1 and rpc+2 are all
    free). ``rpc_ports`` gives the RPC ports of servers that already run elsewhere (``env.hosts``): then only
    traffic-manager ports are searched, and the RPC ports are taken as given. The ports stay held until
    :func:`release_ports`."""
    with _held_lock:
        taken = set(_held_ports)
        out = []

        def free(port: int) -> bool:
            return port not in taken and port <= 65535 and is_free(port)

        def next_traffic_manager_port(start: int) -> int:
            for port in range(start, start + limit):
                if free(port):
                    return port
            raise ServerStartError(f"no free traffic-manager port in [{start}, {start + limit}); "
                                   "set env.traffic_manager_port to another range")

        tm_port = tm_base
        for index in range(count):
            if rpc_ports is not None:
                rpc = int(rpc_ports[index])
                ports_of_server = (rpc, rpc + 1, rpc + 2)
            else:
                for k in range(limit):
                    rpc = rpc_base + k * stride
                    ports_of_server = (rpc, rpc + 1, rpc + 2)
                    if all(free(p) for p in ports_of_server):
                        break
                else:
                    raise ServerStartError(f"no free port block for a CARLA server from {rpc_base} on; set env.port "
                                           "to another range")
            taken.update(ports_of_server)
            tm_port = next_traffic_manager_port(tm_port)
            taken.add(tm_port)
            out.append(ServerPorts(*ports_of_server, tm_port))
        for ports in out:
            _held_ports.update((*ports.server_ports, ports.traffic_manager) if rpc_ports is None
                               else (ports.traffic_manager,))
        return out


def release_ports(ports: ServerPorts) -> None:
    with _held_lock:
        _held_ports.difference_update((*ports.server_ports, ports.traffic_manager))


# --- command line and health -----------------------------------------------------------------------------------

def server_command(executable: str | os.PathLike, ports: ServerPorts, adapter: int | None = None,
                   extra_args: Sequence[str] = ()) -> list[str]:
    """The command line of one launched server."""
    command = [str(executable), *BASE_ARGS, f"-carla-rpc-port={ports.rpc}", f"-carla-streaming-port={ports.streaming}",
               f"-carla-secondary-port={ports.secondary}"]
    if adapter is not None:
        command.append(f"-graphicsadapter={adapter}")
    command.extend(extra_args)
    return command


def adapter_for(index: int, adapters: Sequence[int]) -> int | None:
    """Round-robin graphics adapter of server ``index``; None when no adapters are configured."""
    return int(adapters[index % len(adapters)]) if adapters else None


def carla_health_check(host: str, port: int, timeout_s: float) -> str:
    """The server's version through a CARLA client (raises RuntimeError when it does not answer in time)."""
    import carla

    client = carla.Client(host, port, worker_threads=1)
    client.set_timeout(timeout_s)
    return client.get_server_version()


def tcp_health_check(host: str, port: int, timeout_s: float) -> str:
    """A weaker check: the RPC port accepts TCP connections (for stand-ins and firewalled setups)."""
    with socket.create_connection((host, port), timeout=timeout_s):
        return "tcp"


def resolve_carla_root(carla_root: str | None) -> Path:
    """The CARLA folder (``carla_root`` or $CARLA_ROOT) holding the executable; ServerStartError otherwise."""
    root = carla_root or os.environ.get("CARLA_ROOT")
    if not root:
        raise ServerStartError("env=carla needs CARLA servers: set env.carla_root (or export CARLA_ROOT) to the "
                               "folder of a CARLA 0.9.16 install to launch them, or env.hosts=[host:port,...] to "
                               "use running ones")
    executable = Path(root).expanduser() / EXECUTABLE
    if not executable.is_file():
        raise ServerStartError(f"{executable} does not exist: CARLA_ROOT must be the folder of an unpacked CARLA "
                               f"0.9.16 package (the one holding {EXECUTABLE})")
    if not os.access(executable, os.X_OK):
        raise ServerStartError(f"{executable} is not executable: chmod +x it")
    return executable


# --- one server ----------------------------------------------------------------------------------------------------

class CarlaServer:
    """One CARLA server: launched (``executable`` given; tracked by pid and process group) or external."""

    def __init__(self, index: int, host: str, ports: ServerPorts, *, executable: str | os.PathLike | None = None,
                 adapter: int | None = None, extra_args: Sequence[str] = (), log_dir: str | os.PathLike | None = None,
                 env: dict[str, str] | None = None):
        self.index, self.host, self.ports, self.adapter = index, host, ports, adapter
        self.executable = executable
        self.extra_args = tuple(extra_args)
        self.log_dir = Path(log_dir) if log_dir is not None else None
        self.env = env
        self.process: subprocess.Popen | None = None
        self.log_path: Path | None = None
        self.pid_path: Path | None = None
        self.version: str | None = None

    @property
    def launched(self) -> bool:
        return self.executable is not None

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid

    @property
    def address(self) -> str:
        return f"{self.host}:{self.ports.rpc}"

    def command(self) -> list[str]:
        if self.executable is None:
            raise ServerStartError(f"server {self.index} at {self.address} is external: it has no command")
        return server_command(self.executable, self.ports, self.adapter, self.extra_args)

    def start(self) -> CarlaServer:
        """Launch the process (a no-op for an external server)."""
        if not self.launched or self.alive():
            return self
        log_dir = self.log_dir or Path(tempfile.mkdtemp(prefix="carla-server-"))
        log_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = log_dir / f"server{self.index}-{self.ports.rpc}.log"
        with open(self.log_path, "ab") as log:
            # start_new_session: the server leads its own process group (and ignores our Ctrl-C), so stop()
            # reaches CarlaUE4.sh and the binary it starts, and nothing else.
            self.process = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, start_new_session=True,
                                            env=None if self.env is None else {**os.environ, **self.env})
        # If this process is killed outright (SIGKILL), its servers live on in their own sessions; the pid file
        # names the process group to stop by hand: kill -- -$(cat server0-2000.pid)
        self.pid_path = log_dir / f"server{self.index}-{self.ports.rpc}.pid"
        self.pid_path.write_text(f"{self.process.pid}\n")
        return self

    def alive(self) -> bool:
        """Launched: the process runs. External: assumed alive (a health check tells)."""
        if not self.launched:
            return True
        return self.process is not None and self.process.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def wait_ready(self, deadline_s: float, health_check: HealthCheck = carla_health_check,
                   poll_s: float = 0.25) -> str:
        """Retry until the server answers ``health_check`` (returns its version) or ``deadline_s`` passes.

        Each round first tries a plain TCP connection to the RPC port (a refusal returns at once, so a launched
        server that exits is noticed within ``poll_s``), then the health check itself."""
        end = time.monotonic() + deadline_s
        last_error: BaseException | None = None
        while True:
            if self.launched and not self.alive():
                code = None if self.process is None else self.process.returncode
                raise ServerStartError(f"CARLA server {self.index} (pid {self.pid}, {self.address}) exited with code "
                                       f"{code} while starting; log {self.log_path}:\n{self.log_tail()}")
            remaining = end - time.monotonic()
            if remaining <= 0:
                where = f"pid {self.pid}, log {self.log_path}" if self.launched else "started elsewhere"
                raise ServerStartError(f"CARLA server {self.index} at {self.address} ({where}) did not answer within "
                                       f"{deadline_s:.0f} s (last error: {last_error}); raise env.start_timeout_s, "
                                       "or check the server")
            try:
                tcp_health_check(self.host, self.ports.rpc, max(0.1, min(1.0, remaining)))
                self.version = health_check(self.host, self.ports.rpc, max(0.5, min(5.0, remaining)))
                return self.version
            except Exception as error:  # a server that is still starting refuses or times out
                last_error = error
            time.sleep(min(poll_s, max(0.0, end - time.monotonic())))

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the process group this server leads: SIGTERM, wait, then SIGKILL. External: nothing to do."""
        process = self.process
        if process is None:
            return
        pgid = process.pid  # start_new_session made the server the leader of a group with its own pid
        try:
            _signal_group(pgid, signal.SIGTERM)
            try:
                process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                pass
            # The leader may be gone while the binary it started still runs: the group outlives its leader.
            _signal_group(pgid, signal.SIGKILL)
            try:
                process.wait(timeout_s)
            except subprocess.TimeoutExpired as error:
                raise ServerStartError(f"CARLA server {self.index} (pid {pgid}) survived SIGKILL") from error
            if self.pid_path is not None:
                self.pid_path.unlink(missing_ok=True)
        finally:
            self.process = None


def _signal_group(pgid: int, signum: int) -> None:
    try:
        os.killpg(pgid, signum)
    except ProcessLookupError:  # the whole group has exited already
        pass


def group_exists(pgid: int) -> bool:
    """Whether any process of group ``pgid`` still runs (a zombie leader counts until it is reaped)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stop_process_group(pgid: int, timeout_s: float = 10.0) -> None:
    """Stop a server's process group that this process did not start itself (one a service launched and left
    behind): SIGTERM, wait up to ``timeout_s``, then SIGKILL. By group id, never by name."""
    _signal_group(pgid, signal.SIGTERM)
    end = time.monotonic() + timeout_s
    while group_exists(pgid) and time.monotonic() < end:
        time.sleep(0.05)
    _signal_group(pgid, signal.SIGKILL)


# --- many servers ----------------------------------------------------------------------------------------------------

class ServerManager:
    """``count`` servers: launched from ``executable`` (ports allocated here, graphics adapters round-robin) or the
    given external ``hosts``. Start them all, find dead ones, restart one, stop all."""

    def __init__(self, count: int, *, executable: str | os.PathLike | None = None, hosts: Sequence[str] = (),
                 adapters: Sequence[int] = (), rpc_base: int = 2000, stride: int = 4, tm_base: int = 8000,
                 extra_args: Sequence[str] = (), start_timeout_s: float = 120.0,
                 health_check: HealthCheck = carla_health_check, log_dir: str | os.PathLike | None = None,
                 env: dict[str, str] | None = None):
        if count < 1:
            raise ServerStartError(f"need at least one CARLA server, got {count}")
        if executable is None and len(hosts) < count:
            raise ServerStartError(f"env.hosts lists {len(hosts)} servers but {count} worlds need {count} (one ego per "
                                   "server): list more host:port pairs, or lower env.num_services")
        self.count, self.executable, self.adapters = count, executable, tuple(adapters)
        self.rpc_base, self.stride, self.tm_base = rpc_base, stride, tm_base
        self.extra_args, self.start_timeout_s = tuple(extra_args), start_timeout_s
        self.health_check, self.log_dir, self.env = health_check, log_dir, env
        self.hosts = [parse_host(h) for h in hosts[:count]] if executable is None else []
        self.servers: list[CarlaServer] = []
        self.restarts = 0

    @classmethod
    def from_config(cls, config: CarlaConfig, count: int, start_timeout_s: float = 120.0,
                    health_check: HealthCheck = carla_health_check) -> ServerManager:
        executable = None if config.hosts else resolve_carla_root(config.carla_root)
        # env.gpus are CUDA ids: mapped to graphics adapters (nvidia-smi), unless env.graphics_adapters gives them
        adapters = [] if config.hosts else graphics_adapters(config.gpus, config.graphics_adapters)
        return cls(count, executable=executable, hosts=config.hosts, adapters=adapters, rpc_base=config.port,
                   stride=config.port_stride, tm_base=config.traffic_manager_port, extra_args=config.server_args,
                   start_timeout_s=start_timeout_s, health_check=health_check, log_dir=config.log_dir)

    @property
    def launched(self) -> bool:
        return self.executable is not None

    @property
    def pids(self) -> list[int | None]:
        return [server.pid for server in self.servers]

    def _make(self, index: int) -> CarlaServer:
        if self.launched:
            (ports,) = allocate_ports(1, rpc_base=self.rpc_base, stride=self.stride, tm_base=self.tm_base)
            return CarlaServer(index, "127.0.0.1", ports, executable=self.executable,
                               adapter=adapter_for(index, self.adapters),
                               extra_args=self.extra_args, log_dir=self.log_dir, env=self.env)
        host, rpc = self.hosts[index]
        (ports,) = allocate_ports(1, tm_base=self.tm_base, rpc_ports=[rpc])
        return CarlaServer(index, host, ports)

    def start(self) -> ServerManager:
        """Launch (or locate) every server, then wait until all answer. Any failure stops them all."""
        try:
            for index in range(self.count):
                self.servers.append(self._make(index).start())
            for index in range(self.count):
                self._ready_or_relaunch(index)
        except BaseException:
            self.stop()
            raise
        return self

    def _ready_or_relaunch(self, index: int, attempts: int = 3) -> None:
        """Wait for server ``index``; a launched server that exits while starting (for example because another
        program took one of its ports between the check and its bind) is relaunched on other ports."""
        for attempt in range(attempts):
            server = self.servers[index]
            try:
                self._ready(server)
                return
            except ServerStartError:
                if not server.launched or server.alive() or attempt == attempts - 1:
                    raise
            server.stop()
            release_ports(server.ports)
            self.servers[index] = self._make(index).start()

    def _ready(self, server: CarlaServer) -> None:
        version = server.wait_ready(self.start_timeout_s, self.health_check)
        check_versions(version, client_version(), server.address)

    def dead(self) -> list[int]:
        """Indices of launched servers whose process has exited."""
        return [server.index for server in self.servers if not server.alive()]

    def healthy(self, index: int, timeout_s: float = 5.0) -> bool:
        """The server's process runs (if launched) and it answers a health check within ``timeout_s``."""
        server = self.servers[index]
        if not server.alive():
            return False
        try:
            self.health_check(server.host, server.ports.rpc, timeout_s)
        except Exception:
            return False
        return True

    def restart(self, index: int) -> CarlaServer:
        """Stop server ``index`` (if launched) and start a fresh one on free ports; an external server is waited
        for until it answers again (its supervisor restarts it)."""
        old = self.servers[index]
        old.stop()
        # Fresh ports, the traffic manager's too: this process keeps the old server's traffic manager on its
        # old port. The old ports are released only after, so they are not handed straight back.
        server = self._make(index).start()
        release_ports(old.ports)
        self.servers[index] = server
        self.restarts += 1
        try:
            self._ready_or_relaunch(index)
        except BaseException:
            self.servers[index].stop()
            raise
        return self.servers[index]

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop every launched server by its process group and release all ports."""
        errors = []
        for server in self.servers:
            try:
                server.stop(timeout_s)
            except Exception as error:  # keep stopping the others
                errors.append(error)
            release_ports(server.ports)
        self.servers = []
        if errors:
            raise errors[0]
