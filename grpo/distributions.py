"""The bounded action distribution: an independent Beta per action dimension.

Why Beta (Chou et al. 2017, "Improving Stochastic Policy Gradients in Continuous Control with Deep
Reinforcement Learning using the Beta Distribution"): its support is the bounded interval itself, so
log-probabilities are exact, entropy and KL have closed forms, and there is neither a tanh-squash Jacobian
to correct for nor probability mass piled up at the bounds by clipping a Gaussian.

The policy acts in a 2-D raw space ``u = [acceleration, steer]`` with each ``u_i`` in (0, 1), mapped to the
environment's CARLA control ``[throttle, brake, steer]`` by :func:`raw_to_control`. Log-probabilities,
entropies and KLs are of the raw action; the mapping is deterministic and never needs a Jacobian because
the ratio and the KL only compare densities of the same raw sample.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor
from torch.distributions import Beta, kl_divergence

from envs.api import Backend

ACTION_DIM = 2
"""Raw action dimensions: acceleration, steer."""

RAW_EPS = 1e-6
"""Raw actions are kept in [RAW_EPS, 1 - RAW_EPS]: log_prob is finite there."""


def raw_to_control(raw: Tensor) -> Tensor:
    """Map raw actions [N, 2] in (0, 1) to CARLA controls [N, 3] = [throttle, brake, steer].

    ``a = 2 u_0 - 1`` in [-1, 1] is the longitudinal command: throttle = max(a, 0), brake = max(-a, 0), so
    the policy never throttles and brakes at once. steer = 2 u_1 - 1 (positive turns right, as in CARLA).
    """
    if raw.dim() != 2 or raw.shape[-1] != ACTION_DIM:
        raise ValueError(f"raw actions must have shape [N, {ACTION_DIM}]; got {tuple(raw.shape)}")
    acceleration = 2.0 * raw[:, 0] - 1.0
    steer = 2.0 * raw[:, 1] - 1.0
    return torch.stack([acceleration.clamp(min=0.0), (-acceleration).clamp(min=0.0), steer], dim=-1)


class BetaActions:
    """A batch of independent 2-D Beta action distributions.

    Args:
        alpha: [N, 2] concentration alpha per dimension. The policy head makes it > 1.
        beta: [N, 2] concentration beta per dimension, > 1 likewise (alpha, beta > 1 make every
            distribution unimodal with density 0 at the bounds).
    """

    raw_to_control = staticmethod(raw_to_control)

    def __init__(self, alpha: Tensor, beta: Tensor) -> None:
        if alpha.shape != beta.shape or alpha.dim() != 2:
            raise ValueError(
                f"alpha and beta must both have shape [N, action_dim]; got {tuple(alpha.shape)} and "
                f"{tuple(beta.shape)}"
            )
        self.alpha = alpha
        self.beta = beta
        # Argument validation is off: the policy head guarantees alpha, beta > 1, and torch's checks would
        # cost a device synchronisation on every forward pass.
        self._dist = Beta(alpha, beta, validate_args=False)

    def sample(self, generator: torch.Generator | None = None) -> Tensor:
        """[N, 2] raw actions, clamped to [RAW_EPS, 1 - RAW_EPS]; not differentiable.

        The clamp keeps log_prob finite when float32 rounds a sample to 0 or 1; for alpha, beta > 1 the
        density vanishes at the bounds, so the clamped mass (below ~1e-6) is negligible.

        Reproducibility: ``torch.distributions.Beta.sample`` draws ``torch._sample_dirichlet`` of the stacked
        concentrations ``[alpha, beta]`` from the global generator and keeps the first component. We call
        the same op with its ``generator`` argument, so samples are those of torch's Beta (the same
        algorithm, exactly the same numbers under the same global seed when ``generator`` is None) and a
        given ``torch.Generator`` (on the tensors' device) makes them reproducible without touching the
        global RNG. The op is private but has taken a generator for many releases; a test pins the
        equivalence with ``Beta.sample`` so an upgrade that breaks it is caught.
        """
        with torch.no_grad():
            concentration = torch.stack([self.alpha, self.beta], dim=-1)
            raw = torch._sample_dirichlet(concentration, generator=generator)[..., 0]
        return raw.clamp(RAW_EPS, 1.0 - RAW_EPS)

    def log_prob(self, raw: Tensor, dims: Tensor | None = None) -> Tensor:
        """[N] log-density of raw actions [N, k] in (0, 1), summed over the action dimensions, or over those
        ``dims`` marks (bool, [k] or [N, k]): the dimensions sampled at this step when others are held.

        Written out rather than through ``Beta.log_prob``, which stacks ``[x, 1 - x]`` into a Dirichlet and
        checks the simplex on every call; ``log1p(-x)`` also keeps precision near x = 1.
        """
        log_normaliser = torch.lgamma(self.alpha) + torch.lgamma(self.beta) - torch.lgamma(self.alpha + self.beta)
        log_density = (self.alpha - 1.0) * torch.log(raw) + (self.beta - 1.0) * torch.log1p(-raw) - log_normaliser
        return _sum_dims(log_density, dims)

    def entropy(self, dims: Tensor | None = None) -> Tensor:
        """[N] differential entropy, summed over the action dimensions (or those ``dims`` marks)."""
        return _sum_dims(self._dist.entropy(), dims)

    def mode(self) -> Tensor:
        """[N, 2] the most likely raw action, (alpha - 1) / (alpha + beta - 2): the deterministic action.

        When both concentrations are 1 to float precision the density is flat and the formula is 0/0; the
        centre 0.5 is returned then. The result is clamped like :meth:`sample` so its log_prob is finite.
        """
        excess_alpha = self.alpha - 1.0
        excess_total = excess_alpha + (self.beta - 1.0)
        flat = excess_total <= 0
        mode = excess_alpha / torch.where(flat, torch.ones_like(excess_total), excess_total)
        mode = torch.where(flat, torch.full_like(mode, 0.5), mode)
        return mode.clamp(RAW_EPS, 1.0 - RAW_EPS)

    def kl(self, other: BetaActions, dims: Tensor | None = None) -> Tensor:
        """[N] KL(self || other) in closed form, summed over the action dimensions (or those ``dims`` marks)."""
        return _sum_dims(kl_divergence(self._dist, other._dist), dims)


def _sum_dims(values: Tensor, dims: Tensor | None) -> Tensor:
    """[N, k] per-dimension values summed over the dimensions ``dims`` marks ([k] or [N, k] bool; all if None)."""
    return values.sum(dim=-1) if dims is None else torch.where(dims, values, 0.0).sum(dim=-1)


@dataclass(frozen=True)
class ActionMapping:
    """How raw Beta samples in (0, 1)^k become a backend's actions.

    ``driving`` (every driving backend): k = 2 (acceleration, steer) mapped by :func:`raw_to_control` to
    CARLA's [throttle, brake, steer]. ``box`` (any gymnasium Box): k = len(low), each dimension mapped
    affinely onto [low, high].
    """

    kind: Literal["driving", "box"] = "driving"
    low: tuple[float, ...] = ()
    high: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if self.kind == "box" and (not self.low or len(self.low) != len(self.high)
                                   or any(h <= lo for lo, h in zip(self.low, self.high, strict=True))):
            raise ValueError(f"a box action mapping needs finite bounds with high > low, got {self.low}, {self.high}")

    @property
    def raw_dim(self) -> int:
        return ACTION_DIM if self.kind == "driving" else len(self.low)

    def to_env(self, raw: Tensor) -> Tensor:
        if self.kind == "driving":
            return raw_to_control(raw)
        low = torch.tensor(self.low, dtype=raw.dtype, device=raw.device)
        high = torch.tensor(self.high, dtype=raw.dtype, device=raw.device)
        return low + raw * (high - low)


DRIVING_ACTIONS = ActionMapping()


def action_mapping_for(backend: Backend) -> ActionMapping:
    """The mapping a backend needs: driving for a driving backend, else ``box`` onto its spec's action bounds."""
    spec = backend.spec
    if spec.driving:
        return DRIVING_ACTIONS
    return ActionMapping("box", spec.action_low, spec.action_high)
