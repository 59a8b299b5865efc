"""Reference drivers with the policy's ``act`` interface, for evaluation reports and learning curves."""

from __future__ import annotations

from collections.abc import Callable

import torch

from grpo.distributions import DRIVING_ACTIONS, ActionMapping

Controller = Callable[[torch.Tensor], torch.Tensor]


class RandomDriver:
    """Uniformly random actions in the policy's own action space (acceleration and steer, or the box of an
    ``env=gym`` env), mapped to the backend's actions: what an untrained, maximally uncertain policy does."""

    def __init__(self, actions: ActionMapping = DRIVING_ACTIONS):
        self.actions = actions

    def act(self, obs: torch.Tensor, *, deterministic: bool = False, generator: torch.Generator | None = None):
        raw = torch.rand(len(obs), self.actions.raw_dim, generator=generator, device=obs.device)
        return raw, self.actions.to_env(raw), torch.zeros(len(obs), device=obs.device)


class ControllerDriver:
    """A deterministic controller (observations -> CARLA controls [N, 3]) seen as a driver."""

    def __init__(self, controller: Controller):
        self.controller = controller

    def act(self, obs: torch.Tensor, *, deterministic: bool = False, generator: torch.Generator | None = None):
        control = self.controller(obs)
        return control, control, torch.zeros(len(obs), device=obs.device)


def build_baseline(name: str, actions: ActionMapping = DRIVING_ACTIONS):
    """``random`` or ``expert`` (the simulator's rule-based driver over the privileged observation), acting
    through ``actions``. ValueError for the expert on a non-driving backend (it knows only driving)."""
    if name == "random":
        return RandomDriver(actions)
    if name == "expert":
        if actions.kind != "driving":
            raise ValueError("the expert drives only driving backends (env=sim, carla, http), not a gymnasium env")
        from envs.driving.expert import ExpertDriver

        return ControllerDriver(ExpertDriver())
    raise ValueError(f"unknown baseline {name!r}; choose from ['expert', 'random']")
