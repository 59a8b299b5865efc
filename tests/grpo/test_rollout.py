"""Snapshot -> branches -> returns -> selection on the built-in simulator."""

import pytest
import torch

from envs.sim.config import SimConfig
from envs.sim.world import DrivingSim
from grpo.config import GRPOConfig
from grpo.policy import PolicyConfig, build_policy
from grpo.rollout import BranchingRollout, discounted_returns, select_branches

TRUNKS, GROUP = 2, 4


def make_rollout(horizon=6, train_steps=None, seed=0):
    config = GRPOConfig(num_trunks=TRUNKS, group_size=GROUP, branch_horizon=horizon, train_steps=train_steps,
                        num_minibatches=2)
    sim = DrivingSim(SimConfig(num_worlds=TRUNKS * GROUP, map="straight", num_towns=2))
    policy = build_policy(sim.observation_size, PolicyConfig(hidden_sizes=(16,)))
    generator = torch.Generator().manual_seed(seed)
    rollout = BranchingRollout(sim, policy, config, seed=seed, device=torch.device("cpu"), generator=generator)
    rollout.start()
    return rollout, sim


def test_branch_point_makes_every_sibling_its_leader():
    rollout, sim = make_rollout()
    sim.step(torch.rand(TRUNKS * GROUP, 3))  # let the copies drift apart
    rollout.branch_point()
    floats = sim.state.floats.view(TRUNKS, GROUP, -1)
    assert torch.equal(floats, floats[:, :1].expand_as(floats))


def test_branches_differ_only_by_the_policy_actions():
    rollout, sim = make_rollout(horizon=8)
    rollout.branch_point()
    batch = rollout.drive_branches()
    # Sampled actions differ between siblings...
    assert not torch.equal(batch.raw_actions[:, 0], batch.raw_actions[:, 1])
    # ...and replaying one branch's actions in all siblings gives identical worlds (common world randomness).
    rollout.branch_point()
    same = torch.tensor([[0.6, 0.0, 0.1]]).repeat(TRUNKS * GROUP, 1)
    for _ in range(8):
        result = sim.step(same)
    grouped = result.observation.view(TRUNKS, GROUP, -1)
    assert torch.equal(grouped, grouped[:, :1].expand_as(grouped))


def test_shapes_and_trained_steps():
    rollout, _ = make_rollout(horizon=6, train_steps=2)
    rollout.branch_point()
    batch = rollout.drive_branches(record_positions=True)
    n = TRUNKS * GROUP
    assert batch.observations.shape[:2] == (2, n) and batch.raw_actions.shape == (2, n, 2)
    assert batch.rewards.shape == (6, n) and batch.valid.shape == (2, n)
    assert batch.positions.shape == (7, GROUP, 2)
    assert batch.group_id.tolist() == [0, 0, 0, 0, 1, 1, 1, 1]


def test_an_ended_branch_earns_nothing_more_and_is_masked():
    rollout, sim = make_rollout(horizon=5)
    rollout.branch_point()
    sim.state.step[1] = sim.config.max_episode_steps - 1  # branch 1 of trunk 0 times out on its first step
    batch = rollout.drive_branches()
    assert batch.valid[0, 1] and not batch.valid[1:, 1].any()
    assert (batch.rewards[1:, 1] == 0).all()
    assert batch.info["ended"][1] == 1


def test_trunk_continues_from_the_chosen_branch():
    rollout, sim = make_rollout(horizon=4)
    rollout.branch_point()
    rollout.drive_branches()
    end_states = sim.state.floats.clone().view(TRUNKS, GROUP, -1)
    rollout.continue_from(torch.tensor([2, 1]))
    floats = sim.state.floats.view(TRUNKS, GROUP, -1)
    assert torch.equal(floats[0], end_states[0, 2].expand(GROUP, -1))
    assert torch.equal(floats[1], end_states[1, 1].expand(GROUP, -1))


def test_restart_ended_trunks_starts_identical_copies():
    rollout, sim = make_rollout(horizon=3)
    rollout._done[:GROUP] = True  # trunk 0 ended
    assert rollout.restart_ended_trunks() == 1
    floats = sim.state.floats[:GROUP]
    assert torch.equal(floats, floats[:1].expand_as(floats)) and int(sim.state.step[0]) == 0


def test_discounted_returns():
    rewards = torch.tensor([[1.0, 0.0], [1.0, 2.0], [1.0, 0.0]])  # [H=3, N=2]
    # branch 0: 1 + 0.5 + 0.25; branch 1: 0 + 0.5 * 2
    assert discounted_returns(rewards, 0.5).tolist() == [1.75, 1.0]
    assert discounted_returns(rewards, 1.0).dtype == torch.float64


def test_selection_rules():
    returns = torch.tensor([1.0, 5.0, 2.0, 0.0, 9.0, 8.0])  # two groups of 3
    generator = torch.Generator().manual_seed(0)
    assert select_branches(returns, 3, "best", 1.0, generator).tolist() == [1, 1]  # [1, 5, 2] and [0, 9, 8]
    random_choice = select_branches(returns, 3, "random", 1.0, generator)
    assert ((random_choice >= 0) & (random_choice < 3)).all()
    # A cold softmax is nearly greedy; over many draws the best branch dominates.
    draws = torch.stack([select_branches(returns, 3, "softmax", 0.05, generator) for _ in range(200)])
    assert (draws[:, 0] == 1).float().mean() > 0.95
    with pytest.raises(ValueError, match="selection must be"):
        select_branches(returns, 3, "greedy", 1.0, generator)
