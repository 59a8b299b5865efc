"""Driving metrics of the CARLA leaderboard and Bench2Drive: pure arithmetic, and an accumulator that folds
per-step infos of B worlds into per-episode records.

Per route: **driving score** = route completion (%) x **infraction penalty**, the product of one coefficient
per infraction (pedestrian collision 0.50, vehicle 0.60, static 0.65, red light 0.70, stop sign 0.80; a
stop sign never happens in the built-in simulator). **Success**: the route completed (100 %) with no
infraction of any kind. **Infractions per km**: a count over the kilometres of route driven (the sum of
route progress, as the leaderboard counts them), for the whole suite; not available (NaN, shown "n/a") when
the suite drove less than MIN_KM_FOR_RATES, where a single event would read as an absurd rate (one blocked
stop after 1.6 mm of route is 611,950 per km).

**Leaderboard 2.0's variable penalties**, where a backend measures what they need (the CARLA backend's per-step
``outside_route_lanes_m`` and ``traffic_speed``; the built-in simulator reports neither, so its scores are
unchanged): the penalty is also multiplied by (1 - % of the driven route spent outside the route's lanes / 100),
and, per min-speed checkpoint (the route in MIN_SPEED_CHECKPOINTS equal parts) where the ego's mean speed was
below the traffic's, by 1 - 0.3 x (1 - ego / traffic), as the leaderboard's statistics manager does.

Everything here takes tensors (any leading shape) or plain numbers; nothing depends on a backend.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch

from envs.api import INFRACTIONS

PENALTY_COEFFICIENTS = {"collision_pedestrian": 0.50, "collision_vehicle": 0.60, "collision_static": 0.65,
                        "red_light": 0.70, "stop_sign": 0.80}
"""Leaderboard infraction coefficients; infractions not listed (off-road, route deviation, blocked, timeout)
cost no factor: they end the route, and the lost route completion is their price."""

MIN_SPEED_CHECKPOINTS = 4  # leaderboard 2.0's MinSpeedRouteTest splits a route into this many parts
MIN_SPEED_PENALTY = 0.7  # its coefficient: a checkpoint at p % of the traffic's speed costs 1 - 0.3 (1 - p/100)
MIN_SPEED_LAST_PCT = 95.0  # the last (partial) checkpoint counts when the route was driven this far

MIN_KM_FOR_RATES = 0.1
"""Kilometres of route a suite must drive for its per-km rates to be reported (below: NaN, "not available").
At 100 m one event reads as 10 per km, the order of a poor driver's rate; below it a rate is noise."""

COMPLETE_PCT = 100.0 - 1e-3
"""Route completion (%) that counts as complete (float progress can stop a hair short of 100)."""


def _tensor(value) -> torch.Tensor:
    return value.double() if isinstance(value, torch.Tensor) else torch.as_tensor(value, dtype=torch.float64)


def infraction_penalty(counts: Mapping[str, torch.Tensor | float]) -> torch.Tensor:
    """Product of coefficient ** count over the penalised infractions in ``counts`` (1 = none), float64."""
    penalty = torch.ones((), dtype=torch.float64)
    for name, coefficient in PENALTY_COEFFICIENTS.items():
        if name in counts:
            penalty = penalty * coefficient ** _tensor(counts[name])
    return penalty


def driving_score(route_completion: torch.Tensor | float, counts: Mapping[str, torch.Tensor | float]) -> torch.Tensor:
    """Route completion (%) x infraction penalty, float64, in [0, 100]."""
    return _tensor(route_completion) * infraction_penalty(counts)


def success(route_completion: torch.Tensor | float, counts: Mapping[str, torch.Tensor | float]) -> torch.Tensor:
    """Completed (100 %) with no infraction of any kind in ``counts``."""
    completion = _tensor(route_completion)
    clean = torch.ones_like(completion, dtype=torch.bool)
    for value in counts.values():
        clean = clean & (_tensor(value) == 0)
    return (completion >= COMPLETE_PCT) & clean


def per_km(count: torch.Tensor | float, metres: torch.Tensor | float, min_km: float = MIN_KM_FOR_RATES) -> float:
    """Total ``count`` over total ``metres`` / 1000; NaN (not available) when fewer than ``min_km`` kilometres
    were driven, so a suite that barely moved reports no rate rather than an exploding one."""
    kilometres = float(_tensor(metres).sum()) / 1000.0
    if kilometres < min_km or kilometres <= 0:
        return float("nan")
    return float(_tensor(count).sum()) / kilometres


@dataclass
class EpisodeRecord:
    """One finished episode of one world."""

    world: int
    route_completion: float  # %, the furthest reached
    route_progress_m: float  # metres of route driven (the furthest reached)
    distance_m: float  # odometer
    steps: int
    infractions: dict[str, int] = field(default_factory=dict)  # every name of envs.api.INFRACTIONS
    infraction_penalty: float = 1.0
    driving_score: float = 0.0
    success: bool = False
    completed: bool = False  # the goal was reached
    leaderboard_measured: bool = False  # the backend reported outside-route-lanes and traffic speed
    outside_route_lanes_pct: float = 0.0  # % of the driven route spent outside the route's lanes
    min_speed_infractions: int = 0  # checkpoints where the ego's mean speed was below the traffic's


class EpisodeAccumulator:
    """Folds the per-step ``info`` of B worlds (envs.api.StepResult.info) into :class:`EpisodeRecord` s.

    ``update(info, done)`` adds one step and returns the records of the episodes that ended on it. A world
    whose episode has been recorded is ignored (backends keep ended worlds frozen and done) until
    :meth:`start` is called for it after it is reset. All worlds start open.
    """

    def __init__(self, num_worlds: int, infractions: Sequence[str] = INFRACTIONS):
        self.num_worlds = num_worlds
        self.infractions = tuple(infractions)
        self._counts = torch.zeros(len(self.infractions), num_worlds, dtype=torch.long)
        self._completion = torch.zeros(num_worlds, dtype=torch.float64)
        self._progress = torch.zeros(num_worlds, dtype=torch.float64)
        self._distance = torch.zeros(num_worlds, dtype=torch.float64)
        self._completed = torch.zeros(num_worlds, dtype=torch.bool)
        self._steps = torch.zeros(num_worlds, dtype=torch.long)
        self._open = torch.ones(num_worlds, dtype=torch.bool)
        # leaderboard 2.0's variable penalties (only when the infos carry their measurements)
        self._measured = torch.zeros(num_worlds, dtype=torch.bool)
        self._outside_m = torch.zeros(num_worlds, dtype=torch.float64)
        self._ego_speed = torch.zeros(num_worlds, dtype=torch.float64)  # sums over the current checkpoint
        self._traffic_speed = torch.zeros(num_worlds, dtype=torch.float64)
        self._checkpoint = torch.zeros(num_worlds, dtype=torch.long)
        self._min_speed_factor = torch.ones(num_worlds, dtype=torch.float64)
        self._min_speed_count = torch.zeros(num_worlds, dtype=torch.long)

    def start(self, world_ids: Sequence[int] | torch.Tensor | None = None) -> None:
        """Begin new episodes in ``world_ids`` (all when None), dropping what was gathered there."""
        ids = torch.arange(self.num_worlds) if world_ids is None else torch.as_tensor(world_ids, dtype=torch.long)
        self._counts[:, ids] = 0
        for values in (self._completion, self._progress, self._distance, self._steps, self._outside_m,
                       self._ego_speed, self._traffic_speed, self._checkpoint, self._min_speed_count):
            values[ids] = 0
        self._min_speed_factor[ids] = 1.0
        self._completed[ids] = False
        self._measured[ids] = False
        self._open[ids] = True

    def _leaderboard_step(self, info: Mapping[str, torch.Tensor], live: torch.Tensor,
                          completion: torch.Tensor) -> None:
        """Outside-route-lanes metres, and the min-speed checkpoints: a checkpoint closes when the route
        completion enters the next part; frames without moving traffic are skipped."""
        self._measured |= live
        outside = torch.as_tensor(info["outside_route_lanes_m"]).cpu().double()
        self._outside_m += torch.where(live, outside, torch.zeros_like(outside))
        part = torch.clamp((completion / (100.0 / MIN_SPEED_CHECKPOINTS)).floor().long(), max=MIN_SPEED_CHECKPOINTS)
        self._close_checkpoint(live & (part > self._checkpoint))
        self._checkpoint = torch.where(live, torch.maximum(self._checkpoint, part), self._checkpoint)
        traffic = torch.as_tensor(info["traffic_speed"]).cpu().double()
        ego = torch.as_tensor(info["speed"]).cpu().double()
        moving = live & (traffic > 0)
        self._ego_speed += torch.where(moving, ego, torch.zeros_like(ego))
        self._traffic_speed += torch.where(moving, traffic, torch.zeros_like(traffic))

    def _close_checkpoint(self, mask: torch.Tensor) -> None:
        """Score the current min-speed checkpoint of the ``mask`` worlds and start the next one."""
        value = torch.where(self._traffic_speed > 0, 100.0 * self._ego_speed / self._traffic_speed.clamp(min=1e-9),
                            torch.full_like(self._ego_speed, 100.0))
        slow = mask & (value < 100.0)
        factor = 1.0 - (1.0 - MIN_SPEED_PENALTY) * (1.0 - value / 100.0)
        self._min_speed_factor = torch.where(slow, self._min_speed_factor * factor, self._min_speed_factor)
        self._min_speed_count += slow.long()
        self._ego_speed = torch.where(mask, torch.zeros_like(self._ego_speed), self._ego_speed)
        self._traffic_speed = torch.where(mask, torch.zeros_like(self._traffic_speed), self._traffic_speed)

    def update(self, info: Mapping[str, torch.Tensor], done: torch.Tensor) -> list[EpisodeRecord]:
        """Add one step of all worlds: ``info`` as returned by ``Backend.step`` (tensors or arrays [B]) and
        ``done`` [B] (terminated | truncated). Returns the records of episodes that ended on this step."""
        live = self._open.clone()
        for k, name in enumerate(self.infractions):
            if name in info:
                self._counts[k] += torch.as_tensor(info[name]).cpu().bool() & live
        completion = torch.as_tensor(info["route_completion"]).cpu().double()
        progress = torch.as_tensor(info["route_progress_m"]).cpu().double()
        self._completion = torch.where(live, self._completion.maximum(completion), self._completion)
        self._progress = torch.where(live, self._progress.maximum(progress), self._progress)
        if "distance_m" in info:
            self._distance = torch.where(live, torch.as_tensor(info["distance_m"]).cpu().double(), self._distance)
        if "route_completed" in info:
            self._completed |= torch.as_tensor(info["route_completed"]).cpu().bool() & live
        self._steps += live.long()
        if "outside_route_lanes_m" in info and "traffic_speed" in info and "speed" in info:
            self._leaderboard_step(info, live, completion)
        ended = live & torch.as_tensor(done).cpu().bool()
        self._close_checkpoint(ended & self._measured & (torch.where(self._completed, 100.0, self._completion)
                                                         > MIN_SPEED_LAST_PCT))
        records = []
        for world in torch.nonzero(ended).flatten().tolist():
            counts = {name: int(self._counts[k, world]) for k, name in enumerate(self.infractions)}
            completion_pct = 100.0 if self._completed[world] else float(self._completion[world])
            progress = float(self._progress[world])
            outside_pct = min(100.0, 100.0 * float(self._outside_m[world]) / progress) if progress > 0 else 0.0
            variable = (1.0 - outside_pct / 100.0) * float(self._min_speed_factor[world])
            penalty = float(infraction_penalty(counts)) * variable
            records.append(EpisodeRecord(
                world=world, route_completion=completion_pct, route_progress_m=progress,
                distance_m=float(self._distance[world]), steps=int(self._steps[world]), infractions=counts,
                infraction_penalty=penalty, driving_score=float(driving_score(completion_pct, counts)) * variable,
                success=bool(success(completion_pct, counts)), completed=bool(self._completed[world]),
                leaderboard_measured=bool(self._measured[world]), outside_route_lanes_pct=outside_pct,
                min_speed_infractions=int(self._min_speed_count[world])))
        self._open &= ~ended
        return records


def summarise(records: Sequence[EpisodeRecord], infractions: Sequence[str] = INFRACTIONS) -> dict[str, float]:
    """Suite metrics (flat names): the mean over routes of driving score, route completion, infraction
    penalty and success; each infraction per km of route driven (``<name>_per_km``) and all of them
    (``infractions_per_km``), NaN below MIN_KM_FOR_RATES; ``km_driven`` and ``num_routes``."""
    if not records:
        return {"num_routes": 0.0}

    def mean(values):
        return float(torch.tensor(values, dtype=torch.float64).mean())

    metres = torch.tensor([r.route_progress_m for r in records], dtype=torch.float64)
    out = {"num_routes": float(len(records)),
           "driving_score": mean([r.driving_score for r in records]),
           "route_completion": mean([r.route_completion for r in records]),
           "infraction_penalty": mean([r.infraction_penalty for r in records]),
           "success": mean([float(r.success) for r in records]),
           "km_driven": float(metres.sum()) / 1000.0}
    total = 0
    for name in infractions:
        count = sum(r.infractions.get(name, 0) for r in records)
        total += count
        out[f"{name}_per_km"] = per_km(count, metres)
    out["infractions_per_km"] = per_km(total, metres)
    if any(r.leaderboard_measured for r in records):  # leaderboard 2.0's variable penalties (CARLA)
        out["outside_route_lanes_pct"] = mean([r.outside_route_lanes_pct for r in records])
        out["min_speed_infractions_per_km"] = per_km(sum(r.min_speed_infractions for r in records), metres)
    return out
