"""The fast selections and comparisons agree exactly with torch.where and the comparison operators."""

import torch

from envs.sim import ops


def test_select_matches_where_exactly():
    generator = torch.Generator().manual_seed(0)
    a, b = torch.randn(50, 7, generator=generator) * 1e5, torch.randn(50, 7, generator=generator)
    condition = torch.rand(50, 7, generator=generator) > 0.5
    assert torch.equal(ops.select(condition, a, b), torch.where(condition, a, b))
    assert torch.equal(ops.select(ops.as_float(condition), a, b), torch.where(condition, a, b))
    assert torch.equal(ops.select(condition, 1e6, b), torch.where(condition, 1e6, b))
    assert torch.equal(ops.select(condition, a, -3.0), torch.where(condition, a, -3.0))
    ints, others = torch.randint(-5, 300, (50, 7), dtype=torch.int32), torch.randint(-5, 300, (50, 7))
    assert torch.equal(ops.select_int(condition, ints, -1), torch.where(condition, ints, -1))
    assert torch.equal(ops.select_int(condition, others, ints.long()), torch.where(condition, others, ints.long()))


def test_comparisons_as_masks():
    a, b = torch.tensor([[1.0, 2.0, 3.0]]), torch.tensor([[2.0], [3.0]])
    assert torch.equal(ops.gt(a, b), (a > b).float()) and torch.equal(ops.le(a, 2.0), (a <= 2.0).float())
    assert torch.equal(ops.eq(torch.tensor([1, 2], dtype=torch.int32), 2), torch.tensor([0, 1], dtype=torch.int32))
    assert ops.ge(a, 1.0).dtype == torch.float32
