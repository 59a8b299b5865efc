"""Reference drivers with the policy's ``act`` interface, for evaluation reports and learning curves."""

from __future__ import annotations

from collections.abc import Callable

import torch

from grpo.distributions import raw_to_control

Controller = Callable[[torch.Tensor], torch.Tensor]


class RandomDriver:
    """Uniformly random actions in the policy's own action space (acceleration, steer), mapped to controls:
    what an untrained, maximally uncertain policy does."""

    def act(self, obs: torch.Tensor, *, deterministic: bool = False, generator: torch.Generator | None = None):
        raw = torch.rand(len(obs), 2, generator=generator, device=obs.device)
        return raw, raw_to_control(raw), torch.zeros(len(obs), device=obs.device)


class ControllerDriver:
    """A deterministic controller (observations -> CARLA controls [N, 3]) seen as a driver."""

    def __init__(self, controller: Controller):
        self.controller = controller

    def act(self, obs: torch.Tensor, *, deterministic: bool = False, generator: torch.Generator | None = None):
        control = self.controller(obs)
        return control, control, torch.zeros(len(obs), device=obs.device)


def build_baseline(name: str):
    """``random`` or ``expert`` (the simulator's rule-based driver over the privileged observation)."""
    if name == "random":
        return RandomDriver()
    if name == "expert":
        from envs.driving import expert

        return ControllerDriver(getattr(expert, "ExpertDriver", None)() if hasattr(expert, "ExpertDriver")
                                else expert.route_follower)
    raise ValueError(f"unknown baseline {name!r}; choose from ['expert', 'random']")
