"""A real world server process on a free loopback port, driven with a real HTTP client: the seed project's call
sequence, batched and branching verbs, validation (4xx, never 500), the bounded snapshot store, the token."""

import http.client
import json
import math
from urllib.parse import urlsplit

import numpy as np
import pytest
import torch

from envs.api import BackendError, Snapshot
from envs.services.http_server import ServeConfig, SnapshotStore
from envs.services.wire import CONTENT_TYPE, decode, encode
from tests.http import request, start_server
from tests.processes import process_alive

TOKEN = "test-token"


@pytest.fixture(scope="module")
def server():
    server = start_server({"token": TOKEN, "num_worlds": 4, "max_snapshots": 3, "max_request_bytes": 2**20})
    yield server
    pid = server.pid
    server.stop()
    assert not process_alive(pid)


@pytest.fixture
def call(server):
    def call(verb, path, body=None, **kwargs):
        return request(server.url, verb, path, body, token=TOKEN, **kwargs)

    return call


def ok(answer):
    status, body = answer
    assert status == 200, body
    return body


def test_the_seed_call_sequence_replays_bit_identically(call):
    assert ok(call("GET", "/health"))["status"] == "ok"
    reset = ok(call("POST", "/reset", {"route_id": 0}))
    assert reset["episode_seed"] == 0 and set(reset["observation"]["vehicle_state"]["position"]) == {"x", "y", "z"}
    forward = {"action": {"throttle": 0.7, "brake": 0, "steer": 0}, "n_steps": 2}
    for _ in range(3):
        ok(call("POST", "/step", forward))
    taken = ok(call("POST", "/snapshot", {"snapshot_id": "fork"}))
    assert taken["snapshot_id"] == "fork" and taken["stats"]["step"] == 6 and taken["stats"]["snapshot_bytes"] > 0

    def branch(steer):
        restored = ok(call("POST", "/restore", {"snapshot_id": "fork"}))
        assert restored["observation"] == taken["observation"]  # restore gives back the snapshot's world
        return ok(call("POST", "/step", {"action": {"throttle": 0.7, "brake": 0, "steer": steer}, "n_steps": 10}))

    left, right, left_again = branch(-0.3), branch(0.3), branch(-0.3)
    assert left["observation"] != right["observation"]  # different actions, different worlds
    assert left == left_again  # the same actions from the same snapshot: bit-identical JSON, reward and info
    position = left_again["observation"]["vehicle_state"]["position"]
    assert position["y"] != right["observation"]["vehicle_state"]["position"]["y"]
    assert ok(call("GET", "/status"))["steps"] == 16  # the snapshot's 6 steps plus the branch's 10
    ok(call("POST", "/restore", {"snapshot_id": "fork"}))  # restore again after branching
    assert ok(call("GET", "/status"))["steps"] == 6


@pytest.mark.parametrize("verb, path, body, status", [
    ("POST", "/step", {"action": {"throttle": 1.5}}, 422),  # out of range
    ("POST", "/step", {"action": {"throttle": "fast"}}, 422),  # not a number
    ("POST", "/step", {"action": {"throttle": 0.5}, "n_steps": 0}, 422),
    ("POST", "/step", {"action": {"throttle": 0.5}, "turbo": True}, 422),  # unknown field
    ("POST", "/step", {"action": [0.5, 0.0]}, 400),  # two values for a three-value action
    ("POST", "/reset", {"route_id": -1}, 422),
    ("POST", "/restore", {}, 422),  # snapshot_id missing
    ("POST", "/restore", {"snapshot_id": "../../etc"}, 422),  # ids are opaque tokens, not paths
    ("POST", "/restore", {"snapshot_id": "never-taken"}, 404),
    ("POST", "/worlds/9/step", {"action": {"throttle": 0.5}}, 400),  # no world 9
    ("POST", "/worlds/0/clone", {}, 422),  # neither 'to' nor 'num_branches'
    ("POST", "/worlds/step", {"actions": [[0.5, 0, 0]]}, 400),  # one action for four worlds
    ("POST", "/worlds/step", {"actions": [[0.5, 0, 0], [0.5, 0], [0, 0, 0], [0, 0, 0]]}, 400),  # ragged
    ("POST", "/worlds/reset", {"seed": [1, 2]}, 400),  # two seeds for four worlds
    ("POST", "/seed", {"seed": "x"}, 422),
    ("POST", "/v1/sessions", {"num_worlds": 0}, 422),
    ("POST", "/v1/sessions/unknown/step", None, 404),
    ("GET", "/render.png?size=5", None, 422),
])
def test_bad_requests_get_a_4xx_that_says_what_was_wrong(call, verb, path, body, status):
    ok(call("POST", "/reset", {"route_id": 1}))
    got, answer = call(verb, path, body, raw=encode([]) if path.startswith("/v1/sessions/") else None)
    assert got == status, answer
    assert isinstance(answer, dict) and answer["error"]  # a one-line message naming the problem


def test_malformed_json_oversized_bodies_and_broken_wire_messages_are_4xx(call):
    status, answer = call("POST", "/step", raw=b"{not json", headers={"Content-Type": "application/json"})
    assert status == 422 and "JSON" in answer["error"]
    status, answer = call("POST", "/step", raw=b"x" * (2**20 + 1), headers={"Content-Type": "application/json"})
    assert status == 413 and "max_request_bytes" in answer["error"]
    session = ok(call("POST", "/v1/sessions", {"num_worlds": 1}))["session"]
    status, answer = call("POST", f"/v1/sessions/{session}/step", raw=b"\x00" * 3,
                          headers={"Content-Type": CONTENT_TYPE})
    assert status == 400 and "shorter than" in answer["error"]
    status, answer = call("POST", f"/v1/sessions/{session}/teleport", raw=encode([]))
    assert status == 400 and "unknown call" in answer["error"]
    ok(call("DELETE", f"/v1/sessions/{session}"))
    assert 'status="500"' not in ok(call("GET", "/metrics")).decode()  # nothing above ever made a 500


def test_the_snapshot_store_evicts_the_least_recently_used(call):
    ok(call("POST", "/reset", {"route_id": 2}))
    for name in ("a", "b", "c"):
        ok(call("POST", "/snapshot", {"snapshot_id": name}))
    ok(call("POST", "/restore", {"snapshot_id": "a"}))  # a is now the most recently used
    assert ok(call("POST", "/snapshot", {"snapshot_id": "d"}))["stats"]["evicted"] == ["b"]
    status, answer = call("POST", "/restore", {"snapshot_id": "b"})
    assert status == 404 and "evicted" in answer["error"]
    ok(call("POST", "/restore", {"snapshot_id": "a"}))


def test_batched_and_branching_verbs(call):
    ok(call("POST", "/worlds/reset", {"seed": [5, 5, 5, 5]}))
    ok(call("POST", "/worlds/0/step", {"action": {"throttle": 0.8}, "n_steps": 5}))
    cloned = ok(call("POST", "/worlds/0/clone", {"num_branches": 4}))  # a group of four branches
    assert cloned["worlds"] == [1, 2, 3]
    actions = [[0.6, 0, 0.1], [0.6, 0, 0.1], [0.0, 1.0, 0.0], [0.6, 0, 0.1]]
    for _ in range(5):
        stepped = ok(call("POST", "/worlds/step", {"actions": actions}))
    observations = stepped["observations"]
    assert observations[0] == observations[1] == observations[3] != observations[2]
    png = ok(call("GET", "/worlds/2/render.png?size=64"))
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    vehicles = ok(call("GET", "/world/vehicles"))["vehicles"]
    assert vehicles[0]["role"] == "ego" and all(math.isfinite(v["position"]["x"]) for v in vehicles)
    spec = ok(call("GET", "/spec"))
    assert spec["action"]["names"] == ["throttle", "brake", "steer"] and spec["observation"]["size"] == 125
    assert ok(call("GET", "/info"))["num_worlds"] == 4
    assert b"grpo_serve_env_steps_total" in ok(call("GET", "/metrics"))
    assert b"swagger" in ok(call("GET", "/docs")).lower() and b"/render.png" in ok(call("GET", "/view"))


def test_every_request_but_health_needs_the_token(server):
    assert request(server.url, "GET", "/health")[0] == 200
    status, answer = request(server.url, "GET", "/info")
    assert status == 401 and "bearer token" in answer["error"]
    assert request(server.url, "GET", "/info", token="wrong")[0] == 401
    assert request(server.url, "GET", f"/info?token={TOKEN}")[0] == 200  # the browser page's way


def test_serve_config_refuses_unsafe_or_impossible_settings():
    with pytest.raises(ValueError, match="serve.token"):
        ServeConfig(host="0.0.0.0")
    assert ServeConfig(host="0.0.0.0", token="s").host == "0.0.0.0"
    with pytest.raises(ValueError, match="serve.max_snapshots"):
        ServeConfig(max_snapshots=0)


def test_snapshot_store_bounds_bytes_too():
    store = SnapshotStore(max_count=10, max_bytes=100)
    snapshot = Snapshot("sim", "s", 1, {"floats": torch.zeros(1, 10)})  # 40 bytes
    store.put("a", snapshot, {})
    store.put("b", snapshot, {})
    _, evicted = store.put("c", snapshot, {})
    assert evicted == ["a"] and len(store) == 2 and store.bytes == 80
    with pytest.raises(BackendError, match="exceeds serve.max_snapshot_bytes"):
        store.put("big", Snapshot("sim", "s", 1, {"floats": torch.zeros(1, 100)}), {})


def test_a_session_call_with_arguments_the_backend_cannot_take_is_a_400(call):
    session = ok(call("POST", "/v1/sessions", {"num_worlds": 2}))["session"]
    headers = {"Content-Type": CONTENT_TYPE}
    ok(call("POST", f"/v1/sessions/{session}/reset", raw=encode([[1, 2], [0, 1]]), headers=headers))
    taken = ok(call("POST", f"/v1/sessions/{session}/snapshot", raw=encode([[0]]), headers=headers))
    assert isinstance(decode(taken)["tensors"]["floats"], np.ndarray)  # raw arrays, not a torch.save pickle
    bad_snapshot = {"backend": "sim", "signature": "nonsense", "num_worlds": 1, "tensors": {"floats": np.zeros((1, 2))},
                    "meta": {}}
    for method, args in [("restore", [bad_snapshot, [0]]), ("step", [np.zeros((2, 7), np.float32)]),
                         ("reset", [[1], [0, 1]]), ("observe", [[5]]), ("clone", [[0], [1, 0]]), ("step", [])]:
        status, answer = call("POST", f"/v1/sessions/{session}/{method}", raw=encode(args), headers=headers)
        assert status == 400, (method, answer)
    ok(call("DELETE", f"/v1/sessions/{session}"))


def test_a_chunked_body_without_a_length_is_cut_off_at_the_limit(server):
    parts = urlsplit(server.url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    try:
        chunks = (b"x" * 65536 for _ in range(40))  # 2.5 MiB against a 1 MiB limit, no Content-Length
        connection.request("POST", "/step", body=chunks, encode_chunked=True,
                           headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"})
        response = connection.getresponse()
        assert response.status == 413 and b"max_request_bytes" in response.read()
    finally:
        connection.close()
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    try:  # a small chunked body still reaches the endpoint whole
        connection.request("POST", "/reset", body=iter([b'{"route_', b'id": 3}']), encode_chunked=True,
                           headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"})
        response = connection.getresponse()
        assert response.status == 200 and json.loads(response.read())["episode_seed"] == 3
    finally:
        connection.close()
