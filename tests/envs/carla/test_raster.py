"""The bird's-eye raster on CARLA without a server: the tiled map grid, the map rasteriser on hand-built lanes
and on a ``carla.Map`` read from OpenDRIVE, boxes and discs at known CARLA poses landing on the right pixels,
the same scene drawn by the built-in simulator and by the CARLA rasteriser giving the same image, and the
backend's ``observe_raster`` on stand-in worlds (restorable, batched)."""

import math

import numpy as np
import pytest
import torch

from envs.carla.lights import GREEN, RED, YELLOW, StopLines
from envs.carla.raster import (
    DRIVABLE,
    JUNCTION,
    MARKING,
    LaneLine,
    TiledGrid,
    build_map_raster,
    draw_rasters,
    lane_lines_from_graph,
)
from envs.carla.state import ActorStates, RouteData
from envs.driving.lights import GREEN as SIM_GREEN
from envs.driving.lights import RED as SIM_RED
from envs.driving.lights import YELLOW as SIM_YELLOW
from envs.driving.raster import CHANNELS, LIGHT_VALUES, EgoFrame, disc_cells

pytestmark = pytest.mark.usefixtures("one_thread")

SIZE, METRES = 64, 48.0
CELL = METRES / SIZE  # 0.75 m
CENTRE = SIZE // 2
FRAME = EgoFrame(SIZE, METRES, torch.device("cpu"), torch.float64)


def cell_of(forward: float, left: float) -> tuple[int, int]:
    """(row, col) of the cell ``forward`` m ahead of the ego and ``left`` m to its left."""
    return math.floor(SIZE / 2 - forward / CELL), math.floor(SIZE / 2 - left / CELL)


def channel(raster: torch.Tensor, name: str, world: int = 0) -> torch.Tensor:
    return raster[world, CHANNELS.index(name)]


def carla_actors(ego, vehicles=(), walkers=(), lights=()) -> ActorStates:
    """ActorStates in CARLA's frame: ``ego`` and each vehicle (x, y, yaw in degrees[, length, width]), walkers
    (x, y), light states (CARLA numbering)."""
    actors = ActorStates.empty(len(vehicles), len(walkers), len(lights))
    for slot, (x, y, yaw, *size) in enumerate([ego, *vehicles]):
        length, width = size or (4.8, 1.9)
        actors.vehicle_valid[slot] = True
        actors.vehicle_pose[slot] = (x, y, 0.0, 0.0, 0.0, yaw)
        actors.vehicle_extent[slot] = (length / 2, width / 2, 0.8)
    for slot, (x, y) in enumerate(walkers):
        actors.walker_valid[slot] = True
        actors.walker_pose[slot] = (x, y, 0.0, 0.0, 0.0, 0.0)
    actors.light_state[:] = lights
    return actors


def straight_road(y: float = 0.0, width: float = 3.5, length: float = 200.0) -> LaneLine:
    """A lane along right-handed +x at ``y``."""
    x = np.array([0.0, length])
    return LaneLine(np.stack([x, np.full(2, y)], axis=1), np.full(2, width))


def route_along_x(y: float = 0.0, length: float = 200.0) -> RouteData:
    """A route along +x at right-handed ``y`` (CARLA y = -``y``)."""
    s = np.arange(0.0, length + 1.0)
    return RouteData(np.stack([s, np.full_like(s, y)], axis=1), s)


# --- the tiled world grid ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("combine", ["or", "set"])
def test_a_tiled_grid_reads_back_exactly_what_a_dense_grid_holds(combine):
    rng = np.random.default_rng(0)
    origin, resolution, tile = (-13.0, 7.0), 0.5, 8  # tiles of 4 m: the discs span many of them
    dense = np.zeros((160, 120), dtype=np.int16)
    grid = TiledGrid(origin, resolution, np.int16, tile=tile)
    for value in (1, 2, 4):
        centres = rng.uniform((0, 20), (45, 60), size=(40, 2))
        radius = rng.uniform(0.3, 2.0, size=40)
        grid.stamp(centres, radius, value, combine=combine, chunk=7)
        rows, cols = disc_cells(centres, radius, origin, resolution)
        if combine == "or":
            dense[rows, cols] |= value
        else:
            dense[rows, cols] = value
    rows, cols = np.meshgrid(np.arange(-4, 164), np.arange(-4, 124), indexing="ij")
    centres = torch.from_numpy(np.stack([origin[0] + (cols + 0.5) * resolution, origin[1] + (rows + 0.5) * resolution],
                                        -1))
    expected = np.zeros(rows.shape, dtype=np.int16)
    expected[4:164, 4:124] = dense
    assert torch.equal(grid.lookup(centres), torch.from_numpy(expected))  # cells never drawn, or off the grid: 0
    assert 1 < len(grid.tiles) < (160 // tile) * (120 // tile)  # only tiles that hold something exist
    assert TiledGrid(origin, resolution, np.uint8).lookup(centres[:2, :2]).tolist() == [[0, 0], [0, 0]]


# --- the map layers ------------------------------------------------------------------------------------------------

def test_the_map_layers_of_the_simulators_straight_road_are_the_simulators_town_raster():
    # The same lanes through both rasterisers: the drivable area and the markings agree cell for cell.
    from envs.sim.town import RASTER_DRIVABLE, RASTER_MARKING
    from envs.sim.towngen import straight_town

    town = straight_town(length_m=200.0, lanes_per_direction=2, route_length_m=80.0)
    lanes = [LaneLine(town.lane_points[lane, :town.lane_num_points[lane]].astype(np.float64),
                      np.full(int(town.lane_num_points[lane]), float(town.lane_width[lane])))
             for lane in range(town.num_lanes)]
    layers = build_map_raster(lanes, StopLines.empty(), 0)
    assert layers.bits.origin == town.raster_origin
    rows, cols = np.indices(town.raster.shape)
    res, (x0, y0) = town.raster_resolution, town.raster_origin
    centres = torch.from_numpy(np.stack([x0 + (cols + 0.5) * res, y0 + (rows + 0.5) * res], -1))
    bits = layers.bits.lookup(centres).numpy()
    assert np.array_equal((bits & DRIVABLE) > 0, (town.raster & RASTER_DRIVABLE) > 0)
    assert np.array_equal((bits & MARKING) > 0, (town.raster & RASTER_MARKING) > 0)


def test_the_map_layers_of_an_opendrive_map(t_junction_graph):
    # A carla.Map read from OpenDRIVE text (tests/envs/carla/conftest.py): road 1 runs along +x from x=0 to 100
    # with two 3.5 m lanes each way, a junction spans x=100..120, road 3 leaves it northwards (right-handed) at
    # x=110. Right-handed coordinates are OpenDRIVE's.
    layers = build_map_raster(lane_lines_from_graph(t_junction_graph), StopLines.empty(), 0)

    def bits(x, y):
        return int(layers.bits.lookup(torch.tensor([[x, y]], dtype=torch.float64))[0])

    for y in (-5.25, -1.75, 1.75, 5.25):  # lane centres of road 1: drivable, no marking
        assert bits(50.0, y) == DRIVABLE
    for y in (-3.6, -0.1, 3.4):  # lane boundaries: drivable and marked
        assert bits(50.0, y) == DRIVABLE | MARKING
    assert bits(50.0, -9.0) == 0 and bits(50.0, 9.0) == 0  # beside the road
    assert bits(110.0, 0.0) == DRIVABLE | JUNCTION and bits(105.0, 5.0) == DRIVABLE | JUNCTION  # no markings inside
    assert bits(111.75, 50.0) == DRIVABLE and bits(108.25, 50.0) == DRIVABLE  # road 3's lanes
    assert bits(130.0, 30.0) == 0


# --- drawing: poses, frames, channels -----------------------------------------------------------------------------

def test_boxes_and_discs_at_known_carla_poses_land_on_the_right_pixels():
    # The ego faces CARLA's +y (yaw 90 degrees); in CARLA's left-handed frame its right is then -x. A car 10 m
    # ahead of it, facing CARLA's +x (to the ego's left, so lying across the image), a walker 5 m behind it,
    # a truck 6 m to its right.
    ego = (100.0, 50.0, 90.0)
    actors = carla_actors(ego, vehicles=[(100.0, 60.0, 0.0), (94.0, 50.0, 90.0, 8.0, 2.5)], walkers=[(100.0, 45.0)])
    raster = draw_rasters(FRAME, build_map_raster([], StopLines.empty(), 0), [(actors, route_along_x(), 0.0)])
    vehicles, pedestrians = channel(raster, "vehicles"), channel(raster, "pedestrians")
    rows, cols = torch.nonzero(vehicles[:cell_of(6.0, 0.0)[0]], as_tuple=True)  # the car: all more than 6 m ahead
    car = cell_of(10.0, 0.0)
    assert vehicles[car] == 255 and vehicles[CENTRE, CENTRE] == 0  # the ego itself is not drawn
    # 4.8 m long across the image (cols), 1.9 m wide along it (rows)
    assert cols.min() == cell_of(0, 2.4)[1] and cols.max() == cell_of(0, -2.4)[1]
    assert rows.min() == cell_of(10.95, 0)[0] and rows.max() == cell_of(9.05, 0)[0]
    truck = torch.nonzero(vehicles[:, CENTRE + 4:], as_tuple=True)  # 6 m to the right: columns 8 cells right
    assert vehicles[cell_of(0.0, -6.0)] == 255 and vehicles[cell_of(3.9, -6.0)] == 255  # 8 m long, along the rows
    assert vehicles[cell_of(4.6, -6.0)] == 0 and len(truck[0]) > len(rows)
    assert pedestrians[cell_of(-5.0, 0.0)] == 255 and pedestrians.sum() <= 255 * 4  # a 0.375 m disc: <= 2 x 2 cells
    assert pedestrians[cell_of(5.0, 0.0)] == 0


def test_road_markings_and_route_in_the_ego_frame():
    # Two lanes along +x (right-handed y = 0 and 3.5, so CARLA y = 0 and -3.5); the ego on the first lane, facing
    # along it: the second lane lies to its left.
    layers = build_map_raster([straight_road(0.0), straight_road(3.5)], StopLines.empty(), 0)
    actors = carla_actors((50.0, 0.0, 0.0))
    raster = draw_rasters(FRAME, layers, [(actors, route_along_x(0.0), 50.0)])
    drivable, markings, route = (channel(raster, name) for name in ("drivable", "markings", "route"))
    assert drivable[CENTRE, CENTRE] == 255 and drivable[cell_of(0.0, 3.5)] == 255  # both lanes
    assert drivable[cell_of(0.0, -4.0)] == 0 and drivable[cell_of(0.0, 8.0)] == 0  # beside the road
    row, col = cell_of(5.0, 1.75)  # the boundary between the lanes, to the left
    assert markings[row, col - 1:col + 2].max() == 255 and markings[CENTRE, CENTRE] == 0
    assert route[cell_of(10.0, 0.0)] == 255 and route[cell_of(-10.0, 0.0)] == 0  # ahead of the ego only
    assert route[cell_of(10.0, 3.5)] == 0  # on the ego's lane, not the other
    turned = draw_rasters(FRAME, layers, [(carla_actors((50.0, 0.0, 180.0)), route_along_x(0.0), 50.0)])
    assert channel(turned, "route")[cell_of(-10.0, 0.0)] == 255  # the route now lies behind
    assert channel(turned, "drivable")[cell_of(0.0, -3.5)] == 255  # and the other lane to the right


@pytest.mark.parametrize("state,value", [(RED, LIGHT_VALUES[SIM_RED]), (YELLOW, LIGHT_VALUES[SIM_YELLOW]),
                                         (GREEN, LIGHT_VALUES[SIM_GREEN])])
def test_the_light_channel_shows_each_stop_line_in_its_lights_state(state, value):
    # A stop line across the lane at x = 60, controlled by light 1 (light 0 controls nothing here); the ego
    # stands 10 m before it. StopLines are in CARLA coordinates (the lane at CARLA y = 0).
    lines = StopLines(np.array([[60.0, -1.6]]), np.array([[60.0, 1.6]]), np.array([[1.0, 0.0]]), np.array([1]))
    layers = build_map_raster([straight_road(0.0)], lines, 2)
    actors = carla_actors((50.0, 0.0, 0.0), lights=[GREEN, state])
    lights = channel(draw_rasters(FRAME, layers, [(actors, route_along_x(0.0), 50.0)]), "lights")
    ahead = lights[cell_of(10.0, 0.0)[0] - 1:cell_of(9.0, 0.0)[0] + 1, CENTRE - 2:CENTRE + 3]
    assert ahead.max() == value and set(lights.unique().tolist()) == {0, value}
    assert lights[CENTRE + 2:].max() == 0 and lights[cell_of(10.0, 4.0)] == 0  # nothing behind, nor beside the lane


def test_the_same_scene_gives_the_same_raster_on_the_simulator_and_on_carla():
    # The simulator's straight road with the ego turned off its axis, two cars and a pedestrian; the same scene
    # handed to the CARLA rasteriser in CARLA's frame (y and yaw change sign). The channels agree pixel for pixel.
    from envs.sim.config import PedestrianConfig, SimConfig, TrafficConfig
    from envs.sim.world import DrivingSim

    sim = DrivingSim(SimConfig(num_worlds=1, map="straight", num_towns=1, raster_size=SIZE, raster_metres=METRES,
                               traffic=TrafficConfig(num_vehicles=2),
                               pedestrians=PedestrianConfig(num_pedestrians=1, spawn_per_minute=0.0)))
    sim.reset([0])
    s = sim.state
    s.x[0], s.y[0], s.yaw[0] = float(s.x[0]) + 3.3, float(s.y[0]) + 0.4, 0.55  # 31.5 degrees off the road
    cars = [(float(s.x[0]) + 9.0, float(s.y[0]) + 2.0, -0.3), (float(s.x[0]) - 6.0, float(s.y[0]) - 4.0, 2.0)]
    for slot, (x, y, yaw) in enumerate(cars):
        s.traffic_x[0, slot], s.traffic_y[0, slot], s.traffic_yaw[0, slot], s.traffic_lane[0, slot] = x, y, yaw, 0
    sim.place_pedestrian(0, 0, float(s.x[0]) + 3.0, float(s.y[0]) - 7.0, 0.0, 0.0, walk_s=5.0)
    expected = sim.observe_raster()

    town = sim.town(0)
    lanes = [LaneLine(town.lane_points[lane, :town.lane_num_points[lane]].astype(np.float64),
                      np.full(int(town.lane_num_points[lane]), float(town.lane_width[lane])))
             for lane in range(town.num_lanes)]
    lanes_, cum = sim.bank.route_lanes(s.town_slot, s.route_id)
    arc = torch.arange(0.0, float(s.route_end_s[0]) + 0.25, 0.25)[None]
    points, _, _ = sim.bank.route_geometry(s.town_slot, lanes_, cum, arc)
    route = RouteData(points[0].double().numpy(), arc[0].double().numpy())
    size = (sim.config.vehicle.length, sim.config.vehicle.width)

    def carla(x, y, yaw_rad):
        return float(x), -float(y), -math.degrees(float(yaw_rad))

    actors = carla_actors(carla(s.x[0], s.y[0], s.yaw[0]), vehicles=[(*carla(*car), *size) for car in cars],
                          walkers=[carla(s.ped_x[0, 0], s.ped_y[0, 0], 0.0)[:2]])
    got = draw_rasters(FRAME, build_map_raster(lanes, StopLines.empty(), 0), [(actors, route, float(s.route_s[0]))])
    for name in CHANNELS:
        assert torch.equal(channel(got, name), channel(expected, name)), name
    assert all(channel(got, name).any() for name in ("drivable", "markings", "route", "vehicles", "pedestrians"))


def test_several_worlds_draw_at_once_as_each_alone():
    layers = build_map_raster([straight_road(0.0), straight_road(3.5)], StopLines.empty(), 0)
    worlds = [(carla_actors((50.0 + 5 * k, -1.0 * k, 10.0 * k), vehicles=[(60.0, 0.0, 0.0)], walkers=[(55.0, 3.0)]),
               route_along_x(0.0), 50.0 + 3 * k) for k in range(3)]
    together = draw_rasters(FRAME, layers, worlds)
    assert together.shape == (3, 6, SIZE, SIZE) and together.dtype == torch.uint8
    for k, world in enumerate(worlds):
        assert torch.equal(draw_rasters(FRAME, layers, [world])[0], together[k])
    assert not torch.equal(together[0], together[1])


# --- the backend ---------------------------------------------------------------------------------------------------

def test_the_backend_draws_rasters_of_its_worlds_and_restores_them():
    from tests.envs.carla.test_backend import make_backend

    backend = make_backend(num_worlds=2, raster_metres=80.0)  # the stand-in's traffic car is 30 m ahead
    assert callable(backend.observe_raster)
    backend.reset([0, 1])
    raster = backend.observe_raster()
    assert raster.shape == (2, 6, SIZE, SIZE) and raster.dtype == torch.uint8
    assert torch.equal(backend.observe_raster([1]), raster[1:])
    cell = 80.0 / SIZE
    for world in range(2):
        ahead = 30.0 - float(backend.worlds[world].actors.vehicle_pose[0, 0])  # the traffic car, on the ego's lane
        assert raster[world, 3, math.floor(SIZE / 2 - ahead / cell), CENTRE] == 255
        assert raster[world, 0, CENTRE, CENTRE] == 255 and raster[world, 2, CENTRE - 8, CENTRE] == 255
    for _ in range(5):
        backend.step(torch.tensor([[1.0, 0.0, 0.1]] * 2))
    moved = backend.observe_raster()
    assert not torch.equal(moved, raster)
    backend.restore(backend.snapshot([0]), [1])  # what a restore puts into a world, its raster shows
    assert torch.equal(backend.observe_raster([1])[0], moved[0])
    backend.close()


def test_the_town_data_draws_the_maps_layers_once_from_its_lane_graph(t_junction_map):
    # TownData as CarlaWorld builds it, on a world that only answers what TownData asks (the map is the real
    # carla.Map read from OpenDRIVE; no lights, no blueprints beyond the ego's).
    from envs.carla.config import CarlaConfig
    from envs.carla.world import TownData
    from tests.envs.carla.stand_ins import ActorList

    class Blueprint:
        id = "vehicle.lincoln.mkz_2020"

        def has_attribute(self, name):
            return name == "number_of_wheels"

        def get_attribute(self, name):
            return type("Attribute", (), {"as_int": lambda self: 4})()

    class MapOnlyWorld:
        def get_map(self):
            return t_junction_map

        def get_blueprint_library(self):
            return type("Library", (), {"filter": lambda self, pattern: [Blueprint()] * ("vehicle" in pattern)})()

        def get_actors(self):
            return ActorList()

    town = TownData(CarlaConfig(), MapOnlyWorld())
    layers = town.raster
    assert town.raster is layers and layers.num_lights == 0
    centres = torch.tensor([[50.0, 1.75], [50.0, -0.1], [110.0, 0.0], [50.0, 9.0]], dtype=torch.float64)
    assert layers.bits.lookup(centres).tolist() == [DRIVABLE, DRIVABLE | MARKING, DRIVABLE | JUNCTION, 0]
