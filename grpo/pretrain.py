"""Warm start: behaviour cloning of the privileged expert before GRPO (as SFT comes before GRPO for LLMs).

Why: GRPO can only reinforce what the policy's own samples already do now and then. Stopping at a red
light takes a second or more of steady braking, which independent per-step exploration noise almost never
produces from a policy that has learnt to drive on; groups then hold no branch that stops, and nothing
teaches it (the default policy now holds its longitudinal command, ``policy.action_repeat``, for that
reason). Cloning :class:`~envs.driving.expert.ExpertDriver` (it reads only the observation, so it drives any
driving backend) puts such behaviour in the policy first, and GRPO goes on from there; the frozen reference
policy is then the cloned one, so ``grpo.beta > 0`` keeps GRPO near it.

On by default, with the GRPO settings it needs (``pretrain.updates=0`` or ``experiment=from_scratch`` turns
it off). Measured on the busy world (docs/learning.md): the DAgger clone scores 55-67 after 2-3
minutes, but alone GRPO then trades its caution for speed within minutes, even at a learning rate of 1e-5:
a 10 s branch pays for the extra metres and rarely sees the crash they lead to. The reward's obstacle
shaping (``env.reward.obstacle_decel``) and a KL penalty to the clone (``grpo.beta``) hold it, and GRPO
then improves on the clone.

Demonstrations follow DART (Laskey et al. 2017, "DART: Noise Injection for Robust Imitation Learning"):
the worlds are driven by the expert's controls plus Gaussian noise, and labelled with the expert's clean
controls, so the states include the small mistakes the learner will make and how to recover from them.

Then DAgger (Ross et al. 2011, "A Reduction of Imitation Learning and Structured Prediction to No-Regret
Online Learning"): ``dagger_rounds`` times the clone drives the worlds itself, with its own sampled and held
actions as GRPO will drive them, the expert labels every state it visited, and the clone is fitted again on
all the data so far. A clone of the expert's demonstrations alone drifts into states the expert never shows
(compounding errors); the rounds teach it what the expert would do there.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from envs.api import Backend
from envs.driving.expert import ExpertDriver
from grpo.distributions import raw_to_control
from grpo.policy import CNNPolicy, EntityPolicy, HeldActions, MLPPolicy
from grpo.progress import Progress


@dataclass(frozen=True)
class PretrainConfig:
    """Behaviour cloning before GRPO; ``updates: 0`` turns it off (and it is skipped for non-driving
    backends, which have no expert)."""

    demo_steps: int = 1500  # steps the expert drives every world of the backend (x num_worlds samples)
    noise: float = 0.1  # std of the Gaussian noise added to the expert's raw actions while driving (DART)
    updates: int = 4000  # Adam steps of maximum likelihood on the demonstrations (0 = no warm start)
    dagger_rounds: int = 6  # rounds of: the clone drives, the expert labels what it saw, the clone is refitted
    dagger_steps: int = 400  # steps the clone drives every world in each round
    dagger_updates: int = 2000  # Adam steps of each round's refit on all the data so far
    batch_size: int = 1024
    learning_rate: float = 1e-3
    label_margin: float = 0.02  # labels are kept in [margin, 1 - margin]: full brake is not a Beta edge

    def __post_init__(self) -> None:
        if self.demo_steps < 1 or self.updates < 0 or self.batch_size < 1 or self.learning_rate <= 0:
            raise ValueError("pretrain.demo_steps and pretrain.batch_size must be >= 1, pretrain.updates >= 0 and "
                             f"pretrain.learning_rate > 0; got {self.demo_steps}, {self.batch_size}, {self.updates}, "
                             f"{self.learning_rate}")
        if self.dagger_rounds < 0 or self.dagger_steps < 1 or self.dagger_updates < 1:
            raise ValueError("pretrain.dagger_rounds must be >= 0 (0 = demonstrations only), dagger_steps and "
                             f"dagger_updates >= 1; got {self.dagger_rounds}, {self.dagger_steps}, "
                             f"{self.dagger_updates}")
        if not (self.noise >= 0 and 0 < self.label_margin < 0.5):
            raise ValueError(f"pretrain.noise must be >= 0 and label_margin in (0, 0.5); got {self.noise}, "
                             f"{self.label_margin}")


def control_to_raw(control: Tensor) -> Tensor:
    """The inverse of :func:`~grpo.distributions.raw_to_control` for controls that never throttle and brake
    at once: [N, 3] ``[throttle, brake, steer]`` -> raw [N, 2] in [0, 1]."""
    acceleration = control[:, 0] - control[:, 1]
    return torch.stack([(acceleration + 1.0) / 2.0, (control[:, 2] + 1.0) / 2.0], dim=-1).clamp(0.0, 1.0)


def warm_start(policy: MLPPolicy | CNNPolicy | EntityPolicy, backend: Backend, config: PretrainConfig,
               seeds: Iterable[int], generator: torch.Generator, report: Callable[[str], None] = print,
               should_stop: Callable[[], bool] = lambda: False) -> dict[str, float]:
    """Clone the expert into ``policy``: DART demonstrations, a fit, then ``config.dagger_rounds`` DAgger
    rounds on the states the clone itself visits. Episodes use the seeds of ``seeds`` in turn. Returns the
    last fit's metrics (grpo/pretrain.py's module docstring says why both steps). Raises
    :class:`~grpo.progress.Interrupted` within a step or an update of ``should_stop()`` turning true."""
    expert = ExpertDriver()
    seeds = iter(seeds)
    report(f"pretrain: cloning the expert: {config.demo_steps:,} demonstration steps x {backend.num_worlds} worlds, "
           f"{config.updates:,} updates, then {config.dagger_rounds} DAgger rounds of {config.dagger_steps:,} steps "
           f"and {config.dagger_updates:,} updates")
    observations, labels = collect_demonstrations(backend, expert, config.demo_steps, seeds, config.noise, generator,
                                                  report=report, should_stop=should_stop)
    metrics = behaviour_cloning(policy, observations, labels, config, generator, report=report,
                                should_stop=should_stop)
    report(f"pretrain: fitted {len(labels):,} demonstrations (mode error {metrics['pretrain/mode_error']:.3f})")
    for round_ in range(1, config.dagger_rounds + 1):
        label = f"pretrain: DAgger round {round_}/{config.dagger_rounds}"
        visited = drive_policy(backend, policy, config.dagger_steps, seeds, generator, report=report, label=label,
                               should_stop=should_stop)
        observations = torch.cat([observations, visited])
        labels = torch.cat([labels, expert_labels(expert, visited)])
        metrics = behaviour_cloning(policy, observations, labels, config, generator, updates=config.dagger_updates,
                                    report=report, label=f"{label}, fit", should_stop=should_stop)
        report(f"pretrain: DAgger round {round_}/{config.dagger_rounds}, {len(labels):,} samples "
               f"(mode error {metrics['pretrain/mode_error']:.3f})")
    metrics["pretrain/updates"] = float(config.updates + config.dagger_rounds * config.dagger_updates)
    metrics["pretrain/dagger_rounds"] = float(config.dagger_rounds)
    return metrics


def expert_labels(expert: ExpertDriver, observations: Tensor) -> Tensor:
    """The expert's clean raw actions [M, 2] for observations [M, obs]."""
    return control_to_raw(expert.act(observations))


@torch.no_grad()
def collect_demonstrations(backend: Backend, expert: ExpertDriver, steps: int, seeds: Iterable[int], noise: float,
                           generator: torch.Generator, report: Callable[[str], None] | None = None,
                           should_stop: Callable[[], bool] | None = None) -> tuple[Tensor, Tensor]:
    """Drive every world of ``backend`` for ``steps`` steps with the expert's controls plus noise; every
    episode (the first ones and those that start when one ends) takes the next seed of ``seeds``. Returns
    observations [M, obs] and the expert's clean raw actions [M, 2] of the live steps."""
    labels = []

    def noisy_expert(obs: Tensor, step: int) -> Tensor:
        clean = expert_labels(expert, obs)
        labels.append(clean)
        return raw_to_control((clean + noise * torch.randn(clean.shape, generator=generator)).clamp(0.0, 1.0))

    observations = _drive(backend, steps, seeds, noisy_expert, Progress("pretrain: demonstrations", steps,
                                                                        report=report, should_stop=should_stop))
    return observations, torch.cat(labels)


@torch.no_grad()
def drive_policy(backend: Backend, policy: MLPPolicy | CNNPolicy | EntityPolicy, steps: int, seeds: Iterable[int],
                 generator: torch.Generator, report: Callable[[str], None] | None = None,
                 label: str = "pretrain: the clone drives", should_stop: Callable[[], bool] | None = None) -> Tensor:
    """Drive every world of ``backend`` for ``steps`` steps with the policy's sampled actions, held for its
    ``action_repeat`` steps as in training (a world whose episode restarts finishes the held steps it was in);
    episodes take the seeds of ``seeds`` in turn. Returns the observations [M, obs] it saw."""
    device = next(policy.parameters()).device
    sampler = generator if device.type == "cpu" else torch.Generator(device=device).manual_seed(
        int(torch.randint(2**62, (1,), generator=generator)))  # sampling on the policy's device
    driver = HeldActions(policy)
    policy.eval()
    return _drive(backend, steps, seeds, lambda obs, step: driver.act(obs.to(device), step, generator=sampler)[1],
                  Progress(label, steps, report=report, should_stop=should_stop))


def _drive(backend: Backend, steps: int, seeds: Iterable[int], act: Callable[[Tensor, int], Tensor],
           progress: Progress | None = None) -> Tensor:
    """Drive every world of ``backend`` for ``steps`` steps with ``act(obs [N, obs] on the CPU, step) ->
    controls``; every episode takes the next seed of ``seeds``. Returns the observations [steps * N, obs]."""
    next_seed = iter(seeds)
    worlds = torch.arange(backend.num_worlds)
    obs = backend.reset([next(next_seed) for _ in worlds], worlds)
    observations = []
    for step in range(steps):
        obs = obs.cpu()
        observations.append(obs)
        result = backend.step(act(obs, step).to(backend.device))
        obs = result.observation
        ended = (result.terminated | result.truncated).cpu().nonzero().flatten()
        if len(ended):
            fresh = backend.reset([next(next_seed) for _ in ended], ended)
            obs = obs.cpu().clone()
            obs[ended] = fresh.cpu()
        if progress is not None:
            progress.update(step + 1)
    return torch.cat(observations)


def behaviour_cloning(policy: MLPPolicy | CNNPolicy | EntityPolicy, observations: Tensor, labels: Tensor,
                      config: PretrainConfig, generator: torch.Generator, updates: int | None = None,
                      report: Callable[[str], None] | None = None, label: str = "pretrain: fit",
                      should_stop: Callable[[], bool] | None = None) -> dict[str, float]:
    """Maximum likelihood of the labels under the policy's Beta distribution, with Adam, for ``updates``
    steps (``config.updates`` by default); returns the final ``pretrain/nll`` (mean over the last 10% of
    updates) and ``pretrain/mode_error`` (mean absolute error of the deterministic action on all samples)."""
    updates = config.updates if updates is None else updates
    device = next(policy.parameters()).device
    labels = labels.clamp(config.label_margin, 1 - config.label_margin).to(device)
    with torch.no_grad():  # the network's inputs, derived once (the obstacle reading is the costly part)
        inputs = torch.cat([policy.encode(chunk.to(device)) for chunk in observations.split(65536)])
    optimizer = torch.optim.Adam(policy.parameters(), lr=config.learning_rate)
    policy.train()
    losses = []
    progress = Progress(label, updates, unit="updates", report=report, should_stop=should_stop)
    for update in range(updates):
        index = torch.randint(0, len(labels), (config.batch_size,), generator=generator).to(device)
        loss = -policy.distribution(inputs[index]).log_prob(labels[index]).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
        optimizer.step()
        losses.append(loss.item())
        progress.update(update + 1)
    policy.eval()
    with torch.no_grad():
        error = torch.cat([(policy.distribution(chunk).mode() - target).abs().mean(-1)
                           for chunk, target in zip(inputs.split(8192), labels.split(8192), strict=True)])
    tail = losses[-max(1, len(losses) // 10):] if losses else [float("nan")]
    return {"pretrain/nll": sum(tail) / len(tail), "pretrain/mode_error": error.mean().item(),
            "pretrain/samples": float(len(labels)), "pretrain/updates": float(updates)}
