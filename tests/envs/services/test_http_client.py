"""env=http over real server processes: the snapshot contract, cross-service branching, the branching session,
a killed server detected and relaunched, a service that never answers, call errors that are not failures."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import torch
import yaml

from envs.api import BackendError, ServiceFailure
from envs.branching import BranchingSession
from envs.contract import check_capabilities, check_snapshot_contract
from envs.factory import EnvConfig, ServiceConfig, build_backend, env_config_from_dict
from envs.services.http_client import HttpConfig, HttpService
from envs.sim.config import SimConfig
from envs.sim.world import DrivingSim
from envs.typed_config import ConfigError
from tests.http import STRAIGHT, start_server
from tests.processes import process_alive


@pytest.fixture(scope="module")
def url():
    server = start_server()
    yield server.url
    server.stop()


def over(urls, **extra):
    return env_config_from_dict({"backend": "http", "urls": urls, **extra})


def test_snapshot_contract_over_http(url):
    check_snapshot_contract(lambda: build_backend(over([url, url]), num_worlds=4), seed=4)


def test_the_services_spec_and_optional_calls_are_forwarded(url):
    backend = build_backend(over([url, url]), num_worlds=4)
    try:
        check_capabilities(backend)  # the simulator's spec, pictures left in the servers' processes
        assert (backend.spec.kind, backend.spec.rasters, backend.spec.pictures) == ("sim", True, False)
        local = DrivingSim(SimConfig(num_worlds=4, **STRAIGHT))
        backend.reset(5)
        local.reset(5)
        assert torch.equal(backend.observe_raster([3, 0]), local.observe_raster([3, 0]))
    finally:
        backend.close()


def test_two_services_branch_across_each_other_like_an_in_process_simulator(url):
    backend = build_backend(over([url, url]), num_worlds=4)  # two sessions, two services to the backend
    try:
        forward = torch.tensor([[0.6, 0.0, 0.05]]).repeat(4, 1)
        backend.reset(3)
        for _ in range(4):
            backend.step(forward)
        snapshot = backend.snapshot([0])  # service 0
        backend.restore(snapshot, [1])  # same service
        backend.clone([0], [3])  # the other service: the snapshot crosses as arrays, not a pickle
        for _ in range(6):
            result = backend.step(forward)
        assert torch.equal(result.observation[1], result.observation[3])
        local = DrivingSim(SimConfig(num_worlds=1, **STRAIGHT))
        local.restore(snapshot, [0])
        for _ in range(6):
            expected = local.step(forward[:1])
        assert torch.equal(expected.observation[0], result.observation[3])
        assert torch.equal(expected.reward[0], result.reward[3])
        assert torch.equal(backend.observe_raster([3]), local.observe_raster([0]))  # rasters travel over HTTP too
    finally:
        backend.close()


def test_the_seed_tutorial_verbs_run_against_a_url(url):
    remote = BranchingSession.from_config({"backend": "http", "urls": [url]}, num_worlds=3)
    local = BranchingSession.from_config(STRAIGHT, num_worlds=3)
    try:
        for session in (remote, local):
            session.reset(seed=7)
            for _ in range(3):
                session.single_step([0.6, 0.0, 0.0])
            snap = session.save_snapshot()
            session.enable_branching(snap, num_branches=3)
        actions = torch.tensor([[1.0, 0, 0], [0.3, 0, 0.2], [0.0, 1.0, 0]])
        for _ in range(4):
            got, want = remote.branch_step(actions), local.branch_step(actions)
        assert torch.equal(got.observation, want.observation) and torch.equal(got.reward, want.reward)
        best = int(got.reward.argmax())
        assert torch.equal(remote.select_branch(best), local.select_branch(best))
        assert torch.equal(remote.single_step([0.5, 0, 0])[0], local.single_step([0.5, 0, 0])[0])
    finally:
        remote.close()
        local.close()


def test_a_killed_server_is_detected_relaunched_and_its_worlds_reported():
    backend = build_backend(env_config_from_dict({"backend": "http", "num_services": 2, "serve_env": STRAIGHT}),
                            num_worlds=4)
    pids = backend.pids
    try:
        assert all(process_alive(pid) for pid in pids)
        backend.reset(0)
        os.kill(pids[1], signal.SIGKILL)  # the server process this backend launched, by its pid
        result = backend.step(torch.zeros(4, 3))
        assert result.info["service_failed"].tolist() == [False, False, True, True]
        assert result.terminated[2:].all() and (result.reward[2:] == 0).all()
        assert backend.restarts == 1 and backend.pids[1] != pids[1] and process_alive(backend.pids[1])
        assert not backend.step(torch.zeros(4, 3)).info["service_failed"].any()  # working again
    finally:
        relaunched = backend.pids
        backend.close()
    assert not any(process_alive(pid) for pid in [*pids, *relaunched])


def test_call_errors_are_not_service_failures(url):
    backend = build_backend(over([url]), num_worlds=2)
    try:
        backend.reset(0)
        other = DrivingSim(SimConfig(num_worlds=1, map="junction", num_towns=1))
        other.reset(0)
        with pytest.raises(BackendError, match="another map or town configuration"):
            backend.restore(other.snapshot(), [1])
        with pytest.raises(BackendError, match="shape"):
            backend.step(torch.zeros(2, 4))
        assert backend.restarts == 0
    finally:
        backend.close()


def test_a_url_where_nothing_answers_is_a_clear_failure():
    with socket.socket() as probe:  # a loopback port held (bound, never listening) so no other process takes it
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
        with pytest.raises(ServiceFailure, match="did not start a session within"):
            HttpService(0, f"http://127.0.0.1:{port}", 1, start_timeout_s=0.5).start()


def test_a_wrong_token_is_a_clear_error_and_the_right_one_comes_from_the_environment(monkeypatch):
    server = start_server({"token": "right"}, index=1)
    try:
        with pytest.raises(BackendError, match="401.*bearer token"):
            HttpService(0, server.url, 1, token="wrong", start_timeout_s=5).start()
        monkeypatch.setenv("GRPO_SERVE_TOKEN", "right")  # env.token stays null: no secret in the config
        backend = build_backend(over([server.url]), num_worlds=1)
        assert backend.reset(0).shape == (1, 125)
        backend.close()
    finally:
        server.stop()


@pytest.mark.parametrize("data, message", [
    ({"urls": ["127.0.0.1:8080"]}, "not a service URL"),
    ({"urls": ["http://127.0.0.1:8080/api"]}, "no path"),
    ({"device": "cuda"}, "env.device must be cpu"),
    ({"serve_env": {"backend": "http"}}, "cannot be http"),
])
def test_bad_http_configs_name_the_key(data, message):
    with pytest.raises(ConfigError, match=message):
        env_config_from_dict({"backend": "http", **data})


def test_a_bad_config_for_launched_servers_is_named_before_any_launch():
    with pytest.raises(ConfigError, match=r"env.serve_env.mapp; did you mean env.serve_env.map"):
        build_backend(env_config_from_dict({"backend": "http", "serve_env": {"mapp": "straight"}}), num_worlds=1)


def test_service_count_must_match_the_urls():
    config = env_config_from_dict({"backend": "http", "urls": ["http://127.0.0.1:1", "http://127.0.0.1:2"],
                                   "num_services": 3})
    with pytest.raises(BackendError, match="env.urls lists 2"):
        build_backend(config, num_worlds=4)


def test_http_yaml_holds_the_dataclass_defaults_key_for_key():
    data = yaml.safe_load((Path(__file__).resolve().parents[3] / "conf" / "env" / "http.yaml").read_text())
    assert env_config_from_dict(data) == EnvConfig("http", ServiceConfig(), HttpConfig())


def test_a_service_at_a_url_that_comes_back_is_reopened_there():
    server = start_server(index=2)
    port = urlsplit(server.url).port
    backend = build_backend(over([server.url]), num_worlds=2)
    replacement = None
    try:
        backend.reset(0)
        server.stop()  # the server someone else started goes away...
        replacement = start_server({"port": port}, index=3)  # ...and comes back on the same address
        result = backend.step(torch.zeros(2, 3))
        assert result.info["service_failed"].all() and backend.restarts == 1
        assert not backend.step(torch.zeros(2, 3)).info["service_failed"].any()
    finally:
        backend.close()
        server.stop()
        if replacement is not None:
            replacement.stop()


def test_a_launched_server_stops_itself_when_its_launcher_is_killed():
    launcher = subprocess.Popen(
        [sys.executable, "-c", "from tests.http import start_server; import time; "
         "print(start_server().pid, flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[3])
    try:
        server_pid = int(launcher.stdout.readline())
        assert process_alive(server_pid)
    finally:
        launcher.kill()  # SIGKILL: no atexit, no clean-up of its own
        launcher.wait()
    deadline = time.monotonic() + 120  # it looks every second, then shuts down: seconds on a busy machine
    while process_alive(server_pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not process_alive(server_pid)
