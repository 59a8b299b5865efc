"""Counter-based random numbers that live in the world state.

A world's randomness is ``uniform(key, counter, stream)``: a pure hash of the world's key, its step counter
and a stream id naming the use (traffic decisions, light jitter, ...). Cloning a world clones its key and
counter, so every branch of a group sees the same world randomness (common random numbers) and branches
differ only by the policy's actions. Nothing here touches a process-global generator.
"""

from __future__ import annotations

import torch

_MASK32 = 0xFFFFFFFF

# Stream ids: one per use of a world's randomness, so no two uses ever draw the same numbers.
STREAM_LIGHTS = 1  # light phase offsets (at reset)
STREAM_TRAFFIC_SPAWN = 2  # where traffic (re)spawns, its desired speed and first turn
STREAM_TRAFFIC_TURN = 3  # which way a vehicle turns when it enters a new lane
STREAM_PEDESTRIANS = 4  # when and where a pedestrian starts to cross, which way, how fast


def hash32(x: torch.Tensor) -> torch.Tensor:
    """murmur3's 32-bit finaliser on int64 tensors holding values in [0, 2**32); returns the same range.

    Products may overflow int64; the wrap keeps the low 32 bits exact, and only those are kept.
    """
    x = x & _MASK32
    x = x ^ (x >> 16)
    x = (x * 0x85EBCA6B) & _MASK32
    x = x ^ (x >> 13)
    x = (x * 0xC2B2AE35) & _MASK32
    return x ^ (x >> 16)


def mix(*parts: torch.Tensor | int) -> torch.Tensor:
    """Hash several integers (tensors broadcast together) into one 32-bit value."""
    out = None
    for part in parts:
        value = part if isinstance(part, torch.Tensor) else torch.tensor(part, dtype=torch.long)
        out = hash32(value) if out is None else hash32(out * 0x9E3779B1 + hash32(value))
    return out


def uniform(key: torch.Tensor, counter: torch.Tensor, stream: int, num: int = 1) -> torch.Tensor:
    """Uniform floats in [0, 1) of shape [B, num] for worlds with ``key`` [B] at step ``counter`` [B]."""
    lane = torch.arange(num, device=key.device)
    bits = mix(key[:, None], counter[:, None], stream, lane[None, :])
    # 24 bits fit a float32 mantissa exactly, so the result is strictly below 1.
    return (bits >> 8).to(torch.float32) * (1.0 / (1 << 24))


def seed_to_key(seeds: torch.Tensor) -> torch.Tensor:
    """A world key from an episode seed (any int64), in [0, 2**32)."""
    return mix(seeds & _MASK32, seeds >> 32, 0x5EED)
