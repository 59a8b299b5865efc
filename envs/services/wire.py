"""The bytes our HTTP client and server exchange: a JSON header and raw array buffers, never pickle.

A message is any nesting of dicts (string keys), lists, strings, numbers, booleans, None, numpy arrays and
bytes. Its layout:

    8-byte little-endian header length | UTF-8 JSON header | buffers, back to back

In the header an array is ``{"__array__": [offset, nbytes], "dtype": "<f4", "shape": [...]}`` and bytes are
``{"__bytes__": [offset, nbytes]}``, offsets counted from the first buffer. Only boolean, integer and
floating dtypes are accepted, so decoding a message never runs code and never builds arbitrary objects (the
reason snapshots do not cross HTTP as ``Snapshot.to_bytes()``, whose torch.save format is a pickle even
though it is loaded with ``weights_only``). Snapshots travel as :func:`snapshot_to_wire` dicts.
"""

from __future__ import annotations

import json
import struct
from typing import Any

import numpy as np
import torch

from envs.api import BackendError, Snapshot

CONTENT_TYPE = "application/x-grpo-drive"
"""Media type of a wire message (request and response bodies of the /v1 calls)."""

_HEADER = struct.Struct("<Q")
_ALLOWED_KINDS = "biuf"  # bool, signed and unsigned integers, floats: plain numbers only
_MAX_HEADER_BYTES = 16 * 2**20


class WireError(BackendError):
    """A message that is not well-formed; the text says which part."""


def encode(message: Any) -> bytes:
    """``message`` as bytes (see the module docstring); torch tensors are sent as numpy arrays."""
    buffers: list[bytes] = []
    offset = 0

    def visit(value: Any) -> Any:
        nonlocal offset
        if isinstance(value, torch.Tensor):
            value = value.detach().cpu().numpy()
        if isinstance(value, np.ndarray):
            if value.dtype.kind not in _ALLOWED_KINDS:
                raise WireError(f"cannot send an array of dtype {value.dtype}: only bool, int and float arrays")
            data = np.ascontiguousarray(value).tobytes()
            node = {"__array__": [offset, len(data)], "dtype": value.dtype.str, "shape": list(value.shape)}
        elif isinstance(value, (bytes, bytearray, memoryview)):
            data = bytes(value)
            node = {"__bytes__": [offset, len(data)]}
        elif isinstance(value, dict):
            return {str(k): visit(v) for k, v in value.items()}
        elif isinstance(value, (list, tuple)):
            return [visit(v) for v in value]
        elif isinstance(value, np.generic):
            return value.item()
        elif value is None or isinstance(value, (str, int, float, bool)):
            return value
        else:
            raise WireError(f"cannot send a {type(value).__name__}: send numbers, strings, lists, dicts or arrays")
        buffers.append(data)
        offset += len(data)
        return node

    header = json.dumps(visit(message), separators=(",", ":")).encode()
    return b"".join([_HEADER.pack(len(header)), header, *buffers])


def decode(data: bytes) -> Any:
    """The message that :func:`encode` turned into ``data``; raises WireError on anything malformed."""
    view = memoryview(data)
    if len(view) < _HEADER.size:
        raise WireError(f"message of {len(view)} bytes is shorter than its {_HEADER.size}-byte length prefix")
    (length,) = _HEADER.unpack_from(view)
    if length > min(_MAX_HEADER_BYTES, len(view) - _HEADER.size):
        raise WireError(f"header length {length} does not fit a message of {len(view)} bytes")
    try:
        header = json.loads(bytes(view[_HEADER.size:_HEADER.size + length]))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise WireError(f"header is not JSON ({error})") from error
    payload = view[_HEADER.size + length:]

    def span(node: dict, key: str) -> memoryview:
        bounds = node[key]
        if (not isinstance(bounds, list) or len(bounds) != 2 or not all(type(b) is int and b >= 0 for b in bounds)
                or bounds[0] + bounds[1] > len(payload)):
            raise WireError(f"{key} span {bounds!r} lies outside the {len(payload)} payload bytes")
        return payload[bounds[0]:bounds[0] + bounds[1]]

    def visit(node: Any) -> Any:
        if isinstance(node, list):
            return [visit(v) for v in node]
        if not isinstance(node, dict):
            return node
        if "__array__" in node:
            try:
                dtype = np.dtype(node["dtype"])
                shape = tuple(int(s) for s in node["shape"])
            except (TypeError, ValueError, KeyError) as error:
                raise WireError(f"bad array description {node!r}") from error
            if dtype.kind not in _ALLOWED_KINDS or dtype.hasobject:
                raise WireError(f"array dtype {dtype} is not allowed: only bool, int and float arrays")
            buffer = span(node, "__array__")
            if any(s < 0 for s in shape) or int(np.prod(shape)) * dtype.itemsize != len(buffer):
                raise WireError(f"array of shape {list(shape)} and dtype {dtype} does not fill {len(buffer)} bytes")
            return np.frombuffer(buffer, dtype=dtype).reshape(shape).copy()
        if "__bytes__" in node:
            return bytes(span(node, "__bytes__"))
        return {k: visit(v) for k, v in node.items()}

    return visit(header)


def snapshot_to_wire(snapshot: Snapshot) -> dict[str, Any]:
    """A snapshot as a message: its tensors as arrays, everything else as JSON values."""
    return {"backend": snapshot.backend, "signature": snapshot.signature, "num_worlds": snapshot.num_worlds,
            "tensors": {name: tensor.detach().cpu().numpy() for name, tensor in snapshot.tensors.items()},
            "meta": snapshot.meta}


def snapshot_from_wire(message: Any) -> Snapshot:
    """The snapshot :func:`snapshot_to_wire` sent; raises WireError when a field is missing or mistyped."""
    if not isinstance(message, dict):
        raise WireError(f"a snapshot must be a mapping, got {type(message).__name__}")
    try:
        backend, signature, num_worlds = message["backend"], message["signature"], message["num_worlds"]
        tensors, meta = message["tensors"], message.get("meta", {})
    except KeyError as error:
        raise WireError(f"snapshot lacks the field {error}") from error
    if not (isinstance(backend, str) and isinstance(signature, str) and type(num_worlds) is int
            and isinstance(tensors, dict) and isinstance(meta, dict)):
        raise WireError("snapshot fields have the wrong types (backend and signature: strings, num_worlds: int, "
                        "tensors and meta: mappings)")
    for name, array in tensors.items():
        if not isinstance(array, np.ndarray) or array.ndim == 0 or array.shape[0] != num_worlds:
            raise WireError(f"snapshot tensor {name!r} must be an array with leading dimension {num_worlds}")
    return Snapshot(backend, signature, num_worlds, {k: torch.from_numpy(v) for k, v in tensors.items()}, meta)
