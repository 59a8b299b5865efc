"""The contract's shared pieces: snapshot serialisation, world ids, action checks, observation layout."""

import pytest
import torch

from envs.api import (
    OBSERVATION_LAYOUT,
    RESTARTS_METRIC,
    BackendBase,
    BackendError,
    BackendSpec,
    NotOffered,
    Snapshot,
    as_world_ids,
    check_actions,
    clone_world_ids,
    frame_snapshot_payload,
    restore_world_ids,
)


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
    # Framed with a valid header and checksum, so the payload reaches torch.load, which must refuse it.
    with pytest.raises(BackendError, match="not a valid snapshot"):
        Snapshot.from_bytes(frame_snapshot_payload(buffer.getvalue()))
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


# --- snapshot integrity: format version, checksum, field checks before any world is touched ---------------


def sim_snapshot():
    from envs.sim.config import SimConfig
    from envs.sim.world import DrivingSim

    sim = DrivingSim(SimConfig(num_worlds=2, map="straight", num_towns=2))
    sim.reset(0)
    for _ in range(3):
        sim.step(torch.tensor([[0.6, 0.0, 0.02]]).repeat(2, 1))
    return sim, sim.snapshot()


def test_byte_flip_fuzzing_finds_no_silent_restore():
    # 300 single-byte changes anywhere in the bytes (header, checksum, payload): every one is refused with a
    # BackendError; none reads back as a (different) snapshot and none escapes as another exception.
    _, snapshot = sim_snapshot()
    data = snapshot.to_bytes()
    generator = torch.Generator().manual_seed(0)
    positions = torch.randint(len(data), (300,), generator=generator).tolist()
    masks = torch.randint(1, 256, (300,), generator=generator).tolist()
    refused = 0
    for position, mask in zip(positions, masks, strict=True):
        flipped = bytearray(data)
        flipped[position] ^= mask
        try:
            Snapshot.from_bytes(bytes(flipped))
        except BackendError:
            refused += 1
    assert refused == 300


def test_snapshot_of_another_format_version_is_named():
    data = bytearray(make_snapshot().to_bytes())
    data[8] = 99  # the format version, right after the 8-byte magic
    with pytest.raises(BackendError, match="snapshot format 99: this version reads format 1"):
        Snapshot.from_bytes(bytes(data))
    with pytest.raises(BackendError, match="checksum does not match"):
        Snapshot.from_bytes(make_snapshot().to_bytes()[:-1])


def test_a_snapshot_whose_rows_do_not_match_its_worlds_is_refused():
    snapshot = Snapshot("sim", "abc", 3, {"floats": torch.zeros(2, 5)})
    with pytest.raises(BackendError, match=r"tensor 'floats' has shape \[2, 5\].*3 worlds"):
        Snapshot.from_bytes(snapshot.to_bytes())


def test_a_nan_snapshot_is_refused_before_any_world_changes():
    sim, snapshot = sim_snapshot()
    before = sim.snapshot()
    snapshot.tensors["floats"][1, 0] = float("nan")
    with pytest.raises(BackendError, match=r"'floats' holds NaN or inf \(snapshot worlds \[1\]\)"):
        sim.restore(snapshot, [0, 1])
    wrong = Snapshot(snapshot.backend, snapshot.signature, 2, {**before.tensors, "ints": before.tensors["ints"].int()})
    with pytest.raises(BackendError, match=r"'ints' is torch.int32.*needs torch.int64"):
        sim.restore(wrong, [0, 1])
    # Well-formed and finite, but impossible: a route id past the town's routes (a checksum cannot catch a
    # snapshot built wrong, only one damaged after it was written).
    impossible = Snapshot(snapshot.backend, snapshot.signature, 2, {k: v.clone() for k, v in before.tensors.items()})
    _, column, _, _ = sim.state._columns["route_id"]
    impossible.tensors["ints"][0, column] = 10**6
    with pytest.raises(BackendError, match="does not describe a world of this simulator.*left as they were"):
        sim.restore(impossible, [0, 1])
    after = sim.snapshot()
    assert all(torch.equal(before.tensors[k], after.tensors[k]) for k in before.tensors)
    sim.step(torch.zeros(2, 3))  # the worlds still step


def test_a_spec_travels_as_plain_values_and_ignores_keys_it_does_not_know():
    spec = BackendSpec("gym", dt=None, max_episode_steps=200, action_low=[-2], action_high=[2], driving=False)
    assert spec.action_low == (-2.0,) and spec.action_size == 1
    data = spec.to_dict()
    assert data["action_low"] == [-2.0] and BackendSpec.from_dict(data) == spec
    assert BackendSpec.from_dict({**data, "holograms": True}) == spec  # a newer service's capability
    assert BackendSpec("sim").action_size == 3 and BackendSpec("sim").driving  # CARLA's control by default
    with pytest.raises(ValueError, match="one bound per action value"):
        BackendSpec("gym", action_low=(0.0, 0.0), action_high=(1.0,))
    with pytest.raises(ValueError, match="evaluates in place must offer set_split"):
        BackendSpec("carla", evaluates_in_place=True)


def test_capabilities_a_backend_does_not_declare_are_refused_by_name():
    class Plain(BackendBase):
        spec = BackendSpec("plain")

    backend = Plain()
    assert backend.metrics() == {RESTARTS_METRIC: 0.0}  # every backend reports its restarts
    with pytest.raises(NotOffered, match=r"Plain \(plain\) does not offer observe_raster \(its spec has rasters=False"):
        backend.observe_raster()
    for call in (lambda: backend.set_split("eval"), backend.positions, lambda: backend.render_birdseye(0),
                 lambda: backend.route_map(0)):
        with pytest.raises(NotOffered):
            call()


def test_restore_and_clone_world_ids_are_checked_in_one_place():
    snapshot = make_snapshot()  # 3 worlds
    assert restore_world_ids(snapshot, None, 5).tolist() == [0, 1, 2]
    assert restore_world_ids(snapshot, [4, 0, 2], 5).tolist() == [4, 0, 2]
    with pytest.raises(BackendError, match="snapshot holds 3 worlds but 2 world ids were given"):
        restore_world_ids(snapshot, [0, 1], 5)
    src, dst = clone_world_ids([0, 0], torch.tensor([1, 2]), 3)
    assert src.tolist() == [0, 0] and dst.tolist() == [1, 2]
    with pytest.raises(BackendError, match="as many sources as destinations, got 1 and 2"):
        clone_world_ids([0], [1, 2], 3)
