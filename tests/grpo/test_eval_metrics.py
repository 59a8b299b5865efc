"""The evaluation's arithmetic on hand-computed numbers: confidence intervals, jerk, the suite's eval/ metrics."""

import math

import pytest
import torch

from envs.api import INFRACTIONS
from grpo.eval_metrics import aggregate, ci95, mean_abs_jerk, ratio_ci95


def test_confidence_intervals_over_routes():
    # mean 2.5, sample std sqrt(5/3) = 1.29099: 1.96 x 1.29099 / sqrt(4) = 1.26516
    assert ci95([1.0, 2.0, 3.0, 4.0]) == pytest.approx(1.959964 * math.sqrt(5 / 3) / 2)
    assert ci95([7.0]) == 0.0 and ci95([3.0, 3.0, 3.0]) == 0.0
    # infractions per km over routes of equal length: the interval of the counts' mean, per km
    assert ratio_ci95(torch.tensor([1.0, 0.0]), torch.tensor([1.0, 1.0])) == pytest.approx(ci95([1.0, 0.0]))
    # 3 events over 2 km + 0 over 1 km: R = 1 /km; residuals 3 - 2 = 1 and 0 - 1 = -1; variance 2 / (1 x 2 x 1.5^2)
    assert ratio_ci95(torch.tensor([3.0, 0.0]), torch.tensor([2.0, 1.0])) == pytest.approx(1.959964 * math.sqrt(4 / 9))
    # nothing driven, or less than the floor: no rate, so no interval either (as envs.metrics.per_km)
    assert math.isnan(ratio_ci95(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 0.0])))
    assert math.isnan(ratio_ci95(torch.tensor([1.0, 0.0]), torch.tensor([0.03, 0.05]), min_total=0.1))


def test_jerk_differences_the_speed_twice_over_live_steps():
    dt = 0.1
    speeds = torch.tensor([
        [0.0, 0.1, 0.3, 0.6, 1.0],  # acceleration 1, 2, 3, 4 m/s^2: jerk 10 m/s^3 throughout
        [0.0, 0.2, 0.4, 0.6, 0.8],  # constant acceleration: no jerk
        [0.0, 0.1, 0.3, 0.6, 1.0],  # only two live steps: too short to measure, 0
        [0.0, 0.1, 0.3, 0.6, 9.0],  # the last step is after the route ended and does not count: 10
    ], dtype=torch.float64).T
    live = torch.tensor([[True] * 5, [True] * 5, [True, True, False, False, False],
                         [True, True, True, True, False]]).T
    assert mean_abs_jerk(speeds, live, dt).tolist() == pytest.approx([10.0, 0.0, 0.0, 10.0])


def test_aggregate_infractions_per_km_and_success():
    common = {"route_completion": 100.0, "outcome": "completed", "steps": 100}
    routes = [{**common, "driving_score": 60.0, "success": False, "infraction_penalty": 0.6, "mean_speed": 8.0,
               "jerk": 1.0, "return": 5.0, "route_progress_m": 1000.0, "distance_m": 1010.0,
               **dict.fromkeys(INFRACTIONS, 0), "collision_vehicle": 1},
              {**common, "driving_score": 100.0, "success": True, "infraction_penalty": 1.0, "mean_speed": 6.0,
               "jerk": 3.0, "return": 9.0, "route_progress_m": 3000.0, "distance_m": 3020.0,
               **dict.fromkeys(INFRACTIONS, 0)}]
    metrics = aggregate(routes)
    assert metrics["eval/driving_score"] == 80.0 and metrics["eval/success_rate"] == 0.5
    assert metrics["eval/collision_vehicle_per_km"] == 0.25  # one collision in 4 km of route driven
    assert metrics["eval/infractions_per_km"] == 0.25 and metrics["eval/km_driven"] == 4.0
    assert metrics["eval/mean_speed"] == 7.0 and metrics["eval/jerk"] == 2.0  # means over routes
    assert metrics["eval/return"] == 7.0
    assert metrics["eval/infraction_penalty"] == 0.8 and metrics["eval/infraction_penalty_ci95"] > 0


def test_per_km_rates_of_a_suite_that_barely_moved_are_not_available():
    """Issue 17: one blocked route after 1.6 mm of route driven read as 611,950 blocked per km."""
    common = {"route_completion": 0.0, "outcome": "blocked", "steps": 600, "driving_score": 0.0, "success": False,
              "infraction_penalty": 1.0, "mean_speed": 0.0, "jerk": 0.0, "return": -5.0, "distance_m": 0.0}
    routes = [{**common, "route_progress_m": 0.0016, **dict.fromkeys(INFRACTIONS, 0), "blocked": 1},
              {**common, "route_progress_m": 0.0, **dict.fromkeys(INFRACTIONS, 0), "blocked": 1}]
    metrics = aggregate(routes)
    assert math.isnan(metrics["eval/blocked_per_km"]) and math.isnan(metrics["eval/infractions_per_km"])
    assert math.isnan(metrics["eval/blocked_per_km_ci95"])
    assert metrics["eval/km_driven"] == pytest.approx(1.6e-6)
