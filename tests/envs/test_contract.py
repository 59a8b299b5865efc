"""The snapshot contract, parametrised over every backend that can run here."""

import pytest
import torch

from envs.api import BackendBase, BackendSpec, NotOffered
from envs.contract import ContractError, check_capabilities, check_snapshot_contract
from envs.gym_backend import GymBackend, GymConfig
from envs.sim.config import PedestrianConfig, SimConfig
from envs.sim.towngen import TownConfig
from envs.sim.world import DrivingSim
from tests.envs.conftest import EMPTY_WORLD

SMALL_TOWN = TownConfig(grid_size=3, num_routes=8, route_length_m=200.0)

# The busy world: default traffic and lights, pedestrians starting often, so that within the checker's
# few dozen steps vehicles spawn, turn and queue, lights change and people cross.
BUSY = SimConfig(num_worlds=6, num_towns=2, town=SMALL_TOWN, pedestrians=PedestrianConfig(spawn_per_minute=60.0))

BACKENDS = {
    "sim-straight": lambda: DrivingSim(SimConfig(num_worlds=6, map="straight", num_towns=2, **EMPTY_WORLD)),
    "sim-busy": lambda: DrivingSim(BUSY),
    "gym-pendulum": lambda: GymBackend(GymConfig(id="Pendulum-v1", num_worlds=6)),  # state API: bit-exact
}


@pytest.mark.parametrize("name", sorted(BACKENDS))
def test_snapshot_contract(name):
    check_snapshot_contract(BACKENDS[name], seed=3)


@pytest.mark.parametrize("name", sorted(BACKENDS))
def test_the_spec_tells_the_truth(name):
    check_capabilities(BACKENDS[name]())


def test_checker_catches_an_undeclared_capability():
    class Quiet(DrivingSim):
        def __init__(self, config):
            super().__init__(config)
            self.spec = BackendSpec("sim")  # observe_raster works, but the spec hides it

    with pytest.raises(ContractError, match="observe_raster.*rasters=False"):
        check_capabilities(Quiet(SimConfig(num_worlds=2, map="straight", num_towns=2, **EMPTY_WORLD)))

    class Boastful(BackendBase):  # declares rasters it cannot draw
        spec = BackendSpec("boast", rasters=True)
        num_worlds, device = 1, torch.device("cpu")

        def reset(self, seed, world_ids=None):
            return torch.zeros(1, 4)

        def step(self, actions):
            return None

    with pytest.raises(NotOffered, match="does not offer observe_raster"):
        check_capabilities(Boastful())


class ForgetfulSim(DrivingSim):
    """A broken backend: its snapshots leave out the ego's speed."""

    def restore(self, snapshot, world_ids=None):
        speed_column = list(self.state.float_fields).index("speed")
        tensors = dict(snapshot.tensors, floats=snapshot.tensors["floats"].clone())
        tensors["floats"][:, speed_column] = 0.0
        snapshot = type(snapshot)(snapshot.backend, snapshot.signature, snapshot.num_worlds, tensors)
        return super().restore(snapshot, world_ids)


def test_checker_catches_an_incomplete_snapshot():
    with pytest.raises(ContractError, match="replay after restore"):
        check_snapshot_contract(lambda: ForgetfulSim(SimConfig(num_worlds=4, map="straight", num_towns=2,
                                                               **EMPTY_WORLD)))


class TrafficForgettingSim(DrivingSim):
    """A broken backend: its snapshots lose the traffic's speeds (as if they were not world state)."""

    def restore(self, snapshot, world_ids=None):
        start = sum(self.state.float_fields[name] if isinstance(self.state.float_fields[name], int)
                    else self.state.float_fields[name][0] for name in list(self.state.float_fields)[
                        :list(self.state.float_fields).index("traffic_speed")])
        tensors = dict(snapshot.tensors, floats=snapshot.tensors["floats"].clone())
        tensors["floats"][:, start:start + self.config.traffic.num_vehicles] = 0.0
        snapshot = type(snapshot)(snapshot.backend, snapshot.signature, snapshot.num_worlds, tensors)
        return super().restore(snapshot, world_ids)


def test_checker_sees_that_traffic_is_part_of_the_state():
    with pytest.raises(ContractError, match="replay after restore"):
        check_snapshot_contract(lambda: TrafficForgettingSim(BUSY), seed=3)


def test_checker_needs_four_worlds():
    with pytest.raises(ContractError, match=">= 4 worlds"):
        check_snapshot_contract(lambda: DrivingSim(SimConfig(num_worlds=2, map="straight", num_towns=2)))


def test_snapshot_from_another_map_is_refused(straight_sim):
    from envs.api import BackendError

    sim = straight_sim()
    sim.reset(0)
    other = DrivingSim(SimConfig(num_worlds=4, map="straight", num_towns=2,
                                 town=TownConfig(route_length_m=120.0)))
    other.reset(0)
    with pytest.raises(BackendError, match="another map or town configuration"):
        other.restore(sim.snapshot([0]), [0])


def test_restore_needs_one_target_per_snapshot_world(straight_sim):
    from envs.api import BackendError

    sim = straight_sim()
    sim.reset(0)
    with pytest.raises(BackendError, match="one target world per snapshot world"):
        sim.restore(sim.snapshot([0, 1]), [2])
    assert torch.equal(sim.observe([0]), sim.observe([0]))
