"""The bird's-eye raster observation: each channel holds what it claims, where it should be."""

import pytest
import torch

from envs.driving.lights import GREEN, RED
from envs.sim.config import LightConfig, PedestrianConfig, SimConfig, TrafficConfig
from envs.sim.raster import CHANNELS, LIGHT_VALUES
from envs.sim.towngen import TownConfig
from envs.sim.world import DrivingSim

pytestmark = pytest.mark.usefixtures("one_thread")

SIZE, METRES = 64, 48.0
CELL = METRES / SIZE  # 0.75 m
CENTRE = SIZE // 2


def cell_of(forward, left):
    """(row, col) of the cell at ``forward`` m ahead and ``left`` m to the left of the ego."""
    return int(SIZE / 2 - forward / CELL), int(SIZE / 2 - left / CELL)


@pytest.fixture
def sim():
    """The straight road, the ego on its start facing along it; no spawning (actors are placed by hand)."""
    sim = DrivingSim(SimConfig(num_worlds=1, map="straight", num_towns=1, raster_size=SIZE, raster_metres=METRES,
                               traffic=TrafficConfig(num_vehicles=2), pedestrians=PedestrianConfig(
                                   num_pedestrians=1, spawn_per_minute=0.0)))
    sim.reset([0])
    sim.remove_vehicles(0)
    return sim


def channel(raster, name):
    return raster[0, CHANNELS.index(name)]


def test_shape_dtype_and_values(sim):
    raster = sim.observe_raster()
    assert raster.shape == (1, 6, SIZE, SIZE) and raster.dtype == torch.uint8
    assert set(raster.unique().tolist()) <= {0, 85, 170, 255}


def test_road_markings_and_route(sim):
    raster = sim.observe_raster()
    drivable, markings, route = (channel(raster, name) for name in ("drivable", "markings", "route"))
    # The road is 7 m wide around the ego's lane: drivable at the ego, off-road 10 m to either side.
    assert drivable[CENTRE, CENTRE] == 255
    assert drivable[cell_of(0.0, 10.0)] == 0 and drivable[cell_of(0.0, -10.0)] == 0
    # The centre line lies 1.75 m to the ego's left (keep right): a marking there, none at the ego.
    row, col = cell_of(5.0, 1.75)
    assert markings[row, col - 1:col + 2].max() == 255 and markings[CENTRE, CENTRE] == 0
    # The route runs ahead of the ego, not behind it.
    assert route[cell_of(10.0, 0.0)] == 255 and route[cell_of(-10.0, 0.0)] == 0


def test_vehicles_and_pedestrians_where_they_stand(sim):
    x, y, yaw = float(sim.state.x[0]), float(sim.state.y[0]), float(sim.state.yaw[0])
    east = 1.0 if abs(yaw) < 1.0 else -1.0
    lane = 0 if east > 0 else 1
    s = x + 12.0 if east > 0 else 600.0 - x + 12.0  # 12 m ahead on the ego's lane
    sim.place_vehicle(0, 0, lane, s, desired_speed=0.01)
    sim.place_pedestrian(0, 0, x - 8.0 * east, y - 4.0 * east, 0.0, 0.0, walk_s=5.0)  # 8 m behind, 4 m right
    raster = sim.observe_raster()
    vehicles, pedestrians = channel(raster, "vehicles"), channel(raster, "pedestrians")
    assert vehicles[cell_of(12.0, 0.0)] == 255 and vehicles[cell_of(12.0, 4.0)] == 0
    assert vehicles[CENTRE, CENTRE] == 0  # the ego is not drawn
    assert pedestrians[cell_of(-8.0, -4.0)] == 255 and pedestrians.sum() < 255 * 12


@pytest.mark.parametrize("state", [RED, GREEN])
def test_the_light_channel_shows_the_light_state_at_its_stop_line(state):
    sim = DrivingSim(SimConfig(num_worlds=1, map="junction", num_towns=1, raster_size=SIZE, raster_metres=METRES,
                               town=TownConfig(num_routes=8, route_length_m=150.0),
                               traffic=TrafficConfig(num_vehicles=0), pedestrians=PedestrianConfig(num_pedestrians=0),
                               lights=LightConfig(green_s=30.0)))
    sim.reset([0])
    town = sim.town(0)
    # Stand 10 m before the first stop line of the route.
    lanes, cum = sim.bank.route_lanes(sim.state.town_slot, sim.state.route_id)
    stop_s = float(cum[0, 1])
    point, heading, _ = sim.bank.route_geometry(sim.state.town_slot, lanes, cum, torch.tensor([[stop_s - 10.0]]))
    sim.state.x[0], sim.state.y[0], sim.state.yaw[0] = point[0, 0, 0], point[0, 0, 1], heading[0, 0]
    light = int(town.lane_light[int(lanes[0, 1])])
    phase = int(town.light_phase[light])
    start = phase * sim.config.lights.phase_s + (1.0 if state == GREEN else sim.config.lights.phase_s + 1.0)
    sim.state.light_offset[0] = (start / (4 * sim.config.lights.phase_s)) % 1.0
    raster = sim.observe_raster()
    lights = channel(raster, "lights")
    ahead = lights[cell_of(10.5, 1.0)[0] - 1:cell_of(9.5, 0.0)[0] + 2, CENTRE - 2:CENTRE + 3]
    assert ahead.max() == LIGHT_VALUES[state]  # the stop line across the ego's lane, in the light's colour
    assert lights[CENTRE + 4:, :].max() == 0  # nothing behind the ego


def test_batched_worlds_each_get_their_own_view():
    sim = DrivingSim(SimConfig(num_worlds=3, num_towns=2, raster_size=32, raster_metres=40.0,
                               town=TownConfig(num_routes=8, route_length_m=150.0)))
    sim.reset(0)
    both = sim.observe_raster()
    assert both.shape == (3, 6, 32, 32)
    assert torch.equal(sim.observe_raster([2]), both[2:3])
    assert (both[:, 0].flatten(1).float().mean(1) > 0).all()  # every ego is on a road
