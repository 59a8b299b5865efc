"""The contract's shared pieces: snapshot serialisation, world ids, action checks, observation layout."""

import pytest
import torch

from envs.api import OBSERVATION_LAYOUT, BackendError, Snapshot, as_world_ids, check_actions


def make_snapshot() -> Snapshot:
    return Snapshot("sim", "abc", 3, {"floats": torch.randn(3, 5), "ints": torch.arange(6).view(3, 2)},
                    {"note": "x"})


def test_snapshot_bytes_round_trip():
    snapshot = make_snapshot()
    back = Snapshot.from_bytes(snapshot.to_bytes())
    assert (back.backend, back.signature, back.num_worlds, back.meta) == ("sim", "abc", 3, {"note": "x"})
    assert torch.equal(back.tensors["floats"], snapshot.tensors["floats"])
    assert torch.equal(back.tensors["ints"], snapshot.tensors["ints"])


def test_corrupt_snapshot_bytes_give_a_clear_error():
    with pytest.raises(BackendError, match="not a valid snapshot"):
        Snapshot.from_bytes(b"definitely not a snapshot")


def test_snapshot_bytes_never_unpickle_code():
    import io
    import pickle

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    buffer = io.BytesIO()
    torch.save({"backend": Evil()}, buffer)
    with pytest.raises(BackendError):
        Snapshot.from_bytes(buffer.getvalue())
    assert pickle  # the payload above is a real pickle gadget; weights_only loading refuses it


def test_select_picks_worlds_and_checks_range():
    snapshot = make_snapshot()
    part = snapshot.select([2, 0])
    assert part.num_worlds == 2
    assert torch.equal(part.tensors["floats"][0], snapshot.tensors["floats"][2])
    with pytest.raises(BackendError, match="holds 3 worlds"):
        snapshot.select([3])


def test_world_ids():
    assert as_world_ids(None, 3).tolist() == [0, 1, 2]
    assert as_world_ids([2, 0], 3).tolist() == [2, 0]
    with pytest.raises(BackendError, match=r"\[0, 3\)"):
        as_world_ids([3], 3)
    with pytest.raises(BackendError):
        as_world_ids([-1], 3)


def test_actions_are_checked():
    check_actions(torch.zeros(2, 3), 2)
    with pytest.raises(BackendError, match="shape \\[2, 3\\]"):
        check_actions(torch.zeros(2, 2), 2)
    with pytest.raises(BackendError, match="NaN"):
        check_actions(torch.tensor([[0.0, 0.0, float("nan")], [0.0, 0.0, 0.0]]), 2)
    with pytest.raises(BackendError, match="torch.Tensor"):
        check_actions([[0.0, 0.0, 0.0]], 1)


def test_observation_layout_is_contiguous():
    slices = OBSERVATION_LAYOUT.slices
    ordered = list(slices.values())
    assert ordered[0].start == 0
    assert all(a.stop == b.start for a, b in zip(ordered[:-1], ordered[1:], strict=True))
    assert OBSERVATION_LAYOUT.size == ordered[-1].stop == 8 + 20 + 72 + 20 + 5


def test_concat_keeps_world_order_and_refuses_mixed_kinds():
    a, b = make_snapshot(), make_snapshot()
    both = Snapshot.concat([a, b.select([1])])
    assert both.num_worlds == 4
    assert torch.equal(both.tensors["floats"][3], b.tensors["floats"][1])
    other = Snapshot("carla", "abc", 1, {"floats": torch.zeros(1, 5), "ints": torch.zeros(1, 2)})
    with pytest.raises(BackendError, match="cannot concatenate"):
        Snapshot.concat([a, other])
    with pytest.raises(BackendError, match="empty"):
        Snapshot.concat([])
