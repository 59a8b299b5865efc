"""Fixtures of the environment tests.

``straight_sim`` here overrides the top-level one: the straight road *without* traffic or pedestrians
(and without lights, which it has none of anyway), so physics, rendering and adapter tests see only the
ego. Tests of the living world build their worlds explicitly.
"""

import pytest
import torch

from envs.sim.config import PedestrianConfig, SimConfig, TrafficConfig

EMPTY_WORLD = {"traffic": TrafficConfig(num_vehicles=0), "pedestrians": PedestrianConfig(num_pedestrians=0)}


@pytest.fixture
def straight_sim():
    """Factory for a simulator on the hand-built straight road with no other road users."""
    from envs.sim.world import DrivingSim

    def make(num_worlds: int = 4, **overrides) -> DrivingSim:
        return DrivingSim(SimConfig(num_worlds=num_worlds, map="straight", num_towns=2, **{**EMPTY_WORLD, **overrides}))

    return make


@pytest.fixture
def one_thread():
    """Run a test with one torch thread: small worlds gain nothing from threads, and when another process
    holds a core, two OpenMP threads make small-tensor work several times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
