"""envs/carla/drift.py: drift between servers through the backend contract, on stand-in worlds."""

import numpy as np
import pytest
import torch

from envs.carla.backend import CarlaBackend
from envs.carla.config import CarlaConfig, CarlaTrafficConfig
from envs.carla.drift import ServerDriftReport, measure_server_drift
from tests.envs.carla.stand_ins import FakeServers, FakeWorld


def test_spread_is_the_largest_distance_between_any_two_servers():
    positions = np.zeros((3, 2, 2, 2))  # 3 servers, 2 steps, ego + one traffic car
    positions[1, 1, 0] = (0.3, 0.4)  # server 1's ego is 0.5 m off at step 2
    positions[2, 1, 1] = (-1.0, 0.0)  # server 2's car is 1 m off
    positions[:, :, 1] += (10.0, 0.0)
    restored = positions[:, 0].copy()
    restored[2, 0] = (0.0, 0.2)
    report = ServerDriftReport(["hero", "traffic_0"], positions, restored, np.array([[0.0, 0.0], [10.0, 0.0]]))
    assert report.spread[1].tolist() == pytest.approx([0.5, 1.0]) and report.spread[0].tolist() == [0.0, 0.0]
    summary = report.summary()
    assert summary["drift/ego_m"] == pytest.approx(0.5) and summary["drift/actors_max_m"] == pytest.approx(1.0)
    assert summary["drift/restore_error_ego_m"] == pytest.approx(0.2) and summary["drift/servers"] == 3.0


def test_measured_through_the_contract_and_it_can_fail():
    config = CarlaConfig(num_worlds=2, drift_check_every=0, traffic=CarlaTrafficConfig(num_vehicles=2))
    backend = CarlaBackend(config, servers=FakeServers(2), world_factory=FakeWorld)
    backend.reset(0)
    for _ in range(3):
        backend.step(torch.tensor([[0.8, 0.0, 0.0]] * 2))
    snapshot = backend.snapshot([0])
    actions = np.tile([0.5, 0.0, 0.0], (4, 1))
    exact = measure_server_drift(backend, snapshot, actions)
    assert exact.positions.shape == (2, 4, 3, 2) and exact.summary()["drift/ego_m"] == 0.0
    FakeWorld.drift_per_restore = 0.25  # each restore puts traffic_0 0.25 m further off than the last
    try:
        backend.restore(snapshot, [1])  # server 1 is one restore ahead: its traffic_0 lands 0.25 m further
        noisy = measure_server_drift(backend, snapshot, actions).summary()
    finally:
        FakeWorld.drift_per_restore = 0.0
    assert noisy["drift/actors_max_m"] == pytest.approx(0.25) and noisy["drift/ego_m"] == 0.0
    assert noisy["drift/restore_error_actors_max_m"] == pytest.approx(0.25 * 3)  # server 1's third restore
    with pytest.raises(ValueError, match="two worlds"):
        measure_server_drift(backend, snapshot, actions, world_ids=[1])
