"""The simulator on a CUDA device (run with `pytest -m gpu` where torch sees one)."""

import pytest
import torch

from envs.contract import check_capabilities, check_snapshot_contract
from envs.driving.expert import ExpertDriver, route_follower
from envs.sim.config import LightConfig, PedestrianConfig, SimConfig, TrafficConfig
from envs.sim.traffic import traffic_overlaps
from envs.sim.world import DrivingSim

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

EMPTY = {"traffic": TrafficConfig(num_vehicles=0), "pedestrians": PedestrianConfig(num_pedestrians=0),
         "lights": LightConfig(enabled=False)}


def test_snapshot_contract_on_cuda():
    check_snapshot_contract(lambda: DrivingSim(SimConfig(num_worlds=8, num_towns=2, device="cuda")), seed=1)


def test_the_spec_tells_the_truth_on_cuda():
    # rasters and pictures drawn from worlds on the device; episode seeds derived from world ids on the device
    sim = DrivingSim(SimConfig(num_worlds=4, num_towns=2, device="cuda"))
    check_capabilities(sim)
    cpu = DrivingSim(SimConfig(num_worlds=4, num_towns=2))
    cpu.reset(0)
    assert sim.state.episode_seed.cpu().tolist() == cpu.state.episode_seed.tolist()


def test_busy_snapshot_contract_on_cuda():
    busy = SimConfig(num_worlds=8, num_towns=2, device="cuda", pedestrians=PedestrianConfig(spawn_per_minute=60.0))
    check_snapshot_contract(lambda: DrivingSim(busy), seed=2)


def test_cuda_and_cpu_drive_the_same_episodes():
    # The road only: with traffic, float rounding that differs between devices can flip a discrete choice
    # (a spawn spot at the edge of its range) and the worlds part ways, as they may.
    cpu = DrivingSim(SimConfig(num_worlds=64, num_towns=4, **EMPTY))
    gpu = DrivingSim(SimConfig(num_worlds=64, num_towns=4, device="cuda", **EMPTY))
    obs_cpu, obs_gpu = cpu.reset(3), gpu.reset(3)
    assert torch.allclose(obs_cpu, obs_gpu.cpu(), atol=1e-5)
    for _ in range(100):
        actions = route_follower(obs_cpu)  # the same controls on both devices
        result_cpu, result_gpu = cpu.step(actions), gpu.step(actions.cuda())
        obs_cpu = result_cpu.observation
        # Float rounding differs between devices; trajectories must agree closely, not bit for bit.
        assert torch.allclose(result_cpu.observation, result_gpu.observation.cpu(), atol=1e-3)
        assert torch.equal(result_cpu.terminated, result_gpu.terminated.cpu())


def test_busy_world_on_cuda_drives_without_traffic_collisions_and_draws_rasters():
    sim = DrivingSim(SimConfig(num_worlds=256, device="cuda"))
    expert = ExpertDriver(vehicle=sim.config.vehicle)
    obs = sim.reset(0)
    for _ in range(200):
        obs = sim.step(expert(obs)).observation
        assert int(traffic_overlaps(sim._vehicles(), 4.8, 1.9).sum()) == 0
    assert torch.isfinite(obs).all()
    raster = sim.observe_raster()
    assert raster.shape == (256, 6, 64, 64) and raster.device.type == "cuda" and raster[:, 0].any()


def test_snapshot_moves_between_devices():
    cpu = DrivingSim(SimConfig(num_worlds=4, num_towns=2))
    gpu = DrivingSim(SimConfig(num_worlds=4, num_towns=2, device="cuda"))
    cpu.reset(0)
    gpu.reset(1)
    assert torch.allclose(gpu.restore(cpu.snapshot()).cpu(), cpu.observe(), atol=1e-5)
