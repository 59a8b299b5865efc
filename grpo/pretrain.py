"""Warm start: behaviour cloning of the privileged expert before GRPO (as SFT comes before GRPO for LLMs).

Why: GRPO can only reinforce what the policy's own samples already do now and then. Stopping at a red
light takes a second or more of steady braking, which independent per-step exploration noise almost never
produces from a policy that has learnt to drive on; groups then hold no branch that stops, and nothing
teaches it (the default policy now holds its longitudinal command, ``policy.action_repeat``, for that
reason). Cloning :class:`~envs.sim.expert.ExpertDriver` (it reads only the observation, so it drives any
driving backend) puts such behaviour in the policy first, and GRPO goes on from there; the frozen reference
policy is then the cloned one, so ``grpo.beta > 0`` keeps GRPO near it.

Off by default: measured on the busy world with the reward of the time (red light 5, no slow-down shaping,
a fresh action every step; README, "Learning benchmark"), the cloned policy scored 35-43 after about a
minute, but GRPO then traded its caution for speed and fell to about 24 within minutes, even with a KL
penalty. It has not been measured with today's defaults.

Demonstrations follow DART (Laskey et al. 2017, "DART: Noise Injection for Robust Imitation Learning"):
the worlds are driven by the expert's controls plus Gaussian noise, and labelled with the expert's clean
controls, so the states include the small mistakes the learner will make and how to recover from them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from envs.api import Backend
from envs.sim.expert import ExpertDriver
from grpo.distributions import raw_to_control


@dataclass(frozen=True)
class PretrainConfig:
    """Behaviour cloning before GRPO; ``updates: 0`` turns it off (and it is skipped for non-driving
    backends, which have no expert)."""

    demo_steps: int = 1500  # steps the expert drives every world of the backend (x num_worlds samples)
    noise: float = 0.1  # std of the Gaussian noise added to the expert's raw actions while driving (DART)
    updates: int = 0  # Adam steps of maximum likelihood on the demonstrations (0 = no warm start, the default)
    batch_size: int = 1024
    learning_rate: float = 1e-3
    label_margin: float = 0.02  # labels are kept in [margin, 1 - margin]: full brake is not a Beta edge

    def __post_init__(self) -> None:
        if self.demo_steps < 1 or self.updates < 0 or self.batch_size < 1 or self.learning_rate <= 0:
            raise ValueError("pretrain.demo_steps and pretrain.batch_size must be >= 1, pretrain.updates >= 0 and "
                             f"pretrain.learning_rate > 0; got {self.demo_steps}, {self.batch_size}, {self.updates}, "
                             f"{self.learning_rate}")
        if not (self.noise >= 0 and 0 < self.label_margin < 0.5):
            raise ValueError(f"pretrain.noise must be >= 0 and label_margin in (0, 0.5); got {self.noise}, "
                             f"{self.label_margin}")


def control_to_raw(control: Tensor) -> Tensor:
    """The inverse of :func:`~grpo.distributions.raw_to_control` for controls that never throttle and brake
    at once: [N, 3] ``[throttle, brake, steer]`` -> raw [N, 2] in [0, 1]."""
    acceleration = control[:, 0] - control[:, 1]
    return torch.stack([(acceleration + 1.0) / 2.0, (control[:, 2] + 1.0) / 2.0], dim=-1).clamp(0.0, 1.0)


@torch.no_grad()
def collect_demonstrations(backend: Backend, expert: ExpertDriver, steps: int, seeds: list[int], noise: float,
                           generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Drive every world of ``backend`` for ``steps`` steps with the expert's controls plus noise; worlds
    whose episode ends start the next seed of ``seeds`` (reset per world). Returns observations [M, obs] and
    the expert's clean raw actions [M, 2] of the live steps."""
    worlds = torch.arange(backend.num_worlds)
    next_seed = iter(seeds)
    obs = backend.reset([next(next_seed) for _ in worlds], worlds)
    observations, labels = [], []
    for _ in range(steps):
        obs = obs.cpu()
        clean = control_to_raw(expert.act(obs))
        observations.append(obs)
        labels.append(clean)
        noisy = (clean + noise * torch.randn(clean.shape, generator=generator)).clamp(0.0, 1.0)
        result = backend.step(raw_to_control(noisy).to(backend.device))
        obs = result.observation
        ended = (result.terminated | result.truncated).cpu().nonzero().flatten()
        if len(ended):
            fresh = backend.reset([next(next_seed) for _ in ended], ended)
            obs = obs.cpu().clone()
            obs[ended] = fresh.cpu()
    return torch.cat(observations), torch.cat(labels)


def behaviour_cloning(policy: nn.Module, observations: Tensor, labels: Tensor, config: PretrainConfig,
                      generator: torch.Generator) -> dict[str, float]:
    """Maximum likelihood of the labels under the policy's Beta distribution, with Adam; returns the final
    ``pretrain/nll`` (mean over the last 10% of updates) and ``pretrain/mode_error`` (mean absolute error
    of the deterministic action on all samples)."""
    device = next(policy.parameters()).device
    labels = labels.clamp(config.label_margin, 1 - config.label_margin).to(device)
    observations = observations.to(device)
    optimizer = torch.optim.Adam(policy.parameters(), lr=config.learning_rate)
    policy.train()
    losses = []
    for _ in range(config.updates):
        index = torch.randint(0, len(labels), (config.batch_size,), generator=generator).to(device)
        loss = -policy(observations[index]).log_prob(labels[index]).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
        optimizer.step()
        losses.append(loss.item())
    policy.eval()
    with torch.no_grad():
        error = torch.cat([(policy(chunk).mode() - target).abs().mean(-1)
                           for chunk, target in zip(observations.split(8192), labels.split(8192), strict=True)])
    tail = losses[-max(1, len(losses) // 10):] if losses else [float("nan")]
    return {"pretrain/nll": sum(tail) / len(tail), "pretrain/mode_error": error.mean().item(),
            "pretrain/samples": float(len(labels)), "pretrain/updates": float(config.updates)}
