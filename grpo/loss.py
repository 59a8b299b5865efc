"""The clipped GRPO objective, with a KL penalty to a reference policy and an entropy bonus.

One sample is one environment step of one branch; its log-probabilities are already summed over the action
dimensions. ``branch_id`` says which branch a step belongs to, for the per-branch aggregation and the
branch-level (GSPO-style) ratio.

Which aggregations survive minibatching (the trainer relies on this): splitting a batch into minibatches
and summing their losses weighted as below gives exactly the full-batch gradient.

* ``step_mean``: weight each minibatch by its share of the valid samples.
* ``dr_grpo``: weight 1, provided every call is given the same ``num_branches`` (the branch count of the
  whole update batch); the normaliser is then a constant.
* ``branch_mean``: only when minibatches hold whole branches, weighted by their share of branches.
* ``ratio_level="branch"``: the ratio is a mean over the branch's steps *in this call*, so minibatches
  must hold whole branches for it to be the sequence ratio.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

import torch
from torch import Tensor

Aggregation = Literal["step_mean", "branch_mean", "dr_grpo"]
RatioLevel = Literal["step", "branch"]
KLEstimator = Literal["k3", "analytic"]


@dataclass(frozen=True)
class LossConfig:
    """Options of :func:`grpo_loss`.

    Attributes:
        clip_low: float, default 0.2. The ratio is clipped below at ``1 - clip_low`` (PPO, Schulman et al.
            2017; DeepSeekMath GRPO uses 0.2). Must be in [0, 1).
        clip_high: float, default 0.2. The ratio is clipped above at ``1 + clip_high``. DAPO (Yu et al. 2025,
            "clip-higher") uses 0.28 so that low-probability actions can still gain probability, which
            delays entropy collapse. Must be >= 0. With ``ratio_level="branch"`` GSPO (Zheng et al. 2025)
            uses far smaller ranges (3e-4 / 4e-4) because the length-normalised ratio stays close to 1.
        beta: float, default 0.0. Coefficient of the KL penalty to the reference policy. DeepSeekMath GRPO
            used 0.04; DAPO and Dr. GRPO drop it (0.0), which is the default here. Must be >= 0.
        kl_estimator: ``"k3"`` (default) or ``"analytic"``. ``"k3"`` is Schulman's unbiased, always
            non-negative estimator ``exp(logp_ref - logp_new) - (logp_ref - logp_new) - 1`` of
            KL(pi_new || pi_ref) from samples, as in DeepSeekMath. ``"analytic"`` uses the exact per-sample
            KL(pi_new || pi_ref) the caller passes as ``kl_analytic`` (closed form for the Beta policy).
        entropy_coef: float, default 0.0. Weight of the entropy bonus (subtracted from the loss). Off by
            default as in GRPO/DAPO; small values (1e-3) help continuous-control policies keep exploring.
            Must be >= 0.
        aggregation: how per-sample terms become one number; default ``"step_mean"``.
            ``"step_mean"``: sum over valid samples / number of valid samples (DAPO's token-level mean:
            every step weighs the same, long branches are not down-weighted).
            ``"branch_mean"``: mean over the steps of each branch, then over branches (the original GRPO
            sample-level mean, which Dr. GRPO shows biases towards short responses/branches).
            ``"dr_grpo"``: sum over valid samples / (num_branches * dr_grpo_normalizer), a constant
            normaliser (Dr. GRPO, Liu et al. 2025) that removes the length bias.
            The same aggregation applies to the KL and entropy terms.
        ratio_level: ``"step"`` (default, PPO/GRPO per-token ratio) or ``"branch"``: GSPO's sequence-level
            ratio ``exp(mean over the branch's steps of (logp_new - logp_old))``, broadcast to its steps.
        dr_grpo_normalizer: float or None, default None. The constant of ``"dr_grpo"`` aggregation per
            branch, e.g. the branch horizon H in steps. Required (> 0) when ``aggregation == "dr_grpo"``;
            ignored otherwise.
    """

    clip_low: float = 0.2
    clip_high: float = 0.2
    beta: float = 0.0
    kl_estimator: KLEstimator = "k3"
    entropy_coef: float = 0.0
    aggregation: Aggregation = "step_mean"
    ratio_level: RatioLevel = "step"
    dr_grpo_normalizer: float | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.clip_low < 1.0:
            raise ValueError(
                f"clip_low must be in [0, 1) so that 1 - clip_low stays a positive ratio; got {self.clip_low}"
            )
        if not self.clip_high >= 0.0:
            raise ValueError(f"clip_high must be >= 0 (DAPO uses 0.28); got {self.clip_high}")
        if not self.beta >= 0.0:
            raise ValueError(f"beta must be >= 0 (0 disables the KL penalty); got {self.beta}")
        if not self.entropy_coef >= 0.0:
            raise ValueError(
                f"entropy_coef must be >= 0 (0 disables the entropy bonus); got {self.entropy_coef}"
            )
        if self.kl_estimator not in get_args(KLEstimator):
            raise ValueError(
                f"kl_estimator must be one of {get_args(KLEstimator)}; got {self.kl_estimator!r}"
            )
        if self.aggregation not in get_args(Aggregation):
            raise ValueError(f"aggregation must be one of {get_args(Aggregation)}; got {self.aggregation!r}")
        if self.ratio_level not in get_args(RatioLevel):
            raise ValueError(f"ratio_level must be one of {get_args(RatioLevel)}; got {self.ratio_level!r}")
        if self.dr_grpo_normalizer is not None and not self.dr_grpo_normalizer > 0:
            raise ValueError(
                "dr_grpo_normalizer must be > 0 (e.g. the branch horizon in steps); "
                f"got {self.dr_grpo_normalizer}"
            )
        if self.aggregation == "dr_grpo" and self.dr_grpo_normalizer is None:
            raise ValueError(
                "aggregation='dr_grpo' needs dr_grpo_normalizer, the constant per-branch normaliser; "
                "set it to the branch horizon in steps"
            )


def grpo_loss(
    logp_new: Tensor,
    logp_old: Tensor,
    advantages: Tensor,
    branch_id: Tensor,
    config: LossConfig,
    *,
    entropy: Tensor | None = None,
    logp_ref: Tensor | None = None,
    kl_analytic: Tensor | None = None,
    mask: Tensor | None = None,
    num_branches: int | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """The GRPO loss of one (mini)batch of steps.

    ``loss = -agg(min(rho * A, clip(rho, 1 - clip_low, 1 + clip_high) * A)) + beta * agg(kl)
    - entropy_coef * agg(entropy)``, with ``agg`` the configured aggregation.

    Args:
        logp_new: [N] log-probability of the taken action under the policy being trained (differentiable).
        logp_old: [N] log-probability under the policy that collected the branches (treated as constant).
        advantages: [N] the advantage of each step (its branch's group advantage; treated as constant).
        branch_id: [N] integer, the branch each step belongs to (arbitrary ids).
        config: the loss options.
        entropy: [N] optional policy entropy at each step (differentiable); required if entropy_coef > 0.
        logp_ref: [N] optional log-probability under the reference policy; needed for ``beta > 0`` with
            the k3 estimator, and used to log ``kl`` whenever given.
        kl_analytic: [N] optional exact KL(pi_new || pi_ref) per step; needed for ``beta > 0`` with the
            analytic estimator.
        mask: [N] optional bool, False for samples to ignore (padding, dropped groups). Their values may be
            anything, even non-finite: they are replaced before any arithmetic.
        num_branches: the number of branches of the whole update batch, for ``"dr_grpo"`` aggregation. Give
            the same value to every minibatch so the normaliser is a constant and minibatch losses add up
            with weight 1. Default: the number of branches with a valid step in this call.

    Returns:
        loss: 0-dim tensor to minimise.
        metrics: detached 0-dim tensors: ``loss``, ``policy_loss``, ``kl`` (mean over valid samples of the
            configured KL estimate, k3 whenever ``logp_ref`` is given, else 0), ``entropy`` (mean, 0 when not
            given), ``clip_ratio/low`` (fraction of valid samples with A < 0 and rho < 1 - clip_low),
            ``clip_ratio/high`` (A > 0 and rho > 1 + clip_high), ``clip_ratio/region`` (rho outside
            [1 - clip_low, 1 + clip_high]), ``approx_kl`` (k3 estimate of KL(pi_old || pi_new) from the
            per-step log ratio r = logp_new - logp_old: mean of exp(r) - 1 - r), ``ratio/mean``,
            ``ratio/max`` (of the ratio actually used, step or branch level).

    Raises:
        ValueError: on mismatched shapes, an empty mask, or a missing tensor the config needs.
    """
    num_samples = logp_new.shape[0] if logp_new.dim() == 1 else -1
    named = {"logp_new": logp_new, "logp_old": logp_old, "advantages": advantages, "branch_id": branch_id,
             "entropy": entropy, "logp_ref": logp_ref, "kl_analytic": kl_analytic, "mask": mask}
    for name, tensor in named.items():
        if tensor is not None and (tensor.dim() != 1 or tensor.shape[0] != num_samples):
            shapes = {k: tuple(v.shape) for k, v in named.items() if v is not None}
            raise ValueError(f"every per-sample tensor must have shape [N]; {name} does not: {shapes}")
    if branch_id.is_floating_point() or branch_id.dtype == torch.bool:
        raise ValueError(f"branch_id must be an integer tensor (torch.long); got {branch_id.dtype}")
    if mask is not None and mask.dtype != torch.bool:
        raise ValueError(f"mask must be a bool tensor; got {mask.dtype}")

    valid = torch.ones_like(logp_new, dtype=torch.bool) if mask is None else mask
    num_valid = valid.sum()
    if int(num_valid) == 0:
        raise ValueError("mask selects no samples; leave empty minibatches out before calling grpo_loss")

    # Masked samples may hold padding (even inf); zero them before exp() so neither the forward pass nor
    # the backward pass (inf * 0 = nan) sees them.
    def zero_invalid(values: Tensor) -> Tensor:
        return torch.where(valid, values, torch.zeros_like(values))

    advantages = zero_invalid(advantages.detach())
    log_ratio = zero_invalid(logp_new - logp_old.detach())

    branch_index, branch_steps = _branch_index(branch_id, valid)
    if num_branches is None:
        num_branches = int((branch_steps > 0).sum())
    elif num_branches < 1:
        raise ValueError(
            f"num_branches must be >= 1 (the branch count of the whole update batch); got {num_branches}"
        )

    if config.ratio_level == "step":
        ratio = torch.exp(log_ratio)
    elif config.ratio_level == "branch":
        # GSPO's sequence ratio is length-normalised, (pi_new(y)/pi_old(y))^(1/|y|) = exp(mean log ratio), so
        # its size does not grow with the branch length; every step of the branch shares it and the
        # gradient reaches all of them through the mean.
        branch_log_ratio = _branch_sum(log_ratio, branch_index, branch_steps.numel())
        branch_log_ratio = branch_log_ratio / branch_steps.clamp(min=1)
        ratio = torch.exp(branch_log_ratio[branch_index])
    else:
        raise ValueError(f"ratio_level must be one of 'step', 'branch'; got {config.ratio_level!r}")

    low, high = 1.0 - config.clip_low, 1.0 + config.clip_high
    surrogate = torch.minimum(ratio * advantages, ratio.clamp(low, high) * advantages)

    def aggregate(values: Tensor) -> Tensor:
        return _aggregate(zero_invalid(values), num_valid, branch_index, branch_steps, num_branches, config)

    policy_loss = -aggregate(surrogate)
    loss = policy_loss

    ref_log_ratio = None if logp_ref is None else zero_invalid(logp_ref.detach() - logp_new)
    kl = _kl_per_sample(config, ref_log_ratio, kl_analytic)
    if config.beta > 0:
        if kl is None:
            needed = "logp_ref" if config.kl_estimator == "k3" else "kl_analytic"
            raise ValueError(
                f"beta={config.beta} with kl_estimator={config.kl_estimator!r} needs {needed}; pass it, "
                "or set beta=0 to train without the KL penalty"
            )
        loss = loss + config.beta * aggregate(kl)
    if kl is None and ref_log_ratio is not None:
        # Log the k3 estimate whenever a reference is available, even if the configured estimator lacks
        # its input, so the dashboard shows the drift from the reference policy.
        kl = _k3(ref_log_ratio)

    if config.entropy_coef > 0:
        if entropy is None:
            raise ValueError(
                f"entropy_coef={config.entropy_coef} needs the per-step entropy; pass entropy=, or set "
                "entropy_coef=0"
            )
        loss = loss - config.entropy_coef * aggregate(entropy)

    with torch.no_grad():

        def mean(values: Tensor) -> Tensor:
            return zero_invalid(values).sum() / num_valid

        zero = torch.zeros((), dtype=logp_new.dtype, device=logp_new.device)
        outside = (ratio < low) | (ratio > high)
        metrics = {
            "loss": loss.detach(),
            "policy_loss": policy_loss.detach(),
            "kl": mean(kl.detach()) if kl is not None else zero,
            "entropy": mean(entropy.detach()) if entropy is not None else zero,
            "clip_ratio/low": mean(((advantages < 0) & (ratio < low)).to(logp_new.dtype)),
            "clip_ratio/high": mean(((advantages > 0) & (ratio > high)).to(logp_new.dtype)),
            "clip_ratio/region": mean(outside.to(logp_new.dtype)),
            "approx_kl": mean(torch.expm1(log_ratio) - log_ratio),
            "ratio/mean": mean(ratio),
            "ratio/max": torch.where(valid, ratio, torch.full_like(ratio, -torch.inf)).max(),
        }
    return loss, {name: value.detach() for name, value in metrics.items()}


def _k3(ref_log_ratio: Tensor) -> Tensor:
    """[N] Schulman's k3 estimate of KL(pi_new || pi_ref) at samples of pi_new: exp(d) - d - 1.

    ``ref_log_ratio`` [N] is d = logp_ref - logp_new; the estimate is unbiased and never negative.
    """
    return torch.expm1(ref_log_ratio) - ref_log_ratio


def _kl_per_sample(
    config: LossConfig, ref_log_ratio: Tensor | None, kl_analytic: Tensor | None
) -> Tensor | None:
    """[N] the configured KL(pi_new || pi_ref) estimate, or None when its input was not given."""
    if config.kl_estimator == "k3":
        return None if ref_log_ratio is None else _k3(ref_log_ratio)
    elif config.kl_estimator == "analytic":
        return kl_analytic
    else:
        raise ValueError(f"kl_estimator must be one of 'k3', 'analytic'; got {config.kl_estimator!r}")


def _branch_index(branch_id: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]:
    """Dense branch index [N] in [0, B) and the number of valid steps of each branch [B]."""
    _, branch_index = torch.unique(branch_id, return_inverse=True)
    num_branches = int(branch_index.max()) + 1 if branch_index.numel() > 0 else 0
    branch_steps = torch.zeros(num_branches, dtype=torch.long, device=branch_id.device).index_add_(
        0, branch_index, valid.long()
    )
    return branch_index, branch_steps


def _branch_sum(values: Tensor, branch_index: Tensor, num_branches: int) -> Tensor:
    """[B] sum of ``values`` [N] over each branch's steps (differentiable)."""
    totals = torch.zeros(num_branches, dtype=values.dtype, device=values.device)
    return totals.index_add(0, branch_index, values)


def _aggregate(
    values: Tensor,
    num_valid: Tensor,
    branch_index: Tensor,
    branch_steps: Tensor,
    num_branches: int,
    config: LossConfig,
) -> Tensor:
    """0-dim aggregate of ``values`` [N], already zero at invalid samples."""
    if config.aggregation == "step_mean":
        return values.sum() / num_valid
    elif config.aggregation == "branch_mean":
        has_steps = branch_steps > 0
        branch_means = _branch_sum(values, branch_index, branch_steps.numel()) / branch_steps.clamp(min=1)
        return branch_means[has_steps].mean()
    elif config.aggregation == "dr_grpo":
        assert config.dr_grpo_normalizer is not None  # LossConfig.__post_init__ guarantees it
        return values.sum() / (num_branches * config.dr_grpo_normalizer)
    else:
        raise ValueError(
            f"aggregation must be one of 'step_mean', 'branch_mean', 'dr_grpo'; got {config.aggregation!r}"
        )
