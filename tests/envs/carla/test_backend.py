"""CarlaBackend's own logic (batching worlds, snapshots, restore, clone, frozen ended worlds, server failures,
drift reports) with stand-in worlds: the real episode rules and observations on simple kinematics instead
of a CARLA server. Live tests (test_live.py) run the same backend on real servers."""

import dataclasses
import math

import numpy as np
import pytest
import torch

from envs.api import BackendError, ServiceFailure, Snapshot
from envs.carla.backend import CarlaBackend, DriftReport, actor_positions, derive_episode_seeds, measure_drift
from envs.carla.config import CarlaConfig, CarlaTrafficConfig
from envs.carla.lights import StopLines
from envs.carla.routes import Route, polyline_yaw
from envs.carla.state import ActorStates, StepEvents, advance_episode, start_episode
from envs.carla.world import PlannedRoute, route_data
from envs.contract import check_snapshot_contract


class FakeTown:
    """A town with straight 200 m routes, one per lane offset, and no lights."""

    vehicle_blueprints = ["vehicle.lincoln.mkz_2020", "vehicle.tesla.model3"]
    walker_blueprints: list[str] = []
    light_keys = [(0.0, 0.0)]
    route_files: dict = {}
    stop_lines = StopLines.empty()

    def route_key(self, episode_seed, attempt=0):
        return 0, episode_seed % 3

    def route(self, kind, route_id):
        x = np.arange(0.0, 201.0)
        points = np.stack([x, np.full_like(x, 4.0 * route_id)], axis=1)
        route = Route(points, np.zeros(len(x)), x.copy(), polyline_yaw(points), [(1, -1)])
        return PlannedRoute(route, route_data(route, self.stop_lines))


class FakeServer:
    def __init__(self, index):
        self.index, self.address, self.dead = index, f"fake:{2000 + 4 * index}", False


class FakeServers:
    """Stands in for ServerManager: servers can be marked dead; restart gives a fresh one."""

    launched = True

    def __init__(self, count):
        self.servers = [FakeServer(i) for i in range(count)]
        self.restarted: list[int] = []

    def healthy(self, index, timeout_s=5.0):
        return not self.servers[index].dead

    def restart(self, index):
        self.restarted.append(index)
        self.servers[index] = FakeServer(index)
        return self.servers[index]

    def start(self):
        return self

    def stop(self):
        self.servers = []


class FakeWorld:
    """The CarlaWorld interface on a kinematic ego and one traffic car driving at 5 m/s (deterministic, so
    restores are exact unless ``drift_per_restore`` adds a growing error to the traffic car)."""

    drift_per_restore = 0.0

    def __init__(self, index, server, config, town):
        self.index, self.server, self.config = index, server, config
        self.town = town or FakeTown()
        self.actors = self.episode = None
        self.restores = 0

    def reset(self, episode_seed):
        if self.server.dead:
            raise RuntimeError("time-out of 60000ms while waiting for the simulator")
        kind, route_id = self.town.route_key(episode_seed)
        planned = self.town.route(kind, route_id)
        actors = ActorStates.empty(self.config.traffic.num_vehicles, 0, len(self.town.light_keys))
        actors.vehicle_valid[:2] = True
        actors.vehicle_extent[:] = (2.4, 0.95, 0.8)
        actors.vehicle_pose[0] = (float(episode_seed % 5), 4.0 * route_id, 0.0, 0.0, 0.0, 0.0)
        actors.vehicle_pose[1] = (30.0, 4.0 * route_id, 0.0, 0.0, 0.0, 0.0)
        actors.vehicle_velocity[1] = (5.0, 0.0, 0.0)
        self.actors = actors
        self.episode = start_episode(episode_seed, kind, route_id, planned.data, actors, 0.5)

    def step(self, control):
        if self.server.dead:
            raise RuntimeError("time-out of 60000ms while waiting for the simulator")
        if self.episode.done:
            return 0.0, {}
        dt = self.config.fixed_delta_seconds
        throttle, brake, steer = (float(v) for v in control)
        actors = self.actors.copy()
        speed = float(np.hypot(*actors.vehicle_velocity[0, :2]))
        speed = min(20.0, max(0.0, speed + (3.0 * throttle - 6.0 * brake) * dt))
        yaw = actors.vehicle_pose[0, 5] + 20.0 * steer * dt
        actors.vehicle_pose[0, 5] = yaw
        actors.vehicle_velocity[0, :2] = (speed * math.cos(math.radians(yaw)), speed * math.sin(math.radians(yaw)))
        actors.vehicle_pose[:, :2] += actors.vehicle_velocity[:, :2] * dt
        actors.vehicle_control[0] = (throttle, steer, brake, 0.0, 0.0)
        planned = self.town.route(self.episode.route_kind, self.episode.route_id)
        self.episode, reward, info = advance_episode(self.config, self.episode, planned.data, self.town.stop_lines,
                                                     actors, np.array([throttle, brake, steer]), StepEvents())
        self.actors = actors
        return reward, info

    def restore(self, actors, episode):
        if self.server.dead:
            raise RuntimeError("connection refused")
        self.restores += 1
        self.actors = actors.copy()
        self.actors.vehicle_pose[1, 0] += self.drift_per_restore * self.restores
        self.episode = episode

    def close(self):
        pass


def make_backend(num_worlds=4, **overrides):
    config = CarlaConfig(num_worlds=num_worlds, drift_check_every=0,
                         traffic=CarlaTrafficConfig(num_vehicles=2), **overrides)
    return CarlaBackend(config, servers=FakeServers(num_worlds), world_factory=FakeWorld)


def test_the_backend_meets_the_snapshot_contract_exactly_on_exact_worlds():
    check_snapshot_contract(make_backend, seed=3)


def test_reset_step_and_info():
    backend = make_backend(num_worlds=2)
    obs = backend.reset(0)
    assert obs.shape == (2, backend.observation_size) and obs.dtype == torch.float32
    assert backend.episode_seeds(0, [0, 1]) == derive_episode_seeds(0, [0, 1])
    result = backend.step(torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]))
    assert result.reward[0] > 0 and result.reward[1] == 0
    for name in ("route_progress_m", "route_completion", "distance_m", "speed", "route_completed", "lane_invasion",
                 "collision_vehicle", "red_light", "timeout", "service_failed"):
        assert result.info[name].shape == (2,)
    assert not result.info["service_failed"].any()
    backend.close()
    backend.close()  # twice is fine


def test_bad_calls_say_how_to_fix_them():
    backend = make_backend(num_worlds=2)
    with pytest.raises(BackendError, match="call reset"):
        backend.step(torch.zeros(2, 3))
    backend.reset([1, 2])
    with pytest.raises(BackendError, match="shape"):
        backend.step(torch.zeros(3, 3))
    with pytest.raises(BackendError, match="one per world"):
        backend.reset([1, 2, 3])
    snapshot = backend.snapshot([0])
    with pytest.raises(BackendError, match="1 worlds but 2 world ids"):
        backend.restore(snapshot, [0, 1])
    with pytest.raises(BackendError, match="does not fit"):
        backend.restore(dataclasses.replace(snapshot, signature="other"), [1])
    with pytest.raises(BackendError, match="repeats"):
        backend.restore(Snapshot.concat([snapshot, snapshot]), [1, 1])


def test_ended_worlds_stay_frozen():
    backend = make_backend(num_worlds=2, max_episode_steps=5)
    backend.reset(0)
    for _ in range(5):
        result = backend.step(torch.tensor([[1.0, 0.0, 0.0]] * 2))
    assert result.truncated.all()
    frozen = backend.observe()
    again = backend.step(torch.tensor([[1.0, 0.0, 0.0]] * 2))
    assert torch.equal(again.observation, frozen) and (again.reward == 0).all() and again.truncated.all()
    assert not again.info["timeout"].any()  # an ended world reports no events


def test_a_dead_server_is_restarted_and_its_world_reported_failed():
    backend = make_backend(num_worlds=3)
    backend.reset(0)
    backend.servers.servers[1].dead = True
    result = backend.step(torch.tensor([[1.0, 0.0, 0.0]] * 3))
    assert result.info["service_failed"].tolist() == [False, True, False]
    assert result.terminated[1] and result.reward[1] == 0 and backend.restarts == 1
    assert backend.servers.restarted == [1] and backend.worlds[1].episode.step == 0  # a fresh episode
    snapshot = backend.snapshot([0])
    backend.servers.servers[2].dead = True
    with pytest.raises(ServiceFailure, match="service 2"):
        backend.restore(snapshot, [2])
    backend.restore(snapshot, [2])  # the restarted server takes it (the rollout retries once)
    assert backend.metrics()["carla/restarts"] == 2.0


def test_errors_that_are_not_a_dead_server_are_call_errors():
    backend = make_backend(num_worlds=2)
    backend.reset(0)

    def broken(control):
        raise RuntimeError("failed to spawn actor")

    backend.worlds[0].step = broken
    with pytest.raises(BackendError, match="failed to spawn actor"):
        backend.step(torch.zeros(2, 3))
    assert backend.restarts == 0


def test_too_many_restarts_stop_the_run():
    backend = make_backend(num_worlds=1, max_restarts=0)
    backend.reset(0)
    backend.servers.servers[0].dead = True
    with pytest.raises(ServiceFailure, match="max_restarts"):
        backend.step(torch.zeros(1, 3))


def test_drift_is_measured_against_the_source_and_between_restores():
    backend = make_backend(num_worlds=2)
    backend.reset(0)
    for _ in range(5):
        backend.step(torch.tensor([[0.8, 0.0, 0.1]] * 2))
    actions = np.tile([0.5, 0.0, 0.0], (10, 1))
    exact = measure_drift(backend, 0, actions)
    assert exact.source.shape == (10, 3, 2) and exact.keys == ["hero", "traffic_0", "traffic_1"]
    assert np.all(exact.vs_source[:, :2] == 0) and np.isnan(exact.vs_source[:, 2]).all()  # traffic_1: no actor
    FakeWorld.drift_per_restore = 0.25
    try:
        snapshot = backend.snapshot([1])
        report = measure_drift(backend, 1, actions, snapshot=snapshot, from_source=True)
    finally:
        FakeWorld.drift_per_restore = 0.0
    # restores k and k+1 place traffic_0 0.25 m apart; the ego is exact
    assert report.between_restores[:, 0] == pytest.approx(0.0)
    assert report.between_restores[-1, 1] == pytest.approx(0.25)
    assert report.vs_source[-1, 1] > 0
    summary = report.summary()
    assert summary["drift_between_restores/actors_max_m"] == pytest.approx(0.25)
    assert summary["drift_vs_source/ego_m"] == 0.0


def test_automatic_drift_check_every_n_snapshots():
    backend = make_backend(num_worlds=1)
    backend.config = dataclasses.replace(backend.config, drift_check_every=2, drift_check_steps=3)
    backend.reset(0)
    backend.snapshot()
    assert backend.drift is None
    before = backend.observe()
    backend.snapshot()
    assert isinstance(backend.drift, DriftReport) and backend.drift.source.shape[0] == 3
    assert "carla/drift_between_restores/ego_m" in backend.metrics()
    assert torch.equal(backend.observe(), before)  # the world is left as the snapshot had it


def test_actor_positions_mark_empty_slots():
    actors = ActorStates.empty(2, 1, 0)
    actors.vehicle_valid[0] = True
    actors.vehicle_pose[0, :2] = (3.0, 4.0)
    positions = actor_positions(actors)
    assert positions.shape == (4, 2) and positions[0].tolist() == [3.0, 4.0] and np.isnan(positions[1:]).all()


def test_the_trainer_runs_on_the_carla_backend_in_waves(tmp_path, monkeypatch):
    """train.py's path with env=carla (factory -> CarlaBackend -> rollout in waves -> checkpoint), with
    stand-in servers and worlds in place of CARLA."""
    import envs.carla.world
    from envs.carla.server import ServerManager
    from grpo.checkpoint import load_checkpoint
    from grpo.config import train_config_from_dict
    from grpo.trainer import Trainer

    monkeypatch.setattr(envs.carla.world, "CarlaWorld", FakeWorld)
    monkeypatch.setattr(ServerManager, "from_config",
                        classmethod(lambda cls, config, count, start_timeout_s=120.0: FakeServers(count)))
    config = train_config_from_dict({
        "run_name": "carla", "seed": 0,
        "env": {"backend": "carla", "num_services": 2, "worlds_per_service": 1, "drift_check_every": 3,
                "traffic": {"num_vehicles": 2}},
        "grpo": {"iterations": 2, "num_trunks": 2, "group_size": 2, "branch_horizon": 5, "num_minibatches": 2},
        "policy": {"hidden_sizes": [16, 16]},
        "eval": {"every": 0},
        "pretrain": {"updates": 0},
        "checkpoint": {"dir": str(tmp_path / "ckpt"), "every": 1},
        "logger": {"log_dir": str(tmp_path / "runs"), "tensorboard": False, "wandb": {"mode": "disabled"},
                   "picture_every": 0, "progress_bar": False},
    })
    trainer = Trainer(config)
    assert trainer.backend.num_worlds == 2 and trainer.rollout.num_waves == 2  # 4 branches over 2 servers
    metrics = trainer.train()
    assert np.isfinite(metrics["reward/mean"])
    state = load_checkpoint(tmp_path / "ckpt" / "carla" / "last.pt")
    assert state["iteration"] == 2 and state["config"]["env"]["backend"] == "carla"
