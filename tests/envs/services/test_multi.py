"""Several real service processes behind one backend: the contract, cross-service branching, failures and
clean shutdown."""

import os
import signal
import time

import pytest
import torch

from envs.api import BackendError, ServiceFailure, Snapshot
from envs.contract import check_capabilities, check_snapshot_contract
from envs.factory import build_backend, env_config_from_dict
from envs.services.launch import split_worlds
from envs.sim.config import SimConfig
from envs.sim.world import DrivingSim
from tests.processes import process_alive

STRAIGHT = {"map": "straight", "num_towns": 2}


def services(num_services=2, **extra):
    return env_config_from_dict({**STRAIGHT, "num_services": num_services, **extra})


def _wait_until(condition, what: str, timeout_s: float = 120.0) -> None:
    """Poll ``condition`` until it holds: generous, for a machine busy with other work, and quick when it is not."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"waited {timeout_s:.0f} s for {what}"
        time.sleep(0.05)


@pytest.fixture
def backend():
    backend = build_backend(services(), num_worlds=6)
    yield backend
    backend.close()


def test_snapshot_contract_across_processes():
    check_snapshot_contract(lambda: build_backend(services(), num_worlds=6), seed=2)


def test_cross_service_restore_equals_in_service_restore(backend):
    forward = torch.tensor([[0.6, 0.0, 0.05]]).repeat(6, 1)
    backend.reset(0)
    for _ in range(5):
        backend.step(forward)
    snapshot = backend.snapshot([0])  # world 0 lives on service 0
    backend.restore(snapshot, [1])  # same service
    backend.restore(snapshot, [4])  # other service
    for _ in range(10):
        result = backend.step(forward)
    assert torch.equal(result.observation[1], result.observation[4])
    assert torch.equal(result.reward[1], result.reward[4])
    # ...and both equal the same snapshot replayed in a plain in-process simulator.
    local = DrivingSim(SimConfig(num_worlds=1, **STRAIGHT))
    local.restore(snapshot, [0])
    for _ in range(10):
        local_result = local.step(forward[:1])
    assert torch.equal(local_result.observation[0], result.observation[4])


def test_rasters_cross_the_process_boundary_when_the_backend_draws_them(backend):
    backend.reset(3)
    local = DrivingSim(SimConfig(num_worlds=2, **STRAIGHT))
    local.restore(backend.snapshot([4, 0]))
    raster = backend.observe_raster([4, 0])  # worlds of both services, in the order asked for
    assert raster.dtype == torch.uint8 and torch.equal(raster, local.observe_raster())


def test_same_episodes_whatever_the_number_of_services():
    one = build_backend(services(num_services=2), num_worlds=4)
    two = build_backend(services(num_services=4), num_worlds=4)
    try:
        assert torch.equal(one.reset(7), two.reset(7))
    finally:
        one.close()
        two.close()


def test_a_killed_service_is_restarted_and_its_worlds_reported(backend):
    backend.reset(0)
    victim = backend.pids[1]
    os.kill(victim, signal.SIGKILL)
    result = backend.step(torch.zeros(6, 3))
    assert result.info["service_failed"].tolist() == [False, False, False, True, True, True]
    assert result.terminated[3:].all() and (result.reward[3:] == 0).all()
    assert backend.restarts == 1 and backend.pids[1] != victim and process_alive(backend.pids[1])
    assert not backend.step(torch.zeros(6, 3)).info["service_failed"].any()  # working again


def test_close_leaves_no_processes():
    backend = build_backend(services(num_services=3), num_worlds=3)
    pids = backend.pids
    assert all(process_alive(pid) for pid in pids)
    backend.close()
    assert not any(process_alive(pid) for pid in pids)


def test_call_errors_do_not_restart_services(backend):
    backend.reset(0)
    other = DrivingSim(SimConfig(num_worlds=1, map="junction", num_towns=1))
    other.reset(0)
    with pytest.raises(BackendError, match="another map or town configuration"):
        backend.restore(other.snapshot(), [4])
    assert backend.restarts == 0


def test_a_service_that_cannot_start_is_a_clear_error():
    with pytest.raises(ServiceFailure, match="did not start within"):
        build_backend(services(start_timeout_s=0.01), num_worlds=2)


def test_a_service_that_predates_specs_gets_the_one_its_action_bounds_imply():
    from envs.services.multi import service_spec

    box = service_spec({"observation_size": 3, "action_bounds": [[-2.0], [2.0]]})  # an older HTTP server
    assert (box.driving, box.action_low, box.rasters, box.splits) == (False, (-2.0,), False, False)
    assert service_spec({"observation_size": 66, "action_bounds": None}).driving


def test_split_worlds():
    assert split_worlds(10, 4) == [3, 3, 2, 2]
    with pytest.raises(BackendError, match="cannot be spread"):
        split_worlds(2, 3)


def test_a_gymnasium_env_over_two_services_keeps_its_action_box():
    backend = build_backend(env_config_from_dict({"backend": "gym", "id": "Pendulum-v1", "num_services": 2}),
                            num_worlds=4)
    try:
        spec = backend.spec  # the services' spec, forwarded
        assert (spec.kind, spec.driving, spec.action_low, spec.action_high) == ("gym", False, (-2.0,), (2.0,))
        assert spec.action_size == 1 and spec.max_episode_steps == 200
        check_capabilities(backend)  # no optional call: each refused by name, from the parent
        backend.reset(0)
        snapshot = backend.snapshot([0])
        backend.restore(snapshot, [3])  # state-API snapshots travel between services
        for _ in range(5):
            result = backend.step(torch.full((4, 1), 0.5))
        assert torch.equal(result.observation[0], result.observation[3])
        with pytest.raises(BackendError, match=r"shape \[4, 1\]"):
            backend.step(torch.zeros(4, 3))
    finally:
        backend.close()


# --- faults: death noticed on send, by the heartbeat, hangs, and no orphans -------------------------------


def test_a_service_killed_while_idle_is_replaced_and_reset_goes_on(caplog):
    backend = build_backend(services(heartbeat_s=0), num_worlds=6)  # no heartbeat: the send notices it
    try:
        expected = backend.reset(3)
        victim = backend.pids[1]
        os.kill(victim, signal.SIGKILL)
        assert torch.equal(backend.reset(3), expected)  # retried on the new service: nothing is lost
        assert backend.restarts == 1 and not process_alive(victim) and process_alive(backend.pids[1])
        assert f"service 1: died (pid {victim}" in caplog.text
        os.kill(backend.pids[0], signal.SIGKILL)  # ...and a restore after a death is retried the same way
        snapshot = backend.snapshot([4])
        backend.restore(snapshot, [0])
        assert backend.restarts == 2 and torch.equal(backend.observe([0]), backend.observe([4]))
    finally:
        backend.close()


def test_the_heartbeat_repairs_an_idle_death_and_the_next_step_reports_it():
    backend = build_backend(services(heartbeat_s=0.2), num_worlds=6)
    try:
        backend.reset(0)
        victim = backend.pids[0]
        os.kill(victim, signal.SIGKILL)
        # No call is made: only the heartbeat can notice. It counts the restart before the replacement has
        # started, so wait for the new pid (a busy machine may take seconds to start it), then for the repair
        # to end: a call waits for the backend's lock, which the heartbeat holds until the worlds are reset.
        _wait_until(lambda: backend.pids[0] not in (victim, None), "the heartbeat to replace the dead service")
        with pytest.raises(ServiceFailure, match="state is lost"):
            backend.snapshot([1])  # the world's state went with the old process
        assert backend.restarts == 1
        result = backend.step(torch.zeros(6, 3))
        assert result.info["service_failed"].tolist() == [True, True, True, False, False, False]
        assert result.terminated[:3].all() and (result.reward[:3] == 0).all()
        assert not backend.step(torch.zeros(6, 3)).info["service_failed"].any()
        backend.snapshot([1])  # stepped since: readable again
    finally:
        backend.close()


def test_a_hung_service_is_abandoned_after_the_measured_deadline():
    # hang_timeout_min_s also sets how long a service's pulse may be silent: 5 s, so that a healthy service that
    # a busy machine leaves unscheduled for a second is not taken for a stopped one
    backend = build_backend(services(heartbeat_s=0, hang_timeout_min_s=5.0, call_timeout_s=600), num_worlds=4)
    try:
        backend.reset(0)
        for _ in range(40):  # the slow first step (towns built) leaves the window of recent answers
            backend.step(torch.zeros(4, 3))
        deadline = backend.deadline("step")  # 10 x the slowest recent step, floored at hang_timeout_min_s (5 s)
        assert deadline < 60  # measured, not call_timeout_s (600 s)
        victim = backend.pids[1]
        os.kill(victim, signal.SIGSTOP)
        began = time.monotonic()
        result = backend.step(torch.zeros(4, 3))
        assert time.monotonic() - began < deadline + 120  # the deadline (or the silent pulse) + a restart
        assert result.info["service_failed"].tolist() == [False, False, True, True]
        assert backend.restarts == 1
        _wait_until(lambda: not process_alive(victim), "the stopped process to be killed by its pid")
    finally:
        backend.close()


def test_a_stopped_service_fails_even_the_first_call_when_its_pulse_stops(caplog):
    # Nothing measured yet (the deadline is call_timeout_s), but the service's pulse falls silent (after
    # hang_timeout_min_s: 5 s, so that the healthy service, busy building towns on a loaded machine, is not taken
    # for a stopped one).
    backend = build_backend(services(heartbeat_s=0, hang_timeout_min_s=5.0, call_timeout_s=600), num_worlds=4)
    try:
        assert backend.deadline("reset") == 600
        os.kill(backend.pids[0], signal.SIGSTOP)
        began = time.monotonic()
        backend.reset(0)
        assert time.monotonic() - began < 300 and backend.restarts == 1  # the pulse, not call_timeout_s
        assert "fell silent: no pulse for" in caplog.text
    finally:
        backend.close()


def test_a_call_error_on_one_service_keeps_the_others_in_step(backend):
    backend.reset(0)
    expected = backend.observe()
    bad = Snapshot("sim", "another-town", 2, {"floats": torch.zeros(2, 1)})
    with pytest.raises(BackendError, match="does not fit"):
        backend.restore(bad, [0, 5])  # refused by both services
    assert torch.equal(backend.observe(), expected)  # answers are not read out of turn, worlds untouched
    assert backend.restarts == 0


def test_training_survives_a_service_killed_while_idle(tmp_path, caplog):
    from grpo.trainer import Trainer
    from tests.grpo.test_trainer import quiet_config

    trainer = Trainer(quiet_config(tmp_path, env={"num_services": 2}, grpo={"iterations": 3}))
    first = list(trainer.backend.pids)
    trainer.begin()
    try:
        trainer.train_iteration()
        os.kill(first[0], signal.SIGKILL)  # between iterations: the service is idle
        while trainer.iteration < 3:
            metrics = trainer.train_iteration()
    finally:
        trainer.finish()
    assert trainer.iteration == 3 and metrics["services/restarts"] == 1
    assert f"service 0: died (pid {first[0]}" in caplog.text  # in the log, not only in TensorBoard
    assert not any(process_alive(pid) for pid in first + list(trainer.backend.pids or []))


@pytest.mark.slow
def test_training_survives_twenty_kills_at_random_moments():
    # bench/faults.py's measurement (its figures are in docs/reliability.md): the smoke experiment on two services,
    # a random service SIGKILLed every 0.3-1.5 s, idle or mid-call, 20 times in one run.
    from bench.faults import kill_during_training

    result = kill_during_training(kills=20, seed=1)
    assert result["kills"] == 20 and result["kills_idle"] > 0 and result["kills_busy"] > 0
    assert result["restarts"] == 20 and result["restart_lines"] == 20
    assert result["orphans"] == []
