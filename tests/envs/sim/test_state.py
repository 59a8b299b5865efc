"""Packed state: named views over two buffers; rows copy as a whole."""

import pytest
import torch

from envs.sim.state import PackedState


def make(num_worlds=4):
    return PackedState({"x": 1, "control": 3}, {"step": 1}, num_worlds, torch.device("cpu"))


def test_views_write_through():
    state = make()
    state.x[1] = 2.5
    state.control[2] = torch.tensor([1.0, 2.0, 3.0])
    state.step.add_(1)
    assert state.floats[1, 0] == 2.5
    assert state.floats[2, 1:].tolist() == [1.0, 2.0, 3.0]
    assert state.ints[:, 0].tolist() == [1, 1, 1, 1]


def test_copy_rows_reads_sources_before_writing():
    state = make()
    state.x.copy_(torch.arange(4.0))
    state.copy_rows(torch.tensor([0, 1]), torch.tensor([1, 2]))  # overlapping: 1 is source and destination
    assert state.x.tolist() == [0.0, 0.0, 1.0, 3.0]


def test_unknown_field_and_duplicate_fields():
    state = make()
    with pytest.raises(AttributeError):
        _ = state.nope
    with pytest.raises(ValueError, match="declared twice"):
        PackedState({"a": 1}, {"a": 1}, 1, torch.device("cpu"))


def test_signature_depends_on_schema():
    assert make().signature == make(8).signature
    other = PackedState({"x": 1, "control": 2}, {"step": 1}, 4, torch.device("cpu"))
    assert other.signature != make().signature


def test_tuple_width_keeps_the_actor_dimension():
    state = PackedState({"x": 1, "one": (1,), "none": (0,)}, {"k": (2,)}, 3, torch.device("cpu"))
    assert state.x.shape == (3,) and state.one.shape == (3, 1) and state.none.shape == (3, 0)
    assert state.k.shape == (3, 2)
    state.one[:, 0] = 2.0
    assert state.floats[:, 1].tolist() == [2.0, 2.0, 2.0]
    assert state.subset(torch.tensor([1])).one.shape == (1, 1)
