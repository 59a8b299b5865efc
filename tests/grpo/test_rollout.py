"""Snapshot -> branches -> returns -> selection on the built-in simulator, in one wave and in several."""

import pytest
import torch

from envs.sim.config import SimConfig
from envs.sim.world import DrivingSim
from grpo.config import GRPOConfig
from grpo.policy import PolicyConfig, build_policy
from grpo.rollout import BranchingRollout, discounted_returns, select_branches, waves

TRUNKS, GROUP = 2, 4


def make_rollout(horizon=6, train_steps=None, seed=0, capacity=TRUNKS * GROUP, action_repeat=1):
    config = GRPOConfig(num_trunks=TRUNKS, group_size=GROUP, branch_horizon=horizon, train_steps=train_steps,
                        num_minibatches=2)
    sim = DrivingSim(SimConfig(num_worlds=capacity, map="straight", num_towns=2))
    policy = build_policy(sim.observation_size, PolicyConfig(hidden_sizes=(16,), action_repeat=action_repeat))
    generator = torch.Generator().manual_seed(seed)
    rollout = BranchingRollout(sim, policy, config, seed=seed, device=torch.device("cpu"), generator=generator)
    rollout.start()
    return rollout, sim


def test_every_branch_starts_from_its_trunk_and_acts_on_its_own():
    rollout, _ = make_rollout(horizon=8)
    batch = rollout.drive_branches()
    first = batch.observations[0].view(TRUNKS, GROUP, -1)
    assert torch.equal(first, first[:, :1].expand_as(first))  # same start within a group
    floats = rollout.trunks.tensors["floats"]
    assert not torch.equal(floats[0], floats[1])  # trunks are different episodes
    assert not torch.equal(batch.raw_actions[:, 0], batch.raw_actions[:, 1])  # own sampled actions


def test_restored_branches_share_world_randomness():
    rollout, sim = make_rollout()
    sim.restore(rollout.trunks.select([0, 0, 0, 0]), [0, 1, 2, 3])
    same = torch.tensor([[0.6, 0.0, 0.1]]).repeat(TRUNKS * GROUP, 1)
    for _ in range(8):
        result = sim.step(same)
    assert torch.equal(result.observation[:4], result.observation[:1].expand(4, -1))


def test_shapes_and_trained_steps():
    rollout, _ = make_rollout(horizon=6, train_steps=2)
    batch = rollout.drive_branches(record_positions=True)
    n = TRUNKS * GROUP
    assert batch.observations.shape[:2] == (2, n) and batch.raw_actions.shape == (2, n, 2)
    assert batch.rewards.shape == (6, n) and batch.valid.shape == (2, n)
    assert batch.positions.shape == (7, GROUP, 2)
    assert batch.group_id.tolist() == [0, 0, 0, 0, 1, 1, 1, 1] and not batch.failed.any()


def test_held_actions_are_trained_at_their_decisions_only():
    # Repeat (4, 1) over 8 steps: every step decides steer, steps 0 and 4 the acceleration too.
    rollout, _ = make_rollout(horizon=8, action_repeat=(4, 1))
    batch = rollout.drive_branches()
    assert batch.observations.shape[0] == 8 and batch.decided[:, 1].all()
    assert batch.decided[:, 0].tolist() == [True, False, False, False, True, False, False, False]
    assert torch.equal(batch.raw_actions[1:4, :, 0], batch.raw_actions[:1, :, 0].expand(3, -1))
    assert not torch.equal(batch.raw_actions[4, :, 0], batch.raw_actions[0, :, 0])
    # Holding both dimensions 3 steps: decisions at steps 0, 3, 6 of 8, and train_steps counts steps.
    whole, _ = make_rollout(horizon=8, action_repeat=3)
    assert whole.drive_branches().observations.shape[0] == 3
    first_four, _ = make_rollout(horizon=8, train_steps=4, action_repeat=3)
    assert first_four.drive_branches().log_probs.shape[0] == 2


def test_an_ended_branch_earns_nothing_more_and_is_masked():
    rollout, sim = make_rollout(horizon=5)
    sim.restore(rollout.trunks, [0, 1])
    sim.state.step[0] = sim.config.max_episode_steps - 1  # trunk 0 times out on its branches' first step
    rollout.trunks = sim.snapshot([0, 1])
    batch = rollout.drive_branches()
    assert batch.valid[0, :GROUP].all() and not batch.valid[1:, :GROUP].any()
    assert (batch.rewards[1:, :GROUP] == 0).all() and batch.valid[:, GROUP:].all()
    assert batch.info["ended"][:GROUP].eq(1).all()


def test_trunk_continues_from_the_chosen_branch():
    rollout, sim = make_rollout(horizon=4)
    rollout.drive_branches()
    ends = sim.snapshot().tensors["floats"]
    rollout.continue_from(torch.tensor([2, 1]))
    assert torch.equal(rollout.trunks.tensors["floats"], ends[[2, GROUP + 1]])


def test_a_dropped_group_keeps_its_trunk():
    rollout, sim = make_rollout(horizon=4)
    before = rollout.trunks.tensors["floats"].clone()
    rollout.drive_branches()
    ends = sim.snapshot().tensors["floats"]
    rollout.continue_from(torch.tensor([0, 3]), dropped=torch.tensor([True, False]))
    assert torch.equal(rollout.trunks.tensors["floats"][0], before[0])
    assert torch.equal(rollout.trunks.tensors["floats"][1], ends[GROUP + 3])


def test_waves_when_the_backend_is_smaller_than_the_batch():
    rollout, _ = make_rollout(horizon=5, capacity=3)  # 8 branches in waves of 3, 3 and 2
    assert rollout.num_waves == 3
    batch = rollout.drive_branches()
    first = batch.observations[0].view(TRUNKS, GROUP, -1)
    assert torch.equal(first, first[:, :1].expand_as(first))  # groups straddle waves, starts still equal
    assert batch.rewards.shape == (5, 8) and batch.valid.all()
    rollout.continue_from(torch.tensor([3, 0]))
    assert rollout.trunks.num_worlds == TRUNKS


def test_restart_ended_trunks_starts_fresh_episodes():
    rollout, _ = make_rollout(horizon=3)
    rollout.drive_branches()
    rollout.continue_from(torch.tensor([0, 0]))
    other = rollout.trunks.tensors["floats"][1].clone()
    rollout.trunk_done[0] = True
    assert rollout.restart_ended_trunks() == 1
    step_column = list(rollout.backend.state.int_fields).index("step")
    assert rollout.trunks.tensors["ints"][0, step_column] == 0
    assert torch.equal(rollout.trunks.tensors["floats"][1], other) and not rollout.trunk_done.any()


def test_trunk_steps_advance_the_trunks():
    rollout, _ = make_rollout()
    step_column = list(rollout.backend.state.int_fields).index("step")
    rollout.drive_trunks(3)
    assert rollout.trunks.tensors["ints"][:, step_column].tolist() == [3, 3]


def test_waves_split():
    assert [w.tolist() for w in waves(5, 2)] == [[0, 1], [2, 3], [4]]


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
