"""Counter-based random numbers that live in the world state.

A world's randomness is ``uniform(key, counter, stream)``: a pure hash of the world's key, its step counter
and a stream id naming the use (traffic decisions, light jitter, ...). Cloning a world clones its key and
counter, so every branch of a group sees the same world randomness (common random numbers) and branches
differ only by the policy's actions. Nothing here touches a process-global generator. The hash is the
project's one seed mixer, :func:`envs.seeding.mix`.
"""

from __future__ import annotations

import torch

from envs.seeding import hash32, mix  # noqa: F401  (re-exported: the simulator's modules call rng.mix)

_MASK32 = 0xFFFFFFFF

# Stream ids: one per use of a world's randomness, so no two uses ever draw the same numbers.
STREAM_LIGHTS = 1  # light phase offsets (at reset)
STREAM_TRAFFIC_SPAWN = 2  # where traffic (re)spawns, its desired speed and first turn
STREAM_TRAFFIC_TURN = 3  # which way a vehicle turns when it enters a new lane
STREAM_PEDESTRIANS = 4  # when and where a pedestrian starts to cross, which way, how fast


def uniform(key: torch.Tensor, counter: torch.Tensor, stream: int, num: int = 1) -> torch.Tensor:
    """Uniform floats in [0, 1) of shape [B, num] for worlds with ``key`` [B] at step ``counter`` [B]."""
    lane = torch.arange(num, device=key.device)
    bits = mix(key[:, None], counter[:, None], stream, lane[None, :])
    # 24 bits fit a float32 mantissa exactly, so the result is strictly below 1.
    return (bits >> 8).to(torch.float32) * (1.0 / (1 << 24))


def seed_to_key(seeds: torch.Tensor) -> torch.Tensor:
    """A world key from an episode seed (any int64), in [0, 2**32)."""
    return mix(seeds & _MASK32, seeds >> 32, 0x5EED)
