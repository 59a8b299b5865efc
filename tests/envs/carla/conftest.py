"""Fixtures of the CARLA backend tests that run without a server.

* ``t_junction_map``: a ``carla.Map`` built from OpenDRIVE text (the client needs no server for that): a
  100 m road with two lanes each way (road 1, along +x) ending at a junction, from which a road continues
  straight (road 2) and one turns off (road 3). In CARLA's frame (y to the right) road 3 leaves towards -y.
* ``stand_in_root``: a folder with a stand-in ``CarlaUE4.sh`` (a small Python script) that parses the server
  flags, writes what it saw, starts a child process like the real script starts its binary, and answers a
  CARLA client's ``version`` call on its RPC port, so the server manager's whole lifecycle runs for real.
"""

from __future__ import annotations

import math
import os
import socket
import stat
import sys
import textwrap
from pathlib import Path

import pytest

LANE = ('<lane id="{id}" type="driving" level="false"><link>{links}</link>'
        '<width sOffset="0" a="3.5" b="0" c="0" d="0"/>'
        '<roadMark sOffset="0" type="{mark}" weight="standard" color="standard" width="0.12"/></lane>')


def _lane(lane_id: int, predecessor: int | None = None, successor: int | None = None, mark: str = "solid") -> str:
    links = (f'<predecessor id="{predecessor}"/>' if predecessor is not None else "") + \
        (f'<successor id="{successor}"/>' if successor is not None else "")
    return LANE.format(id=lane_id, links=links, mark=mark)


def _road(road_id: int, length: float, geometry: str, link: str, left: list[str], right: list[str],
          junction: int = -1) -> str:
    return (f'<road name="r{road_id}" length="{length}" id="{road_id}" junction="{junction}"><link>{link}</link>'
            f'<planView>{geometry}</planView><lanes><laneSection s="0.0">'
            f'<left>{"".join(left)}</left><center><lane id="0" type="driving" level="false"/></center>'
            f'<right>{"".join(right)}</right></laneSection></lanes></road>')


def t_junction_xodr() -> str:
    """OpenDRIVE text of the test map (see the module docstring)."""
    arc = 10 * math.pi / 2
    into_junction = '<successor elementType="junction" elementId="100"/>'
    from_junction = '<predecessor elementType="junction" elementId="100"/>'
    roads = [
        _road(1, 100.0, '<geometry s="0" x="0" y="0" hdg="0" length="100"><line/></geometry>', into_junction,
              [_lane(1, 1, 1, "broken"), _lane(2)], [_lane(-1, None, -1, "broken"), _lane(-2)]),
        _road(2, 100.0, '<geometry s="0" x="120" y="0" hdg="0" length="100"><line/></geometry>', from_junction,
              [_lane(1, 1, None)], [_lane(-1, -1, None)]),
        _road(3, 100.0, f'<geometry s="0" x="110" y="10" hdg="{math.pi / 2}" length="100"><line/></geometry>',
              from_junction, [_lane(1, 1, None)], [_lane(-1, -1, None)]),
        _road(10, 20.0, '<geometry s="0" x="100" y="0" hdg="0" length="20"><line/></geometry>',
              '<predecessor elementType="road" elementId="1" contactPoint="end"/>'
              '<successor elementType="road" elementId="2" contactPoint="start"/>',
              [_lane(1, 1, 1)], [_lane(-1, -1, -1)], junction=100),
        _road(11, arc, f'<geometry s="0" x="100" y="0" hdg="0" length="{arc}"><arc curvature="0.1"/></geometry>',
              '<predecessor elementType="road" elementId="1" contactPoint="end"/>'
              '<successor elementType="road" elementId="3" contactPoint="start"/>',
              [_lane(1, 1, 1)], [_lane(-1, -1, -1)], junction=100),
        _road(12, arc, f'<geometry s="0" x="120" y="0" hdg="{math.pi}" length="{arc}"><arc curvature="-0.1"/>'
              '</geometry>',
              '<predecessor elementType="road" elementId="2" contactPoint="start"/>'
              '<successor elementType="road" elementId="3" contactPoint="start"/>',
              [_lane(1, -1, 1)], [_lane(-1, 1, -1)], junction=100),
    ]
    connections = [(1, 10, "start", -1, -1), (1, 11, "start", -1, -1), (2, 10, "end", 1, 1), (2, 12, "start", 1, -1),
                   (3, 11, "end", 1, 1), (3, 12, "end", 1, 1)]
    junction = '<junction id="100" name="j">' + "".join(
        f'<connection id="{i}" incomingRoad="{a}" connectingRoad="{b}" contactPoint="{c}">'
        f'<laneLink from="{f}" to="{t}"/></connection>' for i, (a, b, c, f, t) in enumerate(connections)) + \
        '</junction>'
    return ('<?xml version="1.0" standalone="yes"?><OpenDRIVE><header revMajor="1" revMinor="4" name="tj" '
            'version="1.00"/>' + "".join(roads) + junction + "</OpenDRIVE>")


@pytest.fixture(scope="session")
def t_junction_map():
    carla = pytest.importorskip("carla")
    return carla.Map("t_junction", t_junction_xodr())


@pytest.fixture(scope="session")
def t_junction_graph(t_junction_map):
    from envs.carla.routes import LaneGraph

    return LaneGraph(t_junction_map, resolution=2.0)


STAND_IN = textwrap.dedent('''\
    #!{python}
    """Stand-in for CarlaUE4.sh: parses the server flags, records them, starts a child (as the real script
    starts its binary), and answers a CARLA client's "version" call (msgpack-rpc) on the RPC port."""
    import json, os, socket, subprocess, sys, threading, time

    args = {{a.split("=", 1)[0]: (a.split("=", 1) + [""])[1] for a in sys.argv[1:]}}
    rpc = int(args["-carla-rpc-port"])
    record = os.environ.get("STAND_IN_RECORD")
    if os.environ.get("STAND_IN_EXIT_CODE"):
        print("stand-in: failing on purpose", flush=True)
        sys.exit(int(os.environ["STAND_IN_EXIT_CODE"]))
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    if record:
        with open(os.path.join(record, f"{{rpc}}.json"), "w") as handle:
            json.dump({{"argv": sys.argv[1:], "pid": os.getpid(), "child": child.pid,
                       "pgid": os.getpgid(0)}}, handle)
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", rpc))
    server.listen()

    def read_int(data, i):
        b = data[i]
        if b < 0x80:
            return b, i + 1
        size = {{0xcc: 1, 0xcd: 2, 0xce: 4, 0xcf: 8}}[b]
        return int.from_bytes(data[i + 1:i + 1 + size], "big"), i + 1 + size

    def serve(connection):
        while True:
            data = connection.recv(4096)
            if not data:
                return
            # a request is [0, msgid, "method", params]: fixarray(4), 0, msgid, ...
            msgid, _ = read_int(data, 2)
            version = b"0.9.16"
            body = bytes([0x91, 0x92, 0x01, 0xa0 | len(version)]) + version  # [[1, "0.9.16"]]: a Response
            head = bytes([0x94, 0x01]) + (bytes([msgid]) if msgid < 0x80 else b"\\xcd" + msgid.to_bytes(2, "big"))
            connection.sendall(head + b"\\xc0" + body)

    while True:
        connection, _ = server.accept()
        threading.Thread(target=serve, args=(connection,), daemon=True).start()
    ''')


@pytest.fixture
def stand_in_root(tmp_path, monkeypatch):
    """A fake CARLA root whose CarlaUE4.sh is the stand-in; STAND_IN_RECORD names where it writes its argv."""
    root = tmp_path / "carla"
    root.mkdir()
    script = root / "CarlaUE4.sh"
    script.write_text(STAND_IN.format(python=sys.executable))
    script.chmod(script.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    record = tmp_path / "record"
    record.mkdir()
    monkeypatch.setenv("STAND_IN_RECORD", str(record))
    return root


def free_port_base() -> int:
    """A first port for a test's stand-in servers: one the kernel has just found free in its ephemeral range. Test
    runs on one machine (other checkouts, at once) then search from different ports instead of racing for the
    same fixed ones (each checks a port is free, then its server binds it a moment later). Leaves room above it
    for the RPC ports of a few servers and, 1000 higher, their traffic-manager ports."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return min(probe.getsockname()[1], 63000)


def process_exists(pid: int) -> bool:
    """True while ``pid`` runs (a zombie counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def wait_gone(pid: int, timeout_s: float = 60.0) -> bool:
    import time

    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if not process_exists(pid):
            return True
        time.sleep(0.05)
    return not process_exists(pid)


__all__ = ["Path", "os", "process_exists", "t_junction_xodr", "wait_gone"]
