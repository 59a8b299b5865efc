"""Procedural and hand-built towns: determinism, lane-graph connectivity, geometry, raster, lights, config."""

from __future__ import annotations

import math

import numpy as np
import pytest

from envs.sim.town import RASTER_CLEARANCE, RASTER_DRIVABLE, RASTER_JUNCTION, Town
from envs.sim.towngen import TownConfig, cross_junction_ids, cross_junction_town, generate_town

SEEDS = (0, 1, 2)


@pytest.fixture(scope="module")
def towns() -> dict[int, Town]:
    return {seed: generate_town(seed) for seed in SEEDS}


@pytest.fixture(scope="module")
def three_lane_town() -> Town:
    # Three lanes per direction exercise the lane mapping of wide T-junction stems; a coarse raster keeps
    # the build cheap.
    return generate_town(5, TownConfig(lanes_per_direction=(1, 3), block_length_m=(80.0, 120.0),
                                       raster_resolution_m=1.0, num_routes=8))


def all_towns(towns, three_lane_town):
    return [*towns.values(), three_lane_town]


def real_points(town: Town, lane: int) -> np.ndarray:
    """The lane's points without the padding (points are 1 m apart, both ends included)."""
    count = int(math.ceil(float(town.lane_length[lane]) - 1e-4)) + 1
    return town.lane_points[lane, :count]


def successor_pairs(town: Town):
    return [(lane, int(nxt)) for lane in range(town.num_lanes)
            for nxt in town.lane_successors[lane] if nxt >= 0]


def raster_bits(town: Town, points: np.ndarray) -> np.ndarray:
    res = town.raster_resolution
    cols = np.floor((points[:, 0] - town.raster_origin[0]) / res).astype(int)
    rows = np.floor((points[:, 1] - town.raster_origin[1]) / res).astype(int)
    return town.raster[rows, cols]


def angle_difference(a, b):
    return np.abs((np.asarray(a) - np.asarray(b) + np.pi) % (2 * np.pi) - np.pi)


def test_same_seed_gives_the_same_town_and_seeds_differ(towns):
    assert generate_town(0).fingerprint() == towns[0].fingerprint()
    assert len({town.fingerprint() for town in towns.values()}) == len(SEEDS)


def test_every_lane_of_a_generated_town_has_a_successor(towns, three_lane_town):
    for town in all_towns(towns, three_lane_town):
        assert (town.lane_successors >= 0).any(axis=1).all()


def test_successors_start_where_their_predecessor_ends(towns, three_lane_town):
    for town in all_towns(towns, three_lane_town):
        for lane, nxt in successor_pairs(town):
            gap = np.linalg.norm(town.lane_points[lane, -1] - town.lane_points[nxt, 0])
            assert gap < 0.5, (lane, nxt, gap)


def test_headings_are_continuous_across_connections(towns, three_lane_town):
    for town in all_towns(towns, three_lane_town):
        pairs = np.array(successor_pairs(town))
        jump = angle_difference(town.lane_headings[pairs[:, 0], -1], town.lane_headings[pairs[:, 1], 0])
        # Connectors leave and join lanes tangentially; what is left is the 1 m resampling of a curve.
        assert np.degrees(jump.max()) < 10.0


def test_no_lane_turns_tighter_than_a_car_can(towns):
    """Default towns keep every lane's radius above 5 m (a car-sized bicycle model manages about 4-5 m)."""
    for town in towns.values():
        turn_per_metre = angle_difference(town.lane_headings[:, 1:], town.lane_headings[:, :-1])
        assert turn_per_metre.max() < 1 / 5.0


def test_no_u_turns_through_junctions(towns):
    for town in towns.values():
        for lane, connector in successor_pairs(town):
            if town.lane_in_junction[connector]:
                exit_lane = town.lane_successors[connector, 0]
                assert town.lane_road[exit_lane] != town.lane_road[lane]


def test_traffic_keeps_right(towns):
    """At mid-lane, lanes of the opposite direction lie to the left (lane 0 one lane width away) and the
    right neighbour lies one lane width to the right."""
    checked = 0
    for town in towns.values():
        for lane in np.flatnonzero(~town.lane_in_junction):
            points = real_points(town, lane)
            middle = len(points) // 2
            p, yaw = points[middle], town.lane_headings[lane, middle]
            forward = np.array([math.cos(yaw), math.sin(yaw)])
            for other in np.flatnonzero(town.lane_road == town.lane_road[lane]):
                if other == lane:
                    continue
                other_points = real_points(town, other)
                nearest = int(np.argmin(np.linalg.norm(other_points - p, axis=1)))
                offset = other_points[nearest] - p
                side = forward[0] * offset[1] - forward[1] * offset[0]  # > 0: other lane is to the left
                same_direction = angle_difference(town.lane_headings[other, nearest], yaw) < math.pi / 2
                if not same_direction:
                    assert side > 0, (lane, other)
                if other == town.lane_right[lane]:
                    assert same_direction and side < 0
                    assert abs(np.linalg.norm(offset) - town.lane_width[lane]) < 0.3
                if not same_direction and town.lane_left[lane] < 0 and town.lane_left[other] < 0:
                    assert abs(np.linalg.norm(offset) - town.lane_width[lane]) < 0.3
                checked += 1
    assert checked > 100


def test_routes_follow_successors_and_are_long_enough(towns):
    config = TownConfig()
    for town in towns.values():
        assert town.routes.shape[0] == config.num_routes
        for route, start_s in zip(town.routes, town.route_start_s, strict=True):
            lanes = route[route >= 0]
            for lane, nxt in zip(lanes[:-1], lanes[1:], strict=True):
                assert nxt in town.lane_successors[lane]
            assert town.lane_length[lanes].sum() - start_s >= config.route_length_m - 1e-3


def test_lane_points_are_drivable_and_far_points_are_not(towns, three_lane_town):
    for town in all_towns(towns, three_lane_town):
        assert (raster_bits(town, town.lane_points.reshape(-1, 2)) & RASTER_DRIVABLE).all()
        # The raster corner lies in the 20 m margin around the town; a block interior is far from any lane.
        assert town.raster[0, 0] == 0
        lane_points = town.lane_points.reshape(-1, 2)[::4]
        low, high = lane_points.min(0), lane_points.max(0)
        candidates = np.stack(np.meshgrid(np.linspace(low[0], high[0], 40),
                                          np.linspace(low[1], high[1], 40)), -1).reshape(-1, 2)
        distance = np.linalg.norm(candidates[:, None] - lane_points[None], axis=2).min(1)
        far = candidates[distance > 15.0]
        assert len(far) > 0
        assert not (raster_bits(town, far) & (RASTER_DRIVABLE | RASTER_CLEARANCE)).any()


def test_junctions_have_lights_and_connectors_use_their_junctions_light(towns, three_lane_town):
    for town in all_towns(towns, three_lane_town):
        num_junctions = len(town.junction_num_phases)
        assert num_junctions >= 1
        # One phase per approach: 3 at a T-junction, 4 at a 4-way junction.
        assert set(town.junction_num_phases.tolist()) <= {3, 4}
        centres = np.stack([town.light_stop_point[town.light_junction == j].mean(0)
                            for j in range(num_junctions)])
        # The junction surface (convex hull of the road ends) is drivable right through its centre.
        assert (raster_bits(town, centres) & RASTER_DRIVABLE).all()
        assert (raster_bits(town, centres) & RASTER_JUNCTION).all()
        # Bends and roads are never governed by a light; every junction connector is.
        assert (town.lane_light[~town.lane_in_junction] == -1).all()
        for connector in np.flatnonzero(town.lane_in_junction):
            light = town.lane_light[connector]
            assert light >= 0
            points = real_points(town, connector)
            nearest_junction = np.argmin(np.linalg.norm(centres - points.mean(0), axis=1))
            assert town.light_junction[light] == nearest_junction
            # The light's stop line is at the connector's entry: its approach lanes' end points.
            assert np.linalg.norm(town.light_stop_point[light] - points[0]) <= 2 * town.lane_width.max()


def test_every_approach_has_its_own_phase(towns):
    for town in towns.values():
        for junction in range(len(town.junction_num_phases)):
            phases = sorted(town.light_phase[town.light_junction == junction].tolist())
            assert phases == list(range(town.junction_num_phases[junction]))


def test_default_town_has_a_plausible_size(towns):
    town = towns[0]
    assert 30 <= town.num_lanes <= 200
    assert max(town.raster.shape) < 1000


def test_cross_junction_ids_match_the_geometry():
    town, ids = cross_junction_town(), cross_junction_ids()
    expected_yaw = {"eastbound": 0.0, "northbound": math.pi / 2, "westbound": math.pi,
                    "southbound": -math.pi / 2}
    for direction, yaw in expected_yaw.items():
        heading = np.array([math.cos(yaw), math.sin(yaw)])
        right = np.array([heading[1], -heading[0]])
        (approach,), (exit_lane,) = ids.approach[direction], ids.exit[direction]
        assert angle_difference(town.lane_headings[approach], yaw).max() < 1e-3
        assert angle_difference(town.lane_headings[exit_lane], yaw).max() < 1e-3
        assert real_points(town, approach)[-1] @ heading < 0 < real_points(town, exit_lane)[0] @ heading
        assert real_points(town, approach)[0] @ right == pytest.approx(1.75)  # keeps right
        # Straight through: the approach has a connector into the exit of the same direction, governed by
        # the approach's light, and no connector back the way it came (no U-turn).
        connectors = [c for c in town.lane_successors[approach] if c >= 0]
        assert len(connectors) == 3
        assert {int(town.lane_light[c]) for c in connectors} == {ids.light[direction]}
        exits = {int(town.lane_successors[c, 0]) for c in connectors}
        assert exit_lane in exits
        opposite = {"eastbound": "westbound", "westbound": "eastbound",
                    "northbound": "southbound", "southbound": "northbound"}[direction]
        assert ids.exit[opposite][0] not in exits
        # The outer end of an arm is a dead end for the lane leaving the junction.
        assert (town.lane_successors[exit_lane] == -1).all()


def test_cross_junction_light_phases_and_stop_points():
    town, ids = cross_junction_town(), cross_junction_ids()
    assert town.junction_num_phases.tolist() == [4]
    assert (town.light_junction == 0).all()
    phase = {direction: int(town.light_phase[light]) for direction, light in ids.light.items()}
    # Counter-clockwise from the east arm: the approach from the east (westbound traffic) goes first.
    assert phase == {"westbound": 0, "southbound": 1, "eastbound": 2, "northbound": 3}
    stop = town.light_stop_point[ids.light["eastbound"]]
    assert stop[0] < -5 and stop[1] == pytest.approx(-1.75)
    assert np.allclose(stop, town.lane_points[ids.approach["eastbound"][0], -1])


def test_two_lane_cross_junction_turns_from_the_outer_lanes():
    town, ids = cross_junction_town(lanes_per_direction=2), cross_junction_ids(2)

    def exits_of(lane):
        return {int(town.lane_successors[c, 0]) for c in town.lane_successors[lane] if c >= 0}

    inner, outer = ids.approach["eastbound"]
    assert exits_of(inner) == {ids.exit["eastbound"][0], ids.exit["northbound"][0]}  # straight, left
    assert exits_of(outer) == {ids.exit["eastbound"][1], ids.exit["southbound"][1]}  # straight, right
    assert town.lane_right[inner] == outer and town.lane_left[outer] == inner


def test_cross_junction_routes_go_through_the_junction():
    town = cross_junction_town()
    for route in town.routes:
        lanes = route[route >= 0]
        assert town.lane_in_junction[lanes].any()
        assert town.lane_length[lanes].sum() >= 150.0


@pytest.mark.parametrize(("overrides", "message"), [
    ({"grid_size": 1}, "grid_size"),
    ({"lane_width_m": 0.0}, "lane_width_m"),
    ({"lanes_per_direction": ()}, "lanes_per_direction"),
    ({"lanes_per_direction": (0, 1)}, "lanes_per_direction"),
    ({"block_length_m": (100.0, 50.0)}, "block_length_m"),
    ({"jitter_m": 30.0}, "jitter_m"),
    ({"block_length_m": (30.0, 40.0), "jitter_m": 2.0}, "raise block_length_m"),
    ({"edge_drop_prob": 1.0}, "edge_drop_prob"),
    ({"num_routes": 0}, "num_routes"),
    ({"raster_resolution_m": 0.0}, "raster_resolution_m"),
])
def test_config_rejects_impossible_values(overrides, message):
    with pytest.raises(ValueError, match=message):
        TownConfig(**overrides)
