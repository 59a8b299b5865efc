"""Driving evaluation of a policy on a fixed, seeded suite of held-out routes, batched on any backend.

Every route runs in its own world of one backend built on the evaluation split (towns never used in
training); episode seeds ``eval.seed .. eval.seed + num_routes - 1`` make the suite reproducible. The
trainer's periodic evaluation and ``evaluate.py`` both call :func:`evaluate_policy`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Protocol

import torch

from envs.api import INFRACTIONS, Backend
from envs.factory import EnvConfig, build_backend
from grpo.config import EvalConfig

PENALTY_COEFFICIENTS = {"collision_pedestrian": 0.50, "collision_vehicle": 0.60, "collision_static": 0.65,
                        "red_light": 0.70}
"""CARLA leaderboard / Bench2Drive infraction coefficients (stop signs, 0.80, do not exist here)."""


class Driver(Protocol):
    """Anything that maps observations to CARLA controls: a policy, the expert, a random driver."""

    def act(self, obs: torch.Tensor, *, deterministic: bool = False,
            generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        ...


@dataclass
class EvalResult:
    metrics: dict[str, float]  # flat names under eval/
    routes: list[dict[str, float]] = field(default_factory=list)  # one record per route


def driving_score(route_completion: torch.Tensor, counts: dict[str, torch.Tensor]) -> torch.Tensor:
    """Per route: route completion (%) x product of coefficient^count over the penalised infractions."""
    penalty = torch.ones_like(route_completion)
    for name, coefficient in PENALTY_COEFFICIENTS.items():
        penalty = penalty * coefficient ** counts[name]
    return route_completion * penalty


@torch.no_grad()
def evaluate_policy(driver: Driver, env_config: EnvConfig, config: EvalConfig, device: torch.device | str,
                    backend: Backend | None = None) -> EvalResult:
    """Drive every evaluation route to its end and score it. ``backend`` may be passed to reuse one."""
    if backend is None:
        backend_config = env_config.backend_config
        if config.device is not None:
            backend_config = dataclasses.replace(backend_config, device=config.device)
        backend = build_backend(dataclasses.replace(env_config, backend_config=backend_config),
                                num_worlds=config.num_routes, split="eval")
    num_routes = backend.num_worlds
    seeds = list(range(config.seed, config.seed + num_routes))
    obs = backend.reset(seeds)
    generator = torch.Generator(device=device).manual_seed(config.seed)
    max_steps = config.max_steps or getattr(getattr(backend, "config", None), "max_episode_steps", 10_000)
    counts = {name: torch.zeros(num_routes) for name in INFRACTIONS}
    completion, distance, speed_sum = torch.zeros(num_routes), torch.zeros(num_routes), torch.zeros(num_routes)
    steps = torch.zeros(num_routes)
    done = torch.zeros(num_routes, dtype=torch.bool)
    for _ in range(max_steps):
        _, control, _ = driver.act(obs.to(device), deterministic=config.deterministic, generator=generator)
        result = backend.step(control.to(backend.device))
        live = ~done
        for name in INFRACTIONS:
            counts[name] += (result.info[name].cpu() & live).float()
        completion = torch.where(live, result.info["route_completion"].cpu().float(), completion)
        distance = torch.where(live, result.info["distance_m"].cpu().float(), distance)
        speed_sum += torch.where(live, result.info["speed"].cpu().float(), 0.0)
        steps += live.float()
        done |= (result.terminated | result.truncated).cpu()
        obs = result.observation
        if bool(done.all()):
            break
    scores = driving_score(completion, counts)
    success = (completion >= 100.0 - 1e-3) & (sum(counts[n] for n in PENALTY_COEFFICIENTS) == 0)
    kilometres = distance.sum().item() / 1000.0
    metrics = {
        "eval/driving_score": scores.mean().item(),
        "eval/route_completion": completion.mean().item(),
        "eval/success_rate": success.float().mean().item(),
        "eval/mean_speed": (speed_sum.sum() / steps.sum().clamp(min=1)).item(),
        "eval/km_driven": kilometres,
    }
    for name in INFRACTIONS:
        metrics[f"eval/{name}_per_km"] = counts[name].sum().item() / max(kilometres, 1e-6)
    routes = [{"seed": seeds[i], "driving_score": scores[i].item(), "route_completion": completion[i].item(),
               "success": bool(success[i]), "distance_m": distance[i].item(),
               **{name: int(counts[name][i]) for name in INFRACTIONS}} for i in range(num_routes)]
    return EvalResult(metrics, routes)
