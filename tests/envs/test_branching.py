"""The branching session (the CARLA seed project's verbs) over the simulator, several services and a gym env."""

import pytest
import torch

from envs.api import BackendError
from envs.branching import BranchingSession
from envs.factory import build_backend, env_config_from_dict
from envs.gym_backend import GymBackend, GymConfig

FORWARD, BRAKE = [0.8, 0.0, 0.0], [0.0, 1.0, 0.0]


def drive_and_branch(session: BranchingSession) -> None:
    """The verbs in a typical order, checking what each one promises, on any driving backend of >= 3 worlds."""
    obs = session.reset(seed=7)
    assert obs.shape == (session.backend.observation_size,)
    for _ in range(3):
        obs, reward, terminated, truncated, info = session.single_step(FORWARD)
    assert isinstance(reward, float) and reward > 0 and terminated is False and truncated is False
    assert isinstance(info["route_progress_m"], float)
    snap = session.save_snapshot()
    main_obs = session.observe()

    branches = session.enable_branching(snap, num_branches=3)
    assert branches.shape == (3, obs.shape[0]) and session.branching and session.num_branches == 3
    assert all(torch.equal(row, main_obs) for row in branches)  # every branch starts from the snapshot
    actions = torch.tensor([FORWARD, BRAKE, [1.0, 0.0, 0.0]])
    for _ in range(5):
        result = session.branch_step(actions)
    assert result.observation.shape == (3, obs.shape[0]) and result.reward.shape == (3,)
    assert result.reward[2] > result.reward[1]  # full throttle out-drives braking
    chosen = session.select_branch(2)
    assert not session.branching and torch.equal(chosen, result.observation[2])
    assert torch.equal(session.observe(), result.observation[2])

    # disable_branching puts the main world back as it was: its next step is the step it would have taken.
    before = session.save_snapshot()
    session.enable_branching(before, num_branches=2)
    session.branch_step(torch.tensor([BRAKE, BRAKE]))
    session.disable_branching()
    resumed = session.single_step(FORWARD)
    session.enable_branching(before, num_branches=1)
    replay = session.branch_step(torch.tensor([FORWARD]))
    assert torch.equal(resumed[0], replay.observation[0]) and resumed[1] == replay.reward[0].item()
    session.disable_branching()


def test_session_on_the_simulator(straight_sim):
    with BranchingSession(straight_sim(4)) as session:
        drive_and_branch(session)
        assert session.snapshot_ids == [0, 1]


def test_session_over_two_services():
    """Branches spread over two processes: restore and select_branch cross services as bytes."""
    backend = build_backend(env_config_from_dict({"map": "straight", "num_towns": 2, "num_services": 2}),
                            num_worlds=4)
    session = BranchingSession(backend)
    try:
        drive_and_branch(session)
        snap = session.save_snapshot()
        branches = session.enable_branching(snap, num_branches=4)  # worlds 0, 1 on service 0; 2, 3 on service 1
        assert all(torch.equal(row, branches[0]) for row in branches)
        result = session.branch_step(torch.tensor([BRAKE, BRAKE, BRAKE, FORWARD]))
        assert torch.equal(session.select_branch(3), result.observation[3])
    finally:
        session.close()
    assert backend.services == []  # the processes are stopped


def test_session_on_a_gym_env_replays_exactly():
    session = BranchingSession(GymBackend(GymConfig(id="Pendulum-v1", num_worlds=3)))
    assert session.action_size == 1
    session.reset(seed=4)
    snap = session.save_snapshot()
    main = [session.single_step(torch.tensor([0.5])) for _ in range(4)]
    session.enable_branching(snap, num_branches=3)
    for step in range(4):
        result = session.branch_step(torch.tensor([[0.5], [-2.0], [2.0]]))
        assert torch.equal(result.observation[0], main[step][0]) and result.reward[0].item() == main[step][1]
    assert not torch.equal(result.observation[1], result.observation[2])
    session.close()


def test_misuse_raises_clear_errors(straight_sim):
    session = BranchingSession(straight_sim(4))
    with pytest.raises(BackendError, match="single_step before reset: call reset"):
        session.single_step(FORWARD)
    session.reset(seed=1)
    with pytest.raises(BackendError, match="branch_step needs branching mode"):
        session.branch_step(torch.tensor([FORWARD]))
    with pytest.raises(BackendError, match="disable_branching needs branching mode"):
        session.disable_branching()
    with pytest.raises(BackendError, match=r"one action of 3 values, got shape \[2\]"):
        session.single_step([1.0, 0.0])
    snap = session.save_snapshot()
    with pytest.raises(BackendError, match=r"unknown snapshot id 5; this session has saved \[0\]"):
        session.enable_branching(5, num_branches=2)
    with pytest.raises(BackendError, match="num_branches=6 does not fit the backend's 4 worlds"):
        session.enable_branching(snap, num_branches=6)

    session.enable_branching(snap, num_branches=2)
    with pytest.raises(BackendError, match=r"^single_step while branching: call select_branch\(i\) or "
                                           r"disable_branching\(\) first$"):
        session.single_step(FORWARD)
    with pytest.raises(BackendError, match=r"already branching \(2 branches\)"):
        session.enable_branching(snap, num_branches=2)
    with pytest.raises(BackendError, match=r"one action per branch, shape \[2, 3\] .* got \[3, 3\]"):
        session.branch_step(torch.tensor([FORWARD] * 3))
    with pytest.raises(BackendError, match=r"branch 2 is out of range: there are 2 branches \(0 to 1\)"):
        session.select_branch(2)
    with pytest.raises(BackendError, match="pass save_snapshot\\(branch=i\\)"):
        session.save_snapshot()
    assert session.save_snapshot(branch=1) == 1
    session.select_branch(1)
    session.drop_snapshot(0)
    with pytest.raises(BackendError, match=r"unknown snapshot id 0; this session has saved \[1\]"):
        session.enable_branching(0, num_branches=2)

    session.close()
    session.close()  # idempotent
    with pytest.raises(BackendError, match="session is closed"):
        session.reset(seed=1)
    with pytest.raises(BackendError, match="session is closed"):
        session.save_snapshot()
