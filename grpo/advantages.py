"""Group-relative advantages: each branch's return compared with the other branches of its snapshot.

A group is the G branches driven from one snapshot; the group mean is the baseline that replaces a value
network (DeepSeekMath, Shao et al. 2024). Groups are named by an explicit ``group_id`` tensor, as in verl's
``core_algos.py``, so the rows may come in any order and the ids need not be contiguous.

Scalings (``scaling``):

* ``"group"``: ``(R - mean_g) / (max(std_g, std_floor) + eps)``, the original GRPO advantage.
* ``"batch"``: ``(R - mean_g) / (max(std_batch, std_floor) + eps)``, with ``std_batch`` the std of all
  returns in the batch, as in REINFORCE++ and the batch-std variant discussed in "Understanding R1-Zero-Like
  Training" (Liu et al. 2025): a group whose branches barely differ is not blown up to unit scale.
* ``"none"``: ``R - mean_g``, Dr. GRPO (Liu et al. 2025), which drops the std division because it weights
  low-spread groups more heavily.

All statistics are the population std (``unbiased=False``): a group is the whole population of branches
from its snapshot, not a sample to extrapolate from, and with the small group sizes used here (G = 4..16)
Bessel's correction would change the scale by sqrt(G / (G - 1)), up to 15 %, depending on G alone. This
matches TRL's and verl's group normalisation up to that constant.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

Scaling = Literal["group", "batch", "none"]
ZeroStdGroups = Literal["keep", "drop"]

# Error messages list at most this many offending groups so a bad batch does not print thousands of ids.
_MAX_LISTED_GROUPS = 10


def group_advantages(
    returns: Tensor,
    group_id: Tensor,
    *,
    group_size: int,
    scaling: Scaling = "group",
    eps: float = 1e-6,
    std_floor: float = 1e-6,
    zero_std_groups: ZeroStdGroups = "keep",
    zero_std_tol: float = 1e-8,
) -> tuple[Tensor, Tensor, dict[str, float]]:
    """Normalise branch returns within their groups.

    Args:
        returns: [N] float, the return of each branch (any float dtype; statistics run in float64).
        group_id: [N] integer, the group (snapshot) each branch belongs to; arbitrary, unsorted ids.
        group_size: G, the number of branches every group must have (>= 2).
        scaling: ``"group"``, ``"batch"`` or ``"none"``; see the module docstring.
        eps: added to the denominator after the floor.
        std_floor: the denominator's std is at least this, so a near-constant group is not divided by ~0.
        zero_std_groups: a group whose std is ``<= zero_std_tol`` carries no learning signal; ``"keep"``
            keeps its branches (advantage 0, they still count in the loss' averages), ``"drop"`` marks them
            False in ``keep`` so the caller leaves them out of the update (DAPO's dynamic sampling filter).
        zero_std_tol: absolute tolerance on the group std for "zero spread", in the units of the returns.

    Returns:
        advantages: [N] float32. Branches of zero-spread groups get exactly 0 (their spread is float noise,
            which the std floor would otherwise amplify).
        keep: [N] bool, False for branches of dropped groups.
        metrics: python floats under the keys ``reward/mean``, ``reward/std`` (batch std),
            ``reward/group_std_mean``, ``frac_reward_zero_std`` (fraction of groups), ``groups/num``,
            ``groups/zero_std``, ``groups/dropped``, ``advantage/mean``, ``advantage/std``,
            ``advantage/min``, ``advantage/max`` (advantage statistics over kept branches, population std;
            0.0 when none is kept).

    Raises:
        ValueError: on mismatched shapes, a group that does not have exactly ``group_size`` members,
            non-finite returns (naming the groups), or an unknown ``scaling`` / ``zero_std_groups``.
    """
    if returns.dim() != 1 or group_id.shape != returns.shape:
        raise ValueError(
            f"returns and group_id must both have shape [N]; got {tuple(returns.shape)} and "
            f"{tuple(group_id.shape)}"
        )
    if not returns.is_floating_point():
        raise ValueError(f"returns must be a float tensor; got {returns.dtype}")
    if group_id.is_floating_point() or group_id.is_complex() or group_id.dtype == torch.bool:
        raise ValueError(f"group_id must be an integer tensor (torch.long); got {group_id.dtype}")
    if group_size < 2:
        raise ValueError(
            f"group_size must be >= 2 (a group of one branch has no baseline); got {group_size}"
        )
    if returns.numel() == 0:
        raise ValueError("returns is empty: there are no groups to normalise")

    unique_ids, inverse, counts = torch.unique(group_id, return_inverse=True, return_counts=True)
    num_groups = unique_ids.numel()

    wrong_size = counts != group_size
    if bool(wrong_size.any()):
        bad_ids = unique_ids[wrong_size][:_MAX_LISTED_GROUPS].tolist()
        bad_counts = counts[wrong_size][:_MAX_LISTED_GROUPS].tolist()
        listed = [f"group {gid} has {n}" for gid, n in zip(bad_ids, bad_counts, strict=True)]
        more = int(wrong_size.sum()) - len(listed)
        raise ValueError(
            f"every group must have exactly group_size={group_size} branches; "
            + ", ".join(listed)
            + (f" (and {more} more groups)" if more > 0 else "")
        )

    values = returns.detach().to(torch.float64)
    finite = torch.isfinite(values)
    if not bool(finite.all()):
        bad_groups = torch.unique(group_id[~finite])
        shown = [int(g) for g in bad_groups[:_MAX_LISTED_GROUPS]]
        raise ValueError(
            f"non-finite returns in groups {shown}{' ...' if bad_groups.numel() > len(shown) else ''}: "
            f"{int((~finite).sum())} of {values.numel()} returns are NaN or inf; check the reward terms "
            "of the environment (a division by zero, an unbounded penalty)"
        )

    # Two-pass statistics (mean first, then squared deviations) in float64: returns like 1e8 + small
    # differences keep their differences, which one-pass sum-of-squares or float32 would round away.
    group_mean = torch.zeros(num_groups, dtype=torch.float64, device=values.device).index_add_(
        0, inverse, values
    ) / group_size
    centred = values - group_mean[inverse]
    group_var = torch.zeros(num_groups, dtype=torch.float64, device=values.device).index_add_(
        0, inverse, centred.square()
    ) / group_size
    group_std = group_var.sqrt()
    batch_std = values.std(unbiased=False)

    if scaling == "group":
        denominator = group_std.clamp(min=std_floor)[inverse] + eps
    elif scaling == "batch":
        denominator = batch_std.clamp(min=std_floor) + eps
    elif scaling == "none":
        denominator = torch.ones((), dtype=torch.float64, device=values.device)
    else:
        raise ValueError(f"scaling must be one of 'group', 'batch', 'none'; got {scaling!r}")
    advantages = centred / denominator

    zero_std_group = group_std <= zero_std_tol
    zero_std_branch = zero_std_group[inverse]
    advantages = torch.where(zero_std_branch, torch.zeros_like(advantages), advantages)

    if zero_std_groups == "keep":
        keep = torch.ones_like(zero_std_branch)
        num_dropped = 0
    elif zero_std_groups == "drop":
        keep = ~zero_std_branch
        num_dropped = int(zero_std_group.sum())
    else:
        raise ValueError(f"zero_std_groups must be one of 'keep', 'drop'; got {zero_std_groups!r}")

    kept = advantages[keep]
    if kept.numel() > 0:
        advantage_stats = {
            "advantage/mean": kept.mean().item(),
            "advantage/std": kept.std(unbiased=False).item(),
            "advantage/min": kept.min().item(),
            "advantage/max": kept.max().item(),
        }
    else:
        advantage_stats = dict.fromkeys(
            ("advantage/mean", "advantage/std", "advantage/min", "advantage/max"), 0.0
        )

    num_zero_std = int(zero_std_group.sum())
    metrics = {
        "reward/mean": values.mean().item(),
        "reward/std": batch_std.item(),
        "reward/group_std_mean": group_std.mean().item(),
        "frac_reward_zero_std": num_zero_std / num_groups,
        "groups/num": float(num_groups),
        "groups/zero_std": float(num_zero_std),
        "groups/dropped": float(num_dropped),
        **advantage_stats,
    }
    return advantages.to(torch.float32), keep, metrics
