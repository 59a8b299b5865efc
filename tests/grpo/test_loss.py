"""The clipped GRPO loss on tiny hand-computed batches."""

from __future__ import annotations

import math

import pytest
import torch

from grpo.loss import LossConfig, grpo_loss

METRIC_KEYS = {
    "loss", "policy_loss", "kl", "entropy", "clip_ratio/low", "clip_ratio/high", "clip_ratio/region",
    "approx_kl", "ratio/mean", "ratio/max",
}


def _logp_new(ratios: list[float]) -> torch.Tensor:
    """Leaf log-probabilities whose ratio to logp_old = 0 is ``ratios``."""
    return torch.tensor([math.log(r) for r in ratios], dtype=torch.float64, requires_grad=True)


def _zeros(n: int) -> torch.Tensor:
    return torch.zeros(n, dtype=torch.float64)


def test_both_signs_at_both_clip_edges():
    # clip 0.2: the clipped ratio lies in [0.8, 1.2]. One branch per step, step_mean over 4 steps.
    logp_new = _logp_new([1.5, 1.5, 0.5, 0.5])
    advantages = torch.tensor([1.0, -1.0, 1.0, -1.0], dtype=torch.float64)
    loss, metrics = grpo_loss(logp_new, _zeros(4), advantages, torch.arange(4), LossConfig())
    # row 0: rho 1.5, A +1: min(1.5, 1.2) = 1.2, clipped.
    # row 1: rho 1.5, A -1: min(-1.5, -1.2) = -1.5, unclipped (a worse action is never clipped upwards).
    # row 2: rho 0.5, A +1: min(0.5, 0.8) = 0.5, unclipped.
    # row 3: rho 0.5, A -1: min(-0.5, -0.8) = -0.8, clipped.
    # loss = -(1.2 - 1.5 + 0.5 - 0.8) / 4 = 0.15
    assert loss.item() == pytest.approx(0.15)
    loss.backward()
    # d loss / d logp = -A * rho / 4 where unclipped, 0 where the clip is active.
    torch.testing.assert_close(logp_new.grad, torch.tensor([0.0, 0.375, -0.125, 0.0], dtype=torch.float64))
    assert metrics["clip_ratio/low"].item() == pytest.approx(0.25)  # row 3: A < 0 and rho < 0.8
    assert metrics["clip_ratio/high"].item() == pytest.approx(0.25)  # row 0: A > 0 and rho > 1.2
    assert metrics["clip_ratio/region"].item() == pytest.approx(1.0)  # every rho is outside [0.8, 1.2]
    assert metrics["ratio/mean"].item() == pytest.approx(1.0)
    assert metrics["ratio/max"].item() == pytest.approx(1.5)
    # approx_kl = mean(rho - 1 - log rho): (0.5 - log 1.5) twice and (-0.5 + log 2) twice.
    expected_approx_kl = (2 * (0.5 - math.log(1.5)) + 2 * (-0.5 + math.log(2.0))) / 4
    assert metrics["approx_kl"].item() == pytest.approx(expected_approx_kl)


def test_clip_higher_keeps_a_ratio_that_symmetric_clipping_cuts():
    # rho 1.25, A +1: clipped at 1.2 with clip_high 0.2, free with DAPO's clip_high 0.28.
    advantages = torch.tensor([1.0], dtype=torch.float64)
    for clip_high, expected_loss, expected_grad in [(0.2, -1.2, 0.0), (0.28, -1.25, -1.25)]:
        logp_new = _logp_new([1.25])
        loss, _ = grpo_loss(logp_new, _zeros(1), advantages, torch.zeros(1, dtype=torch.long),
                            LossConfig(clip_high=clip_high))
        loss.backward()
        assert loss.item() == pytest.approx(expected_loss)
        assert logp_new.grad.item() == pytest.approx(expected_grad)


def test_metrics_are_detached_scalars_with_exact_keys():
    logp_new = _logp_new([1.1, 0.9])
    advantages = torch.ones(2, dtype=torch.float64)
    _, metrics = grpo_loss(logp_new, _zeros(2), advantages, torch.arange(2), LossConfig())
    assert set(metrics) == METRIC_KEYS
    for value in metrics.values():
        assert value.dim() == 0 and not value.requires_grad
    assert metrics["kl"].item() == 0.0  # no reference given
    assert metrics["entropy"].item() == 0.0  # no entropy given


def test_k3_is_zero_with_zero_gradient_when_new_equals_reference():
    logp_new = torch.tensor([-1.0, -2.0, -0.5], dtype=torch.float64, requires_grad=True)
    config = LossConfig(beta=0.1)
    # A = 0: the policy term is 0, so the loss is beta * k3 alone, which is 0 at logp_ref == logp_new.
    loss, metrics = grpo_loss(logp_new, logp_new.detach(), _zeros(3), torch.arange(3), config,
                              logp_ref=logp_new.detach().clone())
    loss.backward()
    assert loss.item() == 0.0
    assert metrics["kl"].item() == 0.0
    torch.testing.assert_close(logp_new.grad, _zeros(3))  # k3's gradient 1 - exp(d) is 0 at d = 0


def test_k3_penalty_value():
    # logp_ref - logp_new = log 2: k3 = 2 - log 2 - 1 = 0.30685; A = 0, so loss = beta * k3.
    logp_new = torch.tensor([0.0], dtype=torch.float64, requires_grad=True)
    logp_ref = torch.tensor([math.log(2.0)], dtype=torch.float64)
    loss, metrics = grpo_loss(logp_new, _zeros(1), _zeros(1), torch.zeros(1, dtype=torch.long),
                              LossConfig(beta=0.5), logp_ref=logp_ref)
    assert loss.item() == pytest.approx(0.5 * (1.0 - math.log(2.0)))
    assert metrics["kl"].item() == pytest.approx(1.0 - math.log(2.0))
    loss.backward()
    assert logp_new.grad.item() == pytest.approx(0.5 * (1.0 - 2.0))  # beta * (1 - exp(d))


def test_k3_is_logged_without_penalty_when_a_reference_is_given():
    logp_new = torch.tensor([0.0], dtype=torch.float64)
    loss, metrics = grpo_loss(logp_new, _zeros(1), _zeros(1), torch.zeros(1, dtype=torch.long), LossConfig(),
                              logp_ref=torch.tensor([math.log(2.0)], dtype=torch.float64))
    assert loss.item() == 0.0  # beta = 0: not in the loss
    assert metrics["kl"].item() == pytest.approx(1.0 - math.log(2.0))


def test_analytic_kl_is_used_as_given():
    kl_analytic = torch.tensor([0.2, 0.4], dtype=torch.float64, requires_grad=True)
    config = LossConfig(beta=0.5, kl_estimator="analytic")
    loss, metrics = grpo_loss(_zeros(2), _zeros(2), _zeros(2), torch.arange(2), config,
                              kl_analytic=kl_analytic)
    assert loss.item() == pytest.approx(0.5 * 0.3)  # beta * step mean of 0.2, 0.4
    assert metrics["kl"].item() == pytest.approx(0.3)
    loss.backward()
    torch.testing.assert_close(kl_analytic.grad, torch.tensor([0.25, 0.25], dtype=torch.float64))


@pytest.mark.parametrize(
    ("config", "kwargs", "message"),
    [
        (LossConfig(beta=0.1), {}, "needs logp_ref"),
        (LossConfig(beta=0.1, kl_estimator="analytic"), {"logp_ref": _zeros(2)}, "needs kl_analytic"),
        (LossConfig(entropy_coef=0.01), {}, "needs the per-step entropy"),
        (LossConfig(), {"mask": torch.zeros(2, dtype=torch.bool)}, "mask selects no samples"),
        (LossConfig(), {"entropy": _zeros(3)}, r"shape \[N\]"),
    ],
)
def test_missing_or_bad_inputs_raise(config, kwargs, message):
    with pytest.raises(ValueError, match=message):
        grpo_loss(_zeros(2), _zeros(2), _zeros(2), torch.arange(2), config, **kwargs)


# Two branches of unequal length, ratio 1 everywhere so the surrogate equals A:
#   branch 10: 3 steps, A = 1, 2, 3, entropy 1, 1, 1
#   branch 20: 1 step,  A = -1,      entropy 3
AGG_ADVANTAGES = torch.tensor([1.0, 2.0, 3.0, -1.0], dtype=torch.float64)
AGG_ENTROPY = torch.tensor([1.0, 1.0, 1.0, 3.0], dtype=torch.float64)
AGG_BRANCH_ID = torch.tensor([10, 10, 10, 20])


@pytest.mark.parametrize(
    ("aggregation", "policy_loss", "entropy_term", "grad"),
    [
        # step_mean: -(1 + 2 + 3 - 1) / 4; entropy (1 + 1 + 1 + 3) / 4; grad -A / 4.
        ("step_mean", -1.25, 1.5, [-0.25, -0.5, -0.75, 0.25]),
        # branch_mean: branch means 2 and -1 -> -(2 - 1) / 2; entropy (1 + 3) / 2; grad -A / (len * 2).
        ("branch_mean", -0.5, 2.0, [-1 / 6, -2 / 6, -3 / 6, 0.5]),
        # dr_grpo with normaliser 4: -(5) / (2 branches * 4); entropy 6 / 8; grad -A / 8.
        ("dr_grpo", -0.625, 0.75, [-0.125, -0.25, -0.375, 0.125]),
    ],
)
def test_each_aggregation_on_unequal_branches(aggregation, policy_loss, entropy_term, grad):
    config = LossConfig(aggregation=aggregation, dr_grpo_normalizer=4.0, entropy_coef=0.1)
    logp_new = torch.zeros(4, dtype=torch.float64, requires_grad=True)
    entropy = AGG_ENTROPY.clone().requires_grad_(True)
    loss, metrics = grpo_loss(logp_new, _zeros(4), AGG_ADVANTAGES, AGG_BRANCH_ID, config, entropy=entropy)
    assert metrics["policy_loss"].item() == pytest.approx(policy_loss)
    assert loss.item() == pytest.approx(policy_loss - 0.1 * entropy_term)
    assert metrics["entropy"].item() == pytest.approx(1.5)  # the logged entropy is always the step mean
    loss.backward()
    torch.testing.assert_close(logp_new.grad, torch.tensor(grad, dtype=torch.float64))


def test_branch_level_ratio():
    # Branch 0: step log ratios 0.1, 0.2, 0.3 -> branch ratio exp(0.2) = 1.2214 on all three steps, A = +1:
    #   inside [0.7, 1.3] with clip 0.3, surrogate 1.2214 each.
    # Branch 1: one step, log ratio -0.5 -> ratio 0.6065, A = -1: min(-0.6065, -0.7) = -0.7, clipped.
    # step_mean: -(3 * exp(0.2) - 0.7) / 4.
    logp_new = torch.tensor([0.1, 0.2, 0.3, -0.5], dtype=torch.float64, requires_grad=True)
    advantages = torch.tensor([1.0, 1.0, 1.0, -1.0], dtype=torch.float64)
    config = LossConfig(clip_low=0.3, clip_high=0.3, ratio_level="branch")
    loss, metrics = grpo_loss(logp_new, _zeros(4), advantages, torch.tensor([0, 0, 0, 1]), config)
    assert loss.item() == pytest.approx(-(3 * math.exp(0.2) - 0.7) / 4)
    loss.backward()
    # d/d logp_j of -(3 exp(mean)) / 4 = -exp(0.2) / 4 for each step of branch 0 (through the mean);
    # branch 1 is clipped: no gradient.
    g = -math.exp(0.2) / 4
    torch.testing.assert_close(logp_new.grad, torch.tensor([g, g, g, 0.0], dtype=torch.float64))
    assert metrics["ratio/mean"].item() == pytest.approx((3 * math.exp(0.2) + math.exp(-0.5)) / 4)
    assert metrics["ratio/max"].item() == pytest.approx(math.exp(0.2))
    assert metrics["clip_ratio/low"].item() == pytest.approx(0.25)  # the branch-1 step
    assert metrics["clip_ratio/high"].item() == 0.0


def test_masked_samples_are_ignored_even_when_non_finite():
    config = LossConfig(beta=0.1, entropy_coef=0.01)
    logp_new = torch.tensor([0.1, float("inf"), -0.2, float("nan")], dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([True, False, True, False])
    advantages = torch.tensor([1.0, float("nan"), -1.0, 2.0], dtype=torch.float64)
    entropy = torch.tensor([0.5, float("inf"), 0.7, 0.0], dtype=torch.float64)
    logp_ref = torch.tensor([0.0, 0.0, 0.0, float("-inf")], dtype=torch.float64)
    branch_id = torch.tensor([0, 0, 1, 1])
    loss, metrics = grpo_loss(logp_new, _zeros(4), advantages, branch_id, config,
                              entropy=entropy, logp_ref=logp_ref, mask=mask)
    loss.backward()
    assert torch.isfinite(logp_new.grad).all()
    assert logp_new.grad[1].item() == 0.0 and logp_new.grad[3].item() == 0.0

    # The same loss as the batch of the two valid samples alone.
    keep = mask.nonzero().squeeze(-1)
    subset_logp = logp_new.detach()[keep].clone().requires_grad_(True)
    subset_loss, subset_metrics = grpo_loss(subset_logp, _zeros(2), advantages[keep], branch_id[keep], config,
                                            entropy=entropy[keep], logp_ref=logp_ref[keep])
    subset_loss.backward()
    assert loss.item() == pytest.approx(subset_loss.item())
    torch.testing.assert_close(logp_new.grad[keep], subset_logp.grad)
    for key in METRIC_KEYS:
        assert metrics[key].item() == pytest.approx(subset_metrics[key].item()), key


# Minibatch additivity: the trainer splits a batch into minibatches and steps on a weighted sum of their
# losses. These tests pin exactly which aggregations promise the full-batch gradient, and with which weights.
def _random_batch(seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    branch_id = torch.tensor([3, 3, 3, 3, 3, 8, 8, 8, 8, 1, 1, 1])  # branch lengths 5, 4, 3
    n = branch_id.numel()
    logp_old = -torch.rand(n, generator=generator, dtype=torch.float64)
    logp_new = logp_old + 0.3 * torch.randn(n, generator=generator, dtype=torch.float64)  # some clipped
    advantages = torch.randn(n, generator=generator, dtype=torch.float64)
    entropy = torch.rand(n, generator=generator, dtype=torch.float64)
    logp_ref = logp_old + 0.1 * torch.randn(n, generator=generator, dtype=torch.float64)
    return logp_new, logp_old, advantages, branch_id, entropy, logp_ref


def _weighted_grad(config, parts, weights, **kwargs):
    """Gradient w.r.t. logp_new and entropy of sum_k weight_k * loss(part_k)."""
    logp_new, logp_old, advantages, branch_id, entropy, logp_ref = _random_batch()
    logp_new.requires_grad_(True)
    entropy.requires_grad_(True)
    total = 0.0
    for part, weight in zip(parts, weights, strict=True):
        loss, _ = grpo_loss(logp_new[part], logp_old[part], advantages[part], branch_id[part], config,
                            entropy=entropy[part], logp_ref=logp_ref[part], **kwargs)
        total = total + weight * loss
    total.backward()
    return torch.cat([logp_new.grad, entropy.grad])


FULL = torch.arange(12)
# An arbitrary split that cuts branches in two: 7 and 5 samples.
CROSSING = [torch.tensor([0, 2, 5, 6, 9, 10, 11]), torch.tensor([1, 3, 4, 7, 8])]
# A split along whole branches: branches 3 and 1 (8 samples), branch 8 (4 samples).
WHOLE_BRANCHES = [torch.tensor([0, 1, 2, 3, 4, 9, 10, 11]), torch.tensor([5, 6, 7, 8])]


def test_step_mean_is_additive_with_sample_share_weights():
    config = LossConfig(beta=0.05, entropy_coef=0.01)
    full = _weighted_grad(config, [FULL], [1.0])
    split = _weighted_grad(config, CROSSING, [7 / 12, 5 / 12])
    torch.testing.assert_close(split, full)


def test_dr_grpo_is_additive_with_weight_one_given_the_batch_branch_count():
    config = LossConfig(aggregation="dr_grpo", dr_grpo_normalizer=5.0, beta=0.05, entropy_coef=0.01)
    full = _weighted_grad(config, [FULL], [1.0])  # num_branches defaults to the 3 branches present
    split = _weighted_grad(config, CROSSING, [1.0, 1.0], num_branches=3)
    torch.testing.assert_close(split, full)
    # Without the batch's branch count each minibatch counts its own branches (3 and 2): not additive.
    per_call = _weighted_grad(config, CROSSING, [1.0, 1.0])
    assert not torch.allclose(per_call, full)


def test_branch_mean_is_additive_only_over_whole_branches_with_branch_share_weights():
    config = LossConfig(aggregation="branch_mean", beta=0.05, entropy_coef=0.01)
    full = _weighted_grad(config, [FULL], [1.0])
    whole = _weighted_grad(config, WHOLE_BRANCHES, [2 / 3, 1 / 3])
    torch.testing.assert_close(whole, full)
    crossing = _weighted_grad(config, CROSSING, [7 / 12, 5 / 12])
    assert not torch.allclose(crossing, full)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"clip_low": 1.0}, "clip_low must be in"),
        ({"clip_low": -0.1}, "clip_low must be in"),
        ({"clip_high": -0.1}, "clip_high must be >= 0"),
        ({"beta": -0.01}, "beta must be >= 0"),
        ({"entropy_coef": -0.01}, "entropy_coef must be >= 0"),
        ({"aggregation": "dr_grpo"}, "needs dr_grpo_normalizer"),
        ({"aggregation": "dr_grpo", "dr_grpo_normalizer": 0.0}, "dr_grpo_normalizer must be > 0"),
        ({"aggregation": "token_sum"}, "aggregation must be one of"),
        ({"ratio_level": "sequence"}, "ratio_level must be one of"),
        ({"kl_estimator": "k2"}, "kl_estimator must be one of"),
    ],
)
def test_config_rejects_impossible_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        LossConfig(**kwargs)
