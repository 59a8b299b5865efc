"""Leaderboard arithmetic on hand-computed cases, and the per-episode accumulator."""

import math

import pytest
import torch

from envs.api import INFRACTIONS
from envs.metrics import EpisodeAccumulator, driving_score, infraction_penalty, per_km, success, summarise


@pytest.mark.parametrize("completion,counts,expected", [
    (100.0, {}, 100.0),  # a clean completed route scores its completion
    (80.0, {}, 80.0),  # an incomplete clean route scores what it completed
    (100.0, {"collision_pedestrian": 1}, 50.0),  # 100 x 0.50
    (100.0, {"collision_vehicle": 1}, 60.0),  # 100 x 0.60
    (100.0, {"collision_static": 1}, 65.0),  # 100 x 0.65
    (100.0, {"red_light": 1}, 70.0),  # 100 x 0.70
    (100.0, {"stop_sign": 1}, 80.0),  # 100 x 0.80
    (100.0, {"red_light": 2}, 49.0),  # 100 x 0.70 x 0.70
    (50.0, {"collision_vehicle": 1, "red_light": 1}, 21.0),  # 50 x 0.60 x 0.70
    (90.0, {"collision_pedestrian": 1, "collision_static": 2}, 19.0125),  # 90 x 0.50 x 0.65^2
    (100.0, {"off_road": 3, "timeout": 1, "blocked": 1}, 100.0),  # unpenalised kinds cost no factor
    (0.0, {"collision_vehicle": 5}, 0.0),  # nothing completed: nothing scored
])
def test_driving_score(completion, counts, expected):
    assert float(driving_score(completion, counts)) == pytest.approx(expected, abs=1e-9)


def test_batched_penalty_and_success():
    counts = {"collision_vehicle": torch.tensor([0, 1, 0]), "red_light": torch.tensor([0, 0, 2]),
              "timeout": torch.tensor([0, 0, 0])}
    completion = torch.tensor([100.0, 100.0, 70.0])
    assert torch.allclose(infraction_penalty(counts), torch.tensor([1.0, 0.6, 0.49], dtype=torch.float64))
    assert torch.allclose(driving_score(completion, counts), torch.tensor([100.0, 60.0, 34.3], dtype=torch.float64))
    # Only the first route is complete and clean.
    assert success(completion, counts).tolist() == [True, False, False]
    # Completed but with an unpenalised infraction (e.g. a moment off the road): not a success.
    assert not bool(success(100.0, {"off_road": 1}))


def test_per_km():
    assert per_km(3, [500.0, 1000.0]) == pytest.approx(2.0)  # 3 infractions over 1.5 km
    assert math.isnan(per_km(0, [0.0]))  # nothing driven: no rate
    # Issue 17: a stop after 1.6 mm of route read as 611,950 blocked per km. Below MIN_KM_FOR_RATES (100 m)
    # a rate is not available; at the floor one event is 10 per km.
    assert math.isnan(per_km(1, [0.0016]))
    assert math.isnan(per_km(1, [40.0, 59.0]))  # 99 m
    assert per_km(1, [40.0, 60.0]) == pytest.approx(10.0)
    assert per_km(1, [0.5], min_km=0.0) == pytest.approx(2000.0)  # the floor can be lowered on purpose


def info(completion, progress, route_completed=False, **events):
    """A one-world step info with the given events."""
    out = {name: torch.tensor([events.get(name, False)]) for name in INFRACTIONS}
    out.update(route_completion=torch.tensor([completion]), route_progress_m=torch.tensor([progress]),
               distance_m=torch.tensor([progress]), route_completed=torch.tensor([route_completed]))
    return out


def test_accumulator_folds_steps_into_episodes():
    acc = EpisodeAccumulator(1)
    assert acc.update(info(10.0, 30.0), torch.tensor([False])) == []
    assert acc.update(info(20.0, 60.0, red_light=True), torch.tensor([False])) == []
    records = acc.update(info(100.0, 300.0, route_completed=True), torch.tensor([True]))
    (record,) = records
    assert record.route_completion == 100.0 and record.completed and record.steps == 3
    assert record.infractions["red_light"] == 1 and record.driving_score == pytest.approx(70.0)
    assert not record.success  # it ran a red light
    # The world stays ended (frozen, done) until it is started again: nothing more is recorded.
    assert acc.update(info(100.0, 300.0), torch.tensor([True])) == []
    acc.start([0])
    (record,) = acc.update(info(40.0, 120.0, collision_vehicle=True), torch.tensor([True]))
    assert record.driving_score == pytest.approx(24.0) and record.infractions["red_light"] == 0  # 40 x 0.6


def test_summary_of_a_suite():
    acc = EpisodeAccumulator(2)
    step = {name: torch.tensor([False, name == "collision_vehicle"]) for name in INFRACTIONS}
    step.update(route_completion=torch.tensor([100.0, 50.0]), route_progress_m=torch.tensor([300.0, 150.0]),
                distance_m=torch.tensor([300.0, 150.0]), route_completed=torch.tensor([True, False]))
    records = acc.update(step, torch.tensor([True, True]))
    summary = summarise(records)
    assert summary["driving_score"] == pytest.approx((100.0 + 50.0 * 0.6) / 2)  # mean of 100 and 30
    assert summary["success"] == pytest.approx(0.5)
    assert summary["km_driven"] == pytest.approx(0.45)
    assert summary["collision_vehicle_per_km"] == pytest.approx(1 / 0.45)  # one collision in 450 m
    assert summary["infractions_per_km"] == pytest.approx(1 / 0.45)


def test_leaderboard_2_variable_penalties_where_the_backend_measures_them():
    """Outside route lanes: x (1 - % of the driven route / 100). Min speed: the route in 4 parts; a part driven
    at p % of the traffic's mean speed costs 1 - 0.3 (1 - p/100); the last part counts past 95 %."""
    from envs.metrics import EpisodeAccumulator

    accumulator = EpisodeAccumulator(1)
    records = []
    for step in range(100):  # 100 m of a 100 m route, 1 m per step
        info = {"route_completion": torch.tensor([float(step + 1)]), "route_progress_m": torch.tensor([step + 1.0]),
                "outside_route_lanes_m": torch.tensor([1.0 if step < 10 else 0.0]),  # 10 m outside: 10 %
                "speed": torch.tensor([4.0 if step < 24 else 8.0]),  # the first part (completion < 25 %) at half speed
                "traffic_speed": torch.tensor([8.0]), "route_completed": torch.tensor([step == 99])}
        records += accumulator.update(info, torch.tensor([step == 99]))
    (record,) = records
    assert record.outside_route_lanes_pct == pytest.approx(10.0) and record.min_speed_infractions == 1
    expected = 0.9 * (1.0 - 0.3 * 0.5)
    assert record.infraction_penalty == pytest.approx(expected)
    assert record.driving_score == pytest.approx(100.0 * expected) and record.success  # no fixed infraction
    summary = summarise(records)
    assert summary["outside_route_lanes_pct"] == pytest.approx(10.0)
    assert summary["min_speed_infractions_per_km"] == pytest.approx(10.0)  # one in 0.1 km
    sim = EpisodeAccumulator(1).update({"route_completion": torch.tensor([50.0]),
                                        "route_progress_m": torch.tensor([50.0])}, torch.tensor([True]))
    assert sim[0].infraction_penalty == 1.0 and "outside_route_lanes_pct" not in summarise(sim)
