"""Group advantages on tiny hand-computed batches."""

from __future__ import annotations

import math

import pytest
import torch

from grpo.advantages import group_advantages

# Two groups of two branches, interleaved and with non-contiguous ids:
#   group 5: returns 1, 3 -> mean 2, population std 1, centred -1, +1
#   group 2: returns 4, 0 -> mean 2, population std 2, centred +2, -2
# The batch of returns [1, 4, 3, 0] has mean 2 and population std sqrt((1 + 4 + 1 + 4) / 4) = sqrt(2.5).
RETURNS = torch.tensor([1.0, 4.0, 3.0, 0.0])
GROUP_ID = torch.tensor([5, 2, 5, 2])
BATCH_STD = math.sqrt(2.5)

METRIC_KEYS = {
    "reward/mean", "reward/std", "reward/group_std_mean", "frac_reward_zero_std", "groups/num",
    "groups/zero_std", "groups/dropped", "advantage/mean", "advantage/std", "advantage/min", "advantage/max",
}


@pytest.mark.parametrize(
    ("scaling", "expected"),
    [
        # group: each branch's centred return over its own group's std: -1/1, 2/2, 1/1, -2/2.
        ("group", [-1.0, 1.0, 1.0, -1.0]),
        # batch: centred returns over the std of all returns, sqrt(2.5).
        ("batch", [-1.0 / BATCH_STD, 2.0 / BATCH_STD, 1.0 / BATCH_STD, -2.0 / BATCH_STD]),
        # none (Dr. GRPO): centred returns only.
        ("none", [-1.0, 2.0, 1.0, -2.0]),
    ],
)
def test_each_scaling_on_two_groups(scaling, expected):
    advantages, keep, _ = group_advantages(RETURNS, GROUP_ID, group_size=2, scaling=scaling, eps=0.0)
    assert advantages.dtype == torch.float32
    torch.testing.assert_close(advantages, torch.tensor(expected))
    assert keep.dtype == torch.bool and bool(keep.all())


def test_eps_is_added_to_the_floored_std():
    advantages, _, _ = group_advantages(RETURNS, GROUP_ID, group_size=2, eps=0.5)
    # group 5: -1 / (1 + 0.5); group 2: 2 / (2 + 0.5).
    torch.testing.assert_close(advantages, torch.tensor([-1 / 1.5, 2 / 2.5, 1 / 1.5, -2 / 2.5]))


def test_metrics_of_two_groups():
    _, _, metrics = group_advantages(RETURNS, GROUP_ID, group_size=2, eps=0.0)
    assert set(metrics) == METRIC_KEYS
    assert all(isinstance(value, float) for value in metrics.values())
    assert metrics["reward/mean"] == pytest.approx(2.0)
    assert metrics["reward/std"] == pytest.approx(BATCH_STD)
    assert metrics["reward/group_std_mean"] == pytest.approx(1.5)  # (1 + 2) / 2
    assert metrics["frac_reward_zero_std"] == 0.0
    assert metrics["groups/num"] == 2.0
    assert metrics["groups/zero_std"] == 0.0
    assert metrics["groups/dropped"] == 0.0
    # Advantages -1, 1, 1, -1: mean 0, population std 1.
    assert metrics["advantage/mean"] == pytest.approx(0.0)
    assert metrics["advantage/std"] == pytest.approx(1.0)
    assert metrics["advantage/min"] == pytest.approx(-1.0)
    assert metrics["advantage/max"] == pytest.approx(1.0)


def test_large_returns_with_tiny_differences_use_float64_statistics():
    # One group of two: 1e8 and 1e8 + 2e-3 -> centred -1e-3, +1e-3, std 1e-3 -> advantages -1, +1.
    # float32 cannot even represent the difference; float64 keeps it to ~1e-8.
    returns = torch.tensor([1e8, 1e8 + 2e-3], dtype=torch.float64)
    advantages, _, metrics = group_advantages(returns, torch.tensor([0, 0]), group_size=2, eps=0.0)
    torch.testing.assert_close(advantages, torch.tensor([-1.0, 1.0]), atol=1e-4, rtol=0)
    assert metrics["reward/group_std_mean"] == pytest.approx(1e-3, rel=1e-4)


def test_float32_returns_get_float64_statistics():
    # Each return is exact in float32 (spacing 8 near 1e8), but their float32 sum 4e8 + 48 is not
    # (spacing 32), so float32 statistics would be wrong. In float64: mean 1e8 + 12,
    # centred -12, +4, -4, +12, population std sqrt((144 + 16 + 16 + 144) / 4) = sqrt(80).
    returns = torch.tensor([1e8, 1e8 + 16, 1e8 + 8, 1e8 + 24], dtype=torch.float32)
    advantages, _, _ = group_advantages(returns, torch.tensor([1, 1, 1, 1]), group_size=4, eps=0.0)
    expected = torch.tensor([-12.0, 4.0, -4.0, 12.0]) / math.sqrt(80.0)
    torch.testing.assert_close(advantages, expected)


def test_zero_spread_group_is_kept_with_zero_advantage():
    returns = torch.tensor([3.0, 3.0, 1.0, 2.0])  # group 0: no spread; group 1: 1, 2 -> -1, +1
    advantages, keep, metrics = group_advantages(returns, torch.tensor([0, 0, 1, 1]), group_size=2, eps=0.0)
    torch.testing.assert_close(advantages, torch.tensor([0.0, 0.0, -1.0, 1.0]))
    assert keep.tolist() == [True, True, True, True]
    assert metrics["groups/zero_std"] == 1.0
    assert metrics["frac_reward_zero_std"] == 0.5
    assert metrics["groups/dropped"] == 0.0
    assert metrics["advantage/std"] == pytest.approx(math.sqrt(0.5))  # over 0, 0, -1, 1


def test_zero_spread_group_is_dropped_and_counted():
    returns = torch.tensor([3.0, 3.0, 1.0, 2.0])
    advantages, keep, metrics = group_advantages(
        returns, torch.tensor([0, 0, 1, 1]), group_size=2, eps=0.0, zero_std_groups="drop"
    )
    assert keep.tolist() == [False, False, True, True]  # group 0 marked out
    torch.testing.assert_close(advantages, torch.tensor([0.0, 0.0, -1.0, 1.0]))
    assert metrics["groups/zero_std"] == 1.0
    assert metrics["groups/dropped"] == 1.0
    # Statistics over the kept branches -1, +1 only.
    assert metrics["advantage/mean"] == pytest.approx(0.0)
    assert metrics["advantage/std"] == pytest.approx(1.0)


def test_spread_below_tolerance_is_zero_not_amplified_noise():
    # std 5e-10 <= zero_std_tol: without the rule, 5e-10 / (std_floor + eps) would be an advantage of 2.5e-4.
    returns = torch.tensor([3.0, 3.0 + 1e-9], dtype=torch.float64)
    advantages, _, metrics = group_advantages(returns, torch.tensor([0, 0]), group_size=2)
    assert advantages.tolist() == [0.0, 0.0]
    assert metrics["groups/zero_std"] == 1.0


def test_all_groups_dropped_gives_zero_advantage_stats():
    returns = torch.tensor([1.0, 1.0, 2.0, 2.0])
    group_id = torch.tensor([0, 0, 1, 1])
    _, keep, metrics = group_advantages(returns, group_id, group_size=2, zero_std_groups="drop")
    assert not bool(keep.any())
    assert metrics["groups/dropped"] == 2.0
    assert metrics["frac_reward_zero_std"] == 1.0
    for key in ("advantage/mean", "advantage/std", "advantage/min", "advantage/max"):
        assert metrics[key] == 0.0


def test_wrong_group_size_raises_naming_the_groups():
    # group 0 has 3 members and group 1 has 1, both should have 2.
    with pytest.raises(ValueError, match=r"group 0 has 3.*group 1 has 1"):
        group_advantages(torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.tensor([0, 0, 0, 1]), group_size=2)


def test_group_size_below_two_raises():
    with pytest.raises(ValueError, match="group_size must be >= 2"):
        group_advantages(torch.tensor([1.0]), torch.tensor([0]), group_size=1)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_returns_raise_naming_the_group(bad):
    returns = torch.tensor([1.0, bad, 2.0, 3.0])
    with pytest.raises(ValueError, match=r"non-finite returns in groups \[4\]"):
        group_advantages(returns, torch.tensor([4, 4, 9, 9]), group_size=2)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"scaling": "rank"}, "'group', 'batch', 'none'"),
        ({"zero_std_groups": "skip"}, "'keep', 'drop'"),
    ],
)
def test_unknown_variant_raises_with_valid_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        group_advantages(RETURNS, GROUP_ID, group_size=2, **kwargs)


def test_float_group_id_and_shape_mismatch_raise():
    with pytest.raises(ValueError, match="integer"):
        group_advantages(RETURNS, GROUP_ID.float(), group_size=2)
    with pytest.raises(ValueError, match=r"shape \[N\]"):
        group_advantages(RETURNS, GROUP_ID[:3], group_size=2)
