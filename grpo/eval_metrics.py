"""The evaluation's arithmetic: confidence intervals over routes, comfort (jerk), and the suite's ``eval/`` metrics
from its per-route records (:func:`aggregate`).

The leaderboard arithmetic (driving score, infraction penalty, success, infractions per km of route driven) comes
from envs.metrics: its ``summarise`` gives the suite means. This module adds what a report needs on top.

Aggregated (``EvalResult.metrics``, flat names under ``eval/``): ``envs.metrics.summarise`` (mean driving
score, route completion, infraction penalty, success rate; every infraction per km of route driven, all of
them as ``infractions_per_km``, NaN when the suite drove less than envs.metrics.MIN_KM_FOR_RATES;
``km_driven``; ``num_routes``) plus the mean speed, jerk and return over
routes, and ``<name>_ci95``: the half-width of a 95% confidence interval over routes, for the means by the
normal approximation ``1.96 * sample std / sqrt(n)`` (a little too narrow with fewer than ~30 routes), for
the per-km rates by the ratio estimator's delta-method variance.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from envs.api import INFRACTIONS
from envs.metrics import MIN_KM_FOR_RATES, EpisodeRecord, summarise

Z_95 = 1.959964  # two-sided 95% quantile of the standard normal


def ci95(values: torch.Tensor | Sequence[float]) -> float:
    """Half-width of the 95% confidence interval of the mean: 1.96 * sample std / sqrt(n) (0 when n < 2)."""
    values = torch.as_tensor(values, dtype=torch.float64)
    if len(values) < 2:
        return 0.0
    return Z_95 * values.std(unbiased=True).item() / math.sqrt(len(values))


def ratio_ci95(numerators: torch.Tensor, denominators: torch.Tensor, min_total: float = 0.0) -> float:
    """Half-width of the 95% interval of sum(numerators) / sum(denominators) over routes (e.g. infractions
    per km), by the ratio estimator's delta-method variance  sum((y_i - R x_i)^2) / ((n - 1) n xbar^2).
    NaN when the denominators sum below ``min_total`` or to 0 (the rate itself is not available, as in
    envs.metrics.per_km); 0 when n < 2."""
    y, x = torch.as_tensor(numerators, dtype=torch.float64), torch.as_tensor(denominators, dtype=torch.float64)
    n = len(x)
    if x.sum() <= 0 or x.sum() < min_total:
        return float("nan")
    if n < 2:
        return 0.0
    ratio = y.sum() / x.sum()
    variance = ((y - ratio * x) ** 2).sum() / ((n - 1) * n * x.mean() ** 2)
    return Z_95 * variance.sqrt().item()


def mean_abs_jerk(speeds: torch.Tensor, live: torch.Tensor, dt: float) -> torch.Tensor:
    """Comfort per world: the mean absolute longitudinal jerk (m/s^3) over its live steps.

    ``speeds`` [T, B] (m/s, the backend's per-step ``info["speed"]``) and ``live`` [T, B] (bool). The speed is
    differenced twice over ``dt``: a_t = (v_t - v_{t-1}) / dt, j_t = (a_t - a_{t-1}) / dt, for every t whose
    steps t-2, t-1, t are live. A world with fewer than three live steps gets 0.
    """
    speeds = speeds.double()
    if len(speeds) < 3:
        return torch.zeros(speeds.shape[1:], dtype=torch.float64)
    jerk = (speeds[2:] - 2 * speeds[1:-1] + speeds[:-2]) / (dt * dt)
    valid = live[2:] & live[1:-1] & live[:-2]
    return (jerk.abs() * valid).sum(0) / valid.sum(0).clamp(min=1)


def aggregate(routes: list[dict[str, Any]]) -> dict[str, float]:
    """The suite's ``eval/`` metrics from the per-route records of :mod:`grpo.evaluation` (see the module
    docstring)."""
    records = [EpisodeRecord(world=i, route_completion=r["route_completion"], route_progress_m=r["route_progress_m"],
                             distance_m=r["distance_m"], steps=r["steps"],
                             infractions={name: r[name] for name in INFRACTIONS},
                             infraction_penalty=r["infraction_penalty"], driving_score=r["driving_score"],
                             success=r["success"], completed=r["outcome"] == "completed")
               for i, r in enumerate(routes)]
    metrics = {f"eval/{'success_rate' if name == 'success' else name}": value
               for name, value in summarise(records).items()}

    def column(name: str) -> torch.Tensor:
        return torch.tensor([float(route[name]) for route in routes], dtype=torch.float64)

    for name in ("mean_speed", "jerk", "return"):
        metrics[f"eval/{name}"] = column(name).mean().item()
    for name in ("driving_score", "route_completion", "infraction_penalty", "success", "mean_speed", "jerk", "return"):
        metrics[f"eval/{'success_rate' if name == 'success' else name}_ci95"] = ci95(column(name))
    kilometres = column("route_progress_m") / 1000.0
    total = torch.zeros(len(routes), dtype=torch.float64)
    for name in INFRACTIONS:
        total += column(name)
        metrics[f"eval/{name}_per_km_ci95"] = ratio_ci95(column(name), kilometres, MIN_KM_FOR_RATES)
    metrics["eval/infractions_per_km_ci95"] = ratio_ci95(total, kilometres, MIN_KM_FOR_RATES)
    return metrics
