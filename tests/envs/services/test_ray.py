"""env.launcher=ray: services as Ray actors on a local Ray with two CPUs, bound to the loopback address."""

import os

import pytest
import torch

from envs.factory import build_backend, env_config_from_dict

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


def test_ray_services_branch_across_actors(local_ray):
    config = env_config_from_dict({"map": "straight", "num_towns": 2, "num_services": 2, "launcher": "ray",
                                   "ray_cpus_per_service": 0.5})
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
        ray.kill(backend.services[0].actor)  # a dead actor is restarted and its worlds reported
        result = backend.step(forward)
        assert result.info["service_failed"].tolist() == [True, True, False, False]
        assert backend.restarts == 1
        expected = backend.reset(5)
        ray.kill(backend.services[1].actor)  # killed while idle: the next reset is retried on a new actor
        assert torch.equal(backend.reset(5), expected)
        assert backend.restarts == 2
    finally:
        backend.close()
