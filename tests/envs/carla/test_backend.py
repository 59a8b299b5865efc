"""CarlaBackend's own logic (batching worlds, snapshots, restore, clone, frozen ended worlds, server failures,
drift reports) with stand-in worlds: the real episode rules and observations on simple kinematics instead
of a CARLA server. Live tests (test_live.py) run the same backend on real servers."""

import dataclasses

import numpy as np
import pytest
import torch

from envs.api import BackendError, ServiceFailure, Snapshot
from envs.carla.backend import CarlaBackend, DriftReport, actor_positions, derive_episode_seeds, measure_drift
from envs.carla.config import CarlaConfig, CarlaTrafficConfig
from envs.carla.state import ActorStates
from envs.contract import check_capabilities, check_snapshot_contract
from tests.envs.carla.stand_ins import FakeServers, FakeWorld


def make_backend(num_worlds=4, **overrides):
    config = CarlaConfig(num_worlds=num_worlds, drift_check_every=0,
                         traffic=CarlaTrafficConfig(num_vehicles=2), **overrides)
    return CarlaBackend(config, servers=FakeServers(num_worlds), world_factory=FakeWorld)


def test_the_backend_meets_the_snapshot_contract_exactly_on_exact_worlds():
    check_snapshot_contract(make_backend, seed=3)


def test_the_spec_tells_the_truth():
    check_capabilities(make_backend(num_worlds=2))  # splits and in-place evaluation; no rasters, no pictures


def test_reset_step_and_info():
    backend = make_backend(num_worlds=2)
    obs = backend.reset(0)
    assert obs.shape == (2, backend.observation_size) and obs.dtype == torch.float32
    assert backend.episode_seeds(0, [0, 1]) == derive_episode_seeds(0, [0, 1])
    result = backend.step(torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]))
    assert result.reward[0] > 0 and result.reward[1] == 0
    for name in ("route_progress_m", "route_completion", "distance_m", "speed", "route_completed", "lane_invasion",
                 "collision_vehicle", "red_light", "timeout", "service_failed", "outside_route_lanes",
                 "outside_route_lanes_m", "traffic_speed"):
        assert result.info[name].shape == (2,)
    assert not result.info["service_failed"].any()
    assert result.info["traffic_speed"].tolist() == [5.0, 5.0]  # the stand-in's traffic car drives at 5 m/s
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
    backend.restore(snapshot, [2])  # server 2 fails, is restarted (its old world released), and takes it
    assert backend.servers.restarted == [1, 2] and backend.metrics()["carla/restarts"] == 2.0
    assert torch.equal(backend.observe([2]), backend.observe([0]))


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


@pytest.mark.slow
def test_the_trainer_runs_on_the_carla_backend_in_waves(tmp_path, stand_in_root):
    """train.py's path with env=carla: factory -> one service process per server (stand-in CarlaUE4.sh
    servers, stand-in worlds) -> rollout in waves, with a CNN policy reading the rasters each service draws
    -> drift between servers logged -> periodic evaluation on the same servers -> checkpoint."""
    from grpo.checkpoint import load_checkpoint
    from grpo.config import train_config_from_dict
    from grpo.trainer import Trainer

    config = train_config_from_dict({
        "run_name": "carla", "seed": 0,
        "env": {"backend": "carla", "num_services": 2, "worlds_per_service": 1, "drift_check_every": 3,
                "drift_check_steps": 4, "carla_root": str(stand_in_root), "log_dir": str(tmp_path / "servers"),
                "world_class": "tests.envs.carla.stand_ins:FakeWorld", "traffic": {"num_vehicles": 2},
                "raster_size": 16},
        "grpo": {"iterations": 2, "num_trunks": 2, "group_size": 2, "branch_horizon": 5, "num_minibatches": 2},
        "policy": {"kind": "cnn", "hidden_sizes": [16, 16], "raster_size": 16, "conv_channels": [4, 4, 4]},
        "eval": {"every": 2, "num_routes": 3, "max_steps": 5},  # on the trainer's own servers, in 2 waves
        "pretrain": {"updates": 0},
        "checkpoint": {"dir": str(tmp_path / "ckpt"), "every": 1},
        "logger": {"log_dir": str(tmp_path / "runs"), "tensorboard": False, "wandb": {"mode": "disabled"},
                   "picture_every": 0, "progress_bar": False},
    })
    trainer = Trainer(config)
    try:
        assert trainer.backend.num_worlds == 2 and trainer.rollout.num_waves == 2  # 4 branches over 2 servers
        assert len(set(trainer.backend.pids)) == 2
        metrics = trainer.train()
    finally:
        trainer.backend.close()  # train() closes it too; a failed assertion above must not leave servers
    assert np.isfinite(metrics["reward/mean"]) and metrics["eval/num_routes"] == 3.0
    assert metrics["services/restarts"] == 0.0  # no second backend was opened for the evaluation
    # the stand-in worlds restore exactly, so two servers replaying one snapshot agree to the millimetre
    assert metrics["drift/servers"] == 2.0 and metrics["drift/ego_m"] == pytest.approx(0.0, abs=1e-9)
    state = load_checkpoint(tmp_path / "ckpt" / "carla" / "last.pt")
    assert state["iteration"] == 2 and state["config"]["env"]["backend"] == "carla"


def test_evaluation_reuses_the_backend_on_eval_routes_and_hands_it_back():
    from envs.factory import EnvConfig
    from grpo.config import EvalConfig
    from grpo.evaluation import evaluate_policy
    from tests.envs.carla.stand_ins import FakeWorld

    seen = []

    class Recording(FakeWorld):
        def reset(self, episode_seed):
            seen.append(self.config.split)
            super().reset(episode_seed)

    backend = CarlaBackend(CarlaConfig(num_worlds=2, drift_check_every=0, traffic=CarlaTrafficConfig(num_vehicles=2)),
                           servers=FakeServers(2), world_factory=Recording)
    assert backend.spec.evaluates_in_place and backend.spec.splits and backend.spec.dt == 0.05

    from grpo.baselines import ControllerDriver

    def cruise(observation):
        return torch.tensor([[0.5, 0.0, 0.0]] * observation.shape[0])

    result = evaluate_policy(ControllerDriver(cruise), EnvConfig("carla", backend_config=backend.config),
                             EvalConfig(num_routes=3, max_steps=4), "cpu", backend=backend)
    assert result.metrics["eval/num_routes"] == 3.0
    assert seen and set(seen) == {"eval"} and backend.config.split == "train"
    assert backend.set_split("eval") == "train" and backend.set_split("train") == "eval"
    with pytest.raises(BackendError, match="split"):
        backend.set_split("test")
