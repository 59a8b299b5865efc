"""The non-pickle wire format: round trips, and malformed messages refused with a message, never executed."""

import numpy as np
import pytest
import torch

from envs.api import Snapshot
from envs.services.wire import WireError, decode, encode, snapshot_from_wire, snapshot_to_wire


def test_round_trip_of_nested_arrays_bytes_and_json_values():
    message = [{"obs": np.arange(6, dtype=np.float32).reshape(2, 3), "done": np.array([True, False]),
                "ids": torch.tensor([3, 1]), "blob": b"\x00\x01raw"}, [1, 2.5, "x", None, True], np.int64(7)]
    out = decode(encode(message))
    assert out[0]["obs"].dtype == np.float32 and np.array_equal(out[0]["obs"], message[0]["obs"])
    assert out[0]["done"].tolist() == [True, False]
    assert out[0]["ids"].tolist() == [3, 1] and out[0]["ids"].dtype == np.int64
    assert out[0]["blob"] == b"\x00\x01raw"
    assert out[1:] == [[1, 2.5, "x", None, True], 7]
    assert out[0]["obs"].flags.writeable  # a copy, not a view of the request buffer


def test_snapshot_round_trip_is_exact():
    snapshot = Snapshot("sim", "abc", 2, {"floats": torch.randn(2, 5), "ints": torch.tensor([[1], [2]])},
                        {"version": 3, "names": ["a"]})
    back = snapshot_from_wire(decode(encode(snapshot_to_wire(snapshot))))
    assert (back.backend, back.signature, back.num_worlds, back.meta) == ("sim", "abc", 2, snapshot.meta)
    assert all(torch.equal(back.tensors[k], v) for k, v in snapshot.tensors.items())


@pytest.mark.parametrize("data, message", [
    (b"\x01", "shorter than"),
    ((10**9).to_bytes(8, "little") + b"{}", "does not fit"),
    ((2).to_bytes(8, "little") + b"{x", "not JSON"),
])
def test_malformed_framing_is_refused(data, message):
    with pytest.raises(WireError, match=message):
        decode(data)


def _with_header(header: bytes, payload: bytes = b"") -> bytes:
    return len(header).to_bytes(8, "little") + header + payload


@pytest.mark.parametrize("header, payload, message", [
    (b'{"__array__": [0, 8], "dtype": "|O", "shape": [1]}', b"\x00" * 8, "not allowed"),
    (b'{"__array__": [0, 16], "dtype": "<f4", "shape": [2]}', b"\x00" * 16, "does not fill"),
    (b'{"__array__": [4, 8], "dtype": "<f4", "shape": [2]}', b"\x00" * 8, "outside"),
    (b'{"__bytes__": [0, 99]}', b"", "outside"),
])
def test_arrays_that_do_not_describe_their_bytes_are_refused(header, payload, message):
    with pytest.raises(WireError, match=message):
        decode(_with_header(header, payload))


def test_only_plain_values_can_be_sent():
    with pytest.raises(WireError, match="cannot send a object"):
        encode({"x": object()})
    with pytest.raises(WireError, match="dtype"):
        encode(np.array(["text"], dtype=object))


def test_a_snapshot_message_with_wrong_fields_is_refused():
    with pytest.raises(WireError, match="lacks the field"):
        snapshot_from_wire({"backend": "sim"})
    with pytest.raises(WireError, match="leading dimension 2"):
        snapshot_from_wire({"backend": "sim", "signature": "s", "num_worlds": 2,
                            "tensors": {"floats": np.zeros((3, 1))}, "meta": {}})
