"""Shared fixtures. Tests run on 2 CPU cores: keep worlds few and episodes short."""

import pytest
import torch

torch.set_num_threads(1)  # small batches; 2 OpenMP threads thrash when another process takes a core


@pytest.fixture
def straight_sim():
    """Factory for a simulator on the hand-built straight road (no procedural town to generate)."""
    from envs.sim.config import SimConfig
    from envs.sim.world import DrivingSim

    def make(num_worlds: int = 4, **overrides) -> DrivingSim:
        return DrivingSim(SimConfig(num_worlds=num_worlds, map="straight", num_towns=2, **overrides))

    return make
