"""The town compile step: even resampling, kerb band, fingerprints."""

import numpy as np
import pytest
from numpy.lib.stride_tricks import sliding_window_view

from envs.sim.town import RASTER_CLEARANCE, RASTER_DRIVABLE, LaneSpec, build_town, resample_polyline
from envs.sim.towngen import generate_town


def test_resampling_is_even_and_keeps_both_ends():
    points = resample_polyline(np.array([[0.0, 0.0], [10.3, 0.0]]), 1.0)
    steps = np.diff(points[:, 0])
    assert points[0, 0] == 0.0 and points[-1, 0] == pytest.approx(10.3)
    assert np.allclose(steps, steps[0]) and steps[0] <= 1.0  # 11 equal segments of 0.936 m


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_every_drivable_cell_has_a_kerb_band_of_two_metres(seed):
    town = generate_town(seed)
    drivable = (town.raster & RASTER_DRIVABLE) > 0
    blocked = (town.raster & RASTER_CLEARANCE) == 0
    reach = int(2.0 / town.raster_resolution)
    offsets = np.arange(-reach, reach + 1)
    disc = (offsets[:, None] ** 2 + offsets[None, :] ** 2) * town.raster_resolution**2 <= 2.0**2
    padded = np.pad(blocked, reach, constant_values=True)
    near_blocked = (sliding_window_view(padded, disc.shape) & disc).any(axis=(2, 3))
    assert not (drivable & near_blocked).any()  # junction corners included


def test_fingerprint_sees_lights():
    lanes = [LaneSpec(points=np.array([[0.0, 0.0], [50.0, 0.0]]), road=0, light=-1)]
    lit = [LaneSpec(points=np.array([[0.0, 0.0], [50.0, 0.0]]), road=0, light=0)]
    from envs.sim.town import LightSpec

    a = build_town(0, lanes, [], num_routes=1, route_length_m=20.0)
    b = build_town(0, lit, [LightSpec(0, 0, (50.0, 0.0))], num_routes=1, route_length_m=20.0)
    assert a.fingerprint() != b.fingerprint()
    assert a.fingerprint() == build_town(0, lanes, [], num_routes=1, route_length_m=20.0).fingerprint()


def test_living_world_tables():
    from envs.sim.towngen import cross_junction_ids, cross_junction_town, straight_town

    road = straight_town()
    # One lane each way, 3.5 m wide: 1.75 m to the right edge, 1.75 + 3.5 m across the oncoming lane.
    assert np.allclose(road.lane_edge_right, 1.75, atol=0.3) and np.allclose(road.lane_edge_left, 5.25, atol=0.3)
    assert (road.lane_max_curvature < 1e-6).all() and (road.lane_predecessor == -1).all()
    assert (road.light_raster == 0).all()  # no lights

    town, ids = cross_junction_town(), cross_junction_ids()
    approach = ids.approach["eastbound"][0]
    connectors = [int(c) for c in town.lane_successors[approach] if c >= 0]
    # Every connector has the approach as its only predecessor; a turning connector is curved.
    assert all(town.lane_predecessor[c] == approach for c in connectors)
    assert max(town.lane_max_curvature[c] for c in connectors) > 0.05
    # The stop line of the eastbound light is drawn across the end of its approach lane.
    end = town.lane_points[approach, int(np.ceil(town.lane_length[approach] - 1e-4))]
    col, row = ((end - np.array(town.raster_origin)) / town.raster_resolution - [0.5, 0.5]).astype(int)
    assert (town.light_raster[row - 2:row + 3, col - 2:col + 3] == ids.light["eastbound"] + 1).any()
