"""Bird's-eye rendering: image format, what is drawn where, and the map around a route."""

import math

import numpy as np
import pytest

from envs.api import BackendError
from envs.sim.render import (
    ACTOR_COLOR,
    BACKGROUND_COLOR,
    EGO_COLOR,
    LIGHT_COLORS,
    ROAD_COLOR,
    render_birdseye,
    render_town,
)

SIZE, METRES = 128, 40.0
PX_PER_M = SIZE / METRES
CENTRE = SIZE // 2


def colour_at(image, row, col):
    return tuple(int(c) for c in image[row, col])


def is_blueish(pixel, margin=30):
    red, green, blue = pixel
    return blue > red + margin and blue > green + margin


def has_colour(image, colour):
    return bool((image == np.array(colour, dtype=np.uint8)).all(-1).any())


@pytest.fixture
def sim(straight_sim):
    """One world on the straight road: the ego starts on an eastbound lane facing east (yaw 0)."""
    sim = straight_sim(2)
    sim.reset(0)
    return sim


def test_image_format(sim):
    image = render_birdseye(sim, 1, size=SIZE, metres=METRES)
    assert image.shape == (SIZE, SIZE, 3) and image.dtype == np.uint8
    assert render_birdseye(sim, 0).shape == (256, 256, 3)  # defaults


@pytest.mark.parametrize("heading_up", [False, True])
def test_ego_is_highlighted_at_the_centre(sim, heading_up):
    image = render_birdseye(sim, 0, size=SIZE, metres=METRES, heading_up=heading_up)
    assert colour_at(image, CENTRE, CENTRE) == EGO_COLOR
    assert colour_at(image, CENTRE - 1, CENTRE - 1) == EGO_COLOR


def test_road_shows_under_the_ego_and_background_far_from_roads(sim):
    image = render_birdseye(sim, 0, size=SIZE, metres=METRES)
    assert has_colour(image, ROAD_COLOR)
    # 6 m behind the ego (west; north up): still on its lane, and behind it there is no route.
    assert colour_at(image, CENTRE, CENTRE - round(6 * PX_PER_M)) == ROAD_COLOR
    sim.state.x[0], sim.state.y[0] = 5_000.0, 5_000.0  # far outside the town raster
    far = render_birdseye(sim, 0, size=SIZE, metres=METRES)
    assert colour_at(far, 0, 0) == BACKGROUND_COLOR
    assert not has_colour(far, ROAD_COLOR)
    assert colour_at(far, CENTRE, CENTRE) == EGO_COLOR


def test_route_line_lies_ahead_of_the_ego(sim):
    image = render_birdseye(sim, 0, size=SIZE, metres=METRES)
    ahead = round(10 * PX_PER_M)
    assert is_blueish(colour_at(image, CENTRE, CENTRE + ahead))  # east of the ego, on its route
    assert not is_blueish(colour_at(image, CENTRE, CENTRE - ahead))  # the route starts at the ego
    # Heading up: the ego faces east, so its route runs up the image.
    rotated = render_birdseye(sim, 0, size=SIZE, metres=METRES, heading_up=True)
    assert is_blueish(colour_at(rotated, CENTRE - ahead, CENTRE))
    assert not is_blueish(colour_at(rotated, CENTRE, CENTRE + ahead))


def test_actors_lights_and_trajectories_are_drawn_in_world_coordinates(sim):
    x, y = float(sim.state.x[0]), float(sim.state.y[0])
    branch = np.array([[x, y + 8.0], [x + 15.0, y + 8.0]])  # 8 m north of the ego, heading east
    image = render_birdseye(
        sim, 0, size=SIZE, metres=METRES,
        actors=[{"x": x - 10.0, "y": y, "yaw": math.pi, "length": 4.5, "width": 1.8}],
        lights=[(x + 5.0, y - 6.0, "red")],
        extra_trajectories=[(branch, (255, 0, 255))])
    assert colour_at(image, CENTRE, CENTRE - round(10 * PX_PER_M)) == ACTOR_COLOR  # 10 m west
    assert colour_at(image, CENTRE + round(6 * PX_PER_M), CENTRE + round(5 * PX_PER_M)) == LIGHT_COLORS["red"]
    assert colour_at(image, CENTRE - round(8 * PX_PER_M), CENTRE + round(7 * PX_PER_M)) == (255, 0, 255)


def test_bad_input_is_rejected(sim, straight_sim):
    with pytest.raises(ValueError, match="world_id"):
        render_birdseye(sim, 2)
    with pytest.raises(ValueError, match="light state"):
        render_birdseye(sim, 0, lights=[(0.0, 0.0, "blue")])
    with pytest.raises(ValueError, match="lacks keys"):
        render_birdseye(sim, 0, actors=[{"x": 0.0, "y": 0.0}])
    with pytest.raises(BackendError, match="before reset"):
        render_birdseye(straight_sim(1), 0)


def test_fixed_camera_centres_on_the_route(sim):
    image = render_birdseye(sim, 0, size=SIZE, metres=400.0, ego_centred=False)
    assert image.shape == (SIZE, SIZE, 3) and has_colour(image, ROAD_COLOR)


def test_render_town_shows_the_whole_map(sim):
    town = sim.town(0)
    image = render_town(town, size=200)
    assert image.shape == (200, 200, 3) and image.dtype == np.uint8
    assert has_colour(image, ROAD_COLOR) and has_colour(image, BACKGROUND_COLOR)


def test_route_map_covers_the_route_with_a_margin(sim):
    view = sim.route_map(1, margin_m=10.0)  # the picture capability, as evaluation calls it
    x_min, x_max, y_min, y_max = view.extent
    start, goal = view.route[0], view.route[-1]
    assert np.allclose(start, sim.positions([1])[0].numpy(), atol=1e-4)  # the route starts at the ego's reset pose
    assert x_min <= min(start[0], goal[0]) - 10.0 and x_max >= max(start[0], goal[0]) + 10.0
    assert y_min <= start[1] - 10.0 and y_max >= start[1] + 10.0
    assert view.image.dtype == np.uint8 and has_colour(view.image, ROAD_COLOR)
    assert view.town_seed == int(sim.town(1).seed)


def test_the_worlds_traffic_pedestrians_and_lights_are_drawn():
    from envs.sim.config import PedestrianConfig, SimConfig, TrafficConfig
    from envs.sim.render import PEDESTRIAN_COLOR, world_layers
    from envs.sim.world import DrivingSim

    sim = DrivingSim(SimConfig(num_worlds=1, map="junction", num_towns=1, traffic=TrafficConfig(num_vehicles=4),
                               pedestrians=PedestrianConfig(spawn_per_minute=0.0)))
    sim.reset([0])
    sim.remove_vehicles(0)
    x, y, yaw = (float(v[0]) for v in (sim.state.x, sim.state.y, sim.state.yaw))
    lanes, _ = sim.bank.route_lanes(sim.state.town_slot, sim.state.route_id)
    lane, s = int(lanes[0, 0]), float(sim.state.route_s[0]) + 10.0  # 10 m ahead on the ego's lane
    sim.place_vehicle(0, 0, lane, s, desired_speed=0.01)
    sim.place_pedestrian(0, 0, x - 6.0 * math.sin(yaw), y + 6.0 * math.cos(yaw), 0.0, 0.0, walk_s=5.0)
    actors, lights = world_layers(sim, 0)
    assert len(actors) == 2 and {a.get("kind") for a in actors} == {None, "pedestrian"}
    assert len(lights) == 4 and {state for *_, state in lights} <= set(LIGHT_COLORS)
    image = render_birdseye(sim, 0, size=SIZE, metres=METRES, heading_up=True)
    assert colour_at(image, CENTRE - round(10 * PX_PER_M), CENTRE) == ACTOR_COLOR  # the car ahead
    col = CENTRE - round(6 * PX_PER_M)  # 6 m to the left: a small disc
    assert has_colour(image[CENTRE - 3:CENTRE + 3, col - 3:col + 3], PEDESTRIAN_COLOR)
    plain = render_birdseye(sim, 0, size=SIZE, metres=METRES, heading_up=True, world=False)
    assert colour_at(plain, CENTRE - round(10 * PX_PER_M), CENTRE) != ACTOR_COLOR
