"""The one seed mixer: :func:`mix` hashes integers into a 32-bit seed.

Every seed the project derives comes from it: the episode seeds of ``Backend.reset(int)``
(:func:`envs.api.derive_episode_seeds`, in every backend and service), the trainer's trunk and warm-start episode
seeds, the gymnasium adapters' per-world seeds, CARLA's traffic-manager, pedestrian and route seeds
(``envs.carla.world.mix_seed``), and the built-in simulator's counter-based world randomness
(:mod:`envs.sim.rng` builds on it). Nothing here touches a process-global generator.

The bottom layer of ``envs``: it imports nothing of the project.
"""

from __future__ import annotations

import torch

_MASK32 = 0xFFFFFFFF


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
    """The one seed mixer: several integers (ints, or long tensors broadcast together) hashed into one value in
    [0, 2**32), a long tensor. Each part counts by its low 32 bits: give a wider int as two parts (its low and
    high words, as :func:`envs.api.derive_episode_seeds` does)."""
    out = None
    for part in parts:
        value = part if isinstance(part, torch.Tensor) else torch.tensor(part, dtype=torch.long)
        out = hash32(value) if out is None else hash32(out * 0x9E3779B1 + hash32(value))
    return out
