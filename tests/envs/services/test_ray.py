"""env.launcher=ray: services as Ray actors on a local Ray with two CPUs, bound to the loopback address."""

import os
import time

import pytest
import torch

from envs.factory import build_backend, env_config_from_dict
from tests.processes import process_alive

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def local_ray():
    from envs.services.ray_service import connect

    # A stale address left in the environment (or by an earlier Ray) must not be joined: with no
    # env.ray_address the launcher starts a Ray of its own. Nothing listens on this port.
    stale = os.environ.get("RAY_ADDRESS")
    os.environ["RAY_ADDRESS"] = "127.0.0.1:1"
    try:
        connect(None, num_cpus=2)
    finally:
        if stale is None:
            del os.environ["RAY_ADDRESS"]
        else:
            os.environ["RAY_ADDRESS"] = stale
    yield
    ray.shutdown()


def kill(backend, index: int) -> None:
    """Kill service ``index``'s actor and wait until its process is gone: ray.kill only asks Ray to, and a call sent
    before the kill lands (a busy machine) would still be answered by the dying actor."""
    pid = backend.services[index].pid
    ray.kill(backend.services[index].actor)
    deadline = time.monotonic() + 120
    while process_alive(pid):
        assert time.monotonic() < deadline, f"actor process {pid} still runs 120 s after ray.kill"
        time.sleep(0.05)


def test_ray_services_branch_across_actors(local_ray):
    config = env_config_from_dict({"map": "straight", "num_services": 2, "launcher": "ray", "ray_cpus_per_service": 0.5,
                                   "num_towns": 2, "start_timeout_s": 600.0})  # a fresh actor imports torch: slow
    # on a busy machine
    backend = build_backend(config, num_worlds=4)
    try:
        assert len(set(backend.pids)) == 2  # two actor processes
        backend.reset(0)
        forward = torch.tensor([[0.7, 0.0, 0.0]]).repeat(4, 1)
        for _ in range(3):
            backend.step(forward)
        backend.restore(backend.snapshot([0]), [3])  # from actor 0 into actor 1
        for _ in range(5):
            result = backend.step(forward)
        assert torch.equal(result.observation[0], result.observation[3])
        kill(backend, 0)  # a dead actor is restarted and its worlds reported
        result = backend.step(forward)
        assert result.info["service_failed"].tolist() == [True, True, False, False]
        assert backend.restarts == 1
        expected = backend.reset(5)
        kill(backend, 1)  # killed while idle: the next reset is retried on a new actor
        assert torch.equal(backend.reset(5), expected)
        assert backend.restarts == 2
    finally:
        backend.close()
