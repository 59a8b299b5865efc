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
