"""Counter-based world randomness: a pure function of (key, counter, stream)."""

import torch

from envs.sim import rng


def test_same_inputs_same_numbers_and_range():
    key = torch.tensor([1, 2, 3])
    counter = torch.tensor([0, 0, 5])
    a = rng.uniform(key, counter, stream=7, num=4)
    b = rng.uniform(key.clone(), counter.clone(), stream=7, num=4)
    assert torch.equal(a, b)
    assert a.shape == (3, 4) and a.min() >= 0 and a.max() < 1


def test_streams_counters_and_keys_decorrelate():
    key = torch.zeros(1, dtype=torch.long)
    base = rng.uniform(key, torch.zeros(1, dtype=torch.long), stream=1, num=8)
    assert not torch.equal(base, rng.uniform(key, torch.zeros(1, dtype=torch.long), stream=2, num=8))
    assert not torch.equal(base, rng.uniform(key, torch.ones(1, dtype=torch.long), stream=1, num=8))
    assert not torch.equal(base, rng.uniform(key + 1, torch.zeros(1, dtype=torch.long), stream=1, num=8))


def test_uniformity():
    keys = torch.arange(20000)
    values = rng.uniform(keys, torch.zeros_like(keys), stream=3).flatten()
    assert abs(values.mean().item() - 0.5) < 0.01
    histogram = torch.histc(values, bins=10, min=0, max=1)
    assert histogram.min() > 1800 and histogram.max() < 2200


def test_hash_stays_in_32_bits_for_large_inputs():
    values = rng.hash32(torch.tensor([0, 1, 2**32 - 1, 2**62]))
    assert values.min() >= 0 and values.max() < 2**32
