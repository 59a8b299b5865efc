"""Traffic-light cycles: one approach green at a time, yellow then all-red, offsets from the world state."""

import pytest
import torch

from envs.driving.lights import GREEN, RED, YELLOW
from envs.sim.bank import TownBank
from envs.sim.config import LightConfig, SimConfig
from envs.sim.lights import light_states
from envs.sim.towngen import TownConfig, cross_junction_town
from envs.sim.world import DrivingSim
from tests.envs.conftest import EMPTY_WORLD

pytestmark = pytest.mark.usefixtures("one_thread")

CONFIG = LightConfig(green_s=8.0, yellow_s=3.0, all_red_s=1.5)


@pytest.fixture(scope="module")
def bank():
    bank = TownBank(lambda seed: cross_junction_town(seed=seed), torch.device("cpu"))
    bank.slots_for([0])
    return bank


def states_over_time(bank, config, times, offset=0.0):
    """[T, 4] states of the cross junction's four lights at ``times``."""
    times = torch.as_tensor(times, dtype=torch.float32)
    lights = torch.arange(4).expand(len(times), -1)
    return light_states(bank, config, torch.zeros(len(times), dtype=torch.long), lights, times,
                        torch.full((len(times),), offset))


def test_one_approach_at_a_time_in_turn(bank):
    # The cross junction's lights have phases 0..3; with offset 0 the junction starts its cycle at
    # frac(0 * golden) = 0. Phase k owns [12.5 k, 12.5 (k + 1)) s: green 8 s, yellow 3 s, all-red 1.5 s.
    phase_s = CONFIG.phase_s
    assert phase_s == 12.5
    town = bank.towns[0]
    times = torch.arange(0.0, 4 * phase_s, 0.1)
    states = states_over_time(bank, CONFIG, times)
    for t, row in zip(times.tolist(), states, strict=True):
        owner = int(t // phase_s)
        within = t - owner * phase_s
        expected_own = GREEN if within < 8.0 - 1e-4 else YELLOW if within < 11.0 - 1e-4 else RED
        for light in range(4):
            expected = expected_own if town.light_phase[light] == owner else RED
            if abs(within - 8.0) < 1e-3 or abs(within - 11.0) < 1e-3:
                continue  # float boundaries
            assert int(row[light]) == expected, (t, light)
    # Never two lights non-red at once, and all red for 1.5 s of every phase.
    not_red = (states != RED).sum(1)
    assert not_red.max() == 1
    assert (not_red == 0).float().mean() == pytest.approx(1.5 / 12.5, abs=0.01)


def test_cycle_repeats_and_offsets_shift_it(bank):
    cycle = 4 * CONFIG.phase_s
    times = torch.arange(0.0, cycle, 0.5)
    first, second = states_over_time(bank, CONFIG, times), states_over_time(bank, CONFIG, times + cycle)
    assert torch.equal(first, second)
    # An offset of a quarter cycle starts the junction one phase later in its cycle.
    shifted = states_over_time(bank, CONFIG, times, offset=0.25)
    assert torch.equal(shifted, states_over_time(bank, CONFIG, times + cycle / 4))


def test_disabled_lights_are_green_and_uncontrolled_lanes_read_green(bank):
    states = states_over_time(bank, LightConfig(enabled=False), torch.arange(0.0, 60.0, 1.0))
    assert (states == GREEN).all()
    uncontrolled = light_states(bank, CONFIG, torch.zeros(3, dtype=torch.long), torch.full((3, 1), -1),
                                torch.tensor([0.0, 20.0, 40.0]), torch.zeros(3))
    assert (uncontrolled == GREEN).all()


def test_world_light_offsets_come_from_the_episode_seed():
    config = SimConfig(num_worlds=4, map="junction", num_towns=1, town=TownConfig(num_routes=8,
                                                                                    route_length_m=150.0),
                       **EMPTY_WORLD)
    sim = DrivingSim(config)
    sim.reset([1, 2, 1, 3])
    offsets = sim.state.light_offset
    assert offsets[0] == offsets[2] and len({float(o) for o in offsets}) == 3
    assert ((offsets >= 0) & (offsets < 1)).all()
    for _ in range(80):  # roll towards the junction: its stop line comes within the 100 m observed
        obs = sim.step(torch.tensor([[0.6, 0.0, 0.0]]).repeat(4, 1)).observation
    light = obs[:, sim.layout.slices["light"]]
    assert (light[:, 4] == 1).all()  # every route of the junction map goes through its light
    assert (light[:, :3].sum(1) == 1).all()  # one-hot
    distance = light[:, 3] * sim.layout.distance_scale
    assert ((distance > 0) & (distance < 100)).all()
