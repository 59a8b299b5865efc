"""Driving evaluation of a policy on a fixed, seeded suite of held-out routes, batched on any backend.

Every route runs in its own world of one backend built on the evaluation split (towns never used in
training); episode seeds ``eval.seed .. eval.seed + num_routes - 1`` make the suite reproducible. When the
backend hosts fewer worlds than there are routes (``env.worlds_per_service``), the routes run in waves.
The trainer's periodic evaluation (which picks ``best.pt`` by ``eval/driving_score``) and ``evaluate.py``
both call :func:`evaluate_policy`; ``evaluate.py`` goes through :func:`evaluate_checkpoint`, which rebuilds
the policy and the environment from a checkpoint and drives the baselines on the same routes.

The leaderboard arithmetic (driving score, infraction penalty, success, infractions per km of route driven)
comes from envs.metrics: its EpisodeAccumulator folds the per-step infos into one record per route, and its
``summarise`` gives the suite means. This module adds what a report needs on top.

Per route (``EvalResult.routes``): driving score, route completion (%), infraction penalty, success, how the
route ended, route progress and odometer (m), duration (s), mean speed (m/s), comfort as the mean absolute
longitudinal jerk (m/s^3), the return (sum of the backend's rewards, what GRPO maximises) and the count of
every infraction of ``envs.api.INFRACTIONS``.

Aggregated (``EvalResult.metrics``, flat names under ``eval/``): ``envs.metrics.summarise`` (mean driving
score, route completion, infraction penalty, success rate; every infraction per km of route driven, all of
them as ``infractions_per_km``, NaN when the suite drove less than envs.metrics.MIN_KM_FOR_RATES;
``km_driven``; ``num_routes``) plus the mean speed, jerk and return over
routes, and ``<name>_ci95``: the half-width of a 95% confidence interval over routes, for the means by the
normal approximation ``1.96 * sample std / sqrt(n)`` (a little too narrow with fewer than ~30 routes), for
the per-km rates by the ratio estimator's delta-method variance.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import torch

from envs.api import INFRACTIONS, Backend, BackendError, MapView
from envs.factory import EnvConfig, ServiceConfig, build_backend, env_config_from_dict
from envs.metrics import MIN_KM_FOR_RATES, EpisodeAccumulator, EpisodeRecord, summarise
from envs.typed_config import ConfigError, from_dict, to_dict
from grpo.checkpoint import CheckpointError, load_checkpoint
from grpo.config import EvalConfig
from grpo.distributions import action_mapping_for
from grpo.pictures import MAP_MARGIN_M, gif_frame
from grpo.policy import HeldActions, PolicyConfig, build_policy
from grpo.progress import Progress

Z_95 = 1.959964  # two-sided 95% quantile of the standard normal
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


# --- pure arithmetic -----------------------------------------------------------------------------------------


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


def aggregate(routes: list[dict[str, Any]]) -> dict[str, float]:
    """The suite's ``eval/`` metrics from the per-route records (see the module docstring)."""
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


# --- evaluate.py: a checkpoint, its environment and the baselines ------------------------------------------


Baseline = Literal["expert", "random"]


@dataclass(frozen=True)
class EvalReportConfig:
    """The keys of evaluate.py's ``eval`` section beyond the route suite (which is the trainer's EvalConfig)."""

    baselines: tuple[Baseline, ...] = ("expert", "random")  # reference drivers evaluated on the same routes
    output_dir: str | None = None  # results folder; null = <checkpoint folder>/eval_<checkpoint stem>
    num_gifs: int = 2  # GIFs of the policy on the first routes of the suite (built-in simulator)
    num_maps: int = 4  # routes whose trajectories (policy and baselines) are drawn on the town map
    log_run: bool = False  # also log to the checkpoint run's TensorBoard folder (and wandb if it used wandb)

    def __post_init__(self) -> None:
        object.__setattr__(self, "baselines", tuple(self.baselines))
        if len(set(self.baselines)) != len(self.baselines):
            raise ValueError(f"eval.baselines lists a driver twice: {list(self.baselines)}")
        if self.num_gifs < 0 or self.num_maps < 0:
            raise ValueError(f"eval.num_gifs and eval.num_maps must be >= 0, got {self.num_gifs}, {self.num_maps}")


@dataclass(frozen=True)
class EvaluateConfig:
    """What ``evaluate.py`` does; :func:`evaluate_config_from_dict` builds it from the composed config."""

    checkpoint: str  # path to a checkpoint written by the trainer (last.pt, best.pt, iter_NNNNNN.pt)
    device: str = "cpu"  # device of the policy
    eval: EvalConfig = field(default_factory=lambda: EvalConfig(num_routes=64, seed=1000))
    report: EvalReportConfig = field(default_factory=EvalReportConfig)
    env_overrides: dict[str, Any] = field(default_factory=dict)  # nested env keys the user set on top of the
    # checkpoint's env (or the whole env when replace_env)
    replace_env: bool = False  # `env=<name>` was given: use the composed env instead of the checkpoint's

    def output_dir(self) -> str:
        if self.report.output_dir is not None:
            return self.report.output_dir
        path = Path(self.checkpoint)
        return str(path.parent / f"eval_{path.stem}")


def evaluate_config_from_dict(data: dict[str, Any], overrides: Sequence[str] = ()) -> EvaluateConfig:
    """Typed config from evaluate.py's composed config (a plain dict) and its command-line ``overrides``
    (Hydra's ``overrides.task``): only the env keys the user named override the checkpoint's env; ``env=<name>``
    replaces it. ConfigError names a bad key."""
    data = dict(data)
    data.pop("hydra", None)
    composed_env = data.pop("env", {}) or {}
    section = dict(data.pop("eval", {}) or {})
    suite_keys = {f.name for f in dataclasses.fields(EvalConfig)}
    suite = from_dict(EvalConfig, {k: v for k, v in section.items() if k in suite_keys}, "eval")
    report = from_dict(EvalReportConfig, {k: v for k, v in section.items() if k not in suite_keys}, "eval")
    replace_env, keys = _env_override_keys(overrides)
    if replace_env:
        env_overrides = composed_env
    else:
        env_overrides = {}
        for key in keys:
            value = _lookup(composed_env, key)
            if value is not _MISSING:
                _assign(env_overrides, key, value)
    config = from_dict(EvaluateConfig, {**data, "eval": suite, "report": report})
    if config.device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={config.device} but torch sees no CUDA device; use device=cpu")
    return dataclasses.replace(config, env_overrides=env_overrides, replace_env=replace_env)


def env_for_evaluation(checkpoint_env: dict[str, Any], config: EvaluateConfig, path: str = "checkpoint") -> EnvConfig:
    """The checkpoint's env (or the composed one with ``env=<name>``), with the user's env keys on top.
    CheckpointError when the stored env does not fit this version; ConfigError when the user's keys are wrong."""
    if not config.replace_env:
        try:
            env_config_from_dict(checkpoint_env)
        except ConfigError as error:
            raise CheckpointError(f"{path}: its env config does not fit this version ({error}); evaluate it on "
                                  "another env with env=<name>") from error
    base = {} if config.replace_env else checkpoint_env
    return env_config_from_dict(_merge(base, config.env_overrides))


@dataclass
class Evaluation:
    """The results of :func:`evaluate_checkpoint` and what they were computed from."""

    results: dict[str, EvalResult]  # driver name ("policy", "expert", "random") -> its result
    checkpoint: str
    iteration: int
    run_name: str
    env: EnvConfig
    suite: EvalConfig
    train_config: dict[str, Any]  # the run's resolved config as stored in the checkpoint
    notices: list[str] = field(default_factory=list)  # things the reader should know (printed by evaluate.py)

    def context(self) -> dict[str, Any]:
        """What the results were computed on, for the report's header and summary.json."""
        suite, backend_config = self.suite, self.env.backend_config
        details = [f"{key}={getattr(backend_config, key)}" for key in ("map", "num_towns", "max_episode_steps")
                   if hasattr(backend_config, key)]
        last_seed = suite.seed + suite.num_routes - 1
        driven = "policy " + ("mode" if suite.deterministic else "sampled")
        if self.env.backend == "gym":  # episodes of a gymnasium env: no routes, no towns
            routes = f"{suite.num_routes} evaluation episodes (episode seeds {suite.seed}..{last_seed}), {driven}"
            env = f"gym {backend_config.id}, evaluation seeds ({', '.join(details)})"
        else:
            routes = f"{suite.num_routes} held-out routes (episode seeds {suite.seed}..{last_seed}), {driven}"
            env = f"{self.env.backend}, evaluation towns ({', '.join(details)})"
        return {"checkpoint": self.checkpoint, "iteration": self.iteration, "run_name": self.run_name,
                "routes": routes, "env": env,
                "suite": {k: v for k, v in to_dict(suite).items() if k != "every"},
                "env_config": self.env.to_flat_dict()}


def evaluate_checkpoint(config: EvaluateConfig) -> Evaluation:
    """Rebuild the policy and its environment from ``config.checkpoint``, then drive it and the baselines on
    the same held-out routes. CheckpointError for a missing, unreadable or incompatible checkpoint."""
    from grpo.baselines import build_baseline

    state = load_checkpoint(config.checkpoint, map_location="cpu")
    stored = state.get("config")
    if not isinstance(stored, dict) or not {"env", "policy"} <= stored.keys() or "policy" not in state:
        raise CheckpointError(f"{config.checkpoint} holds no policy and run config; was it written by the trainer?")
    env_config = eval_env_config(env_for_evaluation(stored["env"], config, config.checkpoint), config.eval)
    try:
        # Checkpoints from before held actions (no action_repeat key) acted every step, and those from before
        # the obstacle inputs (no obstacle_features key) read the observation alone.
        policy_config = from_dict(PolicyConfig, {"action_repeat": 1, "obstacle_features": False, **stored["policy"]},
                                  "policy")
    except ConfigError as error:
        raise CheckpointError(f"{config.checkpoint}: its policy config does not fit this version ({error})") from error
    backend = build_eval_backend(env_config, config.eval)
    notices = _missing_env_keys(stored["env"], config)
    try:
        actions = action_mapping_for(backend)
        policy = _policy_from_state(state, policy_config, backend, config.checkpoint)
        policy = policy.to(config.device).eval()
        report = config.report
        results = {"policy": evaluate_policy(policy, env_config, config.eval, config.device, backend,
                                             num_gifs=report.num_gifs, num_maps=report.num_maps)}
        for name in report.baselines:
            if name == "expert" and actions.kind != "driving":  # env=gym: there is no expert to compare with
                notices.append(f"note: no expert baseline on {env_config.backend} (the expert drives only driving "
                               "backends)")
                continue
            results[name] = evaluate_policy(build_baseline(name, actions), env_config, config.eval, config.device,
                                            backend, num_maps=report.num_maps)
    finally:
        backend.close()
    return Evaluation(results, config.checkpoint, int(state.get("iteration", 0)), str(stored.get("run_name", "")),
                      env_config, config.eval, stored, notices)


def _missing_env_keys(checkpoint_env: dict[str, Any], config: EvaluateConfig) -> list[str]:
    """A notice when the checkpoint's env predates keys of this version: they take today's defaults, so the
    evaluation world may differ from the training one (e.g. traffic added since)."""
    if config.replace_env:
        return []
    current = env_config_from_dict({"backend": checkpoint_env.get("backend", "sim")}).to_flat_dict()
    services = {f.name for f in dataclasses.fields(ServiceConfig)}  # how worlds are hosted, not what they are
    missing = sorted(set(current) - set(checkpoint_env) - set(config.env_overrides) - services)
    if not missing:
        return []
    return [f"note: the checkpoint's env config has no {missing}; they take this version's defaults, so the "
            "evaluation world may differ from the training one (set them with env.<key>=...)"]


def _policy_from_state(state: dict[str, Any], policy_config: PolicyConfig, backend: Backend, path: str):
    """The checkpoint's policy, rebuilt as the trainer built it: for ``backend``'s observation size and through
    its action mapping (driving controls, or the Box bounds of an ``env=gym`` env), then its weights loaded."""
    size, observation_size = state.get("observation_size"), backend.observation_size
    if size != observation_size:
        raise CheckpointError(f"{path} was trained on observations of size {size}, but this environment gives "
                              f"{observation_size}; evaluate it on the environment it was trained on")
    try:
        policy = build_policy(int(size), policy_config, action_mapping_for(backend))
        policy.load_state_dict(state["policy"])
    except (RuntimeError, KeyError, ValueError, TypeError) as error:
        raise CheckpointError(f"{path}: the policy weights do not fit its policy config "
                              f"({str(error).splitlines()[0][:200]})") from error
    return policy


# --- env override plumbing (plain strings and dicts; Hydra stays in evaluate.py) -------------------------------

_MISSING = object()


def _env_override_keys(overrides: Sequence[str]) -> tuple[bool, list[str]]:
    """From command-line overrides such as ``env=sim``, ``env.town.grid_size=4`` or ``+env.x=1``: whether the
    env group was chosen, and the dotted keys under ``env`` that were set."""
    replace, keys = False, []
    for item in overrides:
        key = item.split("=", 1)[0].lstrip("+~").split("@", 1)[0]
        if key == "env":
            replace = True
        elif key.startswith("env."):
            keys.append(key[len("env."):])
    return replace, keys


def _lookup(data: dict[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(data, dict) or part not in data:
            return _MISSING
        data = data[part]
    return data


def _assign(data: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    for part in parents:
        data = data.setdefault(part, {})
    data[last] = value


def _merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged
