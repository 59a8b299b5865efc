"""Launching and stopping CARLA servers, with a stand-in CarlaUE4.sh (tests/envs/carla/conftest.py): command
lines, ports without clashes, start, health through a real CARLA client, crash detection and restart, and a
shutdown that leaves no process behind."""

import json
import os
import signal
import socket
import time

import pytest

from envs.carla.config import CarlaConfig
from envs.carla.server import (
    CarlaServer,
    ServerManager,
    ServerPorts,
    ServerStartError,
    adapter_for,
    allocate_ports,
    carla_health_check,
    port_is_free,
    release_ports,
    resolve_carla_root,
    server_command,
    tcp_health_check,
)
from tests.envs.carla.conftest import free_port_base, process_exists, wait_gone

pytest.importorskip("carla")  # the health check is a real CARLA client


def test_command_line():
    ports = ServerPorts(3000, 3001, 3002, 8005)
    command = server_command("/opt/carla/CarlaUE4.sh", ports, adapter=1, extra_args=["-quality-level=Low"])
    assert command == ["/opt/carla/CarlaUE4.sh", "-RenderOffScreen", "-nosound", "-carla-rpc-port=3000",
                       "-carla-streaming-port=3001", "-carla-secondary-port=3002", "-graphicsadapter=1",
                       "-quality-level=Low"]
    assert "-graphicsadapter" not in " ".join(server_command("x", ports))


def test_graphics_adapters_round_robin():
    assert [adapter_for(i, [0, 1, 2]) for i in range(5)] == [0, 1, 2, 0, 1]
    assert adapter_for(3, []) is None


def test_ports_skip_busy_ones_and_never_clash():
    busy = {2000, 2005, 8000}  # port 2005 spoils the second block (2004, 2005, 2006)
    first = allocate_ports(2, rpc_base=2000, stride=4, tm_base=8000, is_free=lambda p: p not in busy)
    try:
        assert [p.rpc for p in first] == [2008, 2012]
        assert [p.traffic_manager for p in first] == [8001, 8002]
        # a second allocation in this process does not reuse held ports, even if a bind would succeed
        second = allocate_ports(1, rpc_base=2000, stride=4, tm_base=8000, is_free=lambda p: p not in busy)
        try:
            held = {q for p in first for q in (*p.server_ports, p.traffic_manager)}
            assert not held & {*second[0].server_ports, second[0].traffic_manager}
        finally:
            release_ports(second[0])
    finally:
        for ports in first:
            release_ports(ports)
    again = allocate_ports(1, rpc_base=2000, stride=4, tm_base=8000, is_free=lambda p: p not in busy)
    release_ports(again[0])
    assert again[0].rpc == first[0].rpc  # released ports are offered again


def test_a_port_in_real_use_is_skipped():
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        taken = listener.getsockname()[1]
        assert not port_is_free(taken)
        (ports,) = allocate_ports(1, rpc_base=taken, stride=3, tm_base=taken + 1000)
        release_ports(ports)
        assert ports.rpc != taken


def test_external_servers_keep_their_ports():
    (ports,) = allocate_ports(1, tm_base=8100, rpc_ports=[2000], is_free=lambda p: True)
    release_ports(ports)
    assert ports.server_ports == (2000, 2001, 2002) and ports.traffic_manager >= 8100


def test_carla_root_errors(tmp_path, monkeypatch):
    monkeypatch.delenv("CARLA_ROOT", raising=False)
    with pytest.raises(ServerStartError, match="env.hosts"):
        resolve_carla_root(None)
    with pytest.raises(ServerStartError, match="holding CarlaUE4.sh"):
        resolve_carla_root(str(tmp_path))
    (tmp_path / "CarlaUE4.sh").write_text("#!/bin/sh\n")
    with pytest.raises(ServerStartError, match="chmod"):
        resolve_carla_root(str(tmp_path))
    monkeypatch.setenv("CARLA_ROOT", str(tmp_path))
    (tmp_path / "CarlaUE4.sh").chmod(0o755)
    assert resolve_carla_root(None) == tmp_path / "CarlaUE4.sh"


def _record(root, ports):
    return json.loads((root.parent / "record" / f"{ports.rpc}.json").read_text())


def _manager(stand_in_root, count=2, **kwargs):
    base = free_port_base()
    config = CarlaConfig(carla_root=str(stand_in_root), graphics_adapters=[0, 1], port=base,
                         traffic_manager_port=base + 1000, log_dir=str(stand_in_root.parent / "logs"))
    return ServerManager.from_config(config, count, start_timeout_s=20.0, **kwargs)


def test_lifecycle_start_crash_restart_and_clean_shutdown(stand_in_root):
    manager = _manager(stand_in_root).start()
    try:
        first, second = manager.servers
        records = [_record(stand_in_root, server.ports) for server in manager.servers]
        # command lines: ports of their own, graphics adapters round-robin, each server leads its own process group
        assert first.ports.rpc != second.ports.rpc
        assert {first.ports.traffic_manager, second.ports.traffic_manager} & {*first.ports.server_ports,
                                                                              *second.ports.server_ports} == set()
        assert "-graphicsadapter=0" in records[0]["argv"] and "-graphicsadapter=1" in records[1]["argv"]
        assert [r["pgid"] for r in records] == [r["pid"] for r in records] == manager.pids
        assert first.pid_path.read_text().strip() == str(first.pid)  # to stop it by hand if we are killed
        # the health check is a real CARLA client talking to the stand-in
        assert first.version == "0.9.16" and carla_health_check("127.0.0.1", first.ports.rpc, 2.0) == "0.9.16"
        assert manager.dead() == [] and manager.healthy(0)

        # a crash: the server's main process dies, its child (the "binary") lives on in the group
        os.kill(first.pid, signal.SIGKILL)
        assert wait_gone(first.pid)
        # A killed multi-threaded leader shows as a zombie before its threads are gone, and the kernel lets its
        # parent reap it only after them: poll for the exit a moment instead of expecting it at once.
        deadline = time.monotonic() + 60.0
        while manager.dead() != [0] and time.monotonic() < deadline:
            time.sleep(0.02)
        assert manager.dead() == [0] and not manager.healthy(0)
        orphan = records[0]["child"]
        assert process_exists(orphan)
        restarted = manager.restart(0)
        assert restarted.pid != records[0]["pid"] and restarted.alive() and manager.restarts == 1
        assert wait_gone(orphan), "restart must stop the old server's whole process group"
        assert manager.healthy(0) and manager.dead() == []
        records.append(_record(stand_in_root, restarted.ports))
    finally:
        manager.stop()
    for record in records:  # nothing outlives a clean shutdown
        assert wait_gone(record["pid"]) and wait_gone(record["child"])
    assert manager.servers == [] and manager.pids == []
    assert not list((stand_in_root.parent / "logs").glob("*.pid"))
    (again,) = allocate_ports(1, rpc_base=first.ports.rpc, stride=4, tm_base=28000, is_free=lambda p: True)
    release_ports(again)
    assert again.rpc == first.ports.rpc  # the stopped servers' ports were released


def test_a_server_that_exits_while_starting_fails_with_its_log(stand_in_root, monkeypatch):
    monkeypatch.setenv("STAND_IN_EXIT_CODE", "3")
    manager = _manager(stand_in_root, count=1)
    with pytest.raises(ServerStartError, match="exited with code 3") as error:
        manager.start()
    assert "failing on purpose" in str(error.value)
    assert manager.servers == []


def test_a_silent_server_times_out(tmp_path):
    server = CarlaServer(0, "127.0.0.1", ServerPorts(1, 2, 3, 4))  # external, nobody listens on port 1

    def refuse(host, port, timeout):
        raise ConnectionRefusedError("nobody there")

    with pytest.raises(ServerStartError, match="did not answer within 1 s"):
        server.wait_ready(1.0, refuse, poll_s=0.1)


def test_external_servers_are_waited_for_and_never_stopped(stand_in_root):
    launched = _manager(stand_in_root, count=1).start()
    try:
        address = launched.servers[0].address
        external = ServerManager(1, hosts=[address], start_timeout_s=10.0, health_check=tcp_health_check).start()
        assert not external.launched and external.pids == [None] and external.servers[0].address == address
        assert external.healthy(0)
        external.stop()  # hands the server back, does not stop it
        assert launched.servers[0].alive()
    finally:
        launched.stop()


def test_too_few_hosts_is_an_error():
    with pytest.raises(ServerStartError, match="lists 1 servers but 2 worlds need 2"):
        ServerManager(2, hosts=["127.0.0.1:2000"])
