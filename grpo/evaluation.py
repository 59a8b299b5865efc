"""Driving evaluation of a policy on a fixed, seeded suite of held-out routes, batched on any backend.

Every route runs in its own world of one backend built on the evaluation split (towns never used in
training); episode seeds ``eval.seed .. eval.seed + num_routes - 1`` make the suite reproducible. When the
backend hosts fewer worlds than there are routes (``env.worlds_per_service``), the routes run in waves.
The trainer's periodic evaluation (which picks ``best.pt`` by ``eval/driving_score``) and ``evaluate.py``
both call :func:`evaluate_policy`; ``evaluate.py`` goes through :func:`grpo.checkpoint_eval.evaluate_checkpoint`,
which rebuilds the policy and the environment from a checkpoint and drives the baselines on the same routes.

The leaderboard arithmetic comes from envs.metrics: its EpisodeAccumulator folds the per-step infos into one
record per route; :func:`grpo.eval_metrics.aggregate` gives the suite's ``eval/`` metrics (means, per-km rates and
their 95% confidence intervals, documented there). Pictures (GIF frames, maps) are drawn by grpo.pictures through
the backend's picture capabilities.

Per route (``EvalResult.routes``): driving score, route completion (%), infraction penalty, success, how the
route ended, route progress and odometer (m), duration (s), mean speed (m/s), comfort as the mean absolute
longitudinal jerk (m/s^3), the return (sum of the backend's rewards, what GRPO maximises) and the count of
every infraction of ``envs.api.INFRACTIONS``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch

from envs.api import Backend, BackendError, MapView
from envs.factory import EnvConfig, build_backend
from envs.metrics import EpisodeAccumulator, EpisodeRecord
from grpo.config import EvalConfig
from grpo.eval_metrics import aggregate, mean_abs_jerk
from grpo.pictures import MAP_MARGIN_M, gif_frame
from grpo.policy import HeldActions
from grpo.progress import Progress

DEFAULT_DT = 0.1  # s per step, for backends that do not say (the built-in simulator and CARLA's default)

# How a route ended, by priority when several things happen on its last step; "ended" when the backend ended
# it for another reason, "step_limit" when eval.max_steps came first.
OUTCOMES = ("completed", "collision_pedestrian", "collision_vehicle", "collision_static", "off_road",
            "route_deviation", "blocked", "timeout", "ended", "step_limit")


class Driver(Protocol):
    """Anything that maps observations to CARLA controls: a policy, the expert, a random driver. A driver
    with an ``action_repeat`` attribute (a policy) decides every that many steps and holds its action in
    between; drivers without one decide every step."""

    def act(self, obs: torch.Tensor, *, deterministic: bool = False,
            generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        ...


@dataclass
class EvalResult:
    """One driver on one suite: aggregated ``metrics`` (flat ``eval/`` names) and one record per route.

    On a backend that draws itself (``spec.pictures``: the built-in simulator) also ``trajectories`` (per route,
    ego x, y [steps + 1, 2] in metres from the reset to the route's end), ``maps`` (route seed ->
    :class:`~envs.api.MapView`, first ``num_maps`` routes) and ``frames`` (route seed -> GIF frames uint8
    [H, W, 3], first ``num_gifs`` routes)."""

    metrics: dict[str, float]
    routes: list[dict[str, Any]] = field(default_factory=list)
    trajectories: list[np.ndarray] | None = None
    maps: dict[int, MapView] = field(default_factory=dict)
    frames: dict[int, list[np.ndarray]] = field(default_factory=dict)
    dt: float = DEFAULT_DT  # simulated seconds per step
    frame_dt: float = 2 * DEFAULT_DT  # simulated seconds between GIF frames


# --- driving the suite -------------------------------------------------------------------------------------


IN_PROCESS_BACKENDS = ("sim", "gym")
"""Backends whose evaluation runs in the evaluating process whatever the training services are."""


def eval_env_config(env_config: EnvConfig, config: EvalConfig) -> EnvConfig:
    """The env an evaluation runs on: the held-out towns (split "eval"), ``eval.device`` if set, and as many
    worlds as routes unless ``env.worlds_per_service`` caps it (then the routes run in waves); the built-in
    simulator and gymnasium envs in this process (:data:`IN_PROCESS_BACKENDS`)."""
    overrides: dict[str, Any] = {"split": "eval", "num_worlds": env_config.capacity(config.num_routes)}
    if config.device is not None:
        overrides["device"] = config.device
    fields = {f.name for f in dataclasses.fields(env_config.backend_config)}
    backend_config = dataclasses.replace(env_config.backend_config,
                                         **{k: v for k, v in overrides.items() if k in fields})
    services = env_config.services
    if env_config.backend in IN_PROCESS_BACKENDS:
        # The built-in simulator and gymnasium envs evaluate in this process: no second set of service
        # processes or Ray actors next to the trainer's (on a 2-core machine those would wait for CPUs the
        # training actors hold), and one in-process service is their fastest path anyway.
        services = dataclasses.replace(services, num_services=1, launcher="local", worlds_per_service=None)
        backend_config = dataclasses.replace(backend_config, num_worlds=config.num_routes)
    return dataclasses.replace(env_config, backend_config=backend_config, services=services)


def build_eval_backend(env_config: EnvConfig, config: EvalConfig) -> Backend:
    """The backend of an evaluation (see :func:`eval_env_config`)."""
    env_config = eval_env_config(env_config, config)
    return build_backend(env_config, num_worlds=env_config.backend_config.num_worlds, split="eval")


@torch.no_grad()
def evaluate_policy(driver: Driver, env_config: EnvConfig, config: EvalConfig, device: torch.device | str,
                    backend: Backend | None = None, *, num_gifs: int = 0, num_maps: int = 0,
                    gif_every: int = 2) -> EvalResult:
    """Drive every route of the suite to its end (or ``eval.max_steps``) and score it.

    ``backend`` may be passed to reuse one (its worlds host the routes, in waves if fewer); it is left open. One
    whose spec offers ``set_split`` (CARLA: the trainer's servers) is switched to eval routes for the run and back
    after. On a backend with pictures (the built-in simulator), ``num_gifs`` / ``num_maps`` keep GIF frames (every
    ``gif_every`` steps) / a map view of the first routes of the suite; trajectories are always kept there.
    """
    own_backend = backend is None
    if own_backend:
        backend = build_eval_backend(env_config, config)
    # A backend that evaluates in place (CARLA: the trainer's own servers) draws eval routes while it runs here.
    previous_split = backend.set_split("eval") if backend.spec.splits else None
    try:
        seeds = list(range(config.seed, config.seed + config.num_routes))
        generator = torch.Generator(device=device).manual_seed(config.seed)
        max_steps = config.max_steps or backend.spec.max_episode_steps or 10_000
        dt = backend.spec.dt or DEFAULT_DT
        progress = Progress("evaluation:", len(seeds), unit="routes finished")
        parts = [_drive_wave(driver, backend, seeds[start:start + backend.num_worlds], start, config.deterministic,
                             generator, device, max_steps, dt, num_gifs, num_maps, gif_every, progress)
                 for start in range(0, len(seeds), backend.num_worlds)]
    finally:
        if previous_split is not None and not own_backend:
            backend.set_split(previous_split)
        if own_backend:
            backend.close()
    routes = [route for part in parts for route in part.routes]
    trajectories = None if parts[0].trajectories is None else [t for part in parts for t in part.trajectories]
    result = EvalResult(aggregate(routes), routes, trajectories, dt=dt, frame_dt=gif_every * dt)
    for part in parts:
        result.maps.update(part.maps)
        result.frames.update(part.frames)
    return result


@dataclass
class _Wave:
    routes: list[dict[str, Any]]
    trajectories: list[np.ndarray] | None
    maps: dict[int, MapView]
    frames: dict[int, list[np.ndarray]]


def _drive_wave(driver: Driver, backend: Backend, seeds: list[int], first_index: int, deterministic: bool,
                generator: torch.Generator, device: torch.device | str, max_steps: int, dt: float, num_gifs: int,
                num_maps: int, gif_every: int, progress: Progress | None = None) -> _Wave:
    """Routes ``seeds`` in worlds 0..len(seeds)-1 (idle worlds of a partial wave repeat the first seed and are
    ignored). ``first_index`` is the suite index of ``seeds[0]``, for the num_gifs / num_maps routes."""
    n = len(seeds)
    obs = backend.reset(seeds + [seeds[0]] * (backend.num_worlds - n))
    pictures = backend.spec.pictures  # trajectories, maps and GIFs where the backend draws itself
    live_worlds = torch.arange(n)
    positions = [backend.positions(live_worlds)] if pictures else None
    gif_worlds = [i for i in range(n) if first_index + i < num_gifs] if pictures else []
    map_worlds = [i for i in range(n) if first_index + i < num_maps] if pictures else []
    maps = {seeds[i]: backend.route_map(i, MAP_MARGIN_M) for i in map_worlds}
    frames = {seeds[i]: [gif_frame(backend, i, seeds[i], 0.0, speed=0.0)] for i in gif_worlds}  # at rest

    accumulator = EpisodeAccumulator(n)
    records: dict[int, EpisodeRecord] = {}
    returns = torch.zeros(n, dtype=torch.float64)
    outcome = ["step_limit"] * n
    done = torch.zeros(n, dtype=torch.bool)
    speeds, lives = [], []
    act = _stepwise(driver)
    reads_raster = getattr(driver, "uses_raster", False)
    if reads_raster and not backend.spec.rasters:
        raise BackendError(f"the policy reads the bird's-eye raster, which {backend.spec.kind} does not render: "
                           "evaluate it on env=sim")
    for step in range(1, max_steps + 1):
        raster = backend.observe_raster().to(device) if reads_raster else None
        _, control, _ = act(obs.to(device), step - 1, raster=raster, deterministic=deterministic, generator=generator)
        result = backend.step(control.to(backend.device))
        info = {name: value[:n].detach().cpu() for name, value in result.info.items()}
        for name in ("route_completion", "route_progress_m"):  # not reported by non-driving backends (env=gym)
            info.setdefault(name, torch.zeros(n, dtype=torch.float64))
        live = ~done
        ended = live & (result.terminated[:n] | result.truncated[:n]).cpu()
        # eval.max_steps ends the routes still running on the last step
        for record in accumulator.update(info, ended | live if step == max_steps else ended):
            records[record.world] = record
        for i in ended.nonzero().flatten().tolist():
            outcome[i] = _outcome(info, i)
        returns += torch.where(live, result.reward[:n].detach().cpu().double(), 0.0)
        speeds.append(info["speed"].double() if "speed" in info else torch.zeros(n, dtype=torch.float64))
        lives.append(live)
        done |= ended
        if progress is not None:
            progress.update(first_index + int(done.sum()) if step < max_steps else first_index + n)
        obs = result.observation
        if positions is not None:
            positions.append(backend.positions(live_worlds))
        for i in gif_worlds:
            if live[i] and (step % gif_every == 0 or ended[i]):
                frames[seeds[i]].append(gif_frame(backend, i, seeds[i], step * dt, float(info["speed"][i]),
                                                  float(info["route_completion"][i])))
        if bool(done.all()):
            break

    speeds, lives = torch.stack(speeds), torch.stack(lives)
    jerk = mean_abs_jerk(speeds, lives, dt)
    mean_speed = (speeds * lives).sum(0) / lives.sum(0).clamp(min=1)
    routes = []
    for i in range(n):
        record = records[i]
        routes.append({"seed": seeds[i], "driving_score": record.driving_score,
                       "route_completion": record.route_completion, "infraction_penalty": record.infraction_penalty,
                       "success": record.success, "outcome": outcome[i], "route_progress_m": record.route_progress_m,
                       "distance_m": record.distance_m, "duration_s": record.steps * dt, "steps": record.steps,
                       "mean_speed": mean_speed[i].item(), "jerk": jerk[i].item(), "return": returns[i].item(),
                       **record.infractions})
    trajectories = None
    if positions is not None:
        stacked = torch.stack(positions).numpy()  # [steps + 1, n, 2]
        trajectories = [stacked[: route["steps"] + 1, i].astype(np.float64) for i, route in enumerate(routes)]
    return _Wave(routes, trajectories, maps, frames)


def _stepwise(driver: Driver):
    """``act(obs, step, ...)`` for any driver: a policy holds its actions for its ``action_repeat`` steps
    (:class:`~grpo.policy.HeldActions`); other drivers decide every step."""
    if hasattr(driver, "action_repeat"):
        return HeldActions(driver).act
    return lambda obs, step, raster=None, **options: driver.act(obs, **options)


def _outcome(info: dict[str, torch.Tensor], i: int) -> str:
    """How world ``i`` ended on this step: the first of OUTCOMES that happened."""
    if "route_completed" in info and bool(info["route_completed"][i]):
        return "completed"
    for name in OUTCOMES[1:-2]:
        if name in info and bool(info[name][i]):
            return name
    return "ended"
