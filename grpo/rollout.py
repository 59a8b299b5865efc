"""Snapshot -> branches -> returns -> selection, over any backend that meets envs.api.

World layout: ``num_trunks * group_size`` worlds, world ``t * G + g`` being branch g of trunk t. At a branch
point every group's leader (g = 0) is cloned into its G - 1 siblings, so all G branches start from the same
world state, randomness included (common random numbers). Each branch is driven ``branch_horizon`` steps with
the policy's own sampled actions; a branch that ends stays frozen and earns nothing more (the contract).
After scoring, the chosen branch is cloned over its whole group, so the trunk continues from its end state.
Trunk steps between branch points drive all G copies with the leader's action, keeping them identical.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from envs.api import Backend, Snapshot
from envs.sim import rng
from grpo.config import GRPOConfig


@dataclass
class BranchBatch:
    """One iteration's branches. H = branch horizon, S = trained steps (<= H), N = T * G branches."""

    observations: Tensor  # [S, N, obs_size], on the policy's device
    raw_actions: Tensor  # [S, N, action_dim] the policy's own action space
    log_probs: Tensor  # [S, N] log-probabilities under the policy that acted
    valid: Tensor  # [S, N] bool: the branch had not ended before this step
    rewards: Tensor  # [H, N] float32 (0 after a branch ended)
    group_id: Tensor  # [N] long: the trunk each branch belongs to
    info: dict[str, Tensor] = field(default_factory=dict)  # per-branch summaries, [N]
    positions: Tensor | None = None  # [H + 1, G, 2] ego positions of group 0's branches, for pictures


def discounted_returns(rewards: Tensor, discount: float) -> Tensor:
    """Branch returns [N] (float64) from per-step rewards [H, N]: sum_h discount^h r_h."""
    weights = discount ** torch.arange(rewards.shape[0], dtype=torch.float64, device=rewards.device)
    return (rewards.double() * weights[:, None]).sum(0)


def select_branches(returns: Tensor, group_size: int, rule: str, temperature: float,
                    generator: torch.Generator) -> Tensor:
    """Index (0..G-1) of the branch each group continues from, [T]. ``softmax`` samples with probabilities
    from the group-normalised returns / temperature, so better branches are likelier but not certain."""
    grouped = returns.view(-1, group_size).double().cpu()
    if rule == "best":
        return grouped.argmax(dim=1)
    if rule == "random":
        return torch.randint(0, group_size, (grouped.shape[0],), generator=generator)
    if rule == "softmax":
        normalised = (grouped - grouped.mean(1, keepdim=True)) / (grouped.std(1, keepdim=True) + 1e-8)
        probabilities = torch.softmax(normalised / temperature, dim=1)
        return torch.multinomial(probabilities, 1, generator=generator).squeeze(1)
    raise ValueError(f"selection must be 'best', 'random' or 'softmax', got {rule!r}")


class BranchingRollout:
    """Drives the trunks and their branches on one backend; the trainer calls the phases in order."""

    def __init__(self, backend: Backend, policy: nn.Module, config: GRPOConfig, *, seed: int,
                 device: torch.device, generator: torch.Generator):
        expected = config.num_trunks * config.group_size
        if backend.num_worlds != expected:
            raise ValueError(f"the backend has {backend.num_worlds} worlds; GRPO needs num_trunks * group_size = "
                             f"{expected}")
        self.backend, self.policy, self.config = backend, policy, config
        self.device, self.generator, self.seed = device, generator, seed
        group_size = config.group_size
        self.group_id = torch.arange(config.num_trunks).repeat_interleave(group_size)
        self.leaders = torch.arange(config.num_trunks) * group_size
        self.episodes_started = 0  # trunk episodes begun so far: the next episode seed's index
        self.observations: Tensor | None = None  # [N, obs_size] current observations of every world
        self.env_steps = 0

    # --- phase 0: trunks --------------------------------------------------------------------------------

    def _episode_seeds(self, count: int) -> list[int]:
        """Fresh, reproducible episode seeds for ``count`` new trunk episodes (training seed range)."""
        index = torch.arange(self.episodes_started, self.episodes_started + count)
        self.episodes_started += count
        return rng.mix(self.seed, index, 0x7A1).tolist()

    def start(self) -> None:
        """Begin an episode on every trunk (all G copies of a trunk start identical)."""
        trunks = self.config.num_trunks
        seeds = torch.tensor(self._episode_seeds(trunks)).repeat_interleave(self.config.group_size)
        self.observations = self.backend.reset(seeds.tolist())
        self._done = torch.zeros(self.backend.num_worlds, dtype=torch.bool)

    def restart_ended_trunks(self) -> int:
        """Start a new episode on every trunk whose episode has ended; returns how many."""
        ended = self._done[self.leaders].nonzero().flatten()
        if len(ended) == 0:
            return 0
        group_size = self.config.group_size
        worlds = (self.leaders[ended][:, None] + torch.arange(group_size)[None, :]).flatten()
        seeds = torch.tensor(self._episode_seeds(len(ended))).repeat_interleave(group_size)
        self.observations[worlds] = self.backend.reset(seeds.tolist(), worlds).to(self.observations.device)
        self._done[worlds] = False
        return len(ended)

    @torch.no_grad()
    def drive_trunks(self, steps: int) -> None:
        """Single-mode steps: every copy of a trunk takes its leader's sampled action (copies stay equal)."""
        for _ in range(steps):
            leader_obs = self.observations[self.leaders].to(self.device)
            _, control, _ = self.policy.act(leader_obs, generator=self.generator)
            actions = control.repeat_interleave(self.config.group_size, dim=0)
            self._step(actions)

    # --- phase 1: snapshot -> branches --------------------------------------------------------------------

    def branch_point(self) -> None:
        """Every group's leader is copied into its siblings (the fast in-service path of snapshot/restore)."""
        worlds = torch.arange(self.backend.num_worlds)
        siblings = worlds[worlds % self.config.group_size != 0]
        self.backend.clone(self.group_id[siblings] * self.config.group_size, siblings)
        self.observations = self.backend.observe()
        self._done = torch.zeros(self.backend.num_worlds, dtype=torch.bool)

    @torch.no_grad()
    def drive_branches(self, record_positions: bool = False) -> BranchBatch:
        """Drive every branch ``branch_horizon`` steps with its own sampled actions."""
        horizon, trained = self.config.branch_horizon, self.config.trained_steps
        observations, raw_actions, log_probs, valid, rewards = [], [], [], [], []
        events: dict[str, Tensor] = {}
        speed_sum = torch.zeros(self.backend.num_worlds)
        positions = [self._group0_positions()] if record_positions else None
        for step in range(horizon):
            obs = self.observations.to(self.device)
            raw, control, log_prob = self.policy.act(obs, generator=self.generator)
            alive = ~self._done
            result = self._step(control)
            if step < trained:
                observations.append(obs)
                raw_actions.append(raw)
                log_probs.append(log_prob)
                valid.append(alive.to(self.device))
            rewards.append(result.reward.detach().float().cpu())
            if "speed" in result.info:
                speed_sum += _cpu_float(result.info["speed"])
            for name, value in result.info.items():
                if value.dtype == torch.bool:
                    events[name] = events.get(name, torch.zeros_like(value, device="cpu")) | value.cpu()
            if record_positions:
                positions.append(self._group0_positions())
        info = {name: happened.float() for name, happened in events.items()}
        info["ended"] = self._done.float()
        info["speed"] = speed_sum / horizon
        if "route_completion" in result.info:
            info["route_completion"] = _cpu_float(result.info["route_completion"])
        return BranchBatch(torch.stack(observations), torch.stack(raw_actions), torch.stack(log_probs),
                           torch.stack(valid), torch.stack(rewards), self.group_id.clone(), info,
                           torch.stack(positions) if record_positions else None)

    # --- phase 3: selection --------------------------------------------------------------------------------

    def continue_from(self, chosen: Tensor) -> None:
        """Each trunk continues from its chosen branch (index within the group, [T])."""
        group_size = self.config.group_size
        sources = (self.leaders + chosen).repeat_interleave(group_size)
        targets = torch.arange(self.backend.num_worlds)
        self.backend.clone(sources, targets)
        self.observations = self.backend.observe()
        self._done = self._done[sources]

    # --- helpers ----------------------------------------------------------------------------------------------

    def _step(self, actions: Tensor):
        result = self.backend.step(actions.to(self.backend.device))
        self.observations = result.observation
        self._done = self._done | (result.terminated | result.truncated).cpu()
        self.env_steps += self.backend.num_worlds
        return result

    def _group0_positions(self) -> Tensor:
        """Ego positions [G, 2] of trunk 0's branches where the backend exposes them (built-in simulator)."""
        state = getattr(self.backend, "state", None)
        if state is None:
            return torch.zeros(self.config.group_size, 2)
        ids = torch.arange(self.config.group_size, device=state.floats.device)
        return torch.stack([state.x[ids], state.y[ids]], dim=-1).cpu()

    def state_dict(self) -> dict:
        snapshot = self.backend.snapshot()
        return {"episodes_started": self.episodes_started, "env_steps": self.env_steps, "done": self._done.clone(),
                "snapshot": {"backend": snapshot.backend, "signature": snapshot.signature,
                             "num_worlds": snapshot.num_worlds, "tensors": snapshot.tensors, "meta": snapshot.meta}}

    def load_state_dict(self, state: dict) -> None:
        self.episodes_started = int(state["episodes_started"])
        self.env_steps = int(state["env_steps"])
        self.observations = self.backend.restore(Snapshot(**state["snapshot"]))
        self._done = state["done"].clone()


def _cpu_float(value: Tensor) -> Tensor:
    return value.detach().float().cpu()
