"""The one seed mixer and the normalisation of reset's seed argument: pinned values (they pick every training
episode), the same seeds wherever a world is hosted, and one message for a wrong count."""

import pytest
import torch

from envs.api import BackendError, derive_episode_seeds
from envs.seeding import mix


def test_the_mixer_keeps_the_numbers_training_was_run_with():
    # the trainer's trunk episode seeds (grpo.rollout.TRUNK_SEED_STREAM) and warm-start seeds (PRETRAIN_SEED_STREAM)
    assert mix(7, torch.arange(4), 0x7A1).tolist() == [70172189, 2202774805, 955347185, 2848923024]
    assert mix(0, torch.arange(3), 0xB0C).tolist() == [2817681255, 468866047, 2822744343]


def test_int_seeds_derive_one_seed_per_world_from_both_words():
    # the built-in simulator's episode seeds of reset(11) and of a seed wider than 32 bits
    assert derive_episode_seeds(11, [0, 1, 2]) == [4071634139, 2702661409, 918332283]
    assert derive_episode_seeds(2**40 + 5, torch.arange(3)) == [2826267789, 1168012939, 1898228846]
    assert derive_episode_seeds(2**40 + 5, [2]) == derive_episode_seeds(2**40 + 5, [0, 1, 2])[2:]  # per world id
    assert derive_episode_seeds(5, [0]) != derive_episode_seeds(2**32 + 5, [0])


def test_explicit_seeds_pass_through_and_must_match_the_worlds():
    assert derive_episode_seeds([9, 9, 3], [4, 5, 6]) == [9, 9, 3]
    assert derive_episode_seeds(torch.tensor([2, 3]), [0, 1]) == [2, 3]
    with pytest.raises(BackendError, match="reset got 2 episode seeds for 3 worlds; give one per world or a single"):
        derive_episode_seeds([1, 2], [0, 1, 2])


def test_an_int_seed_gives_the_same_episodes_in_the_simulator_and_over_services(straight_sim):
    sim = straight_sim(3)
    sim.reset(11)
    assert sim.state.episode_seed.tolist() == derive_episode_seeds(11, [0, 1, 2])
