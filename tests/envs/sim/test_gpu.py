"""The simulator on a CUDA device (run with `pytest -m gpu` where torch sees one)."""

import pytest
import torch

from envs.contract import check_snapshot_contract
from envs.sim.config import SimConfig
from envs.sim.expert import route_follower
from envs.sim.world import DrivingSim

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def test_snapshot_contract_on_cuda():
    check_snapshot_contract(lambda: DrivingSim(SimConfig(num_worlds=8, num_towns=2, device="cuda")), seed=1)


def test_cuda_and_cpu_drive_the_same_episodes():
    cpu = DrivingSim(SimConfig(num_worlds=64, num_towns=4))
    gpu = DrivingSim(SimConfig(num_worlds=64, num_towns=4, device="cuda"))
    obs_cpu, obs_gpu = cpu.reset(3), gpu.reset(3)
    assert torch.allclose(obs_cpu, obs_gpu.cpu(), atol=1e-5)
    for _ in range(100):
        actions = route_follower(obs_cpu)  # the same controls on both devices
        result_cpu, result_gpu = cpu.step(actions), gpu.step(actions.cuda())
        obs_cpu = result_cpu.observation
        # Float rounding differs between devices; trajectories must agree closely, not bit for bit.
        assert torch.allclose(result_cpu.observation, result_gpu.observation.cpu(), atol=1e-3)
        assert torch.equal(result_cpu.terminated, result_gpu.terminated.cpu())


def test_snapshot_moves_between_devices():
    cpu = DrivingSim(SimConfig(num_worlds=4, num_towns=2))
    gpu = DrivingSim(SimConfig(num_worlds=4, num_towns=2, device="cuda"))
    cpu.reset(0)
    gpu.reset(1)
    assert torch.allclose(gpu.restore(cpu.snapshot()).cpu(), cpu.observe(), atol=1e-6)
