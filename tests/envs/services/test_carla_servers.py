"""env=carla through envs.services.carla_servers: every CARLA server is driven by a service process of its
own. Real service processes, each launching a stand-in CarlaUE4.sh (tests/envs/carla/conftest.py) and
holding a stand-in world (tests/envs/carla/stand_ins.py) in place of CARLA."""

import os
import signal

import pytest
import torch

from envs.carla.gpus import GpuMappingError
from envs.factory import build_backend, env_config_from_dict
from envs.services.carla_servers import PORT_BLOCKS, launch_adapters, service_env_config
from tests.envs.carla.conftest import free_port_base, process_exists, stand_in_root, wait_gone  # noqa: F401 (a fixture)
from tests.envs.carla.test_gpus import FOUR_H200, fake_nvidia_smi

pytest.importorskip("carla")  # the service's health check is a real CARLA client


def parent_of(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as handle:
        return int(handle.read().split(")")[-1].split()[1])


def carla_services(root, tmp_path, num_services=2, **overrides):
    base = free_port_base()  # not the default 2000: another test run on this machine may be using those now
    return build_backend(env_config_from_dict({
        "backend": "carla", "num_services": num_services, "worlds_per_service": 1, "carla_root": str(root),
        "port": base, "traffic_manager_port": base + 1000,
        "log_dir": str(tmp_path / "servers"), "world_class": "tests.envs.carla.stand_ins:FakeWorld",
        "drift_check_every": 0, "start_timeout_s": 30.0, "traffic": {"num_vehicles": 2}, **overrides}),
        num_worlds=num_services)


def test_each_service_gets_its_own_server_ports_and_gpu():
    flat = {"port": 2000, "port_stride": 4, "traffic_manager_port": 8000, "hosts": [], "gpus": [3, 5],
            "client_timeout_s": 60.0, "drift_check_every": 100, "num_worlds": 4}
    configs = [service_env_config(flat, index, [1, 0]) for index in range(3)]  # CUDA 3 -> adapter 1, 5 -> 0
    assert [c["port"] for c in configs] == [2000, 2000 + 4 * PORT_BLOCKS, 2000 + 8 * PORT_BLOCKS]
    assert [c["traffic_manager_port"] for c in configs] == [8000, 8000 + PORT_BLOCKS, 8000 + 2 * PORT_BLOCKS]
    assert [c["gpus"] for c in configs] == [[3], [5], [3]]
    assert [c["graphics_adapters"] for c in configs] == [[1], [0], [1]]  # mapped once, in the parent
    assert all(c["num_worlds"] == 1 and c["drift_check_every"] == 0 for c in configs)  # drift: across servers
    hosts = service_env_config({**flat, "hosts": ["a:2000", "b:2000"]}, 1)
    assert hosts["hosts"] == ["b:2000"]


def test_cuda_ids_are_mapped_once_in_the_parent_and_a_missing_gpu_stops_before_any_service(tmp_path, monkeypatch,
                                                                                            stand_in_root):  # noqa: F811
    folder = tmp_path / "bin"
    fake_nvidia_smi(folder, FOUR_H200)
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    flat = {"gpus": [2, 0], "graphics_adapters": [], "hosts": []}
    assert launch_adapters(flat) == [2, 0]
    assert launch_adapters({**flat, "graphics_adapters": [1, 1]}) == [1, 1]
    assert launch_adapters({**flat, "hosts": ["a:2000"]}) == []  # running servers: nothing to launch
    with pytest.raises(GpuMappingError, match="CUDA device 5 does not exist"):
        carla_services(stand_in_root, tmp_path, gpus=[5])  # raised before any service process is started


def test_two_carla_worlds_never_share_a_process(stand_in_root, tmp_path):  # noqa: F811
    backend = carla_services(stand_in_root, tmp_path)
    try:
        services = backend.pids
        assert len(set(services)) == 2 and os.getpid() not in services
        servers = [service.description["process_groups"] for service in backend.services]
        assert all(len(groups) == 1 for groups in servers)
        for service, (server,) in zip(services, servers, strict=True):
            assert parent_of(server) == service  # each server was launched by, and is driven from, its service
        backend.reset(0)
        backend.step(torch.tensor([[1.0, 0.0, 0.0]] * 2))
        snapshot = backend.snapshot([0])
        observation = backend.restore(snapshot, [1])  # across processes, as bytes
        assert torch.equal(observation[0], backend.observe([0])[0])
        raster = backend.observe_raster()  # drawn in each service from its world's state, sent back as arrays
        assert raster.shape == (2, 6, 64, 64) and raster.dtype == torch.uint8 and raster[:, 0].any()
        assert torch.equal(raster[0], raster[1])  # world 1 now holds world 0's state
        metrics = backend.metrics()  # asks every service, and refreshes the server groups it would stop
        assert metrics["carla/server_restarts"] == 0.0 and backend._groups == {0: servers[0], 1: servers[1]}
        assert metrics["services/restarts"] == 0.0
        # the services' spec is forwarded: evaluation switches every service to eval routes and back, in place
        assert backend.spec.evaluates_in_place and backend.spec.dt == 0.05
        assert backend.set_split("eval") == "train" and backend.set_split("train") == "eval"
    finally:
        backend.close()
    assert all(wait_gone(server) for (server,) in servers) and all(wait_gone(pid) for pid in services)


@pytest.mark.slow
def test_a_killed_service_leaves_no_server_behind(stand_in_root, tmp_path):  # noqa: F811
    backend = carla_services(stand_in_root, tmp_path)
    try:
        backend.reset(0)
        victim = backend.pids[0]
        (orphan,) = backend.services[0].description["process_groups"]
        os.kill(victim, signal.SIGKILL)  # a process this test started; its server now has no driver
        result = backend.step(torch.tensor([[1.0, 0.0, 0.0]] * 2))
        assert result.info["service_failed"].tolist() == [True, False] and backend.restarts == 1
        assert wait_gone(orphan)  # the parent stopped the dead service's server by its process group
        (fresh,) = backend.services[0].description["process_groups"]
        assert fresh != orphan and process_exists(fresh) and backend.pids[0] != victim
        # a service found dead by the per-iteration metrics call is replaced on the spot too
        second_victim = backend.pids[1]
        (second_orphan,) = backend.services[1].description["process_groups"]
        os.kill(second_victim, signal.SIGKILL)
        backend.metrics()
        assert backend.restarts == 2 and backend.pids[1] != second_victim and wait_gone(second_orphan)
        # its world was reset by the restart: the next step reports it failed (its group is dropped), as after a
        # restart the heartbeat makes, and the one after drives on
        assert backend.step(torch.tensor([[1.0, 0.0, 0.0]] * 2)).info["service_failed"].tolist() == [False, True]
        assert not backend.step(torch.tensor([[1.0, 0.0, 0.0]] * 2)).info["service_failed"].any()
        (second_fresh,) = backend.services[1].description["process_groups"]
    finally:
        backend.close()
    assert wait_gone(fresh) and wait_gone(second_fresh)


@pytest.mark.slow
def test_a_dead_server_is_restarted_inside_its_service_and_reported(stand_in_root, tmp_path):  # noqa: F811
    backend = carla_services(stand_in_root, tmp_path)
    try:
        backend.reset(0)
        service = backend.pids[1]
        (server,) = backend.services[1].description["process_groups"]
        os.killpg(server, signal.SIGKILL)  # the stand-in server this test's service launched
        assert wait_gone(server)
        result = backend.step(torch.tensor([[1.0, 0.0, 0.0]] * 2))
        # the service noticed, restarted its server and started a fresh episode; the parent passes it on
        assert result.info["service_failed"].tolist() == [False, True]
        assert backend.restarts == 0 and backend.pids[1] == service  # the service itself lived on
        assert backend.metrics()["carla/server_restarts"] == 1.0
        (fresh,) = backend._groups[1]
        assert fresh != server and process_exists(fresh)
    finally:
        backend.close()
    assert wait_gone(fresh)
